"""📈 Daily Trading Summary (RUNBOOK.md): the day's figures from its fills, against the previous day and the
trailing 7 and 30 days, with risk metrics and recommendations drawn from the numbers.

Everything is computed by reports/trades.py (fills -> closed trades -> metrics; the definitions are in its
docstring and in docs/kpis.md); this module chooses the windows, adds what a daily summary needs on top
(exposure, largest position, the comparisons, recommendations) and hands a `DailyReport` to
reports/pdf.py. Nothing here touches the network or renders: the flow and the CLI fetch, this computes,
and they have reports/pdf.py render it.

Windows (calendar days in the report's time zone, UTC by default; D is the reported day):

* the day: [D 00:00, D+1 00:00) -- up to "now" when D is today (the report says it is partial);
* previous day: D-1; trailing 7 days: D-7 .. D-1; trailing 30 days: D-30 .. D-1 (the day itself is not in
  the windows it is compared with);
* risk over 30 days: D-29 .. D, so Sharpe and Sortino have 30 daily returns ending with the day.

Equity: `start_balance` is the equity at D 00:00; it moves by each closed trade's P&L. The equity at the
start of an earlier window is the start balance minus the P&L of the trades closed between that start and
D 00:00, so every window's drawdown and returns are on the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from reports.trades import FillsError, TradeMetrics, closed_trades, compute_metrics, fills_frame

TRAILING_DAYS = (7, 30)
RISK_DAYS = 30
MIN_TRADES_FOR_WIN_RATE = 10  # below this a win rate says little; the recommendation waits for more trades
FEE_SHARE_HIGH = 0.30  # fees above this share of gross profit
WORST_TO_AVG_LOSS = 3.0
INTRADAY_DRAWDOWN_HIGH = 0.05
TOP_TRADES = 5
SPOT_DIRS = ("Buy", "Sell")  # spot fills hold no perp position

# Printed in the PDF and in docs/kpis.md: the words the summary uses.
DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("Trade", "One closing order: the fills of an order (coin, oid) of which at least one closes a position "
              "(Close, flip, liquidation, forced close). Its P&L is sum(closedPnl) - sum(fee) of those fills."),
    ("Win rate", "Winning trades (P&L > 0) / all trades; break-even trades count in the denominator only."),
    ("Profit factor", "Gross profit / gross loss of the trades; infinite with wins and no losses, n/a with neither."),
    ("Net P&L", "sum(closedPnl) - sum(fee) over every fill of the window, opening fees included. Funding "
                "(userFunding) is shown on its own line, never mixed in."),
    ("Max drawdown", "Largest fall of the equity (start balance + closed-trade P&L, after each trade) below its "
                     "running peak; in USD and as a share of that peak."),
    ("Sharpe / Sortino", "Daily returns of the end-of-day equity over the 30 days ending with the day: "
                         "mean / std (ddof 1) x sqrt(365); Sortino uses the downside deviation "
                         "sqrt(sum(min(r, 0)^2) / N). n/a with fewer than 2 returns or no dispersion."),
    ("Exposure", "Time in market: the share of the day with at least one perp position open (from each fill's "
                 "startPosition). Peak gross exposure: the largest sum over coins of |position| x last fill "
                 "price, also as a multiple of the day's start balance."),
    ("Largest position", "The largest |position| x fill price any coin reached during the day."),
    ("Comparisons", "Previous day = D-1; trailing 7 / 30 days = the 7 / 30 days before D (D excluded). "
                    "Per-day figures divide the window's total by its number of days."),
)


# ----------------------------------------------------------------------------------------------------------
# formatting (shared by the PDF, the artifact, Slack and the CLI: one way to print a figure)


def fmt_usd(value: Decimal | float | None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    number = float(value)
    return f"{number:+,.2f}" if sign else f"{number:,.2f}"


def fmt_pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f} %"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "∞" if math.isinf(value) else f"{value:.2f}"


def fmt_count(value: float | int | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _num(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else float(value)


def _iso(value: datetime | None, timespec: str = "seconds") -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


# ----------------------------------------------------------------------------------------------------------
# the report


@dataclass
class Window:
    """One comparison window: its days and the metrics of the trades closed in it."""

    label: str
    first_day: date
    last_day: date
    metrics: TradeMetrics

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @property
    def trades_per_day(self) -> float:
        return self.metrics.trades / self.days

    @property
    def pnl_per_day(self) -> Decimal:
        return self.metrics.total_pnl / self.days

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "label": self.label, "first_day": self.first_day.isoformat(), "last_day": self.last_day.isoformat(),
            "days": self.days, "trades": m.trades, "trades_per_day": self.trades_per_day, "wins": m.wins,
            "losses": m.losses, "win_rate": m.win_rate, "profit_factor": _finite(m.profit_factor),
            "profit_factor_infinite": m.profit_factor_infinite, "net_pnl": _num(m.total_pnl),
            "pnl_per_day": _num(self.pnl_per_day), "fees": _num(m.fees), "funding": _num(m.funding),
            "best_trade": _num(m.best_trade), "worst_trade": _num(m.worst_trade),
            "max_drawdown": _num(m.max_drawdown), "max_drawdown_pct": m.max_drawdown_pct,
        }


@dataclass
class Exposure:
    """How much and how long the account was in the market during the day (None: not computable)."""

    time_in_market: float | None = None
    peak_gross_usd: float | None = None
    peak_gross_at: datetime | None = None
    peak_leverage: float | None = None  # peak gross exposure / start balance
    largest_coin: str | None = None
    largest_usd: float | None = None
    largest_at: datetime | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"time_in_market": self.time_in_market, "peak_gross_usd": self.peak_gross_usd,
                "peak_gross_at": _iso(self.peak_gross_at), "peak_leverage": self.peak_leverage,
                "largest_position": {"coin": self.largest_coin, "notional_usd": self.largest_usd,
                                     "at": _iso(self.largest_at)},
                "note": self.note or None}


@dataclass
class DailyReport:
    bot: str
    day: date
    tz: str
    start: datetime  # the day's window in UTC: [start, end)
    end: datetime
    data_until: datetime  # end, or when the data was read for a day not over yet
    generated_at: datetime
    start_balance: Decimal
    source: str
    today: Window
    previous: Window
    trailing: dict[int, Window]
    risk: Window  # the 30 days ending with the day
    exposure: Exposure
    trades: pd.DataFrame  # the day's closed trades, in close order (reports.trades.closed_trades columns)
    recommendations: list[str] = field(default_factory=list)
    pdf_path: str | None = None

    @property
    def metrics(self) -> TradeMetrics:
        return self.today.metrics

    @property
    def partial(self) -> bool:
        return self.data_until < self.end

    @property
    def title(self) -> str:
        return f"Daily trading summary — {self.day.isoformat()}" + (f" — {self.bot}" if self.bot else "")

    def equity_curve(self) -> list[tuple[datetime, float]]:
        """Equity at the day's start, then after every closed trade (its close time)."""
        start = float(self.start_balance)
        points = [(self.start, start)]
        if len(self.trades):
            equity = start + np.cumsum(self.trades["pnl"].to_numpy(dtype=np.float64))
            points += list(zip(self.trades["closed_at"].dt.to_pydatetime(), equity.tolist()))
        return points

    def best_and_worst(self, n: int = TOP_TRADES) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if not len(self.trades):
            return [], []
        ranked = self.trades.sort_values("pnl_u", kind="stable")
        scale = self.trades.attrs["money_scale"]

        def rows(part: pd.DataFrame) -> list[dict[str, Any]]:
            return [{"coin": str(t.coin), "closed_at": _iso(t.closed_at.to_pydatetime()), "position": t.position,
                     "size": float(t.size), "exit_px": _finite(float(t.avg_exit_px)) if t.avg_exit_px == t.avg_exit_px
                     else None, "pnl": float(Decimal(int(t.pnl_u)).scaleb(-scale)),
                     "holding_seconds": None if t.holding_seconds != t.holding_seconds else float(t.holding_seconds)}
                    for t in part.itertuples(index=False)]

        best = rows(ranked[ranked["pnl_u"] > 0].iloc[::-1].head(n))
        worst = rows(ranked[ranked["pnl_u"] < 0].head(n))
        return best, worst

    def headline(self) -> list[tuple[str, str]]:
        """The numbers people look at first (artifact table, Slack message, PDF summary block)."""
        m = self.metrics
        funding = fmt_usd(m.funding, sign=True) if m.funding is not None else "n/a"
        return [
            ("Trades", f"{m.trades:,}"),
            ("Win rate", fmt_pct(m.win_rate)),
            ("Profit factor", fmt_ratio(m.profit_factor)),
            ("Net P&L (USD)", fmt_usd(m.total_pnl, sign=True)),
            ("Fees (USD)", fmt_usd(m.fees)),
            ("Funding (USD)", funding),
            ("Best trade (USD)", fmt_usd(m.best_trade, sign=True)),
            ("Worst trade (USD)", fmt_usd(m.worst_trade, sign=True)),
            ("Max drawdown", f"{fmt_usd(m.max_drawdown)} USD ({fmt_pct(m.max_drawdown_pct)})"),
            ("Sharpe (30 d)", fmt_ratio(self.risk.metrics.sharpe)),
            ("Sortino (30 d)", fmt_ratio(self.risk.metrics.sortino)),
            ("Time in market", fmt_pct(self.exposure.time_in_market, 1)),
            ("Largest position (USD)", "n/a" if self.exposure.largest_usd is None
             else f"{fmt_usd(self.exposure.largest_usd)} {self.exposure.largest_coin}"),
        ]

    def message(self) -> str:
        """The short summary posted with the PDF."""
        m = self.metrics
        prev = self.previous.metrics
        change = m.total_pnl - prev.total_pnl
        lines = [
            f"*{self.title}*" + (" (partial day)" if self.partial else ""),
            f"{m.trades:,} trades, win rate {fmt_pct(m.win_rate)}, profit factor {fmt_ratio(m.profit_factor)}",
            f"Net P&L {fmt_usd(m.total_pnl, sign=True)} USD (fees {fmt_usd(m.fees)}, funding "
            f"{fmt_usd(m.funding, sign=True) if m.funding is not None else 'n/a'}); "
            f"{fmt_usd(change, sign=True)} vs the previous day",
            f"Max drawdown {fmt_pct(m.max_drawdown_pct)}; Sharpe (30 d) {fmt_ratio(self.risk.metrics.sharpe)}",
        ]
        if self.recommendations:
            lines.append("Recommendation: " + self.recommendations[0])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        best, worst = self.best_and_worst()
        day = self.metrics.to_dict()
        day.pop("daily_equity", None)
        risk = self.risk.metrics
        return {
            "report": "daily-summary", "bot": self.bot, "date": self.day.isoformat(), "timezone": self.tz,
            "window": {"start": _iso(self.start), "end": _iso(self.end), "data_until": _iso(self.data_until, "milliseconds")},
            "partial": self.partial, "source": self.source, "generated_at": _iso(self.generated_at),
            "start_balance": float(self.start_balance), "pdf": self.pdf_path,
            "day": day,
            "previous_day": self.previous.to_dict(),
            **{f"trailing_{n}d": w.to_dict() for n, w in self.trailing.items()},
            "risk": {"window": self.risk.to_dict(), "sharpe_30d": risk.sharpe, "sortino_30d": risk.sortino,
                     "max_drawdown_30d": _num(risk.max_drawdown), "max_drawdown_pct_30d": risk.max_drawdown_pct,
                     "max_drawdown": _num(self.metrics.max_drawdown),
                     "max_drawdown_pct": self.metrics.max_drawdown_pct, "exposure": self.exposure.to_dict()},
            "best_trades": best, "worst_trades": worst,
            "recommendations": list(self.recommendations),
        }


