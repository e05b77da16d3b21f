"""People in the loop, end to end on one sandbox: acknowledgements stop the escalation ladder, and a run
paused for approval asks in the incident's Slack thread and is answered by a signed Slack click.

Real parts: the sandbox bot (a process), the local Slack API (it signs and delivers clicks to the intake
like Slack does), the intake on its configured port, the session's Prefect server, the SQLite journal.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import running_sandbox
from runbook import journal as j
from runbook.cli import app
from runbook.journal import Journal
from runbook.settings import Settings, load_settings
from sandbox import manager
from tasks.process import locate_bot


def settings_of(directory: Path) -> Settings:
    return load_settings(directory / "runbook.toml")


def journal_of(directory: Path) -> Journal:
    return Journal(settings_of(directory).journal_url)


def slack_base(directory: Path) -> str:
    return settings_of(directory).slack.base_url.removesuffix("/api/")


def slack_messages(directory: Path) -> list[dict]:
    return httpx.get(f"{slack_base(directory)}/_sandbox/messages", timeout=5).json()


def click(directory: Path, action_id: str, **extra: str) -> dict:
    """A person presses a button in Slack: the local Slack signs the click and sends it to the intake."""
    response = httpx.post(f"{slack_base(directory)}/_sandbox/click", json={"action_id": action_id, **extra},
                          timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("people") / "sandbox") as directory:
        yield directory


@pytest.fixture(scope="module")
def intake(shared: Path) -> Iterator[str]:
    """The intake where the sandbox's Slack app sends its clicks (the port `sandbox up` configured)."""
    from runbook.intake import IntakeServer

    server = IntakeServer(settings_of(shared), set())
    url = server.start()
    assert url is not None
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def clean(shared: Path) -> Iterator[Path]:
    yield shared
    manager.fault(shared, "clear")
    journal = journal_of(shared)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def test_escalation_climbs_at_the_configured_times_until_acknowledged(clean: Path, intake: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.watcher import Watcher

    # The runbook's ladder (L1 at the 5 min target, L2 15 min, L3 1 h, L4 4 h), shortened.
    monkeypatch.setenv("RUNBOOK_WATCH__ESCALATION_AFTER_SECONDS", json.dumps({"L1": 0, "L2": 2, "L3": 4, "L4": 8}))
    settings = settings_of(clean)
    journal = journal_of(clean)
    incident, _ = journal.open_incident("websocket-disconnected", "sandbox", "CRITICAL", "websocket down 3 min")
    watcher = Watcher(settings, journal, set())

    reached: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while "L3" not in reached and time.monotonic() < deadline:
        for line in watcher.escalate_once():
            level = line.split("escalated to ")[1][:2]
            reached[level] = (j.utcnow() - incident.fired_at).total_seconds()
        time.sleep(0.2)
    assert list(reached) == ["L1", "L2", "L3"], reached
    assert reached["L2"] >= 2 and reached["L3"] >= 4
    pages = [m for m in slack_messages(clean) if m["method"] == "chat.postMessage" and "ESCALATED" in (m["text"] or "")
             and f"incident #{incident.id}" in m["text"]]
    assert [p["text"].split(" ")[0] for p in pages] == ["<@U0ONCALL1>", "<@U0SENIOR2>", "<@U0MANAGER3>"]
    assert all(any(b["type"] == "actions" and b["elements"][0]["action_id"] == "runbook_ack" for b in p["blocks"])
               for p in pages)  # every page carries the Acknowledge button

    code, output = cli("ack", str(incident.id), "--by", "alice", "--note", "on it", "--config",
                       str(clean / "runbook.toml"))
    assert code == 0, output
    acked = journal.get(incident.id)
    assert acked.acknowledged_by == "alice" and acked.acknowledged_via == "shell"
    assert acked.response_started_at == acked.acknowledged_at  # a person's acknowledgement starts the response
    time.sleep(max(0.0, 8.5 - (j.utcnow() - incident.fired_at).total_seconds()))  # past L4's time
    assert watcher.escalate_once() == []
    assert journal.get(incident.id).escalation_level == "L3"
    thread = [m for m in slack_messages(clean) if m.get("thread_ts") == acked.slack_ts]
    assert any("Acknowledged by alice via shell: on it" in (m["text"] or "") for m in thread)

    code, output = cli("incidents", "--json", "--config", str(clean / "runbook.toml"))
    row = next(r for r in json.loads(output) if r["id"] == incident.id)
    assert row["acknowledged_by"] == "alice" and row["acknowledged_at"].endswith("Z")


def test_acknowledge_from_slack_and_from_a_pager(clean: Path, intake: str) -> None:
    settings = settings_of(clean)
    journal = journal_of(clean)
    from tasks.notify import AlertNotice, post_notice

    first, _ = journal.open_incident("api-latency", "sandbox", "WARNING", "latency 7 s")
    post_notice(settings.slack, settings.journal_url, first.id, AlertNotice(
        "API Latency >5 Seconds", "WARNING", first.fired_at, "latency 7 s", "slow", "OPEN"))
    answer = click(clean, "runbook_ack", user_id="U0BOB", user_name="bob")
    assert answer["status"] == 200, answer
    acked = journal.get(first.id)
    assert (acked.acknowledged_by, acked.acknowledged_via) == ("@bob (U0BOB)", "slack")

    second, _ = journal.open_incident("memory-usage", "sandbox", "WARNING", "memory 85 %")
    token = settings.intake.token.get_secret_value()
    refused = httpx.post(f"{intake}/incidents/{second.id}/ack", json={"by": "pagerduty"}, timeout=10)
    assert refused.status_code == 401 and journal.get(second.id).acknowledged_at is None
    taken = httpx.post(f"{intake}/incidents/{second.id}/ack", json={"by": "carol (PagerDuty)", "note": "paged"},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert taken.status_code == 200, taken.text
    assert journal.get(second.id).acknowledged_by == "carol (PagerDuty)"
    missing = httpx.post(f"{intake}/incidents/999999/ack", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert missing.status_code == 404


def test_a_paused_run_asks_in_its_thread_and_a_signed_click_approves_it(
        clean: Path, intake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    from flows.crash_recovery import crash_recovery
    from runbook.locks import BotBusy, bot_lock

    monkeypatch.setenv("RUNBOOK_POLICY__RESTART", "approve")
    monkeypatch.setenv("RUNBOOK_POLICY__APPROVAL_TIMEOUT_SECONDS", "120")
    monkeypatch.setenv("RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS", "30")
    config = str(clean / "runbook.toml")
    journal = journal_of(clean)
    manager.fault(clean, "crash")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", crash_recovery(config=config)))
    worker.start()

    deadline = time.monotonic() + 90
    while not journal.waiting_approvals(bot="sandbox") and time.monotonic() < deadline:
        time.sleep(0.2)
    [approval] = journal.waiting_approvals(bot="sandbox")
    run_id = approval.flow_run_id
    # The ask is posted before the run pauses: once the journal shows it waiting, the thread has it.
    incident = journal.get(approval.incident_id)
    asks = [m for m in slack_messages(clean) if m["method"] == "chat.postMessage"
            and m.get("thread_ts") == incident.slack_ts and "Approval needed" in (m["text"] or "")]
    assert len(asks) == 1, asks
    ask = asks[0]["text"]
    assert f"`runbook approve {run_id}`" in ask and "RUN_ID" not in ask
    assert f"/runs/flow-run/{run_id}" in ask and "restart" in ask and "Deadline:" in ask
    buttons = [e for b in asks[0]["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [(b["action_id"], b["value"]) for b in buttons] == [("runbook_approve", run_id), ("runbook_reject", run_id)]

    code, output = cli("approvals", "--json", "--config", config)
    assert code == 0, output
    [listed] = json.loads(output)
    assert listed["run_id"] == run_id and listed["incident_id"] == incident.id
    assert listed["link"].endswith(f"/runs/flow-run/{run_id}") and listed["deadline"]

    with get_client(sync_client=True) as client:  # paused, not merely slow
        deadline = time.monotonic() + 30
        while client.read_flow_run(run_id).state.type != StateType.PAUSED and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.read_flow_run(run_id).state.type == StateType.PAUSED

    # Another remediation on this bot learns that a person is deciding, instead of waiting blind.
    started = time.monotonic()
    with pytest.raises(BotBusy, match=f"awaiting approval of .* in run {run_id}"):
        with bot_lock("sandbox", 60, journal=journal):
            pass
    assert time.monotonic() - started < 30  # it did not sit out the 60 s

    # Clicks that are unsigned, mis-signed (a wrong secret, a changed body) or stale get 401 and change nothing.
    from sandbox.slack_api import sign

    secret = settings_of(clean).slack.signing_secret.get_secret_value()
    form = "payload=" + json.dumps({"type": "block_actions", "user": {"id": "U0EVE", "username": "eve"},
                                    "actions": [{"action_id": "runbook_reject", "value": run_id}]})
    url = f"{intake}/slack/interactions"
    now = int(time.time())
    for headers, body in (
            ({}, form),
            ({"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": sign("not-the-secret", now, form)}, form),
            ({"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": sign(secret, now, form)}, form + "x"),
            ({"X-Slack-Request-Timestamp": str(now - 600), "X-Slack-Signature": sign(secret, now - 600, form)}, form)):
        refused = httpx.post(url, content=body, timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
        assert refused.status_code == 401, refused.text
    assert [a.flow_run_id for a in journal.waiting_approvals(bot="sandbox")] == [run_id]
    assert locate_bot(settings_of(clean).bots["sandbox"]) is None  # nothing restarted

    pressed = click(clean, "runbook_approve", user_id="U0ALICE", user_name="alice")
    assert pressed["status"] == 200, pressed
    worker.join(timeout=120)
    outcome = result["outcome"]
    assert outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    assert locate_bot(settings_of(clean).bots["sandbox"]) is not None
    decided = journal.get_approval(approval.id)
    assert (decided.status, decided.decided_by, decided.decided_via) == ("approved", "@alice (U0ALICE)", "slack")
    steps = [a for a in journal.get(incident.id).actions if a.step == "approval"]
    assert len(steps) == 1 and "restart approved by @alice (U0ALICE) via Slack" in steps[0].description
    # The ask in the thread now shows who answered instead of its buttons.
    updated = [m for m in slack_messages(clean) if m["method"] == "chat.update" and m["ts"] == asks[0]["ts"]]
    assert updated and "approved by @alice (U0ALICE) via Slack" in updated[-1]["text"]

    # The same signed request again is a replay: 401, and the journal is as it was.
    sent = pressed["request"]
    replay = httpx.post(sent["url"], content=sent["body"], headers=sent["headers"], timeout=10)
    assert replay.status_code == 401 and "replayed" in replay.text
    assert journal.get_approval(approval.id).decided_by == "@alice (U0ALICE)"
    code, output = cli("approvals", "--json", "--config", config)
    assert code == 0 and json.loads(output) == []
