"""📉 Daily Loss Limit Reached (RUNBOOK.md), as a flow.

Immediate actions: verify trading is stopped (health status / circuit breaker; a bot still trading past
its limit is stopped — verified PID only — under the `kill` policy), assess today's losses (fills since
00:00 UTC from the exchange) and the open positions.
Investigation: losses by coin, by hour and by strategy, the largest losers, the strategy log, the risk
parameters of the bot's config.
Recovery: the runbook's "reset daily loss counter" and "resume with reduced position sizes" become one
change of the bot's config.json, shown as a diff and written only when the `config_change` policy
allows it (approval in the Prefect UI by default), atomically and with a backup of the old file.
The flow never restarts the bot or resumes trading: that, and the strategy review meeting, is a person's
decision, so a real daily-loss incident ends escalated to L1 with the findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task

from reports.trades import TradeMetrics, closed_trades, compute_metrics
from runbook import journal as j
from runbook.incident import IncidentRun, Outcome
from runbook.locks import BotBusy, bot_lock
from runbook.markdown import table, usd
from runbook.settings import ConfigError
from tasks import NO_CACHE_POLICY
from tasks.botconfig import (
    BotConfig, BotConfigError, ConfigChange, apply_config_change, propose_change, read_bot_config,
)
from tasks.hyperliquid import AccountState, get_account_state, get_fills
from tasks.logs import PatternScan, scan_log
from tasks.futures import settle
from tasks.probes import HealthReport, breaker_state, check_health, dig, health_field, number
from tasks.process import BotProcess, ProcessError, check_process, stop_process

ALERT = "daily-loss-limit"
TOP_LOSERS = 5
STRATEGY_LOG_LINES = 20
RESUME_STEPS = ["Resume trading with reduced position sizes (a person restarts the bot when satisfied)",
                "Schedule strategy review meeting"]


def start_of_day(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


# --- tasks -----------------------------------------------------------------------------------


@dataclass
class LossAnalysis:
    """Today's trading from the exchange's fills, cut the ways the runbook's loss analysis asks for."""

    metrics: TradeMetrics
    trades: pd.DataFrame
    strategy: str
    fills: int
    limit_crossed_at: datetime | None = None
    fills_after_limit: int = 0

    @property
    def loss(self) -> float:
        """Today's loss as a positive number (0 on a winning day): closedPnl - fees of every fill."""
        return max(0.0, -float(self.metrics.total_pnl))


@task(name="analyse today's losses", cache_policy=NO_CACHE_POLICY)
def analyse_losses(fills: list[dict[str, Any]], start_balance: float, strategy: str,
                   limit: float | None) -> LossAnalysis:
    """Runbook: "Analyze loss causes" — metrics, closed trades and when the daily limit was crossed."""
    balance = start_balance if start_balance > 0 else 10_000.0
    metrics = compute_metrics(fills, start_balance=balance)
    if start_balance > 0 and start_balance - float(metrics.total_pnl) > 0:
        # Equity at 00:00 UTC is today's balance minus today's P&L: drawdown % against that.
        metrics = compute_metrics(fills, start_balance=round(start_balance - float(metrics.total_pnl), 6))
    trades = closed_trades(fills)
    analysis = LossAnalysis(metrics, trades, strategy, len(fills))
    if limit is not None and len(trades):
        running = trades["pnl"].cumsum()
        crossed = trades.loc[running <= -limit, "close_time"]
        if len(crossed):
            crossed_ms = int(crossed.iloc[0])
            analysis.limit_crossed_at = datetime.fromtimestamp(crossed_ms / 1000, UTC)
            analysis.fills_after_limit = sum(1 for fill in fills if int(fill.get("time", 0)) > crossed_ms)
    return analysis


# --- the report's tables -----------------------------------------------------------------------


def losses_by_coin(analysis: LossAnalysis) -> str:
    rows = sorted(analysis.metrics.by_coin.items(), key=lambda item: item[1].total_pnl)
    return table(["coin", "trades", "losses", "win rate", "P&L (USD)", "fees (USD)", "worst trade"], [
        [coin, m.trades, m.losses, "n/a" if m.win_rate is None else f"{m.win_rate:.0%}", usd(m.total_pnl, True),
         usd(m.fees), usd(m.worst_trade, True)] for coin, m in rows])


