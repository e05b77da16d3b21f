"""WebSocket Disconnected end to end: the real sandbox bot, exchange and Slack, flows on the real Prefect server.

Nothing is mocked. The exchange's faults make each cause real: `exchange-unreachable` closes the
exchange's listening socket (connections are refused, and the bot's websocket, same host, drops too),
`exchange-ratelimit` answers 429, `exchange-down` answers 503; `websocket` leaves the bot's websocket stuck
until the bot is restarted, `websocket-blip` drops it for a few seconds only.

One sandbox serves the module (starting one costs seconds); the `shared` fixture clears the faults, waits
for the websocket to be back and closes open incidents after each test. Windows are shortened by
configuration and the flow's `wait_seconds` parameter; the logic under test is the same. The storm-guard
test runs last because it fills the journal with restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
import time

import httpx
import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot
from conftest import running_sandbox


def stakeholder(message: dict) -> bool:
    """A stakeholder update (the status channel), not a message of the incident's thread."""
    return "Trading System Status Update" in (message.get("text") or "")


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def bot_settings(directory: Path):
    return load_settings(config_of(directory)).bots["sandbox"]


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def websocket(directory: Path) -> bool | None:
    try:
        body = httpx.get(bot_settings(directory).health_url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body["checks"]["websocket_connectivity"]["connected"]


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def thread_statuses(directory: Path, incident_id: int) -> list[str]:
    """The status lines of the incident's Slack thread, in order."""
    base = load_settings(config_of(directory)).slack.base_url.removesuffix("/api/")
    posts = [m for m in httpx.get(f"{base}/_sandbox/messages", timeout=5).json() if m["method"] == "chat.postMessage" and not stakeholder(m)]
    mine = [p for p in posts if f"incident #{incident_id})" in p["text"]]
    root = mine[0]
    assert all(p.get("thread_ts") == root["ts"] for p in mine[1:]), "one thread per incident"
    return [p["text"].rsplit("Status: ", 1)[1] for p in mine]


def run_flow(directory: Path, wait_seconds: float):
    from flows.websocket_disconnected import websocket_disconnected

    return websocket_disconnected(config=str(config_of(directory)), wait_seconds=wait_seconds)


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("websocket") / "sandbox") as directory:
        yield directory


