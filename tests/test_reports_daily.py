"""Daily trading summary: figures from a hand-made day of fills, the PDF read back, the CLI, and the flow on
the real Prefect server against the sandbox exchange and Slack.

Most tests need no server and no sandbox; the flow tests share one sandbox for the module.
"""

from __future__ import annotations

import json
import time
import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from app.cli import app
from reports.daily import build_daily_report, day_bounds, exposure_of
from reports.pdf import write_daily
from reports.trades import compute_metrics, fills_frame

RUNBOOK = str(Path(sys.executable).with_name("runbook"))
DAY = date(2026, 3, 10)
BALANCE = Decimal("1000")


def at(day: date, hh: int, mm: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC).timestamp() * 1000)


def fill(coin: str, oid: int, time: int, side: str, px: str, sz: str, start: str, dir: str, pnl: str, fee: str,
         tid: int) -> dict:
    return {"coin": coin, "px": px, "sz": sz, "side": side, "time": time, "startPosition": start, "dir": dir,
            "closedPnl": pnl, "hash": f"0x{tid:064x}", "oid": oid, "crossed": True, "fee": fee, "tid": tid,
            "feeToken": "USDC"}


def day_fills() -> list[dict]:
    """The reported day D and two earlier days, with figures worked out by hand below."""
    d, prev, earlier = DAY, DAY - timedelta(days=1), DAY - timedelta(days=5)
    return [
        # D-5: ETH short round trip, trade P&L -5 - 0.05 = -5.05 (total with the opening fee: -5.10)
        fill("ETH", 1, at(earlier, 9), "A", "50", "1", "0", "Open Short", "0", "0.05", 1),
        fill("ETH", 2, at(earlier, 10), "B", "55", "1", "-1", "Close Short", "-5", "0.05", 2),
        # D-1: BTC long round trip, trade P&L 10 - 0.1 = 9.9 (total 9.8)
        fill("BTC", 3, at(prev, 10), "B", "100", "1", "0", "Open Long", "0", "0.1", 3),
        fill("BTC", 4, at(prev, 12), "A", "110", "1", "1", "Close Long", "10", "0.1", 4),
        # D: BTC 2 long 01:00-03:00 (+10 - 0.2 = +9.8), ETH 1 short 02:00-04:00 (-10 - 0.05 = -10.05),
        #    SOL 10 long 05:00-06:00 (0: break-even), BTC 1 long from 20:00, still open at midnight
        fill("BTC", 5, at(d, 1), "B", "100", "2", "0", "Open Long", "0", "0.2", 5),
        fill("ETH", 6, at(d, 2), "A", "50", "1", "0", "Open Short", "0", "0.05", 6),
        fill("BTC", 7, at(d, 3), "A", "105", "2", "2", "Close Long", "10", "0.2", 7),
        fill("ETH", 8, at(d, 4), "B", "60", "1", "-1", "Close Short", "-10", "0.05", 8),
        fill("SOL", 9, at(d, 5), "B", "20.5", "10", "0", "Open Long", "0", "0.1", 9),
        fill("SOL", 10, at(d, 6), "A", "20.5", "10", "10", "Close Long", "0", "0", 10),
        fill("BTC", 11, at(d, 20), "B", "100", "1", "0", "Open Long", "0", "0.1", 11),
    ]


def pdf_text(path: Path) -> str:
    """Every page's text with whitespace collapsed (table cells wrap where the column is narrow)."""
    return " ".join(" ".join(page.extract_text() for page in PdfReader(str(path)).pages).split())