def losses_by_hour(analysis: LossAnalysis) -> str:
    trades = analysis.trades
    if not len(trades):
        return "_no closed trades today_"
    hours = trades["closed_at"].dt.hour
    grouped = trades.assign(hour=hours, loss=trades["pnl"] < 0).groupby("hour")
    rows = [[f"{int(hour):02d}:00", len(group), int(group["loss"].sum()), usd(group["pnl"].sum(), True)]
            for hour, group in grouped]
    return table(["hour (UTC)", "trades", "losses", "P&L (USD)"], rows)


def losses_by_strategy(analysis: LossAnalysis) -> str:
    m = analysis.metrics
    rows = [[analysis.strategy, m.trades, m.losses, "n/a" if m.win_rate is None else f"{m.win_rate:.0%}",
             usd(m.total_pnl, True)]]
    return (table(["strategy", "trades", "losses", "win rate", "P&L (USD)"], rows) +
            "\n\nFills carry no strategy tag: every trade is attributed to the strategy the bot's config runs "
            "(`strategy.name`).")


def largest_losers(analysis: LossAnalysis) -> str:
    losers = analysis.trades[analysis.trades["pnl"] < 0].sort_values("pnl").head(TOP_LOSERS)
    if not len(losers):
        return "_no losing trades today_"
    rows = [[row.closed_at.strftime("%H:%M:%S"), row.coin, row.position, f"{row.size:g}",
             f"{row.avg_exit_px:,.6g}", usd(row.pnl, True)] for row in losers.itertuples()]
    return table(["closed (UTC)", "coin", "position", "size", "exit px", "P&L (USD)"], rows)


def today_summary(analysis: LossAnalysis, limit: float | None, bot_daily_pnl: float | None) -> str:
    m = analysis.metrics
    share = f"{analysis.loss / limit:.0%}" if limit else "n/a"
    rows = [
        ["Fills since 00:00 UTC", analysis.fills],
        ["Closed trades", f"{m.trades} (wins {m.wins}, losses {m.losses})"],
        ["Win rate", "n/a" if m.win_rate is None else f"{m.win_rate:.0%}"],
        ["Today's P&L (exchange, after fees)", usd(m.total_pnl, True)],
        ["Fees", usd(m.fees)],
        ["Daily loss limit", usd(limit)],
        ["Loss / limit", share],
        ["Bot's own daily P&L (/health, since its process start, before fees)", usd(bot_daily_pnl, True)],
        ["Worst trade", usd(m.worst_trade, True)],
        ["Longest losing streak", m.longest_losing_streak],
        ["Max drawdown today", usd(m.max_drawdown)],
        ["Limit crossed at", analysis.limit_crossed_at.strftime("%H:%M:%S UTC") if analysis.limit_crossed_at
         else "not crossed by closed trades"],
        ["Fills after the limit was crossed", analysis.fills_after_limit],
    ]
    return table(["", ""], rows)


def positions_table(account: AccountState) -> str:
    usage = account.margin_usage
    head = table(["account value", "withdrawable", "margin used", "margin usage"], [[
        usd(account.account_value), usd(account.withdrawable), usd(account.total_margin_used),
        "n/a" if usage is None else f"{float(usage):.1%}"]])
    if not account.positions:
        return head + "\n\nNo open positions."
    rows = [[p.coin, p.side, f"{abs(p.size):f}", "n/a" if p.entry_px is None else f"{p.entry_px:f}",
             usd(p.position_value), usd(p.unrealized_pnl, True),
             "none" if p.liquidation_px is None else f"{p.liquidation_px:.6g}", f"{p.leverage}x {p.leverage_type}",
             usd(p.margin_used)] for p in account.positions]
    return head + "\n\n" + table(["coin", "side", "size", "entry", "value (USD)", "uPnL (USD)", "liq. px",
                                  "leverage", "margin (USD)"], rows)


def risk_table(config: BotConfig) -> str:
    return table(["section", "key", "value"], [[s, k, v] for s, k, v in config.risk_parameters()])


# --- the flow ----------------------------------------------------------------------------------


@flow(name="daily-loss-limit",
      description="Runbook: Daily Loss Limit Reached — verify trading stopped, assess losses and causes, "
                  "propose reduced sizes and a daily-counter reset (applied only when approved), escalate.")
