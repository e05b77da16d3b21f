"""The watcher against the real sandbox: each injected fault fires its alert exactly once.

Windows are shortened by configuration (the WebSocket window from 120 s to 4 s) so the suite stays
fast; the logic under test is the same.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from runbook import journal as j
from runbook.firing import Firing
from runbook.journal import Journal, utcnow
from runbook.settings import load_settings
from runbook.watcher import LogCursor, Watcher
from sandbox import manager

AUTOMATED = {"crash-recovery"}
# Conditions that stay true while the fault lasts (the others are one-off log events).
LASTING = {"crash", "hang", "websocket", "auth", "low-balance", "memory"}


@pytest.fixture(autouse=True)
def watch_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_WATCH__WEBSOCKET_DOWN_SECONDS", "4")
    monkeypatch.setenv("RUNBOOK_WATCH__BOT_MEMORY_LIMIT_MB", "200")
    monkeypatch.setenv("RUNBOOK_WATCH__MIN_BALANCE_USD", "100")


def make_watcher(directory: Path) -> Watcher:
    settings = load_settings(directory / "runbook.toml")
    watcher = Watcher(settings, Journal(settings.journal_url), AUTOMATED)
    watcher.poll_once()  # first look: log cursors at the end, latency baseline
    return watcher


def poll_until(watcher: Watcher, alert: str, timeout: float = 40) -> list[Firing]:
    """Poll like `serve` does until `alert` fires; every firing seen on the way is returned."""
    seen: list[Firing] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.extend(watcher.poll_once())
        if any(f.alert == alert for f in seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{alert} did not fire within {timeout}s; fired: {[f.alert for f in seen]}")


def incidents_for(watcher: Watcher, alert: str) -> list[j.Incident]:
    return watcher.journal.incidents(alert=alert)


@pytest.mark.parametrize("fault, alert", [
    ("crash", "crash-recovery"),
    ("hang", "crash-recovery"),
    ("websocket", "websocket-disconnected"),
    ("stop-loss", "stop-loss-review"),
    ("daily-loss", "daily-loss-limit"),
    ("auth", "api-auth-failed"),
    ("low-balance", "insufficient-balance"),
    ("latency", "api-latency"),
    ("memory", "memory-usage"),
])
def test_each_fault_fires_its_alert_exactly_once(sandbox: Path, fault: str, alert: str) -> None:
    watcher = make_watcher(sandbox)
    manager.fault(sandbox, fault)
    poll_until(watcher, alert, timeout=60)
    for _ in range(3):  # the condition stays true: repeats, never a second incident
        watcher.poll_once()
        time.sleep(0.3)
    found = incidents_for(watcher, alert)
    assert len(found) == 1, [i.as_dict() for i in found]
    incident = found[0]
    assert incident.status == j.OPEN
    if fault in LASTING:
        assert incident.repeat_count >= 1
    assert incident.event_id, "the fired alert went out as a Prefect event"
    if alert in AUTOMATED:
        assert incident.outcome is None
    else:  # no flow for it yet: opened, marked, and announced in Slack
        assert incident.outcome == j.NO_AUTOMATION
        assert watcher.journal.get(incident.id).notifications[0].status_line == "OPEN"


def test_fired_alert_is_a_prefect_event(sandbox: Path) -> None:
    watcher = make_watcher(sandbox)
    manager.fault(sandbox, "crash")
    firing = next(f for f in poll_until(watcher, "crash-recovery") if f.created)
    from prefect.settings import PREFECT_API_URL

    deadline = time.monotonic() + 20
    events: list[dict] = []
    while not events and time.monotonic() < deadline:
        body = {"filter": {"id": {"id": [firing.event_id]}}, "limit": 5}
        events = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=body, timeout=10).json()["events"]
        time.sleep(0.5)
    assert events and events[0]["event"] == "runbook.alert.fired"
    assert events[0]["resource"]["runbook.bot"] == "sandbox"
    assert events[0]["resource"]["runbook.incident"] == str(firing.incident_id)


def test_websocket_blip_shorter_than_the_window_fires_nothing(sandbox: Path) -> None:
    watcher = make_watcher(sandbox)
    manager.fault(sandbox, "websocket-blip", {"seconds": 2})
    fired: list[Firing] = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        fired.extend(watcher.poll_once())
        time.sleep(0.5)
    assert [f.alert for f in fired if f.alert == "websocket-disconnected"] == []


def test_an_exit_fires_without_waiting_for_the_next_poll(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A poll interval of an hour: after the first look, only the exit watch (a pidfd on the bot's PID)
    # can make the watcher look again, so the incident below exists only if the exit woke it.
    monkeypatch.setenv("RUNBOOK_WATCH__POLL_INTERVAL_SECONDS", "3600")
    watcher = make_watcher(sandbox)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # the loop's own first poll has run, the exit watch holds the PID
        manager.fault(sandbox, "crash")
        deadline = time.monotonic() + 60
        while not incidents_for(watcher, "crash-recovery") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
    found = incidents_for(watcher, "crash-recovery")
    assert len(found) == 1 and "not running" in found[0].summary, [i.as_dict() for i in found]
    assert not thread.is_alive()


def test_a_restart_by_another_runbook_is_not_a_crash(sandbox: Path) -> None:
    watcher = make_watcher(sandbox)
    journal = watcher.journal
    websocket, _ = journal.open_incident("websocket-disconnected", "sandbox", "CRITICAL", "websocket down")
    journal.record_action(websocket.id, "sandbox", "stop", "PID stopped by SIGTERM")
    journal.record_action(websocket.id, "sandbox", "restart", "started")
    manager.fault(sandbox, "crash")  # down (still starting, as far as the watcher knows) while it is verified
    for _ in range(3):
        assert [f.alert for f in watcher.poll_once()] == []
        time.sleep(0.3)
    journal.record_action(websocket.id, "sandbox", "verify", "not recovered", ok=False)
    # Verified (and failed): the restart is over, and a bot still down is a crash.
    assert "crash-recovery" in [f.alert for f in watcher.poll_once()]


def test_escalation_pages_each_level_once(tmp_path: Path, prefect_server) -> None:
    toml = tmp_path / "runbook.toml"
    toml.write_text(f'journal_url = "sqlite:///{tmp_path}/j.db"\n[bots.b]\nworking_dir = "{tmp_path}"\n'
                    'process_match = ["nope"]\nstart_command = ["true"]\n')
    settings = load_settings(toml)
    journal = Journal(settings.journal_url)
    fresh, _ = journal.open_incident("crash-recovery", "b", "CRITICAL", fired_at=utcnow())
    late, _ = journal.open_incident("api-latency", "b", "WARNING", fired_at=utcnow() - timedelta(minutes=40))
    old, _ = journal.open_incident("memory-usage", "b", "WARNING", fired_at=utcnow() - timedelta(hours=5))
    watcher = Watcher(settings, journal, set())
    first = watcher.escalate_once()
    assert len(first) == 2 and watcher.escalate_once() == []  # once per level
    assert journal.get(fresh.id).escalation_level is None  # within its 5-minute target
    assert journal.get(late.id).escalation_level == "L2"   # open 40 min: senior engineer
    assert journal.get(old.id).escalation_level == "L4"    # open 5 h: executive team
    note = journal.get(old.id).notifications[-1]
    assert note.status_line == "ESCALATED" and not note.delivered  # no Slack configured: kept in the journal


def test_log_cursor_survives_rotation_and_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "bot.log"
    log.write_bytes(b'{"message": "old"}\n')
    cursor = LogCursor(log)
    assert cursor.new_messages() == []  # starts at the end
    with open(log, "ab") as handle:
        handle.write(b'{"message": "TRADE EXIT BTC"}\n{"message": "half')
    assert cursor.new_messages() == ["TRADE EXIT BTC"]
    with open(log, "ab") as handle:
        handle.write(b' done"}\n')
    assert cursor.new_messages() == ["half done"]
    log.write_bytes(b'{"message": "after rotation"}\n')  # truncated and rewritten: shorter
    assert cursor.new_messages() == ["after rotation"]
    log.unlink()
    assert cursor.new_messages() == []