def test_day_figures_match_hand_computation() -> None:
    r = build_daily_report(day_fills(), DAY, BALANCE, bot="alpha", now=datetime(2026, 3, 12, tzinfo=UTC))
    m = r.metrics
    assert (m.trades, m.wins, m.losses, m.breakevens) == (3, 1, 1, 1)
    assert m.win_rate == pytest.approx(1 / 3)
    assert m.profit_factor == pytest.approx(9.8 / 10.05)
    assert m.total_pnl == Decimal("-0.70") and m.fees == Decimal("0.70") and m.funding is None
    assert (m.best_trade, m.worst_trade) == (Decimal("9.8"), Decimal("-10.05"))
    # equity 1000 -> 1009.80 -> 999.75 -> 999.75: the fall from the peak is 10.05
    assert m.max_drawdown == Decimal("10.05") and m.max_drawdown_pct == pytest.approx(10.05 / 1009.8)
    assert not r.partial and r.start == datetime(2026, 3, 10, tzinfo=UTC)

    # comparisons: D-1 alone; the 7 and 30 days before D hold the D-5 and D-1 trades
    assert r.previous.metrics.trades == 1 and r.previous.metrics.total_pnl == Decimal("9.8")
    assert r.previous.metrics.equity_start == BALANCE - Decimal("9.9")
    for n in (7, 30):
        window = r.trailing[n]
        assert window.metrics.trades == 2 and window.metrics.total_pnl == Decimal("4.7")
        assert window.pnl_per_day == Decimal("4.7") / n and window.days == n

    # Sharpe / Sortino over the 30 days ending with D, from the equity worked out by hand
    # the start (1000 - 9.9 + 5.05), end of D-29 .. D-6, D-5 .. D-2, D-1, D
    equity = [995.15] + [995.15] * 24 + [990.1] * 4 + [1000.0, 999.75]
    returns = np.array(equity[1:]) / np.array(equity[:-1]) - 1
    assert len(returns) == 30
    assert r.risk.metrics.sharpe == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(365))
    downside = math.sqrt((np.minimum(returns, 0) ** 2).sum() / len(returns))
    assert r.risk.metrics.sortino == pytest.approx(returns.mean() / downside * math.sqrt(365))

    # exposure: open 01:00-04:00, 05:00-06:00 and 20:00-24:00 = 8 h of 24; peak gross BTC 200 + ETH 50 at
    # 02:00; the largest single position SOL 10 x 20.5 = 205 at 05:00
    e = r.exposure
    assert e.time_in_market == pytest.approx(8 / 24)
    assert e.peak_gross_usd == pytest.approx(250.0) and e.peak_gross_at == datetime(2026, 3, 10, 2, tzinfo=UTC)
    assert e.peak_leverage == pytest.approx(0.25)
    assert (e.largest_coin, e.largest_usd, e.largest_at) == ("SOL", pytest.approx(205.0),
                                                           datetime(2026, 3, 10, 5, tzinfo=UTC))
    best, worst = r.best_and_worst()
    assert [t["pnl"] for t in best] == [9.8] and [t["pnl"] for t in worst] == [-10.05]
    # the losing day with a positive week behind it, and a losing day: recommendations say so
    assert any(line.startswith("Losing day (profit factor 0.98)") for line in r.recommendations)
    assert any("broke a positive week" in line for line in r.recommendations)


def test_positions_open_before_the_day_count_from_midnight() -> None:
    d = DAY
    fills = [fill("BTC", 1, at(d, 6), "A", "100", "1", "1", "Close Long", "5", "0", 1)]  # opened the day before
    frame = fills_frame(fills)
    start, end = day_bounds(d)
    e = exposure_of(frame, start, end, BALANCE)
    assert e.time_in_market == pytest.approx(6 / 24)
    assert e.largest_usd == pytest.approx(100.0) and e.largest_at == start