def daily_loss_limit(bot: str | None = None, config: str | None = None, incident_id: int | None = None,
                     reduce_size_factor: float = 0.5, reset_daily_counter: bool = True) -> Outcome:
    """Contain a day that hit the daily loss limit and prepare, for a person, the way back.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
        reduce_size_factor: multiply the bot's position sizes (position_sizing.base_size_usd and
            risk_management.max_position_usd) by this, 0 < factor <= 1; 1 leaves sizes unchanged
        reset_daily_counter: also reset the daily loss counter (writes risk_limits.daily_loss_reset_at; the
            bot's counter restarts when a person restarts it to resume trading)
    """
    if isinstance(reduce_size_factor, bool) or not 0 < reduce_size_factor <= 1:
        raise ValueError(f"reduce_size_factor must be > 0 and <= 1, not {reduce_size_factor!r}")
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "Daily loss limit exceeded (100% of threshold)",
             ["verify trading is stopped", "assess today's losses and open positions"], mention_level="L1")
    run.start_response()
    return _respond(run, reduce_size_factor, reset_daily_counter)


@dataclass
class Look:
    """Everything the immediate actions and the investigation read, each with its failure if any."""

    process: BotProcess | None
    process_error: str | None
    health: HealthReport
    config: BotConfig | None
    config_error: str | None
    account: AccountState | None
    account_error: str | None
    fills: list[dict[str, Any]] | None
    fills_error: str | None
    strategy_log: PatternScan | None


def look(run: IncidentRun) -> Look:
    """Process, health, config, account, today's fills and the strategy log, read concurrently."""
    bot, account = run.bot, run.bot.hyperliquid
    process = check_process.submit(bot)
    health = check_health.submit(bot)
    config = read_bot_config.submit(bot.path(bot.config_file))
    state = get_account_state.submit(account)
    fills = get_fills.submit(account, start_of_day())
    strategy = scan_log.submit(bot.path(bot.log_file), "strategy", keep_last=STRATEGY_LOG_LINES)
    found = {name: settle(future) for name, future in
             (("process", process), ("health", health), ("config", config), ("account", state), ("fills", fills),
              ("strategy", strategy))}
    report, problem = found["health"]
    if report is None:  # the probe itself never raises; the task machinery might
        report = HealthReport(url=bot.health_url, reachable=False, error=problem)
    return Look(
        process=found["process"][0], process_error=found["process"][1], health=report,
        config=found["config"][0], config_error=found["config"][1],
        account=found["account"][0], account_error=found["account"][1],
        fills=found["fills"][0], fills_error=found["fills"][1], strategy_log=found["strategy"][0],
    )


