"""A bot of another shape, adapted by configuration alone: the sandbox's `alt` shape.

The alt bot writes plain-text logs in its own words, answers /health with other paths and status words,
counts request latency in milliseconds under another metric name and names its config keys otherwise; the
runbook.toml `sandbox up --shape alt` writes maps all of it (sandbox/manager.py, ALT_RUNBOOK_TOML). The
crash, hang, websocket, latency, auth, stop-loss and daily-loss runbooks run here against that bot, each
with the core assertion of its own module (tests/test_crash_recovery.py ... test_daily_loss_limit.py run
the same against the default shape); then `runbook doctor` must find every configured item.

One alt sandbox for the whole module (starting one costs seconds); the tests run in order and each leaves
the bot running, faults cleared. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.paths import dig
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot
from conftest import running_sandbox

RUNBOOK = str(Path(sys.executable).with_name("runbook"))


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def bot_settings(directory: Path):
    return load_settings(config_of(directory)).bots["sandbox"]


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def health(directory: Path) -> dict[str, Any]:
    try:
        return httpx.get(bot_settings(directory).health_url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}


def field(directory: Path, name: str) -> Any:
    """A /health value read through the configured path (the alt shape's, not the contract's)."""
    bot = bot_settings(directory)
    return dig(health(directory), getattr(bot.fields, name))


def log_text(directory: Path, which: str = "log_file") -> str:
    bot = bot_settings(directory)
    path = bot.path(getattr(bot, which))
    return path.read_text() if path.exists() else ""


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds:g}s waiting for {what}"
        time.sleep(0.3)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNBOOK, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.fixture(scope="module")
def alt_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("shape-alt") / "sandbox", shape="alt") as directory:
        yield directory


@pytest.fixture
def alt(alt_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The module's alt sandbox, short windows, and put back as it was after the test."""
    for key, value in {"RECOVERY__VERIFY_TIMEOUT_SECONDS": "60", "RECOVERY__STOP_TIMEOUT_SECONDS": "2",
                       "INFRA__NETWORK_SAMPLES": "2", "INFRA__NETWORK_TIMEOUT_SECONDS": "2"}.items():
        monkeypatch.setenv(f"RUNBOOK_{key}", value)
    wait_for(lambda: field(alt_sandbox, "status") in ("green", "amber"), 30, "a healthy alt bot before the test")
    yield alt_sandbox
    manager.fault(alt_sandbox, "clear")
    journal = journal_of(alt_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def test_the_alt_bot_really_is_shaped_otherwise(alt: Path) -> None:
    """What the default configuration would read from it does not exist: only the config adapts."""
    body = health(alt)
    assert "status" not in body and "checks" not in body and body["state"] in ("green", "amber")
    first = log_text(alt).splitlines()[0]
    assert not first.startswith("{") and " INFO  [trading_bot] " in first
    metrics = httpx.get(bot_settings(alt).metrics_url, timeout=5).text
    assert "exchange_call_latency_ms_bucket" in metrics and "api_request_duration" not in metrics
    bot_config = json.loads((alt / "bot" / "config" / "config.json").read_text())
    assert "risk_management" not in bot_config and bot_config["risk"]["stop_pct"] == 2.0


def test_crash_is_recovered(alt: Path) -> None:
    from flows.crash_recovery import crash_recovery

    before = locate_bot(bot_settings(alt))
    manager.fault(alt, "crash")
    outcome = crash_recovery(config=str(config_of(alt)))
    assert outcome.status == j.RESOLVED and outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    after = locate_bot(bot_settings(alt))
    assert after is not None and after.pid != before.pid
    assert [a.step for a in journal_of(alt).get(outcome.incident_id).actions] == ["restart", "verify"]
    report = Path(outcome.report_path).read_text()
    # The evidence shows the messages of the text log, parsed out of their lines.
    assert "Last 100 log messages" in report and "\ncall " in report and " INFO  [trading_bot] " not in report


def test_hung_bot_is_killed_and_restarted(alt: Path) -> None:
    from flows.crash_recovery import crash_recovery

    before = locate_bot(bot_settings(alt))
    manager.fault(alt, "hang")
    outcome = crash_recovery(config=str(config_of(alt)))
    manager.fault(alt, "clear")
    assert outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    assert not psutil.pid_exists(before.pid) or psutil.Process(before.pid).status() == psutil.STATUS_ZOMBIE
    assert [a.step for a in journal_of(alt).get(outcome.incident_id).actions] == ["stop", "restart", "verify"]


def test_websocket_that_does_not_reconnect_is_restarted_with_the_logs_reconnects_as_evidence(alt: Path) -> None:
    from flows.websocket_disconnected import websocket_disconnected

    before = locate_bot(bot_settings(alt))
    manager.fault(alt, "websocket")
    wait_for(lambda: field(alt, "websocket_connected") is False, 10, "the feed to drop")
    time.sleep(3.2)  # a few reconnect attempts (1 s, then 2 s apart) for the log evidence
    outcome = websocket_disconnected(config=str(config_of(alt)), wait_seconds=1)
    assert outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    assert locate_bot(bot_settings(alt)).pid != before.pid
    report = Path(outcome.report_path).read_text()
    assert "| cause | bot not reconnecting |" in report
    # The plain-text lines were read: the attempts, their spacing and the backoff come from "feed retry" lines.
    assert "reconnect attempts; spacing (s):" in report and "backing off (waits grow)" in report
    assert "feed retry #2, next in 2 s" in report


def test_latency_in_milliseconds_is_read_in_seconds_by_the_flow_and_the_watcher(
        alt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.api_latency import api_latency
    from runbook.watcher import Watcher

    monkeypatch.setenv("RUNBOOK_WATCH__LATENCY_THRESHOLD_SECONDS", "0.8")
    monkeypatch.setenv("RUNBOOK_INFRA__LATENCY_WINDOW_SECONDS", "4.5")
    watcher = Watcher(load_settings(config_of(alt)), journal_of(alt), automated=set())
    state = watcher.bots[0]
    watcher.evaluate(state, watcher.observe(state), time.monotonic())  # the watcher's first reading
    manager.fault(alt, "latency", {"seconds": 1.2})
    time.sleep(0.5)
    outcome = api_latency(config=str(config_of(alt)))
    assert outcome.status == j.ESCALATED, outcome.summary
    assert "Cause: the exchange — " in outcome.summary and "the bot's p90 over the last" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert "Bot request latency (exchange_call_latency_ms, histogram)" in report
    # The watcher reads the same histogram in seconds: the slow requests since its first reading fire the alert
    # (1.2 s against the 0.8 s threshold; read as milliseconds they would be 1200 "seconds").
    firing = dict(watcher.evaluate(state, watcher.observe(state), time.monotonic()))
    assert "api-latency" in firing, firing
    mean = float(firing["api-latency"].split("mean API latency ")[1].split("s")[0])
    assert 0.8 < mean < 60, firing["api-latency"]


def test_auth_failure_is_found_in_health_and_the_text_error_log(alt: Path) -> None:
    from flows.api_auth_failed import api_auth_failed
    from runbook.watcher import Watcher

    manager.fault(alt, "auth")
    wait_for(lambda: "credentials refused" in log_text(alt, "error_log_file"), 15, "the bot to log the refusal")
    wait_for(lambda: field(alt, "api_auth") == "denied", 15, "/health to say the login is denied")
    watcher = Watcher(load_settings(config_of(alt)), journal_of(alt), automated=set())
    state = watcher.bots[0]
    assert "api-auth-failed" in [key for key, _ in watcher.evaluate(state, watcher.observe(state), time.monotonic())]
    outcome = api_auth_failed(config=str(config_of(alt)))
    assert outcome.status == j.ESCALATED and "unapproved agent" in outcome.summary, outcome.summary
    report = Path(outcome.report_path).read_text()
    lines = report.split("Auth lines of the error log", 1)[1].split("###", 1)[0]
    assert "credentials refused: " in lines and "User or API Wallet" in lines
    manager.fault(alt, "clear")
    state_file = json.loads((alt / "state.json").read_text())
    httpx.post(f"{state_file['urls']['exchange']}/_sandbox/accounts", timeout=5, json={
        "address": state_file["account_address"], "agents": [state_file["agent_address"]]}).raise_for_status()


@pytest.mark.xfail(strict=True, reason="known bug: the stop-loss flow's log step parses no exit from the alt shape's text log (exits=[], unparsed=6); open in issue 17")
def test_stop_loss_exit_is_judged_with_the_alt_config_keys_and_log_words(alt: Path) -> None:
    from flows.stop_loss_review import stop_loss_review

    manager.fault(alt, "stop-loss")
    wait_for(lambda: " cause stop -> " in log_text(alt), 30, "the bot to log a stop-loss exit")
    manager.fault(alt, "clear")
    outcome = stop_loss_review(config=str(config_of(alt)), tolerance_pct=2.0)
    report = Path(outcome.report_path).read_text()
    assert "Stop-loss exit: " in report and "Stop level | as configured" in report
    assert "| stop_pct | 2.0 |" in report  # the risk section under its alt name
    # The bot's exit line, in the alt words, is read as a stop-loss loss by the flow's own log step.
    from datetime import UTC, datetime, timedelta

    from flows.stop_loss_review import read_trade_exits

    bot = bot_settings(alt)
    exits = read_trade_exits.fn(bot.path(bot.log_file), datetime.now(UTC) - timedelta(hours=1), bot.markers, bot.logs)
    assert any(e.reason == "stop_loss" and e.result == "LOSS" and "cause stop -> drawdown" in e.message
               for e in exits.exits), exits
    assert outcome.status == j.RESOLVED and outcome.outcome == j.AUTO_RESOLVED, outcome.summary


def test_daily_loss_limit_reads_the_alt_breaker_and_proposes_the_alt_keys(
        alt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.daily_loss_limit import daily_loss_limit

    monkeypatch.setenv("RUNBOOK_POLICY__CONFIG_CHANGE", "dry-run")
    manager.fault(alt, "daily-loss")
    wait_for(lambda: field(alt, "status") == "paused", 60, "the daily loss breaker")
    manager.fault(alt, "clear")
    bot_json = alt / "bot" / "config" / "config.json"
    old = bot_json.read_text()
    outcome = daily_loss_limit(config=str(config_of(alt)), reduce_size_factor=0.25)
    assert outcome.status == j.ESCALATED, outcome.summary
    assert "halted by the bot's circuit breaker (daily loss limit reached)" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert "| limits | max_daily_loss | 100.0 |" in report and "| random-walk |" in report
    [action] = journal_of(alt).get(outcome.incident_id).actions
    assert (action.step, action.dry_run) == ("config-change", True)
    assert "sizing.order_usd: 50.0 -> 12.5" in action.description
    assert bot_json.read_text() == old
    # Back to trading for whatever runs next: a restart resets the sandbox bot's daily counter.
    manager.fault(alt, "crash")
    manager.start_bot(alt)
    wait_for(lambda: field(alt, "status") in ("green", "amber"), 30, "the restarted bot")


def test_doctor_resolves_every_item_on_the_alt_bot_and_names_a_wrong_path(alt: Path, tmp_path: Path) -> None:
    # The lines the markers look for that the tests above did not provoke: a throttled request, low balance.
    manager.fault(alt, "exchange-ratelimit")
    wait_for(lambda: "throttled by exchange" in log_text(alt), 15, "a throttled request")
    manager.fault(alt, "clear")
    manager.fault(alt, "low-balance")
    wait_for(lambda: "insufficient balance" in log_text(alt, "error_log_file"), 20, "the low balance")
    manager.fault(alt, "clear")
    wait_for(lambda: locate_bot(bot_settings(alt)) and bot_positions(alt), 30, "an open position")

    done = run_cli("doctor", "--config", str(config_of(alt)), "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0, [i for i in report["items"] if i["status"] != "resolved"]
    assert {i["status"] for i in report["items"]} == {"resolved"}, \
        [i for i in report["items"] if i["status"] != "resolved"]
    names = {i["name"] for i in report["items"]}
    assert {"fields.daily_pnl", "fields.withdrawable", "fields.circuit_breaker_reason", "fields.position_stop",
            "metrics.latency", "markers.reconnect", "markers.trade_exit", "config_keys.stop_loss_pct"} <= names
    reconnect = next(i for i in report["items"] if i["name"] == "markers.reconnect")
    assert reconnect["lines"] and all(line.startswith("feed retry #") for line in reconnect["lines"])

    wrong = tmp_path / "wrong.toml"
    wrong.write_text(config_of(alt).read_text().replace('daily_pnl = "stats.pnl.today"',
                                                          'daily_pnl = "stats.pnl.daily"'))
    done = run_cli("doctor", "--config", str(wrong), "--json")
    assert done.returncode == 1
    [bad] = [i for i in json.loads(done.stdout)["items"] if i["status"] == "unresolved"]
    assert bad["name"] == "fields.daily_pnl" and bad["configured"] == "stats.pnl.daily"
    assert "no 'daily' in stats.pnl (it has: today, total)" in bad["read"]


def bot_positions(directory: Path) -> bool:
    rows = field(directory, "position_health")
    return isinstance(rows, dict) and bool(rows.get("open"))
