"""Complete system failure end to end: the sandbox bot as a real process, the sandbox exchange verifying every
signature, the official SDK closing positions, approvals answered through the Prefect API.

One sandbox serves the module (starting one costs seconds). The first test finds the bot running and
stops it; the bot then stays down (the open incidents hold it), so the later tests find no bot process and
set up their positions on a reset exchange with the bot's own agent key.
"""

from __future__ import annotations

import json
import subprocess
import sys
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


def sig5(px: float) -> float:
    """A price the exchange accepts for ETH/BTC: five significant figures."""
    return float(f"{px:.5g}")


def add_stops(directory: Path) -> None:
    """A reduce-only stop-loss trigger on every open position (what the bot keeps beside each position)."""
    exchange = agent_exchange(directory)
    mids = httpx.post(f"{exchange_url(directory)}/info", json={"type": "allMids"}, timeout=5).json()
    for coin, size in positions(directory).items():
        long = size > 0
        trigger = sig5(float(mids[coin]) * (0.9 if long else 1.1))
        limit = sig5(trigger * (0.9 if long else 1.1))
        ok(exchange.order(coin, not long, float(abs(size)), limit,
                          {"trigger": {"triggerPx": trigger, "isMarket": True, "tpsl": "sl"}}, reduce_only=True))


def stops(directory: Path) -> dict[str, int]:
    """Open reduce-only trigger orders per coin."""
    found: dict[str, int] = {}
    for order in open_orders(directory):
        if order["reduceOnly"] and order["isTrigger"]:
            found[order["coin"]] = found.get(order["coin"], 0) + 1
    return found


def plain_orders(directory: Path) -> list[dict]:
    return [o for o in open_orders(directory) if not (o["reduceOnly"] and o["isTrigger"])]


