"""📊 Win Rate Below 40% (RUNBOOK.md), as a flow. Read-only: it changes nothing on the bot or the exchange.

Actions (within 30 minutes): review recent performance (the last N closed trades against the N before, from
the exchange's fills), check the strategy parameters (config.json `strategy` and `risk_management`), analyse
the losing trades (by coin, side, UTC hour and holding time; the bot's `TRADE EXIT ... LOSS` lines).
Outcome: fewer closed trades than needed to judge, or a win rate over the last N trades at or above
`watch.win_rate_threshold` -> false positive; below it -> escalated to the on-call engineer (L1) as
"strategy review needed", with recommendations derived from the numbers.

Recommendation rules (over the last N trades):
* a coin / side / hour / holding-time bucket with at least 3 trades whose win rate is 25 points or more below
  the rest's (at least 3 trades there too) and whose PnL is negative -> disable the coin, review that side,
  add a time filter, review the exit timing;
* average loss more than 1.5x the average win -> tighten stops or widen targets;
* win rate down 15 points or more from the previous N -> regime change: strategy switching / market filter;
* negative expectancy -> reduce size or pause until reviewed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
from prefect import flow

from reports.trades import TradeMetrics, closed_trades, compute_metrics
from runbook import journal as j
from runbook.markdown import table
from tasks.botconfig import BotConfigRead, inspect_bot_config
from tasks.hyperliquid import AccountState, get_account_state, get_fills
from tasks.incident import IncidentRun, Outcome
from tasks.logs import scan_log
from tasks.probes import check_health, dig

ALERT = "win-rate-review"
MIN_GROUP_TRADES = 3
GROUP_GAP = 0.25  # win-rate points a group trails the rest by before it is called out
LOSS_TO_WIN = 1.5
DEGRADATION = 0.15
DEFAULT_START_BALANCE = Decimal(10000)
HOLD_BUCKETS: tuple[tuple[float, str], ...] = (
    (60, "< 1 min"), (300, "1-5 min"), (1800, "5-30 min"), (7200, "30 min-2 h"), (43200, "2-12 h"),
    (math.inf, "> 12 h"),
)
RUNBOOK_RESOLUTION = ["adjust strategy parameters", "implement strategy switching", "add market condition filters"]


# ----------------------------------------------------------------------------------------------
# numbers


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _usd(value: Decimal | float | None) -> str:
    return "n/a" if value is None else f"{float(value):,.2f} USD"


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "∞" if math.isinf(value) else f"{value:.2f}"


def fills_of(fills: list[dict[str, Any]], trades: pd.DataFrame) -> list[dict[str, Any]]:
    """The fills of these trades' closing orders: what compute_metrics needs to rate exactly these trades."""
    keys = set(zip(trades["coin"].astype(str), trades["oid"].astype(int)))
    return [f for f in fills if (str(f.get("coin")), int(f.get("oid", -1))) in keys]


def hold_bucket(seconds: float) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "unknown"
    return next(label for limit, label in HOLD_BUCKETS if seconds < limit)


@dataclass
class Group:
    dimension: str
    name: str
    trades: int
    wins: int
    losses: int
    pnl: float
    loss_sum: float  # negative: the sum of this group's losing trades
    rest_trades: int
    rest_wins: int

    @property
    def win_rate(self) -> float:
        return self.wins / self.trades if self.trades else 0.0

    @property
    def rest_win_rate(self) -> float | None:
        return self.rest_wins / self.rest_trades if self.rest_trades else None

    @property
    def trails(self) -> bool:
        """Enough trades on both sides, far worse than the rest, and losing money."""
        rest = self.rest_win_rate
        return (self.trades >= MIN_GROUP_TRADES and self.rest_trades >= MIN_GROUP_TRADES and rest is not None
                and self.win_rate <= rest - GROUP_GAP and self.pnl < 0)


DIMENSIONS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "coin": lambda t: t["coin"].astype(str),
    "side": lambda t: t["position"].where(t["position"].notna(), "?").astype(str),
    "hour (UTC)": lambda t: t["closed_at"].dt.hour.map(lambda h: f"{h:02d}:00-{h:02d}:59"),
    "holding time": lambda t: t["holding_seconds"].map(hold_bucket),
}


