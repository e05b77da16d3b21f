"""People in the loop, end to end: paging by severity through Apprise to the sandbox's real SMTP server and
webhook pager, the delivery journal and its retries, runs that end FAILED when their incident is not
resolved, a killed run that leaves its incident escalated, hung dependencies that cannot hang a flow, and
crash recovery telling a sick bot from one reporting an outside cause.

Nothing is mocked: the sandbox bot, exchange, Slack, SMTP server and pager are real processes on loopback,
flows run on the session's Prefect server, the journal is a real SQLite file. One sandbox for the module;
each test leaves the bot running and healthy with no fault active.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from conftest import running_sandbox
from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot

RUNBOOK = str(Path(sys.executable).with_name("runbook"))


@pytest.fixture(scope="module")
def sandbox_dir(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("oncall") / "sandbox") as directory:
        yield directory


@pytest.fixture(autouse=True)
def healthy_afterwards(sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("RUNBOOK_RECOVERY__STOP_TIMEOUT_SECONDS", "2")
    yield
    manager.fault(sandbox_dir, "clear")
    if locate_bot(settings_of(sandbox_dir).bots["sandbox"]) is None:
        manager.start_bot(sandbox_dir)
    wait_for(lambda: health_code(sandbox_dir) == 200, 40, "the bot to answer 200 again")
    for incident in journal_of(sandbox_dir).incidents(open_only=True):  # the next test starts with none open
        journal_of(sandbox_dir).resolve(incident.id, j.RESOLVED_MANUALLY, "closed by the test")


def settings_of(directory: Path):
    return load_settings(directory / "runbook.toml")


def journal_of(directory: Path) -> Journal:
    return Journal(settings_of(directory).journal_url)


def health_code(directory: Path) -> int | None:
    try:
        return httpx.get(settings_of(directory).bots["sandbox"].health_url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pages(directory: Path) -> list[dict]:
    return lines(directory / "pager" / "events.jsonl")


def mails(directory: Path) -> list[dict]:
    return lines(directory / "smtp" / "messages.jsonl")


def slack_posts(directory: Path) -> list[dict]:
    return [m for m in lines(directory / "slack" / "messages.jsonl") if m.get("method") == "chat.postMessage"]


def flow_state(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).state


def recover(directory: Path):
    from flows.crash_recovery import crash_recovery

    return crash_recovery(config=str(directory / "runbook.toml"))


def test_critical_pages_l1_at_once_and_a_bot_sick_in_itself_is_restarted(sandbox_dir: Path) -> None:
    before = locate_bot(settings_of(sandbox_dir).bots["sandbox"])
    manager.fault(sandbox_dir, "sick")
    wait_for(lambda: health_code(sandbox_dir) == 503, 10, "the sick bot to answer 503")
    seen_pages = len(pages(sandbox_dir))

    outcome = recover(sandbox_dir)

    # the bot's own check failing: restarted, verified, resolved, and the run is green
    assert outcome.status == j.RESOLVED and outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    assert locate_bot(settings_of(sandbox_dir).bots["sandbox"]).pid != before.pid
    assert [a.step for a in journal_of(sandbox_dir).get(outcome.incident_id).actions] == ["stop", "restart", "verify"]
    assert flow_state(outcome.flow_run_id).is_completed()
    # CRITICAL: L1 paged on the local pager and by SMS when the incident opened, and mentioned in Slack
    new = pages(sandbox_dir)[seen_pages:]
    tag = f"(incident #{outcome.incident_id})"
    assert {p["path"] for p in new if tag in p["title"]} == {"/pager/L1", "/sms/L1"}
    page = next(p for p in new if p["path"] == "/pager/L1")
    assert page["title"].startswith("[CRITICAL] OPEN L1: Bot Crashed/Stopped")
    assert "Severity: CRITICAL" in page["body"] and "Status: OPEN" in page["body"] and page["type"] == "failure"
    root = next(p for p in slack_posts(sandbox_dir) if f"incident #{outcome.incident_id}" in p["text"])
    assert "<@U0ONCALL1>" in root["text"] and "Status: OPEN" in root["text"]
    deliveries = journal_of(sandbox_dir).deliveries(outcome.incident_id)
    assert {(d.channel, d.level, d.delivered) for d in deliveries} == {("pager", "L1", True), ("sms", "L1", True)}
    # stakeholders told at open and at resolution, from the journal; the review beside the report, linked
    told = [p["text"] for p in slack_posts(sandbox_dir)
            if "Trading System Status Update" in p["text"] and f"incident #{outcome.incident_id}\n" in p["text"]]
    assert len(told) == 2 and "The system is now under investigation." in told[0]
    assert "The system is now operational (resolved: auto-resolved)." in told[1] and "restarted" in told[1]
    review = Path(outcome.report_path).with_name(f"incident-{outcome.incident_id}-review.md")
    text = review.read_text()
    for part in ("## Detection", "## Timeline (UTC)", "## Actions", "## Root cause (as found)", "## Prevention",
                 "## Follow-ups", "| restart | ok |"):
        assert part in text, part
    assert review.name in Path(outcome.report_path).read_text()
    assert any(str(review) in p["text"] and "Status: RESOLVED" in p["text"] for p in slack_posts(sandbox_dir))
    # the channel URLs are secrets: nowhere in what was written or sent
    secrets = settings_of(sandbox_dir).oncall.secrets()
    report = Path(outcome.report_path).read_text()
    assert secrets and not any(s in report or s in json.dumps(new) for s in secrets)


def test_a_503_with_an_outside_cause_is_handed_over_not_restarted(sandbox_dir: Path) -> None:
    before = locate_bot(settings_of(sandbox_dir).bots["sandbox"])
    manager.fault(sandbox_dir, "exchange-down")
    wait_for(lambda: health_code(sandbox_dir) == 503, 30, "the bot to report the exchange failing")

    outcome = recover(sandbox_dir)

    assert outcome.status == j.RESOLVED and outcome.outcome == j.FALSE_POSITIVE, outcome.summary
    assert "not restarted" in outcome.summary and "api_connectivity" in outcome.summary
    assert locate_bot(settings_of(sandbox_dir).bots["sandbox"]).pid == before.pid
    incident = journal_of(sandbox_dir).get(outcome.incident_id)
    assert [a.step for a in incident.actions] == ["hand-over"]
    handed = journal_of(sandbox_dir).find_open("api-latency", "sandbox")
    assert handed is not None and f"crash recovery #{outcome.incident_id}" in handed.summary


def test_an_escalated_run_ends_failed_in_prefect(sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__RESTART", "dry-run")
    manager.fault(sandbox_dir, "crash")

    outcome = recover(sandbox_dir)  # called directly it still returns the Outcome (exit codes unchanged)

    assert outcome.status == j.ESCALATED, outcome.summary
    state = flow_state(outcome.flow_run_id)
    assert state.type.value == "FAILED" and state.name == "Escalated"
    assert f"incident #{outcome.incident_id}" in state.message
    # the run escalated by itself: the failure hook leaves it alone (one escalation, L2 paged once)
    incident = journal_of(sandbox_dir).get(outcome.incident_id)
    assert [a.step for a in incident.actions].count("escalate") == 0
    assert [d.level for d in journal_of(sandbox_dir).deliveries(outcome.incident_id) if d.channel == "pager"] == ["L1", "L1"]


def test_warning_goes_by_email_and_a_mail_missed_while_smtp_is_down_is_delivered_once_it_is_back(
        sandbox_dir: Path) -> None:
    from flows.win_rate_review import win_rate_review
    from runbook.watcher import Watcher

    settings = settings_of(sandbox_dir)
    outcome = win_rate_review(config=str(sandbox_dir / "runbook.toml"))
    mail = [m for m in mails(sandbox_dir) if f"(incident #{outcome.incident_id})" in m["subject"]]
    assert [m["to"] for m in mail] == [["ada@sandbox.invalid"]]
    assert mail[0]["subject"].startswith("[WARNING] OPEN L1: Win Rate Below 40%") and "Severity: WARNING" in mail[0]["body"]
    assert not [p for p in pages(sandbox_dir) if f"#{outcome.incident_id})" in p["title"] and p["path"].startswith("/pager")]

    # SMTP down: the page is journaled undelivered, the flow is not held up, the watcher delivers it later
    manager.fault(sandbox_dir, "smtp-down")
    time.sleep(0.5)  # the server polls its faults ten times a second
    incident, _ = journal_of(sandbox_dir).open_incident("memory-usage", "sandbox", "WARNING", "test: memory high")
    from tasks.oncall import page_people

    [email, sms] = page_people(settings.oncall, settings.journal_url, incident.id, "WARNING", "memory high", "body")
    assert (email.channel, email.delivered, sms.channel, sms.delivered) == ("email", False, "sms", True)
    assert "Connection" in (email.error or "")
    watcher = Watcher(settings, journal_of(sandbox_dir), set())
    assert watcher.deliver_once() == []  # not due yet: backoff
    manager.fault(sandbox_dir, "clear")
    time.sleep(settings.oncall.retry_initial_seconds + 0.5)
    [line] = watcher.deliver_once()
    assert "delivered" in line and "not delivered" not in line
    row = next(d for d in journal_of(sandbox_dir).deliveries(incident.id) if d.channel == "email")
    assert row.delivered and row.attempts == 2 and row.error is None
    assert [m["subject"] for m in mails(sandbox_dir)][-1] == "memory high"


def test_info_is_kept_for_the_digest_not_posted(sandbox_dir: Path) -> None:
    from tasks.oncall import digest, page_people

    settings = settings_of(sandbox_dir)
    incident, _ = journal_of(sandbox_dir).open_incident("new-balance-high", "sandbox", "INFO", "test: new high")
    posts, paged, mailed = len(slack_posts(sandbox_dir)), len(pages(sandbox_dir)), len(mails(sandbox_dir))
    [kept] = page_people(settings.oncall, settings.journal_url, incident.id, "INFO", "New Balance High: 12,345.00 USD", "")
    assert kept.channel == j.DIGEST and not kept.delivered
    assert (len(slack_posts(sandbox_dir)), len(pages(sandbox_dir)), len(mails(sandbox_dir))) == (posts, paged, mailed)
    ids, text = digest(settings.journal_url, "sandbox")
    assert kept.delivery_id in ids and "New Balance High: 12,345.00 USD" in text
    journal_of(sandbox_dir).digest_carried(ids)
    assert digest(settings.journal_url, "sandbox") == ([], "")


def test_a_killed_run_leaves_its_incident_escalated(sandbox_dir: Path) -> None:
    """SIGTERM is how a worker, systemd or Kubernetes stops a run: Prefect marks it Crashed and the
    on_crashed hook escalates the incident, journaled and paged."""
    manager.fault(sandbox_dir, "no-start")
    manager.fault(sandbox_dir, "crash")
    journal = journal_of(sandbox_dir)
    proc = subprocess.Popen([RUNBOOK, "run", "crash-recovery", "--config", str(sandbox_dir / "runbook.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS": "120"})
    try:
        def restarting() -> bool:
            found = journal.find_open("crash-recovery", "sandbox")
            return found is not None and any(a.step == "restart" for a in journal.get(found.id).actions)

        wait_for(restarting, 240, "the run to be restarting the bot")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    incident = next(i for i in journal.incidents(alert="crash-recovery") if i.flow_run_id)
    assert incident.status == j.ESCALATED and incident.outcome == j.FAILED, output[-2000:]
    assert incident.escalation_level == "L2" and "nobody is acting on this incident" in incident.summary
    assert flow_state(incident.flow_run_id).is_crashed()
    assert any(p["path"] == "/pager/L2" and f"(incident #{incident.id})" in p["title"] for p in pages(sandbox_dir))
    assert any("<@U0SENIOR2>" in p["text"] and "Status: ESCALATED" in p["text"] for p in slack_posts(sandbox_dir))


def test_hung_dependencies_cannot_hang_a_flow(sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slack, the pager and the bot's metrics hung at once under crash recovery; the exchange and the SMTP
    server hung under the win-rate review (WARNING mails). Each blocking call has its own deadline, so each
    run ends within the sum of them with the finding in its journal. (A hung /health is the crash recovery
    suite's `test_hung_bot_is_killed_and_restarted`.)"""
    from flows.win_rate_review import win_rate_review

    for name, value in {"RUNBOOK_SLACK__TIMEOUT_SECONDS": "2", "RUNBOOK_ONCALL__SEND_TIMEOUT_SECONDS": "2",
                        "RUNBOOK_BOTS__SANDBOX__PROBE_TIMEOUT_SECONDS": "2",
                        "RUNBOOK_BOTS__SANDBOX__HYPERLIQUID__TIMEOUT_SECONDS": "2"}.items():
        monkeypatch.setenv(name, value)
    for kind in ("slack-hang", "pager-hang", "metrics-hang"):
        manager.fault(sandbox_dir, kind)
    started = time.monotonic()
    outcome = recover(sandbox_dir)
    took = time.monotonic() - started
    assert took < 90, took
    incident = journal_of(sandbox_dir).get(outcome.incident_id)
    assert incident.notifications and not any(n.delivered for n in incident.notifications)
    assert all("timed out" in (n.error or "").lower() or "timeout" in (n.error or "").lower()
               for n in incident.notifications), [n.error for n in incident.notifications]
    pages_of = [d for d in journal_of(sandbox_dir).deliveries(outcome.incident_id)]
    assert pages_of and not any(d.delivered for d in pages_of) and all(d.next_attempt_at for d in pages_of)
    assert "api_requests_total not readable" in outcome.summary, outcome.summary

    manager.fault(sandbox_dir, "clear")
    manager.fault(sandbox_dir, "latency", {"seconds": 3600})
    manager.fault(sandbox_dir, "smtp-hang")
    started = time.monotonic()
    outcome = win_rate_review(config=str(sandbox_dir / "runbook.toml"))
    took = time.monotonic() - started
    assert took < 90, took
    assert outcome.status == j.ESCALATED and "exchange could not be read" in outcome.summary, outcome.summary
    assert flow_state(outcome.flow_run_id).is_failed()
    email = [d for d in journal_of(sandbox_dir).deliveries(outcome.incident_id) if d.channel == "email"]
    assert email and not any(d.delivered for d in email)
