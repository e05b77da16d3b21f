"""💰 Position Hit Stop-Loss (RUNBOOK.md), as a flow. Read-only: it changes nothing on the bot or the exchange.

Immediate actions: position health from /health, current positions and their stop orders on the exchange,
whether the stop fired correctly (and whether it was a trailing update), account balance and margin.
Investigation: the `TRADE EXIT` log lines, the risk settings from config.json, the price action before the
stop (1m candles).
Outcome: no stop-loss exit found -> false positive; the stop fired correctly and every open position has a
stop -> auto-resolved with the findings; a stop that fired late or early, a stop wider than configured, an
open position without a stop, or an exchange that cannot be read -> escalated to the on-call engineer (L1).

How the exit is judged. The configured stop is `entry * (1 - stop_loss_pct)` for a long and
`entry * (1 + stop_loss_pct)` for a short (entry from the closing fill: `px -/+ closedPnl / sz`). The exit's
slippage is how far its average fill price is beyond the stop trigger that fired (or the configured stop when
the trigger is unknown), positive meaning worse for the position, in % of the stop and in USD (x size):
above `tolerance_pct` it fired late, below `-tolerance_pct` it fired early, else correctly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
from prefect import flow

from reports.trades import closed_trades
from runbook import journal as j
from runbook.markdown import table
from tasks.botconfig import BotConfigRead, inspect_bot_config
from tasks.hyperliquid import (
    AccountState,
    Candle,
    OpenOrder,
    from_ms,
    get_account_state,
    get_candles,
    get_fills,
    get_open_orders,
)
from tasks.incident import IncidentRun, Outcome
from tasks.logs import scan_log
from tasks.orders import PastOrder, PositionCheck, check_positions, get_order_history
from tasks.probes import HealthReport, check_health, dig
from tasks.trade_log import LogExit, LogExits, read_trade_exits

ALERT = "stop-loss-review"
STOP_LOSS_PCT_KEY = "risk_management.stop_loss_pct"  # percent, in the bot's config.json
TRAILING_KEY = "risk_management.trailing_stop"
CANDLE_MINUTES = 30
# A stop trigger within this distance of the configured stop level is "as configured" (price rounding).
LEVEL_MATCH_PCT = 0.1
# A position seen without a stop is looked at again after this long before it is flagged: a bot places
# its stop right after the entry fill, and the two exchange reads are not one snapshot.
UNPROTECTED_GRACE_SECONDS = 3.0
# How far apart a `TRADE EXIT` log line and the closing fill it reports may be.
LOG_MATCH_BEFORE = timedelta(seconds=2)
LOG_MATCH_AFTER = timedelta(seconds=60)
# The steps that read (config.json, the TRADE EXIT log lines, the order history, the open positions' stops)
# are tasks: tasks/botconfig.py, tasks/trade_log.py, tasks/orders.py.


# ----------------------------------------------------------------------------------------------
# judging the exit


@dataclass
class StopExit:
    """A position closed by its stop-loss, as the exchange fills and the bot's log tell it."""

    coin: str
    side: str  # the position closed: long / short
    size: float
    entry_px: float
    exit_px: float
    closed_at: datetime
    opened_at: datetime | None
    pnl: float | None  # net of fees (None when only the log knows it)
    source: str
    oid: int | None = None
    order: PastOrder | None = None  # the stop order that fired, when the order history has it
    log: LogExit | None = None
    replaced: list[PastOrder] = field(default_factory=list)  # earlier stops of this position, replaced

    @property
    def trigger_px(self) -> float | None:
        return float(self.order.trigger_px) if self.order and self.order.trigger_px is not None else None


@dataclass
class StopAssessment:
    configured_pct: float | None
    configured_stop: float | None
    reference_px: float
    reference: str  # what the slippage is measured against
    slippage_pct: float  # > 0: exit worse than the stop for the position
    slippage_usd: float
    config_slippage_pct: float | None
    config_slippage_usd: float | None
    verdict: str  # fired correctly / fired late / fired early
    level: str  # as configured / trailing update / tighter than configured / wider than configured / unknown
    level_detail: str
    trailing: str
    tolerance_pct: float

    @property
    def problems(self) -> list[str]:
        found = []
        if self.verdict != "fired correctly":
            found.append(self.verdict)
        if self.level == "wider than configured":
            found.append("stop wider than configured")
        return found