def groups_by(trades: pd.DataFrame, dimension: str) -> list[Group]:
    keys = DIMENSIONS[dimension](trades)
    pnl = trades["pnl"].astype(float)
    total_trades, total_wins = len(trades), int((pnl > 0).sum())
    result = []
    for name in sorted(keys.unique()):
        mask = (keys == name).to_numpy()
        group = pnl[mask]
        wins, losses = int((group > 0).sum()), int((group < 0).sum())
        result.append(Group(dimension, str(name), len(group), wins, losses, float(group.sum()),
                            float(group[group < 0].sum()), total_trades - len(group), total_wins - wins))
    return sorted(result, key=lambda g: g.loss_sum)


def grouptable(groups: list[Group]) -> str:
    total_loss = sum(g.loss_sum for g in groups) or -1.0
    rows = [[g.name, g.trades, g.losses, _pct(g.win_rate), _usd(g.pnl), _usd(g.loss_sum),
             f"{g.loss_sum / total_loss * 100:.0f} %", _pct(g.rest_win_rate)] for g in groups]
    return table([groups[0].dimension if groups else "group", "trades", "losses", "win rate", "PnL", "lost on losers",
                   "share of losses", "win rate elsewhere"], rows)


def recommend(recent: TradeMetrics, previous: TradeMetrics | None, groups: dict[str, list[Group]],
              config: BotConfigRead, n_recent: int) -> list[str]:
    """What the numbers suggest, most specific first (see the module docstring for the rules)."""
    recs: list[str] = []
    for group in groups.get("coin", []):
        if group.trails:
            recs.append(f"Consider disabling {group.name} (strategy.coins): win rate {_pct(group.win_rate)} over "
                        f"{group.trades} trades vs {_pct(group.rest_win_rate)} on the other coins, PnL {_usd(group.pnl)}.")
    sides = [g for g in groups.get("side", []) if g.trails]
    for group in sides:
        other = "short" if group.name == "long" else "long"
        recs.append(f"{group.name.capitalize()} trades win {_pct(group.win_rate)} over {group.trades} vs "
                    f"{_pct(group.rest_win_rate)} for {other}s: review the {group.name} entry signals, or trade "
                    f"only {other}s in this market.")
    hours = [g for g in groups.get("hour (UTC)", []) if g.trails]
    if hours:
        detail = ", ".join(f"{g.name} ({_pct(g.win_rate)} over {g.trades})" for g in hours)
        recs.append(f"Add a time filter: losses concentrate in {detail} UTC, against "
                    f"{_pct(hours[0].rest_win_rate)} in the other hours.")
    for group in groups.get("holding time", []):
        if group.trails and group.name != "unknown":
            hold = config.get("strategy.max_hold_seconds")
            recs.append(f"Trades held {group.name} win {_pct(group.win_rate)} over {group.trades} vs "
                        f"{_pct(group.rest_win_rate)} otherwise: review the exit timing"
                        + (f" (strategy.max_hold_seconds = {hold})." if hold is not None else "."))
    specific = len(recs)
    stop, target = config.get("risk_management.stop_loss_pct"), config.get("risk_management.take_profit_pct")
    if recent.avg_loss is not None and recent.avg_win is None:
        recs.append(f"No winning trade in the last {n_recent}: pause the strategy until it is reviewed.")
    elif recent.avg_loss is not None and recent.avg_win is not None and recent.avg_loss > recent.avg_win * Decimal(
            str(LOSS_TO_WIN)):
        ratio = float(recent.avg_loss / recent.avg_win) if recent.avg_win else math.inf
        recs.append(f"The average loss {_usd(recent.avg_loss)} is {ratio:.1f}x the average win {_usd(recent.avg_win)}: "
                    f"tighten stops (risk_management.stop_loss_pct = {stop}) or widen targets "
                    f"(risk_management.take_profit_pct = {target}).")
    if (previous is not None and previous.win_rate is not None and recent.win_rate is not None
            and previous.win_rate - recent.win_rate >= DEGRADATION):
        recs.append(f"The win rate fell from {_pct(previous.win_rate)} (previous {previous.trades} trades) to "
                    f"{_pct(recent.win_rate)} (last {recent.trades}): the market regime may have changed — consider "
                    f"strategy switching or a market-condition filter.")
    if recent.expectancy is not None and recent.expectancy < 0:
        size = config.get("position_sizing.base_size_usd")
        recs.append(f"Expectancy is {_usd(recent.expectancy)} per trade: reduce size"
                    + (f" (position_sizing.base_size_usd = {size})" if size is not None else "")
                    + " or pause until the strategy is reviewed.")
    if not specific:
        recs.append("No single coin, side, hour or holding time explains the losses: check indicator accuracy "
                    "and entry/exit timing (runbook: Investigation).")
    return recs