def _respond(run: IncidentRun, factor: float, reset: bool) -> Outcome:
    seen = look(run)
    fields = run.bot.fields
    health = seen.health
    tripped, reason = breaker_state(health, fields)
    bot_daily = number(dig(health.body or {}, health_field(fields, "daily_pnl", "metrics.daily_pnl")))
    limit = seen.config.number("risk_limits", "daily_loss_limit_usd") if seen.config else None
    strategy = str(seen.config.get("strategy", "name", "unknown")) if seen.config else "unknown"

    analysis: LossAnalysis | None = None
    if seen.fills is not None:
        start = float(seen.account.account_value) if seen.account else 0.0
        analysis = analyse_losses(seen.fills, start, strategy, limit)
    exchange_problem = "; ".join(e for e in (seen.fills_error, seen.account_error) if e) or None

    losses = [x for x in (analysis.loss if analysis else None, -bot_daily if bot_daily is not None else None)
              if x is not None]
    loss = max(losses) if losses else None
    over = limit is not None and loss is not None and loss >= limit
    where = seen.process_error or (f"PID {seen.process.pid}" if seen.process else "no bot process")
    status_line = (f"{where}; {health.summary()}; circuit breaker "
                   f"{'TRIPPED' + (f' ({reason})' if reason else '') if tripped else 'not tripped'}")
    run.add_evidence("Trading status", table(["", ""], [
        ["Process", where], ["Health", health.summary()],
        ["Circuit breaker", ("tripped" if tripped else "not tripped") + (f": {reason}" if reason else "")],
        ["Today's loss (largest of exchange and bot figures)", usd(loss)],
        ["Daily loss limit (config)", usd(limit)],
    ]))
    _add_loss_evidence(run, seen, analysis, limit, bot_daily)
    run.note(f"observed: {status_line}; today's loss {usd(loss)} USD, limit {usd(limit)} USD"
             + (f"; exchange figures unavailable: {exchange_problem}" if exchange_problem else ""))

    # Not actually at the limit: nothing to do.
    other_reason = tripped and reason is not None and "loss" not in reason.lower()
    if not over and (not tripped or other_reason):
        if exchange_problem is not None or limit is None:
            missing = exchange_problem or f"no daily loss limit in {run.bot.config_file} ({seen.config_error})"
            return run.escalate("L1", f"Could not confirm the daily loss: {missing}. The bot reports a daily "
                                f"P&L of {usd(bot_daily, True)} USD (since its process start); {status_line}.",
                                ["check today's P&L on the exchange by hand", "re-run this flow once it answers"])
        if other_reason:
            return run.resolve(j.FALSE_POSITIVE, f"the bot halted itself for another reason ({reason}); today's "
                               f"loss {usd(loss)} USD is below the limit {usd(limit)} USD — see that runbook "
                               "section.")
        return run.resolve(j.FALSE_POSITIVE, f"daily loss limit not reached: today's loss {usd(loss)} USD is below "
                           f"the limit {usd(limit)} USD and the bot is not halted ({status_line}); nothing touched.")

    # 1. Stop all trading (the bot should have stopped itself: verify).
    stopped, stop_text, stop_failed = _ensure_stopped(run, seen, tripped, reason, loss, limit, analysis)
    run.tell("INVESTIGATING", f"today's loss {usd(loss)} USD vs limit {usd(limit)} USD; trading: {stop_text}",
             ["analyse loss causes", "propose reduced position sizes for approval"])

    # Recovery: a config change, applied only when the policy allows it.
    change_text = _recover(run, seen.config, seen.config_error, factor, reset)

    run.add_evidence("Resuming trading", "This flow never restarts the bot or resumes trading: that is a person's "
                     "decision, after reading this report.\n\n" + "\n".join(f"- {s}" for s in RESUME_STEPS))
    worst = ""
    if analysis and analysis.metrics.by_coin:
        coin, m = min(analysis.metrics.by_coin.items(), key=lambda item: item[1].total_pnl)
        worst = f" ({analysis.metrics.trades} trades; worst coin {coin} {usd(m.total_pnl, True)} USD)"
    summary = (f"Daily loss limit reached: today's loss {usd(loss)} USD vs limit {usd(limit)} USD{worst}. "
               f"Trading: {stop_text}. Config change: {change_text}."
               + (f" Exchange figures unavailable: {exchange_problem}." if exchange_problem else "")
               + " Resuming trading is a person's decision.")
    next_steps = ([] if stopped else [f"STOP THE BOT NOW: {stop_text}"]) + [
        "read the incident report: losses by coin, hour and strategy, the largest losers, open positions",
        "review the open positions (liquidation needs)"] + RESUME_STEPS
    return run.escalate("L2" if stop_failed else "L1", summary, next_steps)


def _add_loss_evidence(run: IncidentRun, seen: Look, analysis: LossAnalysis | None, limit: float | None,
                       bot_daily: float | None) -> None:
    if analysis is not None:
        run.add_evidence("Today's losses (since 00:00 UTC, exchange fills)", today_summary(analysis, limit, bot_daily))
        run.add_evidence("Losses by coin", losses_by_coin(analysis))
        run.add_evidence("Losses by hour", losses_by_hour(analysis))
        run.add_evidence("Losses by strategy", losses_by_strategy(analysis))
        run.add_evidence(f"Largest {TOP_LOSERS} losers", largest_losers(analysis))
    else:
        run.add_evidence("Today's losses", f"**Could not read today's fills from the exchange:** {seen.fills_error}")
    if seen.account is not None:
        run.add_evidence("Open positions (exchange)", positions_table(seen.account))
    else:
        run.add_evidence("Open positions", f"**Could not read the account from the exchange:** {seen.account_error}")
    scan = seen.strategy_log
    if scan is not None:
        body = scan.error or ("```\n" + "\n".join(scan.last_matches) + "\n```" if scan.last_matches else "_none_")
        run.add_evidence(f"Strategy log (last {STRATEGY_LOG_LINES} lines)", body)
    if seen.config is not None:
        run.add_evidence("Risk parameters (config.json)", risk_table(seen.config))
    else:
        run.add_evidence("Risk parameters", f"**Could not read the bot's config:** {seen.config_error}")