def test_pdf_prints_the_computed_figures(tmp_path: Path) -> None:
    r = build_daily_report(day_fills(), DAY, BALANCE, bot="alpha", now=datetime(2026, 3, 12, tzinfo=UTC))
    path = write_daily(r, tmp_path)
    assert path.name == "daily-summary-alpha-2026-03-10.pdf" and path.read_bytes().startswith(b"%PDF")
    text = pdf_text(path)
    for expected in ("Daily trading summary — 2026-03-10 — alpha", "Trades 3", "Win rate 33.33 %",
                     "Profit factor 0.98", "Net P&L (USD) -0.70", "Fees (USD) 0.70", "Funding (USD) n/a",
                     "Best trade (USD) +9.80", "Worst trade (USD) -10.05", "Max drawdown 10.05 USD (1.00 %)",
                     "Time in market 33.3 %", "Largest position (USD) 205.00 SOL",
                     # the comparison table: day, previous day, 7 and 30 days
                     "Net P&L (USD) -0.70 +9.80 +4.70 +4.70", "Trades 3 1 2 2", "Win rate 33.33 % 100.00 % 50.00 % 50.00 %",
                     f"Sharpe (30 daily returns, ann. √365) {r.risk.metrics.sharpe:.2f}",
                     "Peak gross exposure 250.00 USD (0.25x the start balance) at 02:00 UTC",
                     "SOL 1 0.00 % n/a -0.10 0.10 n/a", "Definitions", "Profit factor Gross profit / gross loss"):
        assert expected in text, expected
    for line in r.recommendations:
        assert " ".join(line.split()) in text


def test_a_day_without_trades_still_renders(tmp_path: Path) -> None:
    r = build_daily_report(day_fills(), DAY + timedelta(days=1), BALANCE, bot="alpha",
                           now=datetime(2026, 3, 12, tzinfo=UTC))
    m = r.metrics
    assert m.trades == 0 and m.win_rate is None and m.profit_factor is None and m.best_trade is None
    assert m.total_pnl == 0 and r.exposure.time_in_market == 0
    assert r.previous.metrics.trades == 3  # D, now the previous day
    assert r.recommendations[0].startswith("No trades closed on this day")
    text = pdf_text(write_daily(r, tmp_path))
    for expected in ("Trades 0", "Win rate n/a", "Profit factor n/a", "Net P&L (USD) +0.00",
                     "no closed trades: equity unchanged", "No trades closed on this day"):
        assert expected in text, expected
    empty = build_daily_report([], DAY, BALANCE, now=datetime(2026, 3, 12, tzinfo=UTC))
    assert empty.metrics.trades == 0 and empty.risk.metrics.sharpe is None
    assert "Trades 0" in pdf_text(write_daily(empty, tmp_path))


def test_partial_day_and_time_zone() -> None:
    # "today" at 03:30: only the 01:00-03:00 BTC trade is in, and the report says it is partial
    r = build_daily_report(day_fills(), DAY, BALANCE, now=datetime(2026, 3, 10, 3, 30, tzinfo=UTC))
    assert r.partial and r.metrics.trades == 1 and r.metrics.total_pnl == Decimal("9.55")  # +10 - 0.2 - 0.05 - 0.2
    # New York's 2026-03-09 runs 04:00 UTC on the 9th to 04:00 UTC on the 10th (EDT since the 8th):
    # the D-1 BTC trade (10:00-12:00 UTC) and D's trades closing before 04:00 UTC
    ny = build_daily_report(day_fills(), DAY - timedelta(days=1), BALANCE, tz="America/New_York",
                            now=datetime(2026, 3, 12, tzinfo=UTC))
    assert ny.start == datetime(2026, 3, 9, 4, tzinfo=UTC) and ny.end == datetime(2026, 3, 10, 4, tzinfo=UTC)
    assert ny.metrics.trades == 2  # BTC on the 9th, BTC closed 03:00 UTC on the 10th (ETH closes at 04:00: next day)


def test_start_balance_and_the_day_a_scheduled_run_reports() -> None:
    from reports.daily import previous_day, start_balance_at

    history = [(datetime(2026, 3, 9, 12, tzinfo=UTC), Decimal("900")), (datetime(2026, 3, 10, tzinfo=UTC),
                                                                        Decimal("950")),
               (datetime(2026, 3, 10, 6, tzinfo=UTC), Decimal("990"))]
    assert start_balance_at(history, datetime(2026, 3, 10, tzinfo=UTC)) == Decimal("950")  # at or before
    assert start_balance_at(history, datetime(2026, 3, 9, tzinfo=UTC)) == Decimal("900")  # younger account: first
    assert start_balance_at([], datetime(2026, 3, 9, tzinfo=UTC)) is None
    # a run scheduled for 00:05 reports the day before, in the schedule's zone, however late it starts
    assert previous_day(datetime(2026, 3, 11, 0, 5, tzinfo=UTC)) == date(2026, 3, 10)
    assert previous_day(datetime(2026, 3, 11, 0, 5, tzinfo=UTC), "Asia/Tokyo") == date(2026, 3, 10)
    assert previous_day(datetime(2026, 3, 10, 23, 30, tzinfo=UTC), "Europe/Zurich") == date(2026, 3, 10)


