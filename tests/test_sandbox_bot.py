"""The sandbox bot as a real process: its contract (health, metrics, logs, trades, config) and its faults.

Nothing is mocked: `manager.up` starts the local Hyperliquid API, the local Slack API and the bot on
loopback ports; the tests talk to them over HTTP and read the files the runbook reads.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runbook.settings import BotSettings, load_settings
from sandbox import manager

T = TypeVar("T")

CHECKS = {"websocket_connectivity", "api_connectivity", "api_auth", "position_health", "circuit_breaker", "memory"}
METRICS = {"total_pnl", "daily_pnl", "account_balance", "withdrawable", "peak_balance", "win_rate",
           "trades_today", "total_trades", "open_positions"}


def wait_for(probe: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `probe` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("sandbox-bot") / "sandbox"
    manager.up(directory, seed=11)
    try:
        yield directory
    finally:
        manager.down(directory)


@pytest.fixture
def faults(sandbox: Path) -> Iterator[Callable[..., str]]:
    """Inject faults into the shared sandbox; every test leaves it clear."""
    try:
        yield lambda kind, **params: manager.fault(sandbox, kind, params or None)
    finally:
        manager.fault(sandbox, "clear")


def bot(directory: Path) -> BotSettings:
    return load_settings(directory / "runbook.toml").bots["sandbox"]


def health(directory: Path, timeout: float = 3.0) -> httpx.Response:
    return httpx.get(bot(directory).health_url, timeout=timeout)


def log_messages(directory: Path, errors: bool = False) -> list[str]:
    settings = bot(directory)
    path = settings.path(settings.error_log_file if errors else settings.log_file)
    return [json.loads(line)["message"] for line in path.read_text().splitlines()]


def exchange_info(directory: Path, kind: str) -> Any:
    account = bot(directory).hyperliquid
    return httpx.post(f"{account.api_url}/info", json={"type": kind, "user": account.account_address}, timeout=5).json()


def pidfile_pid(directory: Path) -> int:
    settings = bot(directory)
    assert settings.pidfile_path is not None
    return int(settings.pidfile_path.read_text())


def test_health_answers_the_contract(sandbox: Path) -> None:
    response = health(sandbox)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in {"healthy", "degraded"}
    assert body["pid"] == pidfile_pid(sandbox)
    assert CHECKS <= body["checks"].keys() and METRICS <= body["metrics"].keys()
    assert body["checks"]["websocket_connectivity"]["connected"] is True
    assert body["checks"]["circuit_breaker"]["tripped"] is False
    assert body["metrics"]["account_balance"] == pytest.approx(10_000, rel=0.01)


def test_metrics_parse_with_prometheus_parser(sandbox: Path) -> None:
    text = httpx.get(bot(sandbox).metrics_url, timeout=3).text
    samples = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert {"api_request_duration_seconds_bucket", "api_requests_total", "account_balance_usd", "total_pnl_usd",
            "websocket_connected", "open_positions", "process_resident_memory_bytes"} <= samples


def test_bot_trades_on_the_exchange_behind_stops(sandbox: Path) -> None:
    fills = wait_for(lambda: exchange_info(sandbox, "userFills"), 15, "fills on the exchange")
    assert {fill["coin"] for fill in fills} <= {"BTC", "ETH", "SOL"}
    entries = wait_for(lambda: [m for m in log_messages(sandbox) if m.startswith("TRADE ENTRY")], 10, "TRADE ENTRY")
    assert "stop=" in entries[0] and "stop=None" not in entries[0]
    positions = health(sandbox).json()["checks"]["position_health"]
    assert positions["positions_without_stop"] == []


def test_logs_are_json_lines_with_the_runbook_messages(sandbox: Path) -> None:
    settings = bot(sandbox)
    lines = settings.path(settings.log_file).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "logger", "message"} <= record.keys() for record in records)
    messages = [record["message"] for record in records]
    assert any(m.startswith("API CALL ") and m.endswith("ms") for m in messages)
    assert "websocket connected" in messages


def test_runbook_toml_loads_and_keeps_keys_private(sandbox: Path) -> None:
    settings = load_settings(sandbox / "runbook.toml")
    sandbox_bot = settings.bots["sandbox"]
    assert sandbox_bot.working_dir == sandbox / "bot" and sandbox_bot.start_command[1:3] == ["-m", "sandbox.bot"]
    assert settings.slack.base_url.startswith("http://127.0.0.1:") and settings.slack.token is not None
    key_file = sandbox_bot.hyperliquid.key_file
    assert key_file is not None and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    agent = json.loads(key_file.read_text())["address"]
    assert agent != sandbox_bot.hyperliquid.account_address  # the bot holds an agent key, not the master's


def test_unknown_fault_lists_the_valid_ones(sandbox: Path) -> None:
    with pytest.raises(manager.SandboxError, match="valid: crash, hang"):
        manager.fault(sandbox, "meteor")


def test_hang_blocks_health_until_cleared(sandbox: Path, faults: Callable[..., str]) -> None:
    pid = pidfile_pid(sandbox)
    faults("hang")
    with pytest.raises(httpx.TimeoutException):
        health(sandbox, timeout=1.5)
    assert psutil.pid_exists(pid)
    manager.fault(sandbox, "clear")
    assert wait_for(lambda: health(sandbox).status_code == 200, 5, "health after hang")


def test_websocket_outage_makes_health_unhealthy(sandbox: Path, faults: Callable[..., str]) -> None:
    faults("websocket")
    response = wait_for(lambda: (r := health(sandbox)).status_code == 503 and r, 5, "503 from /health")
    websocket = response.json()["checks"]["websocket_connectivity"]
    assert websocket["status"] == "fail" and websocket["connected"] is False
    wait_for(lambda: "websocket reconnect attempt 1 in 1s" in log_messages(sandbox), 5, "reconnect attempts")
    manager.fault(sandbox, "clear")
    assert wait_for(lambda: health(sandbox).status_code == 200, 5, "health after reconnect")


def test_auth_rejection_is_logged_and_fails_health(sandbox: Path, faults: Callable[..., str]) -> None:
    faults("auth")
    response = wait_for(lambda: (r := health(sandbox)).status_code == 503 and r, 10, "auth failure in /health")
    assert response.json()["checks"]["api_auth"]["status"] == "fail"
    assert any(m.startswith("auth failed: ") for m in log_messages(sandbox, errors=True))


def test_stop_loss_fault_closes_a_position_at_a_loss(sandbox: Path, faults: Callable[..., str]) -> None:
    faults("stop-loss")
    exits = wait_for(lambda: [m for m in log_messages(sandbox) if "reason=stop_loss" in m], 15, "stop-loss exit")
    assert exits[-1].startswith("TRADE EXIT ") and exits[-1].endswith(" LOSS")
    trades = (sandbox / "bot" / "data" / "trades.jsonl").read_text().splitlines()
    assert any(json.loads(line)["reason"] == "stop_loss" for line in trades)


def test_daily_loss_trips_the_circuit_breaker(sandbox: Path, faults: Callable[..., str]) -> None:
    faults("daily-loss")
    body = wait_for(lambda: (b := health(sandbox).json())["status"] == "stopped" and b, 20, "status stopped")
    assert body["checks"]["circuit_breaker"] == {"status": "fail", "tripped": True, "reason": "daily loss limit reached"}
    assert body["metrics"]["daily_pnl"] <= -100
    assert any(m.startswith("circuit breaker tripped: daily loss limit reached") for m in log_messages(sandbox))


def test_crash_then_start_command_brings_health_back(sandbox: Path) -> None:
    settings = bot(sandbox)
    crashed = pidfile_pid(sandbox)
    assert "SIGKILL" in manager.fault(sandbox, "crash")
    assert not psutil.pid_exists(crashed) or psutil.Process(crashed).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(httpx.ConnectError):
        health(sandbox)
    started = time.monotonic()
    restarted = subprocess.Popen(settings.start_command, cwd=settings.working_dir, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: health(sandbox).status_code == 200, 15, "health after restart")
        assert time.monotonic() - started < 10
        assert pidfile_pid(sandbox) == restarted.pid
        assert health(sandbox).json()["checks"]["circuit_breaker"]["tripped"] is False  # a new day for the breaker
    finally:
        manager.down(sandbox)
        restarted.wait(timeout=10)


def test_down_leaves_no_process(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    info = manager.up(directory)
    assert manager.up(directory).already_running
    try:
        pids = list(info.pids.values())
        assert len(pids) == 4 and all(psutil.pid_exists(pid) for pid in pids)
    finally:
        lines = manager.down(directory)
    assert len(lines) == 4 and all("stopped" in line for line in lines)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not any(component["alive"] for component in manager.status(directory)["components"].values())
    assert not (directory / "bot" / "trading_bot.pid").exists()