def _ensure_stopped(run: IncidentRun, seen: Look, tripped: bool, reason: str | None, loss: float | None,
                    limit: float | None, analysis: LossAnalysis | None) -> tuple[bool, str, bool]:
    """Runbook step 1, "Stop All Trading": (stopped, what happened, whether stopping failed)."""
    if seen.process_error:
        return False, f"cannot tell which process is the bot ({seen.process_error}); not touched", True
    if seen.process is None:
        return True, "no bot process is running", False
    if tripped:
        return True, f"halted by the bot's circuit breaker ({reason or 'no reason given'})", False

    pid = seen.process.pid
    kept = (f"; {analysis.fills_after_limit} fills since the limit was crossed at "
            f"{analysis.limit_crossed_at:%H:%M:%S} UTC") if analysis and analysis.limit_crossed_at else ""
    run.note(f"the bot is still trading (PID {pid}, {seen.health.summary()}) although today's loss "
             f"{usd(loss)} USD has reached the limit {usd(limit)} USD{kept}")
    what = (f"stop the trading bot (PID {pid}), still trading past its daily loss limit "
            f"({usd(loss)} of {usd(limit)} USD)")
    decision = run.authorize("kill", what)
    if not decision.allowed:
        run.act("stop", f"not stopped: {decision.how}", ok=False, dry_run=decision.dry_run, detail={"pid": pid})
        return False, f"the bot (PID {pid}) is STILL TRADING: not stopped ({decision.how})", False
    run.note(f"stop: {decision.how}")
    try:
        with bot_lock(run.bot_name, run.settings.recovery.lock_timeout_seconds,
                      run.settings.recovery.lock_lease_seconds, journal=run.journal):
            result = stop_process(seen.process, run.bot, run.settings.recovery.stop_timeout_seconds)
            after = check_process(run.bot)
    except BotBusy as busy:
        run.act("stop", f"not stopped: {busy}", ok=False, detail={"pid": pid})
        return False, f"the bot (PID {pid}) is STILL TRADING: {busy}", True
    except ProcessError as error:
        run.act("stop", f"stop failed: {error}", ok=False, detail={"pid": pid})
        return False, f"the bot (PID {pid}) could not be stopped: {error}", True
    if after is not None:
        run.act("stop", f"{result}, but a bot process runs again as PID {after.pid}", ok=False,
                detail={"pid": pid, "new_pid": after.pid})
        return False, f"stopped PID {pid} but the bot runs again as PID {after.pid}", True
    run.act("stop", f"{result}: trading stopped (daily loss limit reached{kept})", detail={"pid": pid})
    return True, f"the bot kept trading past the limit; stopped it ({result})", False


def _recover(run: IncidentRun, config: BotConfig | None, config_error: str | None, factor: float,
             reset: bool) -> str:
    """The runbook's recovery steps as a config change; returns one phrase for the summary."""
    if config is None:
        return f"none proposed: the bot's config could not be read ({config_error})"
    change = propose_change(config, factor, reset)
    if change.empty:
        run.note("no config change requested (reduce_size_factor=1, reset_daily_counter=False)")
        return "none requested"
    run.add_evidence("Proposed config change", f"`{config.path}`\n\n```\n{change.diff()}\n```\n\n"
                     "Daily counter: the bot counts daily P&L from its process start, so the reset takes effect "
                     "when a person restarts it; `risk_limits.daily_loss_reset_at` records the decision.")
    what = f"change the bot's config {config.path} (the old file kept as a timestamped backup): {change.summary()}"
    decision = run.authorize("config_change", what)
    detail: dict[str, Any] = {"path": str(config.path), "changes": change.to_dict()}
    if not decision.allowed:
        # A dry-run decision already spells out the change ("dry-run: would change ..."): say it once.
        text = decision.how if decision.dry_run else f"{decision.how}; proposed: {change.summary()}"
        run.act("config-change", f"config not changed — {text}", ok=False, dry_run=decision.dry_run, detail=detail)
        return f"not applied ({'dry-run' if decision.dry_run else decision.how}); proposed: {change.summary()}"
    return _apply(run, config.path, change, detail, decision.how)


def _apply(run: IncidentRun, path: Path, change: ConfigChange, detail: dict[str, Any], how: str) -> str:
    try:
        path = run.bot.confined_path(Path(path))
        with bot_lock(run.bot_name, run.settings.recovery.lock_timeout_seconds,
                      run.settings.recovery.lock_lease_seconds, journal=run.journal):
            backup = apply_config_change(path, change)
    except BotBusy as busy:
        run.act("config-change", f"config not changed: {busy}", ok=False, detail=detail)
        return f"approved but not applied: {busy}"
    except (BotConfigError, ConfigError) as error:
        run.act("config-change", f"config not changed: {error}", ok=False, detail=detail)
        return f"approved but not applied: {error}"
    detail["backup"] = str(backup)
    run.act("config-change", f"config changed ({how}): {change.summary()}; old file kept as {backup}", detail=detail)
    return f"applied ({how}): {change.summary()}; backup {backup.name}"