def performancetable(columns: list[tuple[str, TradeMetrics | None]]) -> str:
    def row(label: str, value: Callable[[TradeMetrics], str]) -> list[str]:
        return [label] + [value(m) if m is not None else "-" for _, m in columns]

    rows = [
        row("Trades", lambda m: str(m.trades)),
        row("Wins / losses / break-even", lambda m: f"{m.wins} / {m.losses} / {m.breakevens}"),
        row("Win rate", lambda m: _pct(m.win_rate)),
        row("Profit factor", lambda m: _ratio(m.profit_factor)),
        row("Expectancy / trade", lambda m: _usd(m.expectancy)),
        row("Average win", lambda m: _usd(m.avg_win)),
        row("Average loss", lambda m: _usd(m.avg_loss)),
        row("Trade PnL", lambda m: _usd(m.trade_pnl)),
        row("Best / worst trade", lambda m: f"{_usd(m.best_trade)} / {_usd(m.worst_trade)}"),
        row("Longest losing streak", lambda m: str(m.longest_losing_streak)),
        row("Max drawdown", lambda m: _usd(m.max_drawdown)),
    ]
    return table(["metric"] + [label for label, _ in columns], rows)


def _flat(prefix: str, value: Any) -> list[list[str]]:
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flat(f"{prefix}.{key}", item)]
    return [[prefix, json.dumps(value)]]


# ----------------------------------------------------------------------------------------------
# the flow


@flow(name="win-rate-review",
      description="Runbook: Win Rate Below 40% — the last N trades against the previous N, strategy parameters, "
                  "losing trades by coin, side, hour and holding time, recommendations. Read-only.")
def win_rate_review(bot: str | None = None, config: str | None = None, incident_id: int | None = None,
                    lookback_days: int = 7, n_trades: int = 50) -> Outcome:
    """Review recent trading performance when the win rate drops; recommend, change nothing.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
        lookback_days: how many days of the account's fills to read from the exchange
        n_trades: the win rate is judged over the last N closed trades and compared with the N before
    """
    if lookback_days <= 0 or n_trades <= 0:
        raise ValueError("lookback_days and n_trades must be positive")
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "Trading win rate drops below 40%",
             ["review recent performance", "check strategy parameters", "analyse losing trades"])
    run.start_response()
    return _review(run, lookback_days, n_trades)