def _beyond(side: str, reference: float, px: float) -> float:
    """How far `px` is beyond a stop at `reference`, in price, positive when worse for the position."""
    return reference - px if side == "long" else px - reference


def configured_stop(side: str, entry: float, pct: float) -> float:
    return entry * (1 - pct / 100) if side == "long" else entry * (1 + pct / 100)


def assess(exit: StopExit, stop_loss_pct: float | None, trailing_enabled: bool | None,
           tolerance_pct: float) -> StopAssessment:
    """Did the stop fire where it should have? (see the module docstring for the definitions)."""
    config_stop = configured_stop(exit.side, exit.entry_px, stop_loss_pct) if stop_loss_pct is not None else None
    trigger = exit.trigger_px
    if trigger is not None:
        reference_px, reference = trigger, "stop trigger"
    elif config_stop is not None:
        reference_px, reference = config_stop, f"configured stop ({stop_loss_pct:g} %)"
    else:
        reference_px, reference = exit.entry_px, "entry (no stop level known)"
    slip = _beyond(exit.side, reference_px, exit.exit_px)
    slippage_pct = slip / reference_px * 100
    config_slip_pct = config_slip_usd = None
    if config_stop is not None:
        config_slip = _beyond(exit.side, config_stop, exit.exit_px)
        config_slip_pct, config_slip_usd = config_slip / config_stop * 100, config_slip * exit.size
    if slippage_pct > tolerance_pct:
        verdict = "fired late"
    elif slippage_pct < -tolerance_pct:
        verdict = "fired early"
    else:
        verdict = "fired correctly"

    # Where the stop was against where config.json puts it; a trailing update moves it towards the price.
    if trigger is None or config_stop is None:
        level, level_detail = "unknown", ("the stop order that fired is not in the order history"
                                          if trigger is None else "no stop_loss_pct in config.json")
    else:
        tighter_pct = -_beyond(exit.side, config_stop, trigger) / config_stop * 100  # > 0: closer to entry
        distance_pct = abs(exit.entry_px - trigger) / exit.entry_px * 100
        level_detail = (f"trigger {_px(trigger)} is {distance_pct:.2f} % from entry {_px(exit.entry_px)}; "
                        f"configured {stop_loss_pct:g} % puts it at {_px(config_stop)}")
        if abs(tighter_pct) <= LEVEL_MATCH_PCT:
            level = "as configured"
        elif exit.replaced or (tighter_pct > 0 and trailing_enabled):
            level = "trailing update"
        elif tighter_pct > 0:
            level = "tighter than configured"
        else:
            level = "wider than configured"

    if exit.replaced:
        path = " → ".join(_px(float(o.trigger_px)) for o in exit.replaced if o.trigger_px is not None)
        trailing = (f"yes: the stop was moved {len(exit.replaced)} time(s) before it fired "
                    f"({path} → {_px(trigger) if trigger is not None else '?'})")
    elif exit.order is not None and exit.opened_at is not None:
        trailing = ("no: the stop that fired was the only stop placed for this position"
                    + (" (trailing_stop is off in config.json)" if trailing_enabled is False else ""))
    else:
        trailing = ("unknown: " + ("the position opened before the window read" if exit.order is not None
                                   else "no order history for this exit"))
    return StopAssessment(
        configured_pct=stop_loss_pct, configured_stop=config_stop, reference_px=reference_px, reference=reference,
        slippage_pct=slippage_pct, slippage_usd=slip * exit.size, config_slippage_pct=config_slip_pct,
        config_slippage_usd=config_slip_usd, verdict=verdict, level=level, level_detail=level_detail,
        trailing=trailing, tolerance_pct=tolerance_pct,
    )