@pytest.fixture
def shared(module_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RUNBOOK_INFRA__NETWORK_SAMPLES", "3")
    monkeypatch.setenv("RUNBOOK_INFRA__NETWORK_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("RUNBOOK_RECOVERY__STOP_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS", "20")
    wait_for(lambda: websocket(module_sandbox) is True, 15, "a connected bot before the test")
    yield module_sandbox
    manager.fault(module_sandbox, "clear")
    wait_for(lambda: websocket(module_sandbox) is True, 15, "the websocket back after the test")
    journal = journal_of(module_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def disconnect(directory: Path, *faults: str, **params) -> None:
    for kind in faults:
        manager.fault(directory, kind, params.get(kind.replace("-", "_")))
    wait_for(lambda: websocket(directory) is False, 10, f"the websocket to drop ({', '.join(faults)})")


def test_connected_websocket_is_a_false_positive(shared: Path) -> None:
    pid = locate_bot(bot_settings(shared)).pid
    outcome = run_flow(shared, wait_seconds=5)
    assert outcome.outcome == j.FALSE_POSITIVE and outcome.status == j.RESOLVED, outcome.summary
    assert journal_of(shared).get(outcome.incident_id).actions == []
    assert locate_bot(bot_settings(shared)).pid == pid


def test_bot_that_reconnects_by_itself_is_not_restarted(shared: Path) -> None:
    pid = locate_bot(bot_settings(shared)).pid
    disconnect(shared, "websocket-blip", websocket_blip={"seconds": 5})
    outcome = run_flow(shared, wait_seconds=20)
    assert outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    assert "reconnected by itself" in outcome.summary and "bot not reconnecting" in outcome.summary
    assert journal_of(shared).get(outcome.incident_id).actions == []
    assert locate_bot(bot_settings(shared)).pid == pid


def test_bot_that_does_not_reconnect_is_restarted_and_verified(shared: Path) -> None:
    before = locate_bot(bot_settings(shared))
    disconnect(shared, "websocket")
    time.sleep(3.2)  # a few reconnect attempts (1 s, then 2 s apart) for the log evidence
    outcome = run_flow(shared, wait_seconds=1)

    assert outcome.outcome == j.AUTO_RESOLVED and outcome.status == j.RESOLVED, outcome.summary
    assert "restarted and its websocket is connected again" in outcome.summary
    after = locate_bot(bot_settings(shared))
    assert after is not None and after.pid != before.pid
    assert websocket(shared) is True
    incident = journal_of(shared).get(outcome.incident_id)
    assert [a.step for a in incident.actions] == ["stop", "restart", "verify"]
    assert f"PID {before.pid}" in incident.actions[0].description
    report = Path(outcome.report_path).read_text()
    assert "| cause | bot not reconnecting |" in report
    assert "reconnect attempts; spacing (s):" in report and "backing off (waits grow)" in report
    assert "websocket reconnect attempt 2 in 2s" in report
    assert "TCP connect 127.0.0.1:" in report and "TLS: no TLS (plain HTTP)" in report
    assert thread_statuses(shared, outcome.incident_id) == ["OPEN", "INVESTIGATING", "RESOLVED"]


@pytest.mark.parametrize("faults, cause, evidence", [
    (("exchange-unreachable",), "network down", "no connection in 3 attempts (Connection refused)"),
    (("websocket", "exchange-ratelimit"), "rate-limited", "3 of 3 API requests answered 429"),
    (("websocket", "exchange-down"), "exchange down", "status 503"),
])
def test_causes_outside_the_bot_are_told_apart_and_not_restarted(shared: Path, faults: tuple[str, ...], cause: str,
                                                                 evidence: str) -> None:
    pid = locate_bot(bot_settings(shared)).pid
    disconnect(shared, *faults)
    outcome = run_flow(shared, wait_seconds=1)
    assert outcome.status == j.ESCALATED, outcome.summary
    assert f"WebSocket still down: {cause} — " in outcome.summary and evidence in outcome.summary
    assert "Not restarting the bot" in outcome.summary
    assert journal_of(shared).get(outcome.incident_id).actions == []
    assert locate_bot(bot_settings(shared)).pid == pid
    report = Path(outcome.report_path).read_text()
    assert f"| cause | {cause} |" in report
    assert thread_statuses(shared, outcome.incident_id) == ["OPEN", "INVESTIGATING", "ESCALATED"]


def test_a_bot_that_is_not_running_is_left_to_crash_recovery(shared: Path) -> None:
    manager.fault(shared, "crash")
    try:
        outcome = run_flow(shared, wait_seconds=1)
        assert outcome.status == j.ESCALATED and "crash-recovery runbook's case" in outcome.summary, outcome.summary
        assert journal_of(shared).get(outcome.incident_id).actions == []
        assert locate_bot(bot_settings(shared)) is None  # not started from here
    finally:
        manager.start_bot(shared)


def test_restart_storm_guard_is_crash_recoverys(shared: Path) -> None:
    journal = journal_of(shared)
    earlier, _ = journal.open_incident("crash-recovery", "sandbox", "CRITICAL")
    for _ in range(3):  # crash recovery's storm limit: 3 restarts of this bot within the hour
        journal.record_action(earlier.id, "sandbox", "restart", "restarted earlier")
    journal.resolve(earlier.id, j.AUTO_RESOLVED, "earlier crash")
    pid = locate_bot(bot_settings(shared)).pid
    disconnect(shared, "websocket")
    restarts = journal.count_actions("sandbox", "restart", timedelta(hours=1))
    outcome = run_flow(shared, wait_seconds=1)
    assert outcome.status == j.ESCALATED and "restart storm" in outcome.summary, outcome.summary
    assert journal.count_actions("sandbox", "restart", timedelta(hours=1)) == restarts
    assert locate_bot(bot_settings(shared)).pid == pid
