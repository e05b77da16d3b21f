"""Win-rate review end to end: a trading record made on the sandbox exchange, a real Prefect server.

Each test trades a fresh account on the sandbox's exchange with the official SDK, moving the mid with
`/_sandbox/set_mid` between entry and exit so that every trade wins or loses by a chosen amount. The
flow reads that account through a copy of the sandbox's runbook.toml; the bot keeps trading its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import eth_account
import httpx
import pytest
from hyperliquid.exchange import Exchange

from flows.win_rate_review import fills_of
from reports.trades import closed_trades, compute_metrics
from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.hyperliquid import HyperliquidInfo

SIZES = {"ETH": 0.02, "SOL": 0.3, "BTC": 0.001}
WIN, LOSS = 0.005, -0.01  # price move between entry and exit of a long


@pytest.fixture
def sandbox(tmp_path: Path, prefect_server) -> Iterator[Path]:
    directory = tmp_path / "sandbox"
    manager.up(directory)
    try:
        yield directory
    finally:
        manager.down(directory)


class Trader:
    """A fresh account on the sandbox exchange and a runbook.toml that points the sandbox bot's entry at it."""

    def __init__(self, directory: Path) -> None:
        settings = load_settings(directory / "runbook.toml")
        self.api = settings.bots["sandbox"].hyperliquid.api_url
        self.journal = Journal(settings.journal_url)
        master, agent = eth_account.Account.create(), eth_account.Account.create()
        httpx.post(f"{self.api}/_sandbox/accounts", timeout=5, json={
            "address": master.address, "balance": "10000", "agents": [agent.address]}).raise_for_status()
        self.address = master.address.lower()
        self.exchange = Exchange(agent, self.api, account_address=master.address, timeout=10)
        text = (directory / "runbook.toml").read_text()
        self.config = directory / "trader.toml"
        self.config.write_text(re.sub(r'(?m)^account_address = ".*"$', f'account_address = "{self.address}"', text))
        self.started = datetime.now(UTC) - timedelta(seconds=1)

    def pin(self, coin: str, px: float | None) -> None:
        body = {"coin": coin, "px": None if px is None else f"{px:.5g}"}
        httpx.post(f"{self.api}/_sandbox/set_mid", json=body, timeout=5).raise_for_status()

    def trade(self, coin: str, move: float) -> None:
        """Open a long at the current mid and close it `move` (a fraction) away from there."""
        mid = float(httpx.post(f"{self.api}/info", json={"type": "allMids"}, timeout=5).json()[coin])
        try:
            self.pin(coin, mid)
            opened = self.exchange.market_open(coin, True, SIZES[coin])
            assert opened["status"] == "ok" and "filled" in opened["response"]["data"]["statuses"][0], opened
            self.pin(coin, mid * (1 + move))
            closed = self.exchange.market_close(coin)
            assert closed["status"] == "ok" and "filled" in closed["response"]["data"]["statuses"][0], closed
        finally:
            self.pin(coin, None)

    def record(self, pattern: list[tuple[str, float]]) -> None:
        for coin, move in pattern:
            self.trade(coin, move)

    def fills(self) -> list[dict]:
        with HyperliquidInfo(self.api) as client:
            return client.fills(self.address, self.started)

    def review(self, **params):
        from flows.win_rate_review import win_rate_review

        return win_rate_review(config=str(self.config), **params)


