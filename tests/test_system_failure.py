"""Complete system failure end to end: the sandbox bot as a real process, the sandbox exchange verifying every
signature, the official SDK closing positions, approvals answered through the Prefect API.

One sandbox serves the module (starting one costs seconds). The first test finds the bot running and
stops it; the bot then stays down (the open incidents hold it), so the later tests find no bot process and
set up their positions on a reset exchange with the bot's own agent key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import eth_account
import httpx
import psutil
import pytest
from hyperliquid.exchange import Exchange
from typer.testing import CliRunner

from runbook import journal as j
from runbook.cli import app
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot
from conftest import running_sandbox


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def settings_of(directory: Path):
    return load_settings(config_of(directory))


def exchange_url(directory: Path) -> str:
    return settings_of(directory).bots["sandbox"].hyperliquid.api_url


def account(directory: Path) -> str:
    return settings_of(directory).bots["sandbox"].hyperliquid.account_address


def agent_exchange(directory: Path) -> Exchange:
    """The SDK signing with the bot's own agent key (the key file the sandbox wrote in the bot's folder)."""
    key = json.loads((directory / "bot" / "config" / "agent_key.json").read_text())["private_key"]
    return Exchange(eth_account.Account.from_key(key), exchange_url(directory), account_address=account(directory),
                    timeout=10)


def control(directory: Path, path: str, body: dict | None = None) -> dict:
    response = httpx.post(f"{exchange_url(directory)}/_sandbox/{path}", json=body or {}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def info(directory: Path, kind: str) -> object:
    return httpx.post(f"{exchange_url(directory)}/info", json={"type": kind, "user": account(directory)}, timeout=5).json()


def positions(directory: Path) -> dict[str, Decimal]:
    state = info(directory, "clearinghouseState")
    return {p["position"]["coin"]: Decimal(p["position"]["szi"]) for p in state["assetPositions"]}  # type: ignore[index]


def open_orders(directory: Path) -> list[dict]:
    return info(directory, "frontendOpenOrders")  # type: ignore[return-value]


def ok(response: dict) -> dict:
    assert response["status"] == "ok", response
    status = response["response"]["data"]["statuses"][0]
    assert "error" not in status, status
    return status


def set_up_book(directory: Path, eth: float = 0.05, btc_short: float = 0.001) -> None:
    """A clean book: an ETH long, a BTC short and a resting buy far below the market."""
    control(directory, "reset")
    exchange = agent_exchange(directory)
    ok(exchange.market_open("ETH", True, eth))
    if btc_short:
        ok(exchange.market_open("BTC", False, btc_short))
    ok(exchange.order("SOL", True, 0.5, 90.0, {"limit": {"tif": "Gtc"}}))
    assert open_orders(directory) and len(positions(directory)) == (2 if btc_short else 1)


def journal_of(directory: Path) -> Journal:
    return Journal(settings_of(directory).journal_url)


def slack_messages(directory: Path) -> list[dict]:
    base = settings_of(directory).slack.base_url.removesuffix("/api/")
    return httpx.get(f"{base}/_sandbox/messages", timeout=5).json()


def run_flow(directory: Path, **params):
    from flows.system_failure import system_failure

    return system_failure(config=str(config_of(directory)), **params)


def wait_paused(flow_name: str, after: float):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            runs = [r for r in runs if r.created and r.created.timestamp() >= after]
            if runs:
                return runs[0]
            time.sleep(0.3)
    return None


def resume(run_id, answer: dict) -> None:
    from prefect.flow_runs import resume_flow_run

    for attempt in range(20):  # right after the pause the input schema may not be stored yet
        try:
            resume_flow_run(run_id, run_input=answer)
            return
        except Exception as error:
            if "schema" not in str(error).lower() or attempt == 19:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("system-failure") / "sandbox") as directory:
        yield directory


@pytest.fixture
def shared(module_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RUNBOOK_POLICY__APPROVAL_TIMEOUT_SECONDS", "60")
    monkeypatch.setenv("RUNBOOK_EMERGENCY__LIQUIDATION_RETRY_DELAY_SECONDS", "0.1")
    yield module_sandbox
    manager.fault(module_sandbox, "clear")
    control(module_sandbox, "fill_limit", {"coin": "ETH", "max_sz": None})
    journal = journal_of(module_sandbox)  # the next test's run opens its own incident
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def test_stops_trading_then_closes_only_the_approved_positions(shared: Path) -> None:
    bot = settings_of(shared).bots["sandbox"]
    process = locate_bot(bot)
    assert process is not None
    # Freeze the bot (the sandbox's `hang` fault: alive, trading stopped) so the book below stays ours.
    manager.fault(shared, "hang")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(bot.health_url, timeout=0.5)
        except httpx.HTTPError:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    set_up_book(shared)
    # A SIGTERM wakes the hung bot for one last tick; with the balance shown below its minimum its breaker
    # trips in that tick, before any strategy decision (it may still place stop-losses: the flow's second
    # sweep must cancel those). The runbook's closes are reduce-only: the low balance does not stop them.
    manager.fault(shared, "low-balance")
    before = positions(shared)

    started = time.time()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", run_flow(shared)))
    worker.start()
    paused = wait_paused("system-failure", started - 1)
    assert paused is not None, "the run never paused for the liquidation approval"
    # Before anyone answered: trading is stopped (bot gone, orders cancelled), positions untouched.
    assert not psutil.pid_exists(process.pid) or psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE
    assert locate_bot(bot) is None and open_orders(shared) == []
    assert positions(shared) == before
    resume(paused.id, {"approve": True, "close_BTC": False, "note": "keep the hedge"})
    worker.join(timeout=120)
    outcome = result["outcome"]

    assert positions(shared) == {"BTC": before["BTC"]}  # ETH closed, BTC kept as decided
    assert outcome.status == j.ESCALATED and outcome.outcome == j.OUTCOME_ESCALATED, outcome.summary
    incident = journal_of(shared).get(outcome.incident_id)
    steps = [(a.step, a.ok) for a in incident.actions]
    assert steps[:2] == [("stop", True), ("cancel-orders", True)]
    assert ("liquidate", True) in steps and ("verify-flat", True) in steps
    liquidated = [a for a in incident.actions if a.step == "liquidate"]
    assert len(liquidated) == 1 and liquidated[0].description.startswith("ETH long 0.05: closed")
    assert "approved by a person via the Prefect UI for ETH, keeping BTC (keep the hedge)" in liquidated[0].description
    assert outcome.details["archive"].endswith(".tar.gz") and Path(outcome.details["archive"]).is_file()
    report = Path(outcome.report_path).read_text()
    assert "trading stopped" in report and "| ETH | long | 0.05 |" in report
    # Stakeholders got the runbook's template in their channel, apart from the incident thread.
    stakeholder = [m for m in slack_messages(shared) if m.get("method") == "chat.postMessage"
                   and "Subject: Trading System Status Update" in (m.get("text") or "")]
    assert len(stakeholder) == 1 and stakeholder[0]["channel_name"] == "trading-status"
    assert "We experienced a EMERGENCY incident" in stakeholder[0]["text"]
    assert "The system is now halted" in stakeholder[0]["text"] and not stakeholder[0].get("thread_ts")
    # Crash recovery will not bring the bot back while this incident is open.
    assert journal_of(shared).deliberate_stop("sandbox").id == outcome.incident_id


def test_rejected_liquidation_closes_nothing(shared: Path) -> None:
    set_up_book(shared)
    before = positions(shared)
    started = time.time()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", run_flow(shared)))
    worker.start()
    paused = wait_paused("system-failure", started - 1)
    assert paused is not None
    resume(paused.id, {"approve": False, "note": "desk will hedge by hand"})
    worker.join(timeout=120)
    outcome = result["outcome"]
    assert positions(shared) == before
    incident = journal_of(shared).get(outcome.incident_id)
    liquidate = [a for a in incident.actions if a.step == "liquidate"]
    assert [(a.ok, a.dry_run) for a in liquidate] == [(False, False)]
    assert "rejected by a person via the Prefect UI (desk will hedge by hand)" in liquidate[0].description
    assert "2 position(s) left open (rejected by a person via the Prefect UI" in outcome.summary


def test_dry_run_policy_only_says_what_it_would_close(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__LIQUIDATE", "dry-run")
    set_up_book(shared)
    before = positions(shared)
    outcome = run_flow(shared, assume_yes=True)  # --yes never overrides dry-run
    assert positions(shared) == before
    incident = journal_of(shared).get(outcome.incident_id)
    [action] = [a for a in incident.actions if a.step == "liquidate"]
    assert action.dry_run and not action.ok and "dry-run: would close" in action.description
    assert "long 0.05 ETH" in action.description and "short 0.001 BTC" in action.description


def test_partial_fills_are_retried_until_flat_with_yes_from_the_shell(shared: Path) -> None:
    set_up_book(shared, eth=0.03, btc_short=0.0)
    control(shared, "fill_limit", {"coin": "ETH", "max_sz": "0.01"})  # each IOC fills at most 0.01 ETH
    result = CliRunner().invoke(app, ["run", "system-failure", "--yes", "--config", str(config_of(shared))])
    assert result.exit_code == 1, result.output  # escalated: a person decides when trading resumes
    assert "archive: " in result.output
    assert positions(shared) == {}
    journal = journal_of(shared)
    incident = journal.get(journal.incidents(alert="system-failure", limit=1)[0].id)
    [close] = [a for a in incident.actions if a.step == "liquidate"]
    attempts = json.loads(close.detail)["attempts"]
    assert [a["filled"] for a in attempts] == ["0.01", "0.01", "0.01"]
    assert all(a["order_status"] == "canceled" for a in attempts[:2]) and attempts[2]["order_status"] == "filled"
    assert "approved with --yes from the shell" in close.description
    fills = httpx.post(f"{exchange_url(shared)}/info", json={"type": "userFills", "user": account(shared)},
                       timeout=5).json()
    assert [f["dir"] for f in fills[:3]] == ["Close Long"] * 3
