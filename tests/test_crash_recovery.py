"""Crash recovery end to end: the real sandbox bot, the local Slack API, a real Prefect server.

Nothing is mocked. Each test gets its own sandbox (bot, exchange, Slack, journal) so that the storm
guard and the journal start empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot

RUNBOOK = str(Path(sys.executable).with_name("runbook"))


@pytest.fixture(autouse=True)
def recovery_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Short windows so a failing recovery is seen in seconds, not minutes.
    monkeypatch.setenv("RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("RUNBOOK_RECOVERY__STOP_TIMEOUT_SECONDS", "2")


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def bot_settings(directory: Path):
    return load_settings(config_of(directory)).bots["sandbox"]


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def slack_messages(directory: Path) -> list[dict]:
    settings = load_settings(config_of(directory))
    base = settings.slack.base_url.removesuffix("/api/")
    return httpx.get(f"{base}/_sandbox/messages", timeout=5).json()


def health_code(directory: Path) -> int | None:
    try:
        return httpx.get(bot_settings(directory).health_url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def recover(directory: Path):
    from flows.crash_recovery import crash_recovery

    return crash_recovery(config=str(config_of(directory)))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNBOOK, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})})


def test_killed_bot_is_restarted_and_verified(sandbox: Path) -> None:
    before = locate_bot(bot_settings(sandbox))
    assert before is not None
    manager.fault(sandbox, "crash")
    assert health_code(sandbox) is None

    outcome = recover(sandbox)

    assert outcome.status == j.RESOLVED and outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    after = locate_bot(bot_settings(sandbox))
    assert after is not None and after.pid != before.pid
    assert health_code(sandbox) == 200
    incident = journal_of(sandbox).get(outcome.incident_id)
    assert [a.step for a in incident.actions] == ["restart", "verify"]
    assert incident.response_started_at is not None and incident.resolved_at is not None
    assert incident.flow_run_id == outcome.flow_run_id
    report = Path(outcome.report_path).read_text()
    assert "Incident #" in report and "Last 100 log messages" in report and "System resources" in report
    # Slack: one thread, the runbook's template, statuses in order.
    posts = [m for m in slack_messages(sandbox) if m["method"] == "chat.postMessage"]
    root = posts[0]
    assert "Subject: [ALERT] Trading Bot - Bot Crashed/Stopped" in root["text"] and "Status: OPEN" in root["text"]
    assert all(p.get("thread_ts") == root["ts"] for p in posts[1:])
    assert [p["text"].rsplit("Status: ", 1)[1] for p in posts] == ["OPEN", "INVESTIGATING", "RESOLVED"]


def test_hung_bot_is_killed_and_restarted(sandbox: Path) -> None:
    before = locate_bot(bot_settings(sandbox))
    manager.fault(sandbox, "hang")
    outcome = recover(sandbox)
    assert outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    assert not psutil.pid_exists(before.pid) or psutil.Process(before.pid).status() == psutil.STATUS_ZOMBIE
    incident = journal_of(sandbox).get(outcome.incident_id)
    stop = next(a for a in incident.actions if a.step == "stop")
    assert f"PID {before.pid}" in stop.description and "SIG" in stop.description
    assert [a.step for a in incident.actions] == ["stop", "restart", "verify"]
    manager.fault(sandbox, "clear")


def test_healthy_bot_is_left_alone(sandbox: Path) -> None:
    before = locate_bot(bot_settings(sandbox))
    outcome = recover(sandbox)
    assert outcome.outcome == j.FALSE_POSITIVE and outcome.status == j.RESOLVED
    assert locate_bot(bot_settings(sandbox)).pid == before.pid
    assert journal_of(sandbox).get(outcome.incident_id).actions == []


def test_bot_that_will_not_start_escalates(sandbox: Path) -> None:
    manager.fault(sandbox, "no-start")
    manager.fault(sandbox, "crash")
    result = run_cli("run", "crash-recovery", "--config", str(config_of(sandbox)),
                     env={"RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS": "6"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "ESCALATED" in result.stdout and "incident report:" in result.stdout
    incident = journal_of(sandbox).incidents()[0]
    assert incident.status == j.ESCALATED and incident.escalation_level == "L2"
    last = [m for m in slack_messages(sandbox) if m["method"] == "chat.postMessage"][-1]
    assert "Status: ESCALATED" in last["text"] and "<@U0SENIOR2>" in last["text"]


def test_restart_storm_escalates_instead_of_restarting(sandbox: Path) -> None:
    journal = journal_of(sandbox)
    earlier, _ = journal.open_incident("crash-recovery", "sandbox", "CRITICAL")
    for _ in range(3):  # the default storm limit: 3 restarts within the hour
        journal.record_action(earlier.id, "sandbox", "restart", "restarted earlier")
    journal.resolve(earlier.id, j.AUTO_RESOLVED, "earlier crash")
    manager.fault(sandbox, "crash")
    outcome = recover(sandbox)
    assert outcome.status == j.ESCALATED and "restart storm" in outcome.summary
    assert journal.count_actions("sandbox", "restart", timedelta(hours=1)) == 3  # no new restart
    assert locate_bot(bot_settings(sandbox)) is None


def test_two_concurrent_runs_restart_once(sandbox: Path) -> None:
    manager.fault(sandbox, "crash")
    args = ["run", "crash-recovery", "--config", str(config_of(sandbox))]
    runs = [subprocess.Popen([RUNBOOK, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(run.wait(timeout=240), run.communicate()) for run in runs]
    assert [code for code, _ in results] == [0, 0], [out for _, out in results]
    assert journal_of(sandbox).count_actions("sandbox", "restart", timedelta(hours=1)) == 1
    assert health_code(sandbox) == 200


def test_slack_outage_does_not_stop_recovery(sandbox: Path) -> None:
    manager.fault(sandbox, "slack-down")
    manager.fault(sandbox, "crash")
    outcome = recover(sandbox)
    assert outcome.outcome == j.AUTO_RESOLVED
    assert health_code(sandbox) == 200
    undelivered = journal_of(sandbox).undelivered(outcome.incident_id)
    assert [n.status_line for n in undelivered] == ["OPEN", "INVESTIGATING", "RESOLVED"]
    assert all("503" in (n.error or "") for n in undelivered)
    assert "Status: RESOLVED" in undelivered[-1].text


def test_dry_run_policy_touches_nothing(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__RESTART", "dry-run")
    manager.fault(sandbox, "crash")
    outcome = recover(sandbox)
    assert outcome.status == j.ESCALATED
    assert locate_bot(bot_settings(sandbox)) is None
    actions = journal_of(sandbox).get(outcome.incident_id).actions
    assert [(a.step, a.dry_run, a.ok) for a in actions] == [("restart", True, False)]
    assert "dry-run: would start the bot" in actions[0].description


@pytest.mark.parametrize("answer", ["approve", "reject"])
def test_approval_policy_waits_for_a_person(sandbox: Path, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    monkeypatch.setenv("RUNBOOK_POLICY__RESTART", "approve")
    manager.fault(sandbox, "crash")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", recover(sandbox)))
    worker.start()
    paused = None
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while paused is None and time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            paused = runs[0] if runs else None
            time.sleep(0.5)
    assert paused is not None, "the run never paused for approval"
    assert locate_bot(bot_settings(sandbox)) is None  # nothing happened while waiting
    cli = run_cli("approve", str(paused.id), *(["--reject"] if answer == "reject" else []), "--note", "test")
    assert cli.returncode == 0, cli.stderr
    worker.join(timeout=120)
    outcome = result["outcome"]
    if answer == "approve":
        assert outcome.outcome == j.AUTO_RESOLVED and health_code(sandbox) == 200
    else:
        assert outcome.status == j.ESCALATED and locate_bot(bot_settings(sandbox)) is None
        assert "rejected by a person (test)" in outcome.summary


def test_a_bot_stopped_on_purpose_stays_down_until_a_person_releases_it(sandbox: Path) -> None:
    from flows import FLOWS
    from runbook.watcher import Watcher

    journal = journal_of(sandbox)
    loss, _ = journal.open_incident("daily-loss-limit", "sandbox", "CRITICAL", "limit reached")
    journal.record_action(loss.id, "sandbox", "stop", "stopped the bot: it kept trading past its loss limit")
    journal.escalate(loss.id, "L1", "trading halted; a person decides on resuming")
    manager.fault(sandbox, "crash")  # the bot is down, as the daily-loss flow left it

    settings = load_settings(config_of(sandbox))
    watcher = Watcher(settings, journal, set(FLOWS))
    assert [f.alert for f in watcher.poll_once() if f.alert == "crash-recovery"] == []
    outcome = recover(sandbox)  # e.g. an external alert: still no restart
    assert outcome.outcome == j.FALSE_POSITIVE and f"incident #{loss.id}" in outcome.summary
    assert locate_bot(bot_settings(sandbox)) is None

    released = run_cli("resolve", str(loss.id), "--note", "resumed with smaller sizes", "--config",
                       str(config_of(sandbox)))
    assert released.returncode == 0, released.stderr
    assert [f.alert for f in watcher.poll_once() if f.alert == "crash-recovery"] == ["crash-recovery"]


def test_verification_counts_only_the_bots_own_metrics(sandbox: Path) -> None:
    from tasks.restart import verify_recovery

    bot = bot_settings(sandbox)
    started = locate_bot(bot).create_time
    ok, detail = verify_recovery.fn(bot, 20, 0.2, restarted_at=started)
    assert ok and "metrics moving" in detail, detail
    # A family the bot does not export never moves, however much its process_* CPU counters do.
    silent = bot.model_copy(update={"activity_metrics": ["no_such_metric"]})
    ok, detail = verify_recovery.fn(silent, 1.5, 0.2, restarted_at=started)
    assert not ok and "metrics are not moving" in detail, detail