def _match_logs(trades: pd.DataFrame, exits: list[LogExit]) -> dict[int, LogExit]:
    """Each log exit to the closing trade it reports: same coin, closest close time within the window."""
    matched: dict[int, LogExit] = {}
    by_coin: dict[str, list[tuple[int, datetime]]] = {}
    for index, coin, closed in zip(trades.index, trades["coin"], trades["closed_at"]):
        by_coin.setdefault(str(coin), []).append((int(index), closed.to_pydatetime()))
    for log in exits:
        if log.at is None:
            continue
        best, best_gap = None, None
        for index, closed in by_coin.get(log.coin, []):
            if not (closed - LOG_MATCH_BEFORE <= log.at <= closed + LOG_MATCH_AFTER) or index in matched:
                continue
            gap = abs((log.at - closed).total_seconds())
            if best_gap is None or gap < best_gap:
                best, best_gap = index, gap
        if best is not None:
            matched[int(best)] = log
    return matched


def find_stop_exits(fills: list[dict[str, Any]] | None, orders: list[PastOrder] | None,
                    logs: list[LogExit], coin: str | None) -> list[StopExit]:
    """Every stop-loss exit, oldest first: closing orders that were stop triggers (order history) or that the
    bot logged with reason=stop_loss, plus logged stop exits the fills do not show."""
    found: list[StopExit] = []
    by_oid = {o.oid: o for o in orders or []}
    trades = closed_trades(fills) if fills else None
    matched: dict[int, LogExit] = {}
    if trades is not None and len(trades):
        matched = _match_logs(trades, logs)
        for index, row in trades.iterrows():
            oid = int(row["oid"])
            order = by_oid.get(oid)
            log = matched.get(int(index))
            is_stop_order = order is not None and order.is_stop
            if not is_stop_order and not (log is not None and log.reason == "stop_loss"):
                continue
            side = row["position"] if isinstance(row["position"], str) else (
                "long" if row["side"] == "A" else "short")
            size = float(row["size"])
            per_unit = float(row["closed_pnl"]) / size if size else 0.0
            exit_px = float(row["avg_exit_px"])
            opened = None if pd.isna(row["open_time"]) else from_ms(int(row["open_time"]))
            closed = row["closed_at"].to_pydatetime()
            if is_stop_order:
                source = f"exchange: {order.order_type} order #{oid} ({order.status})"
            else:
                source = f"bot log reason=stop_loss; closed by order #{oid}" + (
                    f" ({order.order_type}, not the stop trigger)" if order is not None else "")
            stop = StopExit(coin=str(row["coin"]), side=side, size=size,
                            entry_px=exit_px - per_unit if side == "long" else exit_px + per_unit,
                            exit_px=exit_px, closed_at=closed, opened_at=opened, pnl=float(row["pnl"]),
                            source=source, oid=oid, order=order if is_stop_order else None, log=log)
            if is_stop_order and opened is not None:
                stop.replaced = sorted(
                    (o for o in by_oid.values() if o.coin == stop.coin and o.is_stop and o.oid != oid
                     and opened <= o.placed_at <= order.placed_at and o.status != "filled"),
                    key=lambda o: o.placed_at)
            found.append(stop)
    reported = set(id(log) for log in matched.values())
    for log in logs:
        if log.reason == "stop_loss" and id(log) not in reported and log.at is not None:
            found.append(StopExit(coin=log.coin, side=log.side, size=log.size, entry_px=log.entry, exit_px=log.exit,
                                  closed_at=log.at, opened_at=None, pnl=log.pnl, log=log,
                                  source="bot log only (no matching closing fill on the exchange)"))
    if coin:
        found = [s for s in found if s.coin == coin]
    return sorted(found, key=lambda s: s.closed_at)


# ----------------------------------------------------------------------------------------------
# formatting


def _px(value: float | Decimal | None) -> str:
    return "-" if value is None else format(float(value), ",.6g")


def _usd(value: float | Decimal | None) -> str:
    return "-" if value is None else f"{float(value):,.2f} USD"


