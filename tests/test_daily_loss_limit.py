"""Daily loss limit end to end: the real sandbox bot losing until its breaker trips, a real Prefect server.

One sandbox serves the whole module instead of conftest's per-test `sandbox` (starting one and tripping
the breaker costs ~10 s a test): the `shared` fixture restores the bot's config.json, removes backups,
clears faults and closes the journal's open incident after each test, so every test starts from the
same bot. The test that stops the bot runs last.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot, stop_process
from conftest import running_sandbox

RUNBOOK = str(Path(sys.executable).with_name("runbook"))


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def bot_settings(directory: Path):
    return load_settings(config_of(directory)).bots["sandbox"]


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def bot_json(directory: Path) -> Path:
    return directory / "bot" / "config" / "config.json"


def backups(directory: Path) -> list[Path]:
    return sorted(bot_json(directory).parent.glob("config.json.bak-*"))


def health(directory: Path) -> dict:
    try:
        return httpx.get(bot_settings(directory).health_url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def run_flow(directory: Path, **params):
    from flows.daily_loss_limit import daily_loss_limit

    return daily_loss_limit(config=str(config_of(directory)), **params)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNBOOK, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("daily-loss") / "sandbox") as directory:
        yield directory


@pytest.fixture
def shared(module_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The module's sandbox, put back as it was after the test."""
    monkeypatch.setenv("RUNBOOK_RECOVERY__STOP_TIMEOUT_SECONDS", "2")
    original = bot_json(module_sandbox).read_text()
    yield module_sandbox
    manager.fault(module_sandbox, "clear")
    bot_json(module_sandbox).write_text(original)
    for backup in backups(module_sandbox):
        backup.unlink()
    journal = journal_of(module_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


@pytest.fixture
def tripped(shared: Path) -> Path:
    """The bot lost until its daily loss limit tripped the breaker (status "stopped"), fault cleared."""
    if health(shared).get("status") != "stopped":
        manager.fault(shared, "daily-loss")
        wait_for(lambda: health(shared).get("status") == "stopped", 60, "the daily loss breaker")
        manager.fault(shared, "clear")  # the breaker stays tripped until the bot restarts
    return shared


def test_healthy_bot_without_losses_is_a_false_positive(shared: Path) -> None:
    before = json.loads(bot_json(shared).read_text())
    outcome = run_flow(shared)
    assert outcome.outcome == j.FALSE_POSITIVE and outcome.status == j.RESOLVED, outcome.summary
    assert "not reached" in outcome.summary
    assert json.loads(bot_json(shared).read_text()) == before and backups(shared) == []
    assert journal_of(shared).get(outcome.incident_id).actions == []


def _wait_paused(flow_name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            if runs:
                return runs[0]
            time.sleep(0.5)
    return None


@pytest.mark.parametrize("answer", ["approve", "reject"])
def test_config_change_waits_for_approval(tripped: Path, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__CONFIG_CHANGE", "approve")
    old_text = bot_json(tripped).read_text()
    pid = locate_bot(bot_settings(tripped)).pid
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", run_flow(tripped)))
    worker.start()
    paused = _wait_paused("daily-loss-limit")
    assert paused is not None, "the run never paused for approval"
    assert bot_json(tripped).read_text() == old_text and backups(tripped) == []  # nothing before the answer
    cli = run_cli("approve", str(paused.id), *(["--reject"] if answer == "reject" else []), "--note", "test",
                  "--config", str(config_of(tripped)))
    assert cli.returncode == 0, cli.stderr
    worker.join(timeout=120)
    outcome = result["outcome"]

    # Either way the bot had halted itself: not touched, and a person decides on resuming (L1).
    assert outcome.status == j.ESCALATED, outcome.summary
    incident = journal_of(tripped).get(outcome.incident_id)
    assert incident.escalation_level == "L1"
    assert "halted by the bot's circuit breaker (daily loss limit reached)" in outcome.summary
    assert "Resuming trading is a person's decision" in outcome.summary
    assert locate_bot(bot_settings(tripped)).pid == pid
    actions = [(a.step, a.ok, a.dry_run) for a in incident.actions]
    report = Path(outcome.report_path).read_text()
    for section in ("Trading status", "Today's losses (since 00:00 UTC", "Open positions (exchange)",
                    "Losses by coin", "Losses by hour", "Losses by strategy", "Largest 5 losers",
                    "Risk parameters (config.json)", "Proposed config change", "Resume trading with reduced "
                    "position sizes", "Schedule strategy review meeting", "| random-walk |",
                    "| risk_limits | daily_loss_limit_usd | 100.0 |"):
        assert section in report, section
    if answer == "approve":
        new = json.loads(bot_json(tripped).read_text())
        old = json.loads(old_text)
        assert new["position_sizing"]["base_size_usd"] == old["position_sizing"]["base_size_usd"] / 2 == 25.0
        assert new["risk_management"]["max_position_usd"] == old["risk_management"]["max_position_usd"] / 2
        assert new["risk_limits"]["daily_loss_reset_at"].endswith("Z")
        assert {k: v for k, v in new.items() if k not in ("position_sizing", "risk_management", "risk_limits")} == \
            {k: v for k, v in old.items() if k not in ("position_sizing", "risk_management", "risk_limits")}
        [backup] = backups(tripped)
        assert backup.read_text() == old_text
        assert actions == [("config-change", True, False)]
        action = incident.actions[0]
        assert f"approved by {getpass.getuser()} via the shell (test)" in action.description and backup.name in action.description
        assert json.loads(action.detail)["backup"] == str(backup)
    else:
        assert bot_json(tripped).read_text() == old_text and backups(tripped) == []
        assert actions == [("config-change", False, False)]
        assert f"rejected by {getpass.getuser()} via the shell (test)" in outcome.summary


def test_dry_run_policy_changes_nothing(tripped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__CONFIG_CHANGE", "dry-run")
    old_text = bot_json(tripped).read_text()
    outcome = run_flow(tripped, reduce_size_factor=0.25)
    assert outcome.status == j.ESCALATED
    assert bot_json(tripped).read_text() == old_text and backups(tripped) == []
    [action] = journal_of(tripped).get(outcome.incident_id).actions
    assert (action.step, action.ok, action.dry_run) == ("config-change", False, True)
    assert "dry-run: would change the bot's config" in action.description
    assert "position_sizing.base_size_usd: 50.0 -> 12.5" in action.description


def test_a_config_linked_out_of_the_bot_folder_is_never_written(tripped: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """Security: a planted symlink must not turn an approved config change into a write elsewhere."""
    monkeypatch.setenv("RUNBOOK_POLICY__CONFIG_CHANGE", "auto")
    outside = tmp_path / "elsewhere.json"
    outside.write_text(bot_json(tripped).read_text())
    original = bot_json(tripped).read_text()
    bot_json(tripped).unlink()
    bot_json(tripped).symlink_to(outside)
    try:
        outcome = run_flow(tripped)
    finally:
        bot_json(tripped).unlink()
        bot_json(tripped).write_text(original)
    assert outside.read_text() == original and backups(tripped) == []
    [action] = journal_of(tripped).get(outcome.incident_id).actions
    assert (action.step, action.ok) == ("config-change", False)
    assert f"resolves to {outside}, outside the bot's folder" in action.description


def test_exchange_down_is_a_clear_finding(tripped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__CONFIG_CHANGE", "dry-run")
    manager.fault(tripped, "exchange-down")
    outcome = run_flow(tripped)
    assert outcome.status == j.ESCALATED, outcome.summary
    assert "Exchange figures unavailable" in outcome.summary and "HTTP 503" in outcome.summary
    # The breaker still counts while /health says "unhealthy" (exchange unreachable outranks "stopped").
    assert "halted by the bot's circuit breaker" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert "Could not read today's fills from the exchange:** userFillsByTime: exchange error (HTTP 503" in report


def test_bot_that_kept_trading_is_stopped(tripped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bot restarted after the limit (its own daily counter back at 0) and trades on: the exchange's
    fills still show today's loss past the limit, so the flow stops it (kill policy auto)."""
    monkeypatch.setenv("RUNBOOK_POLICY__CONFIG_CHANGE", "dry-run")
    bot = bot_settings(tripped)
    stop_process.fn(locate_bot(bot), bot, 5)
    manager.start_bot(tripped)
    wait_for(lambda: health(tripped).get("status") in ("healthy", "degraded"), 30, "the restarted bot")
    assert health(tripped)["metrics"]["daily_pnl"] > -100  # the bot itself no longer knows
    running = locate_bot(bot)

    outcome = run_flow(tripped)

    assert outcome.status == j.ESCALATED, outcome.summary
    assert "kept trading past the limit; stopped it" in outcome.summary
    assert locate_bot(bot) is None
    assert not psutil.pid_exists(running.pid) or psutil.Process(running.pid).status() == psutil.STATUS_ZOMBIE
    steps = [(a.step, a.ok, a.dry_run) for a in journal_of(tripped).get(outcome.incident_id).actions]
    assert steps == [("stop", True, False), ("config-change", False, True)]
    stop = journal_of(tripped).get(outcome.incident_id).actions[0]
    assert f"PID {running.pid}" in stop.description and "daily loss limit reached" in stop.description