# ----------------------------------------------------------------------------------------------------------
# building it


def day_bounds(day: date, tz: str = "UTC") -> tuple[datetime, datetime]:
    """[00:00, next 00:00) of `day` in the zone, as UTC datetimes (23 or 25 hours on a DST change)."""
    zone = ZoneInfo(tz)
    start = datetime.combine(day, time(0), zone)
    end = datetime.combine(day + timedelta(days=1), time(0), zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def fetch_window(day: date, tz: str = "UTC") -> tuple[datetime, datetime]:
    """The data a summary of `day` needs: from the start of the 30 trailing days to the end of the day."""
    start, _ = day_bounds(day - timedelta(days=max(TRAILING_DAYS)), tz)
    _, end = day_bounds(day, tz)
    return start, end


def previous_day(moment: datetime, tz: str = "UTC") -> date:
    """The last complete day before `moment` in the zone: what a run scheduled at `moment` summarises."""
    return moment.astimezone(ZoneInfo(tz)).date() - timedelta(days=1)


def start_balance_at(history: list[tuple[datetime, Decimal]], moment: datetime) -> Decimal | None:
    """The account value at `moment` from its value history: the last point at or before it, else the first
    point (an account younger than the window starts from its first value); None without history."""
    before = [value for at, value in history if at <= moment]
    if before:
        return before[-1]
    return history[0][1] if history else None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _slice(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    times = frame["time"].to_numpy()
    return frame.loc[(times >= _ms(start)) & (times < _ms(end))]


def _trade_pnl(frame: pd.DataFrame) -> Decimal:
    trades = closed_trades(frame)
    if not len(trades):
        return Decimal(0)
    return Decimal(int(trades["pnl_u"].sum())).scaleb(-frame.attrs["money_scale"])


def _funding_in(funding: list[dict[str, Any]] | None, start: datetime, end: datetime) -> list[dict[str, Any]] | None:
    if funding is None:
        return None
    lo, hi = _ms(start), _ms(end)
    out = []
    for i, entry in enumerate(funding):
        when = entry.get("time") if isinstance(entry, dict) else None
        if isinstance(when, bool) or not isinstance(when, int):
            raise FillsError(f"funding entry at index {i}: 'time' must be epoch milliseconds")
        if lo <= when < hi:
            out.append(entry)
    return out


def _window(frame: pd.DataFrame, label: str, first: date, last: date, tz: str, end_of_day: Decimal,
            day_start: datetime, funding: list[dict[str, Any]] | None, until: datetime | None = None) -> Window:
    """Metrics of the trades closed from `first` to `last` (days in tz); equity continuous with the day's."""
    start, _ = day_bounds(first, tz)
    _, end = day_bounds(last, tz)
    end = min(end, until) if until is not None else end
    part = _slice(frame, start, end)
    # the equity at `start`: the day's start balance less what was made between `start` and the day's start
    made_before = _trade_pnl(_slice(part, start, day_start)) if start < day_start else Decimal(0)
    opening = end_of_day - made_before
    if opening <= 0:  # the P&L of the window exceeds the balance: equity ratios are meaningless below 0
        opening = Decimal("0.01")
    metrics = compute_metrics(part, start_balance=opening, funding=_funding_in(funding, start, end),
                              days=(first, last), tz=tz)
    return Window(label, first, last, metrics)


def exposure_of(frame: pd.DataFrame, start: datetime, end: datetime, balance: Decimal) -> Exposure:
    """Time in market, peak gross exposure and the largest position over [start, end), from the day's fills.

    A coin's position after a fill is startPosition + sz (buy) or - sz (sell); it holds until the coin's next
    fill and is valued at the price of the fill that set it. Before its first fill of the day a coin holds
    that fill's startPosition (opened earlier), valued at that fill's price."""
    perp = frame.loc[~frame["dir"].isin(SPOT_DIRS)]
    if perp.empty:
        return Exposure(time_in_market=0.0, peak_gross_usd=0.0, peak_leverage=0.0)
    start_pos = perp["start_position"].to_numpy(dtype=np.float64)
    side = perp["side"].to_numpy(dtype=object)
    if np.isnan(start_pos).any() or not np.isin(side, ["A", "B"]).all():
        return Exposure(note="some fills lack startPosition or side: exposure cannot be reconstructed")
    sz = perp["sz"].to_numpy(dtype=np.float64)
    px = perp["px"].to_numpy(dtype=np.float64)
    times = perp["time"].to_numpy(dtype=np.int64)
    coins = perp["coin"].to_numpy(dtype=object)
    after = start_pos + np.where(side == "B", sz, -sz)
    eps = 1e-12
    first = ~pd.Series(coins).duplicated().to_numpy()
    notional_after = np.abs(after) * px
    initial = np.where(first, np.abs(start_pos) * px, 0.0)  # each coin's value before its first fill of the day
    by_coin = pd.Series(notional_after).groupby(coins, sort=False)
    previous = by_coin.shift(1).to_numpy()
    previous = np.where(first, initial, previous)
    opening_gross = float(initial.sum())
    gross = opening_gross + np.cumsum(notional_after - previous)
    peak_index = int(np.argmax(gross))
    if opening_gross > gross[peak_index]:
        peak, peak_at = opening_gross, start
    else:
        peak, peak_at = float(gross[peak_index]), _utc_ms(times[peak_index])

    largest_index = int(np.argmax(notional_after))
    largest_usd, largest_coin, largest_at = float(notional_after[largest_index]), coins[largest_index], \
        _utc_ms(times[largest_index])
    first_index = np.flatnonzero(first)
    opening_best = int(first_index[np.argmax(initial[first_index])])
    if initial[opening_best] > largest_usd:
        largest_usd, largest_coin, largest_at = float(initial[opening_best]), coins[opening_best], start

    open_after = (np.abs(after) > eps).astype(np.int64)
    open_before = pd.Series(open_after).groupby(coins, sort=False).shift(1).to_numpy()
    open_before = np.where(first, (np.abs(start_pos) > eps).astype(np.int64), open_before).astype(np.int64)
    initial_open = int(((np.abs(start_pos) > eps) & first).sum())
    counts = np.concatenate(([initial_open], initial_open + np.cumsum(open_after - open_before)))
    lo, hi = _ms(start), max(_ms(end), int(times.max()))
    edges = np.concatenate(([lo], np.clip(times, lo, hi), [hi]))
    in_market = float(np.diff(edges)[counts > 0].sum())
    return Exposure(time_in_market=in_market / (hi - lo) if hi > lo else None, peak_gross_usd=peak,
                    peak_gross_at=peak_at, peak_leverage=peak / float(balance) if balance > 0 else None,
                    largest_coin=str(largest_coin), largest_usd=largest_usd, largest_at=largest_at)


def _utc_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def build_daily_report(
    fills: list[dict[str, Any]] | pd.DataFrame,
    day: date,
    start_balance: Decimal | float | int | str,
    *,
    tz: str = "UTC",
    funding: list[dict[str, Any]] | None = None,
    bot: str = "",
    source: str = "",
    now: datetime | None = None,
    win_rate_threshold: float = 0.40,
) -> DailyReport:
    """The summary of `day` from fills covering (at least) the 30 days before it and the day itself.

    `start_balance` is the equity at the start of the day. Fills outside [D-30, D+1) are ignored."""
    frame = fills_frame(fills)
    balance = Decimal(str(start_balance)) if not isinstance(start_balance, Decimal) else start_balance
    if not balance.is_finite() or balance <= 0:
        raise ValueError(f"start balance must be a positive amount, got {start_balance!r}")
    now = now or datetime.now(UTC)
    day_start, day_end = day_bounds(day, tz)
    until = min(day_end, max(now, day_start))
    day_frame = _slice(frame, day_start, until)
    today = Window("Day", day, day, compute_metrics(day_frame, start_balance=balance,
                                                   funding=_funding_in(funding, day_start, until),
                                                   days=(day, day), tz=tz))
    previous = _window(frame, "Previous day", day - timedelta(days=1), day - timedelta(days=1), tz, balance,
                       day_start, funding)
    trailing = {n: _window(frame, f"Last {n} days", day - timedelta(days=n), day - timedelta(days=1), tz, balance,
                           day_start, funding) for n in TRAILING_DAYS}
    risk = _window(frame, f"{RISK_DAYS} days to the day", day - timedelta(days=RISK_DAYS - 1), day, tz, balance,
                   day_start, funding, until=until)
    report = DailyReport(
        bot=bot, day=day, tz=tz, start=day_start, end=day_end, data_until=until, generated_at=now,
        start_balance=balance, source=source, today=today, previous=previous, trailing=trailing, risk=risk,
        exposure=exposure_of(day_frame, day_start, until, balance), trades=closed_trades(day_frame),
    )
    report.recommendations = recommend(report, win_rate_threshold)
    return report


# ----------------------------------------------------------------------------------------------------------
# recommendations


def recommend(report: DailyReport, win_rate_threshold: float = 0.40) -> list[str]:
    """What the numbers suggest doing, most important first (pure; the tests recompute the rules)."""
    m = report.metrics
    out: list[str] = []
    if m.trades == 0:
        out.append("No trades closed on this day: check that the bot was running and allowed to trade "
                   "(process, circuit breaker, strategy filters, balance).")
        return out
    if m.win_rate is not None and m.trades >= MIN_TRADES_FOR_WIN_RATE and m.win_rate < win_rate_threshold:
        out.append(f"Win rate {fmt_pct(m.win_rate)} over {m.trades} trades is below the runbook's "
                   f"{win_rate_threshold:.0%}: review entry signals and market conditions (win-rate-review).")
    if m.profit_factor is not None and m.profit_factor < 1:
        out.append(f"Losing day (profit factor {fmt_ratio(m.profit_factor)}): review the risk settings before the "
                   "next session and consider smaller position sizes.")
    gross_profit = (m.avg_win or Decimal(0)) * m.wins
    if m.fees > 0 and gross_profit > 0 and m.fees > Decimal(str(FEE_SHARE_HIGH)) * gross_profit:
        out.append(f"Fees were {fmt_usd(m.fees)} USD, {float(m.fees / gross_profit):.0%} of the gross profit: "
                   "fewer, larger trades or maker orders would keep more of it.")
    if m.losses >= 3 and m.avg_loss and m.worst_trade is not None \
            and -m.worst_trade > Decimal(str(WORST_TO_AVG_LOSS)) * m.avg_loss:
        _, worst = report.best_and_worst(1)
        coin = f" ({worst[0]['coin']})" if worst else ""
        out.append(f"The worst trade{coin}, {fmt_usd(m.worst_trade, sign=True)} USD, was "
                   f"{float(-m.worst_trade / m.avg_loss):.1f}x the average loss: check that its stop-loss fired "
                   "where it should have.")
    losing = {coin: c.total_pnl for coin, c in m.by_coin.items() if c.total_pnl < 0}
    total_loss = -sum(losing.values(), Decimal(0))
    if len(m.by_coin) >= 2 and losing:
        coin, pnl = min(losing.items(), key=lambda item: item[1])
        if -pnl > total_loss / 2 and m.total_pnl < 0:
            out.append(f"{coin} lost {fmt_usd(-pnl)} USD, most of the day's losses: consider pausing or re-tuning "
                       "it.")
    if m.max_drawdown_pct > INTRADAY_DRAWDOWN_HIGH:
        out.append(f"Intraday drawdown reached {fmt_pct(m.max_drawdown_pct)} of the peak equity: tighten the daily "
                   "loss limit or position sizes.")
    week = report.trailing.get(7)
    if week is not None and week.metrics.trades and m.total_pnl < 0 < week.pnl_per_day:
        out.append(f"The day ({fmt_usd(m.total_pnl, sign=True)} USD) broke a positive week "
                   f"({fmt_usd(week.pnl_per_day, sign=True)} USD a day on average): watch whether it is the start "
                   "of a trend before changing parameters.")
    sharpe = report.risk.metrics.sharpe
    if sharpe is not None and sharpe < 0:
        out.append(f"Risk-adjusted return over 30 days is negative (Sharpe {fmt_ratio(sharpe)}): the strategy is "
                   "losing for the risk it takes; review it before any scaling up.")
    if not out:
        if m.profit_factor is not None and m.profit_factor >= 1.5 and (m.win_rate or 0) >= 0.55:
            out.append("Strong day: keep the current parameters; do not scale up on one day's result — look at "
                       "the 30-day Sharpe first.")
        else:
            out.append("No action needed: the day's figures are within normal ranges; keep the current parameters.")
    return out


# ----------------------------------------------------------------------------------------------------------
# The file name and the text summary (the PDF is reports/pdf.py's; the CLI and the flow write it)


def report_file_name(report: DailyReport) -> str:
    safe_bot = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in report.bot) or "bot"
    return f"daily-summary-{safe_bot}-{report.day.isoformat()}.pdf"


def text_summary(report: DailyReport) -> str:
    width = max(len(label) for label, _ in report.headline())
    lines = [report.title + (" (partial day)" if report.partial else ""), ""]
    lines += [f"  {label:<{width}}  {value}" for label, value in report.headline()]
    lines += ["", "Recommendations:"] + [f"  - {line}" for line in report.recommendations]
    if report.pdf_path:
        lines += ["", f"PDF: {report.pdf_path}"]
    return "\n".join(lines)


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date takes YYYY-MM-DD, not {text!r}") from None