def _hhmm(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def exit_evidence(stop: StopExit, verdict: StopAssessment) -> str:
    rows = [
        ["Coin / side", f"{stop.coin} {stop.side}"],
        ["Closed at (UTC)", _hhmm(stop.closed_at)],
        ["Opened at (UTC)", _hhmm(stop.opened_at)],
        ["Size", f"{stop.size:g}"],
        ["Entry", _px(stop.entry_px)],
        [f"Configured stop ({verdict.configured_pct:g} %)" if verdict.configured_pct is not None
         else "Configured stop", _px(verdict.configured_stop)],
        ["Stop trigger that fired", _px(stop.trigger_px) + (f" (order #{stop.oid})" if stop.order else "")],
        ["Exit (average fill)", _px(stop.exit_px)],
        [f"Slippage vs {verdict.reference}", f"{verdict.slippage_pct:.2f} % ({verdict.slippage_usd:,.2f} USD)"],
        ["Slippage vs configured stop", "-" if verdict.config_slippage_pct is None else
         f"{verdict.config_slippage_pct:.2f} % ({verdict.config_slippage_usd:,.2f} USD)"],
        ["Verdict", f"**{verdict.verdict}** (tolerance ±{verdict.tolerance_pct:g} %)"],
        ["Stop level", f"{verdict.level}: {verdict.level_detail}"],
        ["Trailing update", verdict.trailing],
        ["Realised PnL (net of fees)", _usd(stop.pnl)],
        ["Source", stop.source],
        ["Bot log", stop.log.message if stop.log else "no matching TRADE EXIT line"],
    ]
    return table(["", ""], rows)


def candles_evidence(candles: list[Candle], stop: StopExit, verdict: StopAssessment) -> str:
    if not candles:
        return "no candles returned for the window"
    low, high = min(c.low for c in candles), max(c.high for c in candles)
    level = Decimal(str(verdict.reference_px))
    held = [c for c in candles if stop.opened_at is None or c.close_time >= stop.opened_at]
    reached = [c for c in held if (c.low <= level if stop.side == "long" else c.high >= level)]
    since = "in the window" if stop.opened_at is None else f"while the position was open (from {stop.opened_at:%H:%M:%S})"
    first = (f"the 1m {'lows' if stop.side == 'long' else 'highs'} first reached the stop level {_px(level)} at "
             f"{reached[0].open_time:%H:%M} UTC {since}" if reached else
             f"no 1m candle reached the stop level {_px(level)} {since}")
    move = (float(candles[-1].close) - float(candles[0].open)) / float(candles[0].open) * 100
    summary = (f"{len(candles)} candles; low {_px(low)}, high {_px(high)} (range "
               f"{(float(high) - float(low)) / float(low) * 100:.2f} %), open→close {move:+.2f} %; {first}.")
    rows = [[f"{c.open_time:%H:%M}", _px(c.open), _px(c.high), _px(c.low), _px(c.close), f"{float(c.volume):g}"]
            for c in candles]
    return summary + "\n\n" + table(["time (UTC)", "open", "high", "low", "close", "volume"], rows)


def health_evidence(position_health: Any, health: HealthReport) -> str:
    """The bot's position_health check as a table (JSON when it does not have the documented shape)."""
    if position_health is None:
        return f"not available: {health.summary()}"
    rows = position_health.get("positions") if isinstance(position_health, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return "```json\n" + json.dumps(position_health, indent=2) + "\n```"
    columns = ["coin", "szi", "entry_px", "mark_px", "stop_px", "unrealized_pnl"]
    listing = table(columns, [[r.get(c, "-") for c in columns] for r in rows]) if rows else "no open positions"
    without = position_health.get("positions_without_stop")
    return (f"status **{position_health.get('status', '?')}**; positions without stop: "
            f"{', '.join(map(str, without)) if without else 'none'}\n\n{listing}")


def positions_evidence(checks: list[PositionCheck], health_unprotected: list[str] | None,
                       confirmed: list[str]) -> str:
    if not checks:
        body = "no open positions on the exchange"
    else:
        rows = []
        for check in checks:
            triggers = ", ".join(_px(o.trigger_px) for o in check.stops) or "none"
            distance = "-"
            if check.stops and check.entry_px:
                px = check.stops[0].trigger_px or Decimal(0)
                distance = f"{abs(float(check.entry_px - px)) / float(check.entry_px) * 100:.2f} %"
            status = check.status if check.status == "protected" else f"**{check.status}**"
            rows.append([check.coin, check.side, f"{check.size}", _px(check.entry_px), _px(check.mark_px),
                         _usd(check.unrealized_pnl), triggers, distance, f"{check.covered}", status])
        body = table(["coin", "side", "size", "entry", "mark", "uPnL", "stop trigger(s)", "stop distance",
                       "covered size", "status"], rows)
    if confirmed:
        body += (f"\n\n**Without a (full) stop-loss: {', '.join(confirmed)}** — seen twice, "
                 f"{UNPROTECTED_GRACE_SECONDS:g} s apart.")
    if health_unprotected is None:
        body += "\n\nCross-check: the bot's /health position_health could not be read."
    else:
        agree = sorted(health_unprotected) == sorted(confirmed)
        body += (f"\n\nCross-check: the bot's /health says positions without stop: "
                 f"{', '.join(health_unprotected) or 'none'}" + (" (agrees)." if agree else
                                                                  " — **differs from the exchange**."))
    return body


# ----------------------------------------------------------------------------------------------
# the flow


@flow(name="stop-loss-review",
      description="Runbook: Position Hit Stop-Loss — did the stop fire correctly, the price action before it, "
                  "and any open position left without a stop. Read-only.")
def stop_loss_review(bot: str | None = None, config: str | None = None, incident_id: int | None = None,
                     lookback_minutes: int = 60, tolerance_pct: float = 0.5, coin: str | None = None) -> Outcome:
    """Review the latest stop-loss exit and check every open position has a stop. Changes nothing.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
        lookback_minutes: how far back to look for the stop-loss exit (fills, order history and log)
        tolerance_pct: slippage beyond the stop, in % of the stop price, still counted as firing correctly
        coin: review the latest stop-loss exit of this coin only (default: any coin)
    """
    if lookback_minutes <= 0 or tolerance_pct < 0:
        raise ValueError("lookback_minutes must be positive and tolerance_pct not negative")
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "Position closed due to stop-loss trigger",
             ["review the stop-loss exit", "check every open position has a stop"], mention_level="L1")
    run.start_response()
    return _review(run, lookback_minutes, tolerance_pct, coin.upper() if coin else None)


def _result(future: Any, problems: list[str]) -> Any:
    """A task's result, or None with the error kept as a finding (an exchange read that failed)."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - a failed read is a finding, never a crash
        problems.append(str(error) or type(error).__name__)
        return None


def _review(run: IncidentRun, lookback_minutes: int, tolerance_pct: float, coin: str | None) -> Outcome:
    bot, account = run.bot, run.bot.hyperliquid
    now = datetime.now(UTC)
    since = now - timedelta(minutes=lookback_minutes)

    # Immediate actions and investigation: independent reads, concurrently.
    health_f = check_health.submit(bot)
    config_f = inspect_bot_config.submit(bot)
    exits_f = read_trade_exits.submit(bot.path(bot.log_file), since)
    position_lines_f = scan_log.submit(bot.path(bot.log_file), "position", 10)
    state_f = get_account_state.submit(account)
    orders_f = get_open_orders.submit(account)
    fills_f = get_fills.submit(account, since, now)
    history_f = get_order_history.submit(account)

    health: HealthReport = health_f.result()
    bot_config: BotConfigRead = config_f.result()
    log_exits: LogExits = exits_f.result()
    exchange_problems: list[str] = []
    state: AccountState | None = _result(state_f, exchange_problems)
    orders: list[OpenOrder] | None = _result(orders_f, exchange_problems)
    fills: list[dict[str, Any]] | None = _result(fills_f, exchange_problems)
    history: list[PastOrder] | None = _result(history_f, exchange_problems)

    # Risk settings (runbook: `cat config/config.json | jq '.risk_management'`).
    risk = bot_config.get("risk_management")
    if bot_config.error:
        run.add_evidence("Risk settings (config.json)", f"could not be read: {bot_config.error}")
    else:
        rows = [[k, json.dumps(v)] for k, v in (risk or {}).items()] if isinstance(risk, dict) else []
        run.add_evidence("Risk settings (config.json)", table(["risk_management", "value"], rows)
                         if rows else f"no risk_management section in {bot_config.path}")
    pct_value = bot_config.get(STOP_LOSS_PCT_KEY)
    stop_loss_pct = float(pct_value) if isinstance(pct_value, (int, float)) and not isinstance(pct_value, bool) \
        else None
    trailing_value = bot_config.get(TRAILING_KEY)
    trailing_enabled = trailing_value if isinstance(trailing_value, bool) else None

    # The log: `grep "TRADE EXIT" | tail -5` and `grep "position" | tail -10`.
    if log_exits.error:
        run.add_evidence("TRADE EXIT log lines", log_exits.error)
    else:
        recent = "\n".join(e.message for e in log_exits.exits[-5:]) or f"none in the last {lookback_minutes} min"
        run.add_evidence(f"TRADE EXIT log lines (last 5 of {len(log_exits.exits)} in {lookback_minutes} min)",
                         "```\n" + recent + "\n```")
    position_lines = position_lines_f.result()
    if not position_lines.error:
        run.add_evidence("Recent position log lines", "```\n" + ("\n".join(position_lines.last_matches) or "none")
                         + "\n```")

    # The bot's own view (runbook: `curl /health | jq '.checks.position_health'`).
    position_health = dig(health.body, bot.fields.position_health) if health.body else None
    health_unprotected: list[str] | None = None
    if isinstance(position_health, dict) and isinstance(position_health.get("positions_without_stop"), list):
        health_unprotected = [str(c) for c in position_health["positions_without_stop"]]
    run.add_evidence("Position health (/health)", health_evidence(position_health, health))
    run.note(f"health: {health.summary()}")

    # The exit: the latest stop-loss exit in the window.
    exits = find_stop_exits(fills, history, log_exits.exits, coin)
    latest = exits[-1] if exits else None
    verdict = assess(latest, stop_loss_pct, trailing_enabled, tolerance_pct) if latest else None
    if latest is not None and verdict is not None:
        run.add_evidence(f"Stop-loss exit: {latest.coin} {latest.side} at {_hhmm(latest.closed_at)} UTC",
                         exit_evidence(latest, verdict))
        run.note(f"latest stop-loss exit: {latest.coin} {latest.side} exit {_px(latest.exit_px)}, "
                 f"{verdict.verdict} ({verdict.slippage_pct:+.2f} % vs {verdict.reference}); stop {verdict.level}")
        if len(exits) > 1:
            rows = [[_hhmm(s.closed_at), s.coin, s.side, _px(s.exit_px), s.source] for s in exits[:-1][-10:]]
            run.add_evidence(f"Earlier stop-loss exits in the last {lookback_minutes} min",
                             table(["closed (UTC)", "coin", "side", "exit", "source"], rows))

    if exchange_problems:
        distinct = list(dict.fromkeys(exchange_problems))
        problem = distinct[0] + (f" (and {len(distinct) - 1} more failed reads)" if len(distinct) > 1 else "")
        run.add_evidence("Exchange", "**The exchange could not be read:**\n\n" + "\n".join(f"- {p}" for p in distinct))
        what = (f"the bot's log shows the stop-loss exit ({latest.coin} {latest.side}, {verdict.verdict} by its "
                f"numbers)" if latest and verdict else "the exit could not be reviewed")
        return run.escalate("L1", f"the exchange could not be read ({problem}); positions, stops and fills are "
                            f"unverified and {what}.",
                            ["check the exchange status and the network path to it",
                             "check positions and their stops by hand in the Hyperliquid UI",
                             "rerun stop-loss-review once the exchange answers"])

    # Price action before the exit (runbook: "Review price action leading to stop-loss").
    assert state is not None and orders is not None
    if latest is not None and verdict is not None:
        try:
            candles = get_candles(account, latest.coin, "1m", latest.closed_at - timedelta(minutes=CANDLE_MINUTES),
                                  latest.closed_at)
            run.add_evidence(f"Price action: {latest.coin} 1m candles, {CANDLE_MINUTES} min before the exit",
                             candles_evidence(candles, latest, verdict))
        except Exception as error:  # noqa: BLE001 - context only; the verdict stands without it
            run.add_evidence("Price action", f"candles could not be read: {error}")

    # Every open position behind a stop? Seen twice before it is flagged.
    checks = check_positions(state, orders)
    suspects = [c.coin for c in checks if c.unprotected]
    if suspects:
        time.sleep(UNPROTECTED_GRACE_SECONDS)
        again_state, again_orders = get_account_state.submit(account), get_open_orders.submit(account)
        state2, orders2 = _result(again_state, []), _result(again_orders, [])
        if state2 is not None and orders2 is not None:
            checks = check_positions(state2, orders2)
            suspects = [c.coin for c in checks if c.unprotected and c.coin in suspects]
    unprotected = suspects
    run.add_evidence("Open positions and their stops (exchange)",
                     positions_evidence(checks, health_unprotected, unprotected))
    run.add_evidence("Account balance and margin",
                     table(["account value", "withdrawable", "margin used", "margin usage"],
                            [[_usd(state.account_value), _usd(state.withdrawable), _usd(state.total_margin_used),
                              "-" if state.margin_usage is None else f"{float(state.margin_usage) * 100:.2f} %"]]))

    return _decide(run, latest, verdict, unprotected, checks, lookback_minutes, coin)


def _decide(run: IncidentRun, latest: StopExit | None, verdict: StopAssessment | None, unprotected: list[str],
            checks: list[PositionCheck], lookback_minutes: int, coin: str | None) -> Outcome:
    findings: list[str] = []
    steps: list[str] = []
    if latest is not None and verdict is not None:
        what = (f"stop-loss on {latest.coin} {latest.side} {verdict.verdict}: exit {_px(latest.exit_px)} is "
                f"{verdict.slippage_pct:.2f} % ({verdict.slippage_usd:,.2f} USD) beyond the {verdict.reference} "
                f"{_px(verdict.reference_px)} (tolerance {verdict.tolerance_pct:g} %); stop level {verdict.level}")
        findings.append(what)
        if verdict.problems:
            steps += ["review the stop-loss exit and the price action in the incident report",
                      "adjust stop-loss parameters (risk_management.stop_loss_pct) or the order type if the "
                      "slippage is structural; consider partial position closures and market condition filters"]
    else:
        scope = f" for {coin}" if coin else ""
        findings.append(f"no stop-loss exit{scope} in the last {lookback_minutes} min (exchange fills, order "
                        f"history, bot log)")
    if unprotected:
        details = ", ".join(f"{c.coin} {c.side} {c.size}" + (f" (stop covers only {c.covered})" if c.stops else "")
                            for c in checks if c.coin in unprotected)
        findings.append(f"open position(s) WITHOUT a stop-loss: {details}")
        steps.insert(0, f"assess if manual intervention is needed: place a stop-loss for {', '.join(unprotected)} "
                        f"now, or close the position")
    else:
        findings.append(f"every open position has a stop ({len(checks)} open)")
    summary = "; ".join(findings) + "."
    run.add_evidence("Findings", "\n".join(f"- {f}" for f in findings)
                     + ("\n\n**Next steps**\n\n" + "\n".join(f"1. {s}" for s in steps) if steps else ""))
    if not steps:
        outcome = j.AUTO_RESOLVED if latest is not None else j.FALSE_POSITIVE
        return run.resolve(outcome, summary)
    steps.append("check account balance and margin (in the incident report)")
    return run.escalate("L1", summary, steps)