def spawn(*argv: str) -> subprocess.Popen:
    """A stand-in process whose command line carries `argv` (it only sleeps)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def hang_bot(directory: Path) -> None:
    """Freeze the bot (the sandbox's `hang` fault: alive, trading stopped) so the book set up next stays ours."""
    bot = settings_of(directory).bots["sandbox"]
    manager.fault(directory, "hang")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(bot.health_url, timeout=0.5)
        except httpx.HTTPError:
            break
        time.sleep(0.2)
    time.sleep(0.5)


def without_pidfile(directory: Path) -> Path:
    """The same configuration, but the bot found by its command line only (the runbook's `python trading_bot.py &`)."""
    text = config_of(directory).read_text().replace('pidfile = "trading_bot.pid"\n', "")
    path = directory / "runbook-no-pidfile.toml"
    path.write_text(text)
    return path


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


def run_until_paused(directory: Path) -> tuple[threading.Thread, dict, object]:
    """The flow in a thread, and its run once it paused for an answer (None if it never did)."""
    started = time.time()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", run_flow(directory)))
    worker.start()
    return worker, result, wait_paused("system-failure", started - 1)


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


def test_several_matching_processes_orders_cancelled_at_once_nothing_stopped_without_approval(shared: Path) -> None:
    """With a pidfile: the bot and a decoy both match. The orders go at once (stops kept); stopping the processes
    waits for a person, who rejects: both still run, the report lists them, the positions keep their stops."""
    bot = settings_of(shared).bots["sandbox"]
    real = locate_bot(bot)
    assert real is not None
    hang_bot(shared)
    set_up_book(shared)
    add_stops(shared)
    home = str(shared / "bot")
    decoy, bystander = spawn("sandbox.bot", "--home", home), spawn("sandbox.bot", "--home", str(shared / "elsewhere"))
    try:
        worker, result, paused = run_until_paused(shared)
        assert paused is not None, "the run never paused to ask before stopping two processes"
        # Before anyone answered: the exchange side is done whatever the process lookup said.
        assert plain_orders(shared) == [] and stops(shared) == {"ETH": 1, "BTC": 1}
        assert alive(decoy) and psutil.pid_exists(real.pid)
        resume(paused.id, {"approve": False, "note": "looking first"})
        worker.join(timeout=120)
        outcome = result["outcome"]
        assert alive(decoy) and alive(bystander)  # nothing stopped
        assert psutil.Process(real.pid).cmdline() == list(real.cmdline)
    finally:
        for proc in (decoy, bystander):
            proc.kill()
            proc.wait(5)
    assert outcome.outcome == j.FAILED
    assert "TRADING NOT STOPPED (rejected by a person (looking first)): 2 process(es) run" in outcome.summary
    assert "no bot process" not in outcome.summary
    incident = journal_of(shared).get(outcome.incident_id)
    steps = [(a.step, a.ok) for a in incident.actions]
    assert steps[:3] == [("cancel-orders", True), ("dead-mans-switch", False), ("stop", False)]
    switch = next(a for a in incident.actions if a.step == "dead-mans-switch")
    assert "Cannot set scheduled cancel time until enough volume traded" in switch.description
    report = Path(outcome.report_path).read_text()
    for pid in (real.pid, decoy.pid):
        assert f"| {pid} |" in report
    assert f"| {bystander.pid} |" not in report and "elsewhere" not in report
    assert "dead man's switch NOT armed: the exchange refused it" in report
    # Not stopped, so not liquidated: every position is open and still protected, and the report says so.
    assert set(positions(shared)) == {"ETH", "BTC"} and stops(shared) == {"ETH": 1, "BTC": 1}
    assert "long 0.05 ETH: protected by Stop Market" in outcome.summary
    assert "short 0.001 BTC: protected by Stop Market" in outcome.summary
    stakeholder = [m for m in slack_messages(shared) if "Subject: Trading System Status Update" in (m.get("text") or "")]
    assert "long 0.05 ETH: protected by Stop Market" in stakeholder[-1]["text"]
    # The first Slack message already named both processes.
    assert any(f"PID {decoy.pid}" in (m.get("text") or "") and f"PID {real.pid}" in (m.get("text") or "")
               for m in slack_messages(shared))


def test_several_matching_processes_stopped_with_yes_and_never_a_bystander(shared: Path) -> None:
    """Without a pidfile: the bot and a decoy are stopped with --yes, each verified first; a process that does not
    match is never touched; positions are closed and no orphan trigger order remains."""
    bot = settings_of(shared).bots["sandbox"]
    real = locate_bot(bot)
    assert real is not None, "the previous test left the bot running"
    hang_bot(shared)
    set_up_book(shared)
    # A SIGTERM wakes the hung bot for one last tick; with the balance shown below its minimum its breaker trips
    # in that tick, before any strategy decision. The runbook's closes are reduce-only: the low balance does not
    # stop them.
    manager.fault(shared, "low-balance")
    add_stops(shared)
    home = str(shared / "bot")
    decoy, bystander = spawn("sandbox.bot", "--home", home), spawn("sandbox.bot", "--home", str(shared / "elsewhere"))
    try:
        result = CliRunner().invoke(app, ["run", "system-failure", "--yes", "--config", str(without_pidfile(shared))])
        assert result.exit_code == 1, result.output
        decoy.wait(10)
        assert not alive(decoy) and alive(bystander)
        assert not psutil.pid_exists(real.pid) or psutil.Process(real.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        for proc in (decoy, bystander):
            proc.kill()
            proc.wait(5)
    assert positions(shared) == {} and open_orders(shared) == []  # flat, and no orphan stop left behind
    journal = journal_of(shared)
    incident = journal.get(journal.incidents(alert="system-failure", limit=1)[0].id)
    [stop] = [a for a in incident.actions if a.step == "stop"]
    assert stop.ok and "approved with --yes from the shell" in stop.description
    assert {p["pid"] for p in json.loads(stop.detail)["processes"]} == {real.pid, decoy.pid}
    assert [a.step for a in incident.actions if a.step == "cancel-protective"] == ["cancel-protective"] * 2


def test_liquidation_waits_with_every_stop_in_place_then_closes_only_the_approved_positions(shared: Path) -> None:
    assert locate_bot(settings_of(shared).bots["sandbox"]) is None  # stopped by the previous test, held down
    set_up_book(shared)
    add_stops(shared)
    before = positions(shared)

    worker, result, paused = run_until_paused(shared)
    assert paused is not None, "the run never paused for the liquidation approval"
    # While the liquidation waits: plain orders gone, every reduce-only stop still on the book.
    assert plain_orders(shared) == [] and stops(shared) == {"ETH": 1, "BTC": 1}
    assert positions(shared) == before
    resume(paused.id, {"approve": True, "close_BTC": False, "note": "keep the hedge"})
    worker.join(timeout=120)
    outcome = result["outcome"]

    assert positions(shared) == {"BTC": before["BTC"]}  # ETH closed, BTC kept as decided
    assert stops(shared) == {"BTC": 1}  # ETH's stop went with ETH (after it was flat); BTC keeps its stop
    assert outcome.status == j.ESCALATED and outcome.outcome == j.OUTCOME_ESCALATED, outcome.summary
    incident = journal_of(shared).get(outcome.incident_id)
    steps = [(a.step, a.ok) for a in incident.actions]
    assert steps[:3] == [("cancel-orders", True), ("dead-mans-switch", False), ("stop", True)]
    assert ("liquidate", True) in steps and ("cancel-protective", True) in steps
    assert steps.index(("liquidate", True)) < steps.index(("cancel-protective", True))
    liquidated = [a for a in incident.actions if a.step == "liquidate"]
    assert len(liquidated) == 1 and liquidated[0].description.startswith("ETH long 0.05: closed")
    assert "approved by a person for ETH, keeping BTC (keep the hedge)" in liquidated[0].description
    assert outcome.details["archive"].endswith(".tar.gz") and Path(outcome.details["archive"]).is_file()
    report = Path(outcome.report_path).read_text()
    assert "| ETH | long | 0.05 |" in report and "short 0.001 BTC: protected by Stop Market" in report
    # Stakeholders got the runbook's template in their channel, apart from the incident thread.
    stakeholder = [m for m in slack_messages(shared) if m.get("method") == "chat.postMessage"
                   and "Subject: Trading System Status Update" in (m.get("text") or "")]
    # the on-call routing also sends the template at open and at the end: the flow's own update is among them
    halted = [m for m in stakeholder if "The system is now halted" in m["text"]]
    assert halted and halted[-1]["channel_name"] == "trading-status" and not halted[-1].get("thread_ts")
    assert "We experienced a EMERGENCY incident" in halted[-1]["text"]
    # Crash recovery will not bring the bot back while this incident is open.
    assert journal_of(shared).deliberate_stop("sandbox").id == outcome.incident_id


def test_rejected_liquidation_closes_nothing_and_keeps_every_stop(shared: Path) -> None:
    set_up_book(shared)
    add_stops(shared)
    before = positions(shared)
    worker, result, paused = run_until_paused(shared)
    assert paused is not None
    resume(paused.id, {"approve": False, "note": "desk will hedge by hand"})
    worker.join(timeout=120)
    outcome = result["outcome"]
    assert positions(shared) == before
    incident = journal_of(shared).get(outcome.incident_id)
    liquidate = [a for a in incident.actions if a.step == "liquidate"]
    assert [(a.ok, a.dry_run) for a in liquidate] == [(False, False)]
    assert "rejected by a person (desk will hedge by hand)" in liquidate[0].description
    assert "2 position(s) left open (rejected by a person" in outcome.summary
    assert stops(shared) == {"ETH": 1, "BTC": 1}
    assert "long 0.05 ETH: protected by Stop Market" in outcome.summary


def test_dry_run_policy_only_says_what_it_would_close(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__LIQUIDATE", "dry-run")
    set_up_book(shared)
    # This account has traded enough for the exchange's dead man's switch: it is armed, then disarmed once no
    # bot process runs (the protective orders kept for the open positions must outlive it).
    control(shared, "accounts", {"address": account(shared), "cum_vlm": "2000000"})
    before = positions(shared)
    outcome = run_flow(shared, assume_yes=True)  # --yes never overrides dry-run
    assert positions(shared) == before
    incident = journal_of(shared).get(outcome.incident_id)
    switch = [(a.ok, a.description) for a in incident.actions if a.step == "dead-mans-switch"]
    assert len(switch) == 2 and switch[0][0] and "dead man's switch ARMED" in switch[0][1]
    assert switch[1] == (True, "disarmed once every bot process was verified stopped, so the kept protective "
                               "orders stay on the book")
    state = httpx.get(f"{exchange_url(shared)}/_sandbox/state", timeout=5).json()
    assert state["accounts"][account(shared)]["scheduled_cancel"] is None
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