def _review(run: IncidentRun, lookback_days: int, n_trades: int) -> Outcome:
    bot, account, watch = run.bot, run.bot.hyperliquid, run.settings.watch
    now = datetime.now(UTC)
    fills_f = get_fills.submit(account, now - timedelta(days=lookback_days), now)
    state_f = get_account_state.submit(account)
    config_f = inspect_bot_config.submit(bot)
    exits_f = scan_log.submit(bot.path(bot.log_file), "TRADE EXIT", 1000)
    health_f = check_health.submit(bot)

    # Strategy parameters (runbook: `cat config/config.json | jq '.strategy'`).
    bot_config: BotConfigRead = config_f.result()
    if bot_config.error:
        run.add_evidence("Strategy parameters (config.json)", f"could not be read: {bot_config.error}")
    else:
        rows = [row for key in ("strategy", "risk_management", "position_sizing")
                if bot_config.get(key) is not None for row in _flat(key, bot_config.get(key))]
        run.add_evidence("Strategy parameters (config.json)", table(["parameter", "value"], rows))

    # What the bot says about itself (the watcher's view) and its log (`grep "TRADE EXIT.*LOSS" | tail -10`).
    health = health_f.result()
    bot_rate, bot_trades = (dig(health.body, bot.fields.win_rate), dig(health.body, bot.fields.total_trades)) \
        if health.body else (None, None)
    if isinstance(bot_rate, (int, float)) and not isinstance(bot_rate, bool):
        bot_view = f"the bot reports a win rate of {_pct(bot_rate)} over {bot_trades} recorded trades"
    elif health.body is not None:
        bot_view = "the bot's /health reports no win rate yet"
    else:
        bot_view = f"the bot's win rate is not available ({health.summary()})"
    run.add_evidence("The bot's own figures (/health)", bot_view)
    exits = exits_f.result()
    losers_log = [m for m in exits.last_matches if m.rstrip().endswith("LOSS")][-10:]
    run.add_evidence("Losing trades in the bot's log (last 10)",
                     exits.error or "```\n" + ("\n".join(losers_log) or "none") + "\n```")

    state: AccountState | None = None
    try:
        state = state_f.result()
    except Exception as error:  # noqa: BLE001 - only the drawdown's base depends on it
        run.note(f"account state unavailable ({error}); equity figures start from {DEFAULT_START_BALANCE}")
    try:
        fills: list[dict[str, Any]] = fills_f.result()
    except Exception as error:  # noqa: BLE001 - an unreadable exchange is a finding, not a crash
        run.add_evidence("Exchange", f"**The exchange could not be read:** {error}")
        return run.escalate("L1", f"the exchange could not be read ({error}); the win rate could not be reviewed "
                            f"({bot_view}).",
                            ["check the exchange status and the network path to it",
                             "rerun win-rate-review once the exchange answers"])

    trades = closed_trades(fills)
    recent, previous = trades.tail(n_trades), trades.iloc[max(0, len(trades) - 2 * n_trades):max(0, len(trades) - n_trades)]
    total_pnl = sum((Decimal(str(f["closedPnl"])) - Decimal(str(f["fee"])) for f in fills), Decimal(0))
    start = state.account_value - total_pnl if state is not None and state.account_value > total_pnl \
        else DEFAULT_START_BALANCE
    window = compute_metrics(fills, start)
    m_recent = compute_metrics(fills_of(fills, recent), start) if len(recent) else None
    m_previous = compute_metrics(fills_of(fills, previous), start) if len(previous) else None
    run.add_evidence(f"Performance: last {len(recent)} trades vs the {len(previous)} before",
                     performancetable([(f"last {len(recent)}", m_recent), (f"previous {len(previous)}", m_previous),
                                        (f"all {lookback_days} days", window)]))

    threshold = watch.win_rate_threshold
    needed = min(n_trades, watch.win_rate_min_trades)
    if m_recent is None or len(recent) < needed:
        return run.resolve(j.FALSE_POSITIVE, f"only {len(recent)} closed trades in the last {lookback_days} days; at "
                           f"least {needed} are needed to judge the win rate ({bot_view}).")

    # The losers of the last N, by coin, side, hour and holding time.
    groups = {dimension: groups_by(recent, dimension) for dimension in DIMENSIONS}
    losers = recent[recent["pnl"] < 0]
    if len(losers):
        for dimension, found in groups.items():
            run.add_evidence(f"Losing trades by {dimension} (last {len(recent)} trades)", grouptable(found))
        rows = [[f"{t.closed_at:%Y-%m-%d %H:%M:%S}", t.coin, t.position, f"{t.size:g}", f"{t.avg_exit_px:,.6g}",
                 _usd(t.pnl), hold_bucket(t.holding_seconds)] for t in losers.tail(10).itertuples()]
        run.add_evidence("Last 10 losing trades (exchange)",
                         table(["closed (UTC)", "coin", "side", "size", "exit", "PnL", "held"], rows))
    recs = recommend(m_recent, m_previous, groups, bot_config, len(recent))
    run.add_evidence("Recommendations", "\n".join(f"1. {r}" for r in recs))

    rate = m_recent.win_rate or 0.0
    below = rate < threshold
    headline = (f"win rate {_pct(rate)} over the last {len(recent)} trades is {'' if below else 'not '}below "
                f"{_pct(threshold)}"
                + (f" (previous {len(previous)}: {_pct(m_previous.win_rate)})" if m_previous is not None else "")
                + f"; profit factor {_ratio(m_recent.profit_factor)}, expectancy {_usd(m_recent.expectancy)} per trade")
    if not below:
        return run.resolve(j.FALSE_POSITIVE, f"{headline}; nothing to review ({bot_view}).")
    return run.escalate("L1", f"strategy review needed: {headline}.",
                        ["review within 30 min (WARNING): the recommendations and the losing trades are in the "
                         "incident report", *recs[:5], *RUNBOOK_RESOLUTION])
