"""Trade analytics (reports/trades.py): fills -> closed trades -> the metrics of trading-metrics.md.

The expected numbers are worked out by hand (arithmetic in the comments), not by running the code.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reports.trades import (
    FillsError, analyze_trades_command, closed_trades, compute_metrics, fills_frame, format_metrics_text,
    load_fills,
)

FIXTURES = Path(__file__).parent / "fixtures"
MIXED = FIXTURES / "fills_mixed.json"
RESPONSE = FIXTURES / "fills_response.json"
D1 = 1_709_251_200_000  # 2024-03-01T00:00:00Z in ms
H = 3_600_000
DAY = 24 * H

JSON_KEYS = {
    "trades", "wins", "losses", "win_rate", "profit_factor", "profit_factor_infinite", "total_pnl", "fees",
    "best_trade", "worst_trade", "avg_win", "avg_loss", "expectancy", "max_drawdown", "max_drawdown_pct",
    "sharpe", "sortino", "longest_winning_streak", "longest_losing_streak", "by_coin",
}
EXTRA_KEYS = {"funding", "equity_start", "equity_end", "daily_equity", "period_start", "period_end", "breakevens"}


def fill(coin: str, oid: int, time: int, dir: str, pnl: str = "0.0", fee: str = "0.0", *, px: str = "100.0",
         sz: str = "1.0", side: str | None = None, start: str | None = "0.0", tid: int | None = None,
         **extra: object) -> dict:
    f = {"coin": coin, "px": px, "sz": sz, "time": time, "dir": dir, "closedPnl": pnl, "fee": fee, "oid": oid,
         "hash": f"0x{oid:064x}", "crossed": True, "feeToken": "USDC"}
    if side is None:
        side = "A" if dir in ("Close Long", "Open Short", "Long > Short") else "B"
    f["side"] = side
    if start is not None:
        f["startPosition"] = start
    f["tid"] = tid if tid is not None else oid * 1000 + time % 1000
    f.update(extra)
    return f


def round_trip(coin: str, oid: int, open_ms: int, close_ms: int, pnl: str, close_fee: str = "0.0",
               open_fee: str = "0.0") -> list[dict]:
    return [fill(coin, oid, open_ms, "Open Long", fee=open_fee, start="0.0"),
            fill(coin, oid + 1, close_ms, "Close Long", pnl, close_fee, start="1.0")]


# ------------------------------------------------------------------------------------------------------
# The main fixture: BTC and ETH over three UTC days (2024-03-01..03), newest first as the API answers.
#
#   trade  coin  oid  close (UTC)         fills                       PnL = closedPnl - fee
#   T1     BTC   101  03-01 10:00:00.5    2 partial Close Long        50 + 50 - (1.20 + 1.20) =    97.60
#   T2     ETH   201  03-01 15:00         Close Short                 -100 - 1.55             =  -101.55
#   T3     BTC   103  03-02 03:00         flip Long > Short           -50 - 4.92              =   -54.92
#   T4     BTC   104  03-02 09:00         Close Short                 2.00 - 2.00             =     0.00
#   T5     ETH   203  03-02 20:00         Close Long                  100 - 3.05              =    96.95
#   T6     BTC   106  03-03 05:00         Close Long                  30 - 1.00               =    29.00
#   T7     ETH   205  03-03 06:00         liquidation (Close Long)    -1000 - 7.00            = -1007.00
#   opening fills (not trades): fees 2.40 + 1.50 + 2.48 + (-0.30 rebate) + 1.50 + 1.00 = 8.58
# ------------------------------------------------------------------------------------------------------


def test_mixed_fixture_metrics_match_hand_computation() -> None:
    m = compute_metrics(load_fills(MIXED), start_balance=10000)
    assert (m.trades, m.wins, m.losses, m.breakevens) == (7, 3, 3, 1)
    assert m.win_rate == pytest.approx(3 / 7)  # break-even in the denominator, not in the wins
    # fees: trades 1.20+1.20+1.55+4.92+2.00+3.05+1.00+7.00 = 21.92, opens 8.58 -> 30.50
    assert m.fees == Decimal("30.50")
    # total_pnl = sum closedPnl - sum fee = (50+50-100-50+2+100+30-1000) - 30.50 = -918 - 30.50
    assert m.total_pnl == Decimal("-948.50")
    # = sum of trade PnLs (-939.92) - opening fees (8.58)
    assert m.trade_pnl == Decimal("-939.92")
    # GP = 97.60 + 96.95 + 29.00 = 223.55; GL = 101.55 + 54.92 + 1007.00 = 1163.47
    assert m.profit_factor == pytest.approx(223.55 / 1163.47)
    assert m.avg_win == Decimal("223.55") / 3  # 74.5166...
    assert m.avg_loss == Decimal("1163.47") / 3  # 387.8233... (a positive number)
    assert m.expectancy == Decimal("-939.92") / 7  # (GP - GL) / n = -134.2742...
    # the same as winrate * avg_win - lossrate * avg_loss
    assert float(m.expectancy) == pytest.approx(3 / 7 * 223.55 / 3 - 3 / 7 * 1163.47 / 3)
    assert (m.best_trade, m.worst_trade) == (Decimal("97.60"), Decimal("-1007.00"))
    # signs in close order: + - - 0 + + -  -> 2 wins (T5, T6), 2 losses (T2, T3); the 0 breaks a streak
    assert (m.longest_winning_streak, m.longest_losing_streak) == (2, 2)
    # equity moves by closedPnl - fee of every fill at its time (rule 9), opening fees included:
    #   d1: 10000 -2.40 +48.80 +48.80 -1.50 -101.55            -> 9997.60, 10046.40, 10095.20, 10093.70, 9992.15
    #   d2: -2.48 -54.92 +0.00 +0.30 (rebate) +96.95           -> 9989.67, 9934.75, 9934.75, 9935.05, 10032.00
    #   d3: -1.00 -1.50 +29.00 -1007.00                        -> 10031.00, 10029.50, 10058.50, 9051.50
    # peak 10095.20 (after T1's second fill); max DD = 10095.20 - 9051.50 = 1043.70
    assert m.max_drawdown == Decimal("1043.70")
    assert m.max_drawdown_pct == pytest.approx(1043.70 / 10095.20)
    assert m.equity_start == Decimal("10000") and m.equity_end == Decimal("9051.50")
    assert m.equity_end - m.equity_start == m.total_pnl
    assert [(d.isoformat(), e) for d, e in m.daily_equity] == [
        ("2024-03-01", Decimal("9992.15")), ("2024-03-02", Decimal("10032.00")), ("2024-03-03", Decimal("9051.50"))]
    # returns from the start balance: 9992.15/10000-1, 10032.00/9992.15-1, 9051.50/10032.00-1
    r = [9992.15 / 10000 - 1, 10032.00 / 9992.15 - 1, 9051.50 / 10032.00 - 1]
    assert r[0] == pytest.approx(-0.000785) and r[1] == pytest.approx(39.85 / 9992.15)
    assert m.sharpe == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(365))
    downside = math.sqrt((r[0] ** 2 + r[2] ** 2) / 3)  # min(r, 0)^2 over all three days
    assert m.sortino == pytest.approx(statistics.mean(r) / downside * math.sqrt(365))
    assert m.sharpe == pytest.approx(-10.4877, abs=1e-4) and m.sortino == pytest.approx(-10.6684, abs=1e-4)
    assert m.period_start.isoformat() == "2024-03-01T08:00:00+00:00"
    assert m.period_end.isoformat() == "2024-03-03T06:00:00+00:00"
    assert m.funding is None

    btc, eth = m.by_coin["BTC"], m.by_coin["ETH"]
    # BTC: closedPnl 50+50-50+2+30 = 82; fees 2.40+1.20+1.20+2.48+4.92+2.00+1.00+1.00 = 16.20
    assert (btc.trades, btc.wins, btc.losses, btc.breakevens) == (4, 2, 1, 1)
    assert (btc.total_pnl, btc.fees) == (Decimal("65.80"), Decimal("16.20"))
    assert btc.profit_factor == pytest.approx((97.60 + 29.00) / 54.92)
    assert btc.win_rate == 0.5
    # ETH: closedPnl -100+100-1000 = -1000; fees 1.50+1.55-0.30+3.05+1.50+7.00 = 14.30
    assert (eth.trades, eth.wins, eth.losses) == (3, 1, 2)
    assert (eth.total_pnl, eth.fees) == (Decimal("-1014.30"), Decimal("14.30"))
    assert eth.avg_loss == Decimal("554.275")  # (101.55 + 1007.00) / 2
    assert btc.total_pnl + eth.total_pnl == m.total_pnl


def test_mixed_fixture_trades_partial_flip_liquidation_holding() -> None:
    trades = closed_trades(fills_frame(load_fills(MIXED)))
    assert list(trades["oid"]) == [101, 201, 103, 104, 203, 106, 205]  # close order
    t1 = trades.iloc[0]  # one order, two partial fills
    assert (t1["fills"], t1["size"], t1["avg_exit_px"]) == (2, pytest.approx(0.1), pytest.approx(61000.0))
    assert t1["pnl"] == pytest.approx(97.60) and t1["position"] == "long"
    assert t1["holding_seconds"] == pytest.approx(7200.5)  # opened 08:00, last fill 10:00:00.500
    flip = trades.iloc[2]
    assert flip["dir"] == "Long > Short" and flip["position"] == "long"
    assert flip["holding_seconds"] == 2 * 3600  # long opened 01:00, flipped 03:00
    after_flip = trades.iloc[3]
    assert after_flip["position"] == "short" and after_flip["pnl"] == 0.0
    assert after_flip["holding_seconds"] == 6 * 3600  # the short was opened by the flip at 03:00
    liq = trades.iloc[6]
    assert bool(liq["is_liquidation"]) and liq["pnl"] == pytest.approx(-1007.0)
    assert trades["is_liquidation"].sum() == 1
    assert str(trades.iloc[-1]["closed_at"]) == "2024-03-03 06:00:00+00:00"


def test_cli_json_has_the_required_keys_and_no_nan() -> None:
    code, out = analyze_trades_command(str(MIXED), 10000.0, True)
    assert code == 0
    data = json.loads(out)
    assert JSON_KEYS <= set(data) and set(data) == JSON_KEYS | EXTRA_KEYS
    assert data["total_pnl"] == -948.5 and data["fees"] == 30.5 and data["max_drawdown"] == 1043.7
    assert data["profit_factor"] == pytest.approx(0.192141, abs=1e-6) and data["profit_factor_infinite"] is False
    assert data["by_coin"]["BTC"]["total_pnl"] == 65.8
    assert data["daily_equity"][0] == {"date": "2024-03-01", "equity": 9992.15}
    assert data["period_start"] == "2024-03-01T08:00:00.000Z"


def test_cli_text_is_a_table() -> None:
    code, out = analyze_trades_command(str(MIXED), 10000.0, False)
    assert code == 0
    assert "Win rate" in out and "42.86 %" in out and "-948.50" in out and "1,043.70" in out
    assert "By coin" in out and "BTC" in out and "ETH" in out


# ------------------------------------------------------------------------------------------------------
# Edge cases of trading-metrics.md C.2


def _assert_no_trade_shape(m, flat: bool = True) -> None:
    assert (m.trades, m.wins, m.losses, m.breakevens) == (0, 0, 0, 0)
    assert m.win_rate is None and m.profit_factor is None and m.expectancy is None
    assert m.best_trade is None and m.worst_trade is None and m.avg_win is None and m.avg_loss is None
    assert (m.longest_winning_streak, m.longest_losing_streak) == (0, 0)
    if flat:  # no fill moved the equity
        assert m.sharpe is None and m.sortino is None
        assert m.max_drawdown == 0 and m.max_drawdown_pct == 0.0
    json.dumps(m.to_dict(), allow_nan=False)
    assert "Trades" in format_metrics_text(m)


def test_no_fills() -> None:
    m = compute_metrics([])
    _assert_no_trade_shape(m)
    assert m.total_pnl == 0 and m.fees == 0 and m.daily_equity == [] and m.by_coin == {}
    assert m.period_start is None and m.to_dict()["period_start"] is None


def test_only_opening_fills_are_no_trades() -> None:
    fills = [fill("BTC", 1, D1 + H, "Open Long", fee="1.25"), fill("ETH", 2, D1 + DAY + H, "Open Short", fee="0.75")]
    m = compute_metrics(fills, start_balance=5000)
    _assert_no_trade_shape(m, flat=False)
    assert m.fees == Decimal("2.00") and m.total_pnl == Decimal("-2.00")  # opening fees count in total_pnl
    # rule 9: a fee on an opening fill moves equity the day it is paid, though it is in no trade
    assert [e for _, e in m.daily_equity] == [Decimal("4998.75"), Decimal("4998.00")]
    assert m.equity_end - m.equity_start == m.total_pnl == m.trade_pnl - Decimal("2.00")
    assert m.max_drawdown == Decimal("2.00") and m.max_drawdown_pct == pytest.approx(2.00 / 5000)
    r = [4998.75 / 5000 - 1, 4998.00 / 4998.75 - 1]  # both days lose: Sharpe defined, Sortino over both
    assert m.sharpe == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(365))
    assert m.sortino == pytest.approx(statistics.mean(r) / math.sqrt((r[0] ** 2 + r[1] ** 2) / 2) * math.sqrt(365))
    assert m.by_coin["BTC"].trades == 0 and m.by_coin["BTC"].fees == Decimal("1.25")


def test_no_losers_profit_factor_infinite() -> None:
    # two winners on two days: +10 - 1 = 9 and +20 - 1 = 19, plus a break-even 5 - 5 = 0
    fills = (round_trip("BTC", 10, D1 + H, D1 + 2 * H, "10.0", "1.0")
             + round_trip("BTC", 20, D1 + DAY + H, D1 + DAY + 2 * H, "20.0", "1.0")
             + round_trip("ETH", 30, D1 + DAY + 3 * H, D1 + DAY + 4 * H, "5.0", "5.0"))
    m = compute_metrics(fills, start_balance=1000)
    assert (m.trades, m.wins, m.losses, m.breakevens) == (3, 2, 0, 1)
    assert m.profit_factor == math.inf and m.profit_factor_infinite
    assert m.avg_loss is None and m.avg_win == Decimal("14.0")  # (9 + 19) / 2
    assert m.max_drawdown == 0 and m.max_drawdown_pct == 0.0
    # returns 9/1000 and 19/1009: no negative day -> downside deviation 0 -> no Sortino
    assert m.sortino is None
    r = [9 / 1000, 19 / 1009]
    assert m.sharpe == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(365))
    data = m.to_dict()
    assert data["profit_factor"] is None and data["profit_factor_infinite"] is True
    assert data["by_coin"]["BTC"]["profit_factor_infinite"] is True
    assert data["by_coin"]["ETH"]["profit_factor"] is None and data["by_coin"]["ETH"]["profit_factor_infinite"] is False
    json.dumps(data, allow_nan=False)
    assert "∞" in format_metrics_text(m)
    assert m.longest_winning_streak == 2 and m.longest_losing_streak == 0


def test_all_losers() -> None:
    # -5 - 0.5 = -5.5, -3 - 0.5 = -3.5, -1 - 0.5 = -1.5
    fills = (round_trip("SOL", 10, D1 + H, D1 + 2 * H, "-5.0", "0.5")
             + round_trip("SOL", 20, D1 + 3 * H, D1 + 4 * H, "-3.0", "0.5")
             + round_trip("SOL", 30, D1 + DAY + 3 * H, D1 + DAY + 4 * H, "-1.0", "0.5"))
    m = compute_metrics(fills, start_balance=100)
    assert (m.trades, m.wins, m.losses) == (3, 0, 3)
    assert m.profit_factor == 0.0 and not m.profit_factor_infinite and m.win_rate == 0.0
    assert m.avg_win is None and m.avg_loss == Decimal("10.5") / 3
    assert m.longest_losing_streak == 3 and m.longest_winning_streak == 0
    # equity 100, 94.5, 91.0, 89.5: DD 10.5 = 10.5 % of the peak 100
    assert m.max_drawdown == Decimal("10.5") and m.max_drawdown_pct == pytest.approx(0.105)
    # daily: 91.0, 89.5 -> returns -0.09, -1.5/91; Sortino over both days
    r = [-0.09, 89.5 / 91 - 1]
    assert m.sortino == pytest.approx(statistics.mean(r) / math.sqrt((r[0] ** 2 + r[1] ** 2) / 2) * math.sqrt(365))


def test_one_day_has_no_sharpe_or_sortino() -> None:
    fills = (round_trip("BTC", 10, D1 + H, D1 + 2 * H, "10.0")
             + round_trip("BTC", 20, D1 + 3 * H, D1 + 4 * H, "-4.0"))
    m = compute_metrics(fills)
    assert m.trades == 2 and len(m.daily_equity) == 1  # one return only
    assert m.sharpe is None and m.sortino is None
    assert m.to_dict()["sharpe"] is None


def test_all_break_even_profit_factor_none() -> None:
    m = compute_metrics(round_trip("BTC", 10, D1 + H, D1 + 2 * H, "1.5", "1.5"))
    assert (m.trades, m.breakevens) == (1, 1) and m.win_rate == 0.0
    assert m.profit_factor is None and not m.profit_factor_infinite
    assert m.expectancy == 0


def test_break_even_is_exact_decimal() -> None:
    # 0.3 - (0.1 + 0.2) is 0 in decimals but 5.5e-17 in floats: must be a break-even, not a loss
    fills = [fill("ETH", 7, D1 + H, "Close Long", "0.15", "0.1", start="2.0", tid=1),
             fill("ETH", 7, D1 + H + 1, "Close Long", "0.15", "0.2", start="1.0", tid=2)]
    m = compute_metrics(fills)
    assert (m.trades, m.wins, m.losses, m.breakevens) == (1, 0, 0, 1)
    assert m.total_pnl == 0 and m.best_trade == 0


def test_two_days_gives_two_returns() -> None:
    fills = (round_trip("BTC", 10, D1 + H, D1 + 2 * H, "10.0")
             + round_trip("BTC", 20, D1 + DAY + H, D1 + DAY + 2 * H, "-4.0"))
    m = compute_metrics(fills, start_balance=1000)
    r = [10 / 1000, 1006 / 1010 - 1]
    assert m.sharpe == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(365))


def test_days_without_fills_inside_the_window_are_kept() -> None:
    fills = (round_trip("BTC", 10, D1 + H, D1 + 2 * H, "10.0")
             + round_trip("BTC", 20, D1 + 3 * DAY + H, D1 + 3 * DAY + 2 * H, "5.0"))
    m = compute_metrics(fills, start_balance=1000)
    assert [(d.isoformat(), e) for d, e in m.daily_equity] == [
        ("2024-03-01", Decimal("1010.0")), ("2024-03-02", Decimal("1010.0")),
        ("2024-03-03", Decimal("1010.0")), ("2024-03-04", Decimal("1015.0"))]


# ------------------------------------------------------------------------------------------------------
# trading-metrics.md rule 10: trades closed at one timestamp are ordered by tid, else oid, else input position


def _tied(tids: bool, same_oid: bool = False) -> list[dict]:
    """A win at 01:00, then a loss (oid 3) and a win (oid 5) closed in the same millisecond at 02:00 -- the
    win has the smaller tid -- then a loss at 03:00. Listed newest first, as the API answers."""
    t = D1 + 2 * H
    loss_oid, win_oid = (7, 7) if same_oid else (3, 5)
    out = [
        fill("BTC", 9, D1 + 3 * H, "Close Long", "-2.0", start="1.0", tid=900 if tids else None),
        fill("ETH", loss_oid, t, "Close Long", "-1.0", start="1.0", tid=20 if tids else None, px="3000.0"),
        fill("BTC", win_oid, t, "Close Long", "4.0", start="1.0", tid=10 if tids else None),
        fill("BTC", 1, D1 + H, "Close Long", "3.0", start="1.0", tid=100 if tids else None),
    ]
    if not tids:
        for f in out:
            del f["tid"]
    return out


def test_ties_are_ordered_by_tid_first() -> None:
    # by tid: win(10) before loss(20) -> + + - -: streaks 2 and 2 (by oid it would be + - + -: 1 and 1)
    trades = closed_trades(_tied(tids=True))
    assert [(c, o) for c, o in zip(trades["coin"], trades["oid"])] == [("BTC", 1), ("BTC", 5), ("ETH", 3), ("BTC", 9)]
    m = compute_metrics(_tied(tids=True), start_balance=100)
    assert (m.longest_winning_streak, m.longest_losing_streak) == (2, 2)


def test_ties_without_tid_are_ordered_by_oid_then_input_position() -> None:
    # no tid: oid 3 (loss) before oid 5 (win) -> + - + -
    trades = closed_trades(_tied(tids=False))
    assert list(trades["oid"]) == [1, 3, 5, 9]
    m = compute_metrics(_tied(tids=False), start_balance=100)
    assert (m.longest_winning_streak, m.longest_losing_streak) == (1, 1)
    # the same oid on two coins, no tid: their position in the input decides (the loss is listed first)
    trades = closed_trades(_tied(tids=False, same_oid=True))
    assert [(c, o) for c, o in zip(trades["coin"], trades["oid"])] == [("BTC", 1), ("ETH", 7), ("BTC", 7), ("BTC", 9)]
    reversed_input = _tied(tids=False, same_oid=True)
    reversed_input[1], reversed_input[2] = reversed_input[2], reversed_input[1]
    assert list(closed_trades(reversed_input)["coin"]) == ["BTC", "BTC", "ETH", "BTC"]


# ------------------------------------------------------------------------------------------------------
# trading-metrics.md rule 9 over every fixture of the suite: equity_end - equity_start == total_pnl


def _fixture_fill_lists() -> list[Path]:
    """Every JSON file under tests/fixtures that holds a list of fills."""
    found = []
    for path in sorted(FIXTURES.rglob("*.json")):
        try:
            fills = load_fills(path)
        except FillsError:
            continue
        if fills:
            found.append(path)
    return found


@pytest.mark.parametrize("path", _fixture_fill_lists(), ids=lambda p: p.name)
def test_every_fee_reaches_equity_on_every_fixture(path: Path) -> None:
    fills = load_fills(path)
    m = compute_metrics(fills, start_balance=10000)
    assert m.equity_end - m.equity_start == m.total_pnl
    assert m.daily_equity[-1][1] == m.equity_end
    # what the fees of orders that close nothing add: the difference between the curve and the trade list
    trades = closed_trades(fills)
    in_trades = {(c, int(o)) for c, o in zip(trades["coin"], trades["oid"])}
    outside = sum((Decimal(str(f["closedPnl"])) - Decimal(str(f["fee"])) for f in fills
                   if (f["coin"], int(f["oid"])) not in in_trades), Decimal(0))
    assert m.total_pnl - m.trade_pnl == outside


def test_the_fixtures_include_opening_fees() -> None:
    # the invariant above is only worth something if some fixture pays fees outside any trade
    assert len(_fixture_fill_lists()) >= 2
    assert any(compute_metrics(load_fills(p)).total_pnl != compute_metrics(load_fills(p)).trade_pnl
               for p in _fixture_fill_lists())


# ------------------------------------------------------------------------------------------------------
# Classification of fills


def test_liquidation_by_dir_only_and_liquidator_fill_is_not_a_trade() -> None:
    fills = [
        fill("ETH", 1, D1 + H, "Open Short", start="0.0"),
        fill("ETH", 2, D1 + 2 * H, "Liquidated Isolated Short", "-80.0", "0.4", side="B", start="-1.0"),
        # the liquidator's side of some liquidation: an opening fill carrying a liquidation object
        fill("BTC", 3, D1 + 3 * H, "Open Long", fee="0.1", start="0.0",
             liquidation={"liquidatedUser": "0xabc", "markPx": "60000", "method": "backstop"}),
    ]
    trades = closed_trades(fills_frame(fills))
    assert list(trades["oid"]) == [2]
    assert bool(trades.iloc[0]["is_liquidation"]) and trades.iloc[0]["position"] == "short"
    m = compute_metrics(fills)
    assert m.worst_trade == Decimal("-80.4") and m.total_pnl == Decimal("-80.5")


def test_short_to_long_flip_and_forced_closes() -> None:
    fills = [
        fill("SOL", 1, D1 + H, "Short > Long", "12.0", "0.5", side="B", start="-3.0"),
        fill("SOL", 2, D1 + 2 * H, "Auto-Deleveraging", "4.0", "0.0", side="A", start="3.0"),
    ]
    trades = closed_trades(fills)
    assert list(trades["position"]) == ["short", "long"]
    assert list(trades["pnl"]) == [11.5, 4.0]


def test_spot_fills_count_in_total_pnl_but_are_not_trades() -> None:
    fills = [fill("@107", 1, D1 + H, "Buy", fee="0.3"), fill("@107", 2, D1 + 2 * H, "Sell", "25.0", "0.3", side="A")]
    m = compute_metrics(fills)
    assert m.trades == 0 and m.total_pnl == Decimal("24.4") and m.equity_end == m.equity_start + Decimal("24.4")


def test_funding_is_reported_apart() -> None:
    funding = [
        {"time": D1 + H, "hash": "0x0", "delta": {"type": "funding", "coin": "ETH", "usdc": " -3.625312",
                                                   "szi": "49.1477", "fundingRate": "0.0000417", "nSamples": None}},
        {"time": D1 + 2 * H, "hash": "0x0", "delta": {"type": "funding", "coin": "BTC", "usdc": "1.000001"}},
    ]
    m = compute_metrics(load_fills(MIXED), funding=funding)
    assert m.funding == Decimal("-2.625311")  # -3.625312 + 1.000001
    assert m.total_pnl == Decimal("-948.50")  # unchanged by funding
    assert m.by_coin["ETH"].funding == Decimal("-3.625312") and m.by_coin["BTC"].funding == Decimal("1.000001")
    assert m.to_dict()["funding"] == pytest.approx(-2.625311)
    with pytest.raises(FillsError, match="funding entry at index 0"):
        compute_metrics([], funding=[{"delta": {"type": "funding", "usdc": "x"}}])


def test_holding_time_unknown_without_start_position_or_open() -> None:
    fills = [fill("BTC", 1, D1 + H, "Close Long", "1.0", start="1.0"),  # opened before the window
             fill("BTC", 2, D1 + 2 * H, "Open Long", start=None),
             fill("BTC", 3, D1 + 3 * H, "Close Long", "1.0", start=None)]
    trades = closed_trades(fills)
    assert trades["holding_seconds"].isna().all()


# ------------------------------------------------------------------------------------------------------
# Input


def test_whole_response_object_and_recorded_file_shape() -> None:
    m = compute_metrics(load_fills(RESPONSE), start_balance=1000)
    # SOL: close 5.0 - 0.75 = 4.25 (the trade); total 5.0 - 1.50 = 3.50
    assert m.trades == 1 and m.best_trade == Decimal("4.25") and m.total_pnl == Decimal("3.50")
    raw = json.loads(MIXED.read_text())
    websocket = {"channel": "userFills", "data": {"isSnapshot": True, "fills": raw}}
    for wrapped in ({"response": raw}, {"fills": raw}, websocket):
        assert len(load_fills(io.StringIO(json.dumps(wrapped)))) == 14


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(MIXED.read_text()))
    assert len(load_fills("-")) == 14
    monkeypatch.setattr(sys, "stdin", io.StringIO(RESPONSE.read_text()))
    code, out = analyze_trades_command("-", 1000, True)
    assert code == 0 and json.loads(out)["trades"] == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("[]"))
    code, out = analyze_trades_command("-", 1000, True)
    assert code == 0 and json.loads(out)["trades"] == 0 and json.loads(out)["win_rate"] is None


def test_duplicate_tid_is_dropped() -> None:
    raw = json.loads(MIXED.read_text())
    doubled = raw + raw[:5] + raw[-3:]  # overlapping pages
    loaded = load_fills(io.StringIO(json.dumps(doubled)))
    assert loaded == raw  # first occurrences, input order kept
    m = compute_metrics(doubled)
    assert m.total_pnl == Decimal("-948.50") and m.trades == 7 and m.duplicates_dropped == 8
    assert "8 duplicates dropped" in format_metrics_text(m)


def test_duplicates_without_tid_use_hash_oid_time_px_sz() -> None:
    a = fill("BTC", 5, D1 + H, "Close Long", "3.0", "1.0", start="1.0")
    del a["tid"]
    b = dict(a, sz="0.5")  # same order and time but another size: a different fill
    m = compute_metrics([a, dict(a), b])
    assert m.fills == 2 and m.total_pnl == Decimal("4.0")  # (3 - 1) * 2


def test_tolerates_missing_and_extra_optional_fields() -> None:
    minimal = {"coin": "BTC", "oid": 9, "time": D1 + H, "dir": "Close Short", "px": "10", "sz": "1",
               "closedPnl": "2.5", "fee": "0.5"}
    newer = dict(minimal, oid=10, time=D1 + 2 * H, someNewField={"x": 1}, builderFee="0.1", twapId=42,
                 cloid="0x1", feeToken=" USDC", tid=77)
    m = compute_metrics([minimal, newer])
    assert m.trades == 2 and m.total_pnl == Decimal("4.0")
    assert list(closed_trades([minimal])["position"]) == ["short"]


def test_numbers_as_json_numbers_are_exact() -> None:
    text = json.dumps([dict(fill("BTC", 1, D1 + H, "Close Long", start="1.0"), closedPnl=0.1, fee=0.2),
                       dict(fill("BTC", 2, D1 + 2 * H, "Close Long", start="1.0"), closedPnl=0.2, fee=0.1)])
    m = compute_metrics(load_fills(io.StringIO(text)))
    assert m.total_pnl == 0 and m.fees == Decimal("0.3")
    m = compute_metrics(json.loads(text))  # Python floats straight in: repr -> Decimal
    assert m.total_pnl == 0


def test_huge_and_very_precise_amounts_stay_exact() -> None:
    fills = [fill("BTC", 1, D1 + H, "Close Long", "123456789012345.123456789", "0.000000001", start="1.0"),
             fill("BTC", 2, D1 + 2 * H, "Close Long", "-123456789012345.123456788", "0", start="1.0")]
    m = compute_metrics(fills, start_balance="1000000000000000")
    assert m.total_pnl == Decimal("0E-9") and m.trades == 2
    assert m.best_trade == Decimal("123456789012345.123456788")


def test_start_balance_with_more_decimals_than_fills() -> None:
    m = compute_metrics(round_trip("BTC", 1, D1 + H, D1 + 2 * H, "10.5", "0.5"), start_balance=Decimal("1000.125"))
    assert m.equity_end == Decimal("1010.125")


def _one(**changes: object) -> dict:
    base = {"coin": "BTC", "oid": 1, "time": 1, "dir": "Close Long", "px": "1", "sz": "1", "closedPnl": "1", "fee": "0"}
    base.update(changes)
    return {k: v for k, v in base.items() if v != "<absent>"}


BAD_INPUTS = [
    ("[1, 2", "invalid JSON in <stream>: Expecting ',' delimiter at line 1 column 6"),
    ("", "the input is empty"),
    ("42", "no list of fills in <stream>: expected a JSON list of fills, got a number"),
    ('{"status": "err", "response": "rate limited"}', "got an object with keys 'status', 'response'"),
    ('[{"coin": "BTC"}, "x"]', "fill at index 1 is a string, not an object"),
    (json.dumps([_one(fee="<absent>")]), "fill at index 0: missing required field 'fee'"),
    (json.dumps([_one(), _one(closedPnl="abc")]),
     "fill at index 1: field 'closedPnl' is not a decimal number: \"abc\""),
    (json.dumps([_one(px=True)]), "fill at index 0: field 'px' is not a number: true"),
    (json.dumps([_one(oid="x")]), "fill at index 0: field 'oid' is not a number: \"x\""),
    (json.dumps([_one(oid=1.5)]), "fill at index 0: field 'oid' must be an integer, got 1.5"),
    (json.dumps([_one(coin=5)]), "fill at index 0: field 'coin' must be a string, got a number"),
    (json.dumps([_one(fee=None)]), "fill at index 0: null/NaN in required field 'fee'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_INPUTS)
def test_bad_input_gives_a_clear_fills_error(text: str, message: str) -> None:
    with pytest.raises(FillsError) as info:
        load_fills(io.StringIO(text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files_and_cli_exit_code(tmp_path: Path) -> None:
    with pytest.raises(FillsError, match=r"cannot read fills from .*nope\.json: No such file or directory"):
        load_fills(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe[")
    with pytest.raises(FillsError, match="not UTF-8"):
        load_fills(bad)
    bad.write_text("{not json")
    code, out = analyze_trades_command(str(bad), 10000, True)
    assert code == 2 and out.startswith("error: invalid JSON in ") and "\n" not in out
    code, out = analyze_trades_command(str(MIXED), 0, False)
    assert code == 2 and "start balance must be a positive amount" in out


# ------------------------------------------------------------------------------------------------------
# Properties


_DIRS = ["Open Long", "Open Short", "Close Long", "Close Short", "Long > Short", "Short > Long",
         "Liquidated Cross Long", "Buy", "Sell"]
_money = st.decimals(min_value=Decimal("-5000"), max_value=Decimal("5000"), places=6, allow_nan=False,
                     allow_infinity=False)
_fill = st.fixed_dictionaries({
    "coin": st.sampled_from(["BTC", "ETH", "SOL"]),
    "oid": st.integers(1, 12),
    "time": st.integers(D1, D1 + 4 * DAY),
    "dir": st.sampled_from(_DIRS),
    "px": st.just("100.0"),
    "sz": st.just("1.0"),
    "closedPnl": _money.map(str),
    "fee": st.decimals(min_value=Decimal("-1"), max_value=Decimal("20"), places=4).map(str),
    "tid": st.integers(1, 40),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_fill, max_size=40), st.decimals(min_value=Decimal("100"), max_value=Decimal("1000000"), places=2))
def test_property_pnl_identities(fills: list[dict], start: Decimal) -> None:
    # reference: plain Python over the de-duplicated fills, Decimal arithmetic
    seen, unique = set(), []
    for f in fills:
        key = (f["tid"], f["coin"], f["time"])
        if key not in seen:
            seen.add(key)
            unique.append(f)
    closing_dirs = {"Close Long", "Close Short", "Long > Short", "Short > Long", "Liquidated Cross Long"}
    orders: dict[tuple, list[dict]] = {}
    for f in unique:
        orders.setdefault((f["coin"], f["oid"]), []).append(f)
    trade_pnls, other = [], Decimal(0)
    for group in orders.values():
        net = sum((Decimal(f["closedPnl"]) - Decimal(f["fee"]) for f in group), Decimal(0))
        if any(f["dir"] in closing_dirs for f in group):
            trade_pnls.append(net)
        else:
            other += net
    total = sum((Decimal(f["closedPnl"]) - Decimal(f["fee"]) for f in unique), Decimal(0))

    m = compute_metrics(fills, start_balance=start)
    assert m.total_pnl == total == sum(trade_pnls, Decimal(0)) + other
    assert m.fees == sum((Decimal(f["fee"]) for f in unique), Decimal(0))
    assert m.trades == len(trade_pnls) == m.wins + m.losses + m.breakevens
    assert m.wins == sum(p > 0 for p in trade_pnls) and m.losses == sum(p < 0 for p in trade_pnls)
    assert m.trade_pnl == sum(trade_pnls, Decimal(0))
    assert m.equity_end - m.equity_start == m.total_pnl  # rule 9: every fee reaches equity
    trades = closed_trades(fills)
    assert sorted(Decimal(int(u)).scaleb(-trades.attrs["money_scale"]) for u in trades["pnl_u"]) == sorted(trade_pnls)
    assert sum((c.total_pnl for c in m.by_coin.values()), Decimal(0)) == m.total_pnl
    assert sum(c.trades for c in m.by_coin.values()) == m.trades
    assert m.max_drawdown >= 0 and 0 <= m.max_drawdown_pct
    if m.trades:
        assert m.best_trade == max(trade_pnls) and m.worst_trade == min(trade_pnls)
        assert m.longest_winning_streak <= m.wins and m.longest_losing_streak <= m.losses
    else:
        assert m.win_rate is None and m.profit_factor is None
    if m.daily_equity:
        assert m.daily_equity[-1][1] == m.equity_end
    json.dumps(m.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------------------------------
# Scale (exercised only; timing belongs to the benchmarks)


def _synthetic_fills(n: int, coins: int = 5, seed: int = 7) -> list[dict]:
    """n fills as the info API returns them: per coin, an Open then a Close (of 1 or 2 fills) and so on."""
    import random

    rng = random.Random(seed)
    names = ["BTC", "ETH", "SOL", "DOGE", "HYPE", "ARB", "OP", "AVAX"][:coins]
    out: list[dict] = []
    time = D1
    oid = 0
    while len(out) < n:
        coin = names[oid % coins]
        time += rng.randint(1, 30_000)
        px = f"{rng.uniform(1, 50_000):.2f}"
        out.append({"coin": coin, "px": px, "sz": "1.5", "side": "B", "time": time, "startPosition": "0.0",
                    "dir": "Open Long", "closedPnl": "0.0", "hash": f"0x{oid:064x}", "oid": oid, "crossed": True,
                    "fee": f"{rng.uniform(0, 2):.6f}", "tid": 2 * oid, "feeToken": "USDC"})
        for part, start in (("0.5", "1.5"), ("1.0", "1.0")):
            out.append({"coin": coin, "px": px, "sz": part, "side": "A", "time": time + 1000, "startPosition": start,
                        "dir": "Close Long", "closedPnl": f"{rng.uniform(-50, 50):.6f}", "hash": f"0x{oid + 1:064x}",
                        "oid": oid + 1, "crossed": True, "fee": f"{rng.uniform(0, 2):.6f}",
                        "tid": 2 * oid + 1 + (part == "1.0") * 10**12, "feeToken": "USDC"})
        oid += 2
    return out[:n]


def test_scale_100k_fills_vectorised() -> None:
    fills = _synthetic_fills(100_000)
    m = compute_metrics(fills, start_balance=1_000_000)  # big enough to stay positive over ~6 days
    assert m.fills == 100_000
    assert m.trades == pytest.approx(100_000 / 3, abs=2)
    assert m.wins + m.losses + m.breakevens == m.trades
    assert len(m.by_coin) == 5 and len(m.daily_equity) >= 2 and m.sharpe is not None