def test_cli_from_a_file_of_fills(tmp_path: Path) -> None:
    source = tmp_path / "fills.json"
    source.write_text(json.dumps(day_fills()))
    out = tmp_path / "out"
    done = subprocess.run([RUNBOOK, "report", "daily", "--fills", str(source), "--start-balance", "1000",
                           "--date", "2026-03-10", "--out", str(out), "--bot", "alpha", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert Path(data["pdf"]).is_file() and Path(data["pdf"]).parent == out
    day = data["day"]
    assert (day["trades"], day["total_pnl"], day["fees"], day["best_trade"]) == (3, -0.7, 0.7, 9.8)
    assert data["previous_day"]["net_pnl"] == 9.8 and data["trailing_7d"]["trades"] == 2
    assert data["risk"]["exposure"]["largest_position"]["coin"] == "SOL" and data["recommendations"]
    assert "Net P&L (USD) -0.70" in pdf_text(Path(data["pdf"]))

    # bad usage and bad input: exit code 2, one clear line, no PDF (in-process: the same typer app)
    runner = CliRunner()
    no_balance = runner.invoke(app, ["report", "daily", "--fills", str(source), "--out", str(tmp_path / "x")])
    assert no_balance.exit_code == 2 and "--fills needs --start-balance" in no_balance.output
    bad = tmp_path / "bad.json"
    bad.write_text('[{"coin": "BTC"}]')
    broken = runner.invoke(app, ["report", "daily", "--fills", str(bad), "--start-balance", "1000", "--out",
                                 str(tmp_path / "x")])
    assert broken.exit_code == 2 and "fill at index 0: missing required field" in broken.output
    wrong_day = runner.invoke(app, ["report", "daily", "--fills", str(source), "--start-balance", "1000", "--date",
                                    "10/03/2026", "--out", str(tmp_path / "x")])
    assert wrong_day.exit_code == 2 and "--date takes YYYY-MM-DD" in wrong_day.output
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------------
# The flow on the real Prefect server, against the sandbox exchange and Slack (one sandbox for the module)


@pytest.fixture(scope="module")
def traded(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    """A sandbox with a closed trade on its account today: a round trip signed with the bot's agent key through
    the official SDK (the bot's own trades take half a minute to close)."""
    from sandbox import manager

    directory = tmp_path_factory.mktemp("daily-summary") / "sandbox"
    manager.up(directory, startup_seconds=0.5)
    try:
        round_trip(directory)
        yield directory
    finally:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30, at_exit=False)
        manager.down(directory)


def round_trip(directory: Path) -> None:
    import eth_account
    from hyperliquid.exchange import Exchange

    from runbook.settings import load_settings

    bot = load_settings(directory / "runbook.toml").bots["sandbox"]
    key = json.loads(bot.hyperliquid.key_file.read_text())["private_key"]
    exchange = Exchange(eth_account.Account.from_key(key), bot.hyperliquid.api_url,
                        account_address=bot.hyperliquid.account_address, timeout=10)
    # The bot trades ETH too: with a position of its own open, a 0.01 round trip would never close a trade.
    # Hold its trading (the `hang` fault) and close the whole ETH position, so the day has a closed trade.
    from sandbox import manager

    manager.fault(directory, "hang")
    try:
        time.sleep(1.5)
        for result in (exchange.market_open("ETH", True, 0.01), exchange.market_close("ETH")):
            assert result["status"] == "ok", result
    finally:
        manager.fault(directory, "clear")
    time.sleep(1.1)  # the report states its data time to the second: keep the round trip clear of that second


def exchange_fills(directory: Path, until: datetime | None = None) -> list[dict]:
    from runbook.settings import load_settings
    from tasks.hyperliquid import HyperliquidInfo

    account = load_settings(directory / "runbook.toml").bots["sandbox"].hyperliquid
    with HyperliquidInfo.from_account(account) as client:
        return client.fills(account.account_address, datetime.now(UTC) - timedelta(days=1), until)


def slack_log(directory: Path, method: str) -> list[dict]:
    path = directory / "slack" / "messages.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["method"] == method] if path.exists() else []


def test_flow_summarises_the_sandbox_day_posts_the_pdf_and_links_it(traded: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.daily_summary import daily_summary

    today = datetime.now(UTC).date()
    outcome = daily_summary(config=str(traded / "runbook.toml"), date=today.isoformat())
    assert not outcome.failures and len(outcome.pdfs) == 1
    pdf = Path(outcome.pdfs[0])
    assert pdf.parent == traded / "reports" / "daily" and pdf.is_file()
    figures = outcome.figures[0]
    assert figures["partial"] and figures["source"] == "exchange"

    # the same figures again from the exchange's fills up to the moment the flow read them
    until = datetime.fromisoformat(figures["window"]["data_until"].replace("Z", "+00:00"))
    fills = [f for f in exchange_fills(traded, until)
             if f["time"] >= int(day_bounds(today)[0].timestamp() * 1000)]
    again = compute_metrics(fills, start_balance=figures["start_balance"])
    assert again.trades >= 1 and figures["day"]["trades"] == again.trades
    assert figures["day"]["total_pnl"] == pytest.approx(float(again.total_pnl))
    assert figures["day"]["fees"] == pytest.approx(float(again.fees))
    text = pdf_text(pdf)
    assert f"Trades {again.trades}" in text and f"Net P&L (USD) {float(again.total_pnl):+,.2f}" in text

    # posted into the channel as a file with the summary, and linked from the artifact
    completed = slack_log(traded, "files.completeUploadExternal")
    assert completed and completed[-1]["ok"] and completed[-1]["channel_name"] == "trading-alerts"
    assert completed[-1]["files"][0]["name"] == pdf.name
    assert Path(completed[-1]["files"][0]["path"]).read_bytes() == pdf.read_bytes()
    assert f"{again.trades} trades" in completed[-1]["text"]
    assert outcome.slack[0]["delivered"] and outcome.slack[0]["permalink"]
    with get_client(sync_client=True) as client:
        mine = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["daily-summary-sandbox"])),
                                     sort=ArtifactSort.CREATED_DESC, limit=1)
    assert mine and str(pdf) in mine[0].data and "| Net P&L (USD) |" in mine[0].data


def test_a_failed_slack_post_does_not_fail_the_summary(traded: Path) -> None:
    """Through `runbook run` (the same flow on the same server), for yesterday: a day the sandbox did not trade."""
    from sandbox import manager

    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    manager.fault(traded, "slack-down")
    try:
        result = CliRunner().invoke(app, ["run", "daily-summary", "--config", str(traded / "runbook.toml"), "--param",
                                          f"date={yesterday}", "--json"])
    finally:
        manager.fault(traded, "clear")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert not outcome["failures"] and Path(outcome["pdfs"][0]).is_file()
    assert outcome["slack"][0]["delivered"] is False and "503" in outcome["slack"][0]["error"]
    assert outcome["figures"][0]["day"]["trades"] == 0 and not outcome["figures"][0]["partial"]
    assert "No trades closed on this day" in pdf_text(Path(outcome["pdfs"][0]))


def test_cli_reads_the_exchange_without_prefect(traded: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "daily", "--config", str(traded / "runbook.toml"), "--date",
                                      datetime.now(UTC).date().isoformat(), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "exchange" and data["day"]["trades"] >= 1 and Path(data["pdf"]).parent == tmp_path
    assert data["start_balance"] > 0 and data["partial"]