def test_losing_record_escalates_with_the_losers_analysed(sandbox: Path) -> None:
    trader = Trader(sandbox)
    earlier = [("ETH", WIN), ("SOL", WIN), ("ETH", WIN), ("SOL", LOSS), ("ETH", WIN), ("SOL", WIN),
               ("ETH", WIN), ("SOL", WIN), ("ETH", LOSS), ("SOL", WIN), ("ETH", WIN), ("SOL", LOSS)]  # 9 of 12
    recent = [("ETH", WIN), ("SOL", LOSS), ("ETH", LOSS), ("SOL", LOSS), ("ETH", WIN), ("SOL", LOSS),
              ("ETH", LOSS), ("SOL", LOSS), ("SOL", LOSS), ("SOL", LOSS), ("SOL", LOSS), ("SOL", LOSS)]  # 2 of 12
    trader.record(earlier + recent)
    fills = trader.fills()
    trades = closed_trades(fills)
    assert len(trades) == 24
    expected = compute_metrics(fills_of(fills, trades.tail(12)))
    before = compute_metrics(fills_of(fills, trades.iloc[:12]))
    assert (expected.wins, expected.losses, before.wins) == (2, 10, 9)

    outcome = trader.review(n_trades=12)

    assert outcome.status == j.ESCALATED, outcome.summary
    assert trader.journal.get(outcome.incident_id).escalation_level == "L1"
    assert outcome.summary.startswith("strategy review needed: ")
    assert f"win rate {expected.win_rate * 100:.1f} % over the last 12 trades is below 40.0 %" in outcome.summary
    assert f"(previous 12: {before.win_rate * 100:.1f} %)" in outcome.summary
    assert f"profit factor {expected.profit_factor:.2f}" in outcome.summary
    report = Path(outcome.report_path).read_text()
    for title in ("Performance: last 12 trades vs the 12 before", "Losing trades by coin", "Losing trades by side",
                  "Losing trades by hour (UTC)", "Losing trades by holding time", "Last 10 losing trades",
                  "Strategy parameters (config.json)", "Recommendations"):
        assert f"### {title}" in report, title
    sol = next(line for line in report.splitlines() if line.startswith("| SOL | 8 | 8 | 0.0 % |"))
    assert "| 50.0 % |" in sol  # ETH, the rest, won half
    assert "| long | 12 | 10 | 16.7 % |" in report and "| < 1 min | 12 | 10 |" in report
    assert "| strategy.coins | [\"BTC\", \"ETH\", \"SOL\"] |" in report
    assert "Consider disabling SOL (strategy.coins): win rate 0.0 % over 8 trades vs 50.0 %" in report
    assert "tighten stops (risk_management.stop_loss_pct = 2.0) or widen targets" in report
    assert "The win rate fell from 75.0 % (previous 12 trades) to 16.7 %" in report
    assert "Consider disabling ETH" not in report


def test_healthy_record_is_a_false_positive(sandbox: Path) -> None:
    trader = Trader(sandbox)
    trader.record([("ETH" if i % 2 else "SOL", LOSS if i % 4 == 3 else WIN) for i in range(20)])  # 15 of 20
    expected = compute_metrics(trader.fills())
    assert (expected.trades, expected.wins) == (20, 15)

    outcome = trader.review()

    assert outcome.status == j.RESOLVED and outcome.outcome == j.FALSE_POSITIVE, outcome.summary
    assert f"win rate {expected.win_rate * 100:.1f} % over the last 20 trades is not below 40.0 %" in outcome.summary


def test_too_few_trades_to_judge_is_a_false_positive(sandbox: Path) -> None:
    trader = Trader(sandbox)
    trader.record([("ETH", LOSS)] * 3)
    outcome = trader.review()
    assert outcome.outcome == j.FALSE_POSITIVE and "only 3 closed trades" in outcome.summary


def test_rate_limiting_exchange_is_a_finding_not_a_crash(sandbox: Path) -> None:
    trader = Trader(sandbox)
    manager.fault(sandbox, "exchange-ratelimit")
    try:
        outcome = trader.review()
    finally:
        manager.fault(sandbox, "clear")
    assert outcome.status == j.ESCALATED and trader.journal.get(outcome.incident_id).escalation_level == "L1"
    assert "the exchange could not be read" in outcome.summary and "rate-limited by the exchange (HTTP 429)" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert "**The exchange could not be read:**" in report and "Strategy parameters (config.json)" in report
