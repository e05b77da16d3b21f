"""Insufficient balance: the recommendation arithmetic, then end to end on the real sandbox.

One sandbox serves the module (instead of conftest's per-test one, to stay fast): the `shared` fixture
clears faults, waits for the bot to trade again and closes the open incident after each test.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from flows.insufficient_balance import Sizing, recommend
from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from sandbox.manager import BOT_SECTIONS


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def health(directory: Path) -> dict:
    try:
        return httpx.get(load_settings(config_of(directory)).bots["sandbox"].health_url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def run_flow(directory: Path, **params):
    from flows.insufficient_balance import insufficient_balance

    return insufficient_balance(config=str(config_of(directory)), **params)


# --- the arithmetic, on its own ------------------------------------------------------------


def sizing(**overrides) -> Sizing:
    values = dict(base_size=50.0, max_positions=2, leverage=3.0, leverage_configured=True, margin_buffer=0.5,
                  bot_min_balance=1000.0, watch_min_balance=100.0)
    return Sizing(**{**values, **overrides})


def test_ample_balance_only_suggests_lower_leverage() -> None:
    # full book: 2 x 50 USD at 3x = 33.33 margin, x1.5 buffer = 50 USD; 400 USD carries that even at 1x
    assert sizing().funds_needed == pytest.approx(50.0)
    assert recommend(400.0, sizing(bot_min_balance=None)) == [
        "lower leverage to 1x (from 3x): the balance carries the sizing with less liquidation risk"]
    # the bot's own floor (1000 USD) counts: below it the bot halts, whatever the sizing
    assert recommend(400.0, sizing())[0].startswith(
        "add 600.00 USDC (to reach 1,000.00 USD, set by the bot's own floor")
    assert recommend(5000.0, sizing(), margin_usage=0.85)[-1] == \
        "reduce open positions: margin usage is 85% of the account value"


def test_recommendations_with_numbers() -> None:
    s = sizing(bot_min_balance=None, watch_min_balance=None, base_size=200.0, max_positions=3)
    # needs 3 x 200 / 3 x 1.5 = 300; with 120 USD:
    advice = recommend(120.0, s)
    assert advice[0] == "add 180.00 USDC (to reach 300.00 USD, set by 3 x 200.00 USD at 3x plus a 50% margin buffer)"
    assert advice[1].startswith("reduce base size to 80.00 USD (from 200.00)")  # 120 x 3 / (3 x 1.5)
    assert advice[2].startswith("do not raise leverage: the sizing would need 8x")  # ceil(900 / 120)
    assert recommend(300.0, s) == []  # exactly enough: nothing to say
    assert recommend(200.0, s)[-1].startswith("or raise leverage to 5x (from 3x)")  # ceil(900 / 200) = 5


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("balance") / "sandbox"
    manager.up(directory, startup_seconds=0.5)
    try:
        yield directory
    finally:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30, at_exit=False)  # see tests/test_daily_loss_limit.py
        manager.down(directory)


@pytest.fixture
def shared(module_sandbox: Path) -> Iterator[Path]:
    """The module's sandbox, put back as it was after the test."""
    yield module_sandbox
    manager.fault(module_sandbox, "clear")
    # The bot resets its balance breaker by itself once the exchange shows the balance again.
    wait_for(lambda: health(module_sandbox).get("status") in ("healthy", "degraded"), 30, "the bot to trade again")
    journal = journal_of(module_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def test_normal_balance_is_a_false_positive(shared: Path) -> None:
    outcome = run_flow(shared)
    assert outcome.outcome == j.FALSE_POSITIVE and outcome.status == j.RESOLVED, outcome.summary
    assert "is enough to trade" in outcome.summary
    assert journal_of(shared).get(outcome.incident_id).actions == []  # read-only
    report = Path(outcome.report_path).read_text()
    assert "Balance and margin" in report and "Position sizing against the balance" in report


def test_low_balance_escalates_with_recommendations(shared: Path) -> None:
    manager.fault(shared, "low-balance")  # the exchange reports 5 USD
    wait_for(lambda: health(shared).get("status") == "stopped", 30, "the insufficient-balance breaker")

    outcome = run_flow(shared)

    assert outcome.status == j.ESCALATED, outcome.summary
    incident = journal_of(shared).get(outcome.incident_id)
    assert incident.escalation_level == "L1" and incident.actions == []
    # Recomputed from the sandbox's config: 2 positions x 50 USD at 3x, 50 % buffer, bot floor 1000 USD.
    sizing_ = BOT_SECTIONS["position_sizing"]
    base, positions = sizing_["base_size_usd"], sizing_["max_positions"]
    leverage = BOT_SECTIONS["risk_management"]["leverage"]
    floor = BOT_SECTIONS["risk_limits"]["min_balance_usd"]
    balance, buffer = 5.0, 0.5
    required = max(positions * base / leverage * (1 + buffer), floor, 100.0)  # 100: watch.min_balance_usd
    add = required - balance
    size = math.floor(balance * leverage / (positions * (1 + buffer)) * 100) / 100
    lev = math.ceil(positions * base * (1 + buffer) / balance)
    assert (add, size, lev) == (995.0, 5.0, 30)
    assert f"add {add:,.2f} USDC (to reach {required:,.2f} USD" in outcome.summary
    assert f"reduce base size to {size:,.2f} USD (from {base:,.2f})" in outcome.summary
    assert "below Hyperliquid's 10 USD minimum order" in outcome.summary
    assert f"do not raise leverage: the sizing would need {lev}x" in outcome.summary
    assert "Insufficient balance: 5.00 USD on the exchange" in outcome.summary
    assert "the circuit breaker stopped trading" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert "TRIPPED: trading stopped (insufficient balance)" in report
    assert "| Shortfall | 995.00 |" in report and "Recent losses (last 24 h)" in report


def test_exchange_rate_limited_is_a_clear_finding(shared: Path) -> None:
    manager.fault(shared, "exchange-ratelimit")
    outcome = run_flow(shared)
    assert outcome.status == j.ESCALATED, outcome.summary
    assert "Could not confirm the balance on the exchange" in outcome.summary
    assert "clearinghouseState: rate-limited by the exchange (HTTP 429)" in outcome.summary
    # the last balance the bot saw (about the 10 000 USD the sandbox funds), flagged as possibly stale
    reported = re.search(r"The bot reports ([\d,.]+) USD \(may be stale\)", outcome.summary)
    assert reported is not None and float(reported.group(1).replace(",", "")) > 9000
