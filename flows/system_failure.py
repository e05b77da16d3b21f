"""🚨 Complete System Failure (RUNBOOK.md "Emergency Procedures"), as a flow.

1. Stop All Trading — the exchange side is unambiguous and goes first, whatever the process lookup says:
   the open orders are cancelled at once (stop-losses and take-profits — reduce-only triggers — kept by
   default, `[emergency] keep_protective_orders`) and Hyperliquid's dead man's switch (scheduleCancel) is
   armed where the exchange allows it (it refuses accounts below a traded-volume minimum: the report says
   so). Then the runbook's `pkill -f trading_bot`, done safely: every process matching `process_match` is
   listed (PID, start time, command line) and stopped under the `kill` policy — several matches always need
   a person's yes or `--yes` — each verified right before it is signalled (SIGTERM, SIGKILL after
   `[emergency] stop_timeout_seconds`), nothing else touched; a supervised bot is stopped through its
   supervisor first so it stays stopped. Once they are gone the exchange is swept again for orders a dying
   bot placed, and the switch is disarmed if protective orders are kept (it would cancel them too).
2. Assess Damage — positions, mark prices, unrealised P&L and margin from the exchange, read while
4. Preserve Evidence — the evidence backup (logs, data, config; key files never) is written.
3. Manual Liquidation if Needed — only with a person's yes: the run pauses with a form listing each
   position (coin, side, size, mark price, unrealised P&L), one tick box per position (approve all, some
   or none); or `runbook run system-failure --yes`; or `[policy] liquidate = "auto"`. `dry-run` only
   says what it would close. One position at a time through the official SDK (reduce-only IOC, bounded
   slippage), every order's status checked, what did not fill retried within limits; a position's protective
   orders are cancelled only once it is verified flat. Then the account is read again to verify it is flat.
   Positions left open (rejected, timed out, not chosen) keep their stops: the report and Slack list each
   with its protective orders.
It does not wait for the per-bot remediation lock: an emergency stop never queues behind another run.
Stakeholders get the runbook's "Stakeholder Communication". The incident ends escalated to a person:
trading stays stopped (crash recovery never restarts a bot a remediation stopped on purpose) until
someone decides to resume.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pydantic
from prefect import flow
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from runbook import journal as j
from runbook.incident import IncidentRun, Outcome
from runbook.markdown import table, usd
from runbook.policy import authorize
from runbook.settings import Policy
from tasks.evidence import BackupResult, backup_evidence
from tasks.exchange import (
    CancelReport, DeadMansSwitch, arm_dead_mans_switch, cancel_coin_orders, cancel_open_orders, close_position_task,
    disarm_dead_mans_switch,
)
from tasks.futures import settle
from tasks.hyperliquid import AccountState, Position, get_account_state, get_open_orders
from tasks.notify import StakeholderUpdate, notify_stakeholders
from tasks.process import BotProcess, find_bot_processes, list_bot_processes, stop_process, supervisor_control

ALERT = "system-failure"


# --- the liquidation form ------------------------------------------------------------------------


class LiquidationApproval(RunInput):
    """The answer to "close these positions?": the switch, then one tick box per position."""

    approve: bool = Field(False, description="Close the positions ticked below (reduce-only IOC, bounded slippage)?")
    note: str = Field("", description="Why (kept in the incident journal)")


def close_field(coin: str) -> str:
    return "close_" + re.sub(r"[^A-Za-z0-9]", "_", coin)


def mark_price(position: Position) -> Decimal | None:
    return position.position_value / abs(position.size) if position.size else None


def position_line(position: Position) -> str:
    mark = mark_price(position)
    return (f"{position.side} {abs(position.size)} {position.coin}, mark {usd(mark)}, "
            f"unrealised P&L {usd(position.unrealized_pnl, True)} USD")


def positions_table(positions: list[Position]) -> str:
    return table(["coin", "side", "size", "mark price", "entry price", "unrealised P&L (USD)", "liquidation price"], [
        [p.coin, p.side, abs(p.size), usd(mark_price(p)), usd(p.entry_px), usd(p.unrealized_pnl, True),
         usd(p.liquidation_px)] for p in positions])


def liquidation_form(positions: list[Position], slippage: float, timeout_seconds: int) -> type[LiquidationApproval]:
    """The form the run pauses with: the positions as a table, and a tick box (default ticked) for each."""
    boxes: dict[str, Any] = {
        close_field(p.coin): (bool, Field(True, title=f"Close {p.coin}", description=position_line(p)))
        for p in positions
    }
    form = pydantic.create_model("LiquidationApproval", __base__=LiquidationApproval, **boxes)
    return form.with_initial_data(description=(
        "### Liquidation needs approval\n\nThe trading system failed; trading is stopped. These positions are "
        f"open:\n\n{positions_table(positions)}\n\nSet **approve** and leave ticked the positions to close: each "
        f"is closed with reduce-only IOC orders at most {slippage:.1%} from the mid, retried until flat within "
        f"limits. Untick a position to keep it. Reject (or no answer within {timeout_seconds} s) closes nothing."))


@dataclass
class LiquidationChoice:
    coins: list[str]
    how: str
    dry_run: bool = False


def choose_positions(policy: Policy, positions: list[Position], assume_yes: bool, slippage: float,
                     timeout_seconds: int) -> LiquidationChoice:
    """Which positions may be closed: by policy, by --yes, or by a person's answer to the form."""
    coins = [p.coin for p in positions]
    listing = "; ".join(position_line(p) for p in positions)
    if policy is Policy.dry_run:
        return LiquidationChoice([], f"dry-run: would close {listing}", dry_run=True)
    if policy is Policy.auto:
        return LiquidationChoice(coins, "allowed by policy 'auto'")
    if assume_yes:
        return LiquidationChoice(coins, "approved with --yes from the shell")
    form = liquidation_form(positions, slippage, timeout_seconds)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_seconds, poll_interval=2)
    except FlowPauseTimeout:
        return LiquidationChoice([], f"not approved within {timeout_seconds} s")
    note = f" ({answer.note})" if answer.note else ""
    if not answer.approve:
        return LiquidationChoice([], f"rejected by a person{note}")
    chosen = [coin for coin in coins if getattr(answer, close_field(coin), True)]
    kept = [coin for coin in coins if coin not in chosen]
    return LiquidationChoice(chosen, f"approved by a person for {', '.join(chosen) or 'no position'}"
                             + (f", keeping {', '.join(kept)}" if kept else "") + note)


# --- step 1: stop all trading ------------------------------------------------------------------


@dataclass
class ExchangeCut:
    """The exchange side of stopping: unambiguous, done at once whatever the process lookup says."""

    orders: CancelReport | None
    cancel_error: str | None
    switch: DeadMansSwitch | None
    switch_error: str | None

    def text(self) -> str:
        orders = self.orders.summary() if self.orders is not None else f"open orders NOT cancelled ({self.cancel_error})"
        if self.switch is not None:
            return f"{orders}; {self.switch.summary()}"
        return orders + (f"; dead man's switch NOT armed ({self.switch_error})" if self.switch_error else "")


@dataclass
class TradingStop:
    bot_stopped: bool
    orders: CancelReport | None
    text: str
    running: list[BotProcess] = field(default_factory=list)
    failed: bool = False
    seconds: float | None = None

    @property
    def stopped(self) -> bool:
        return self.bot_stopped and self.orders is not None and self.orders.cleared


def processes_table(processes: list[BotProcess]) -> str:
    if not processes:
        return "_no process matches_"
    return table(["PID", "started (UTC)", "found by", "command line"],
                 [[p.pid, p.started, p.found_by, f"`{' '.join(p.cmdline)}`"] for p in processes])


def cut_exchange_side(run: IncidentRun) -> tuple[ExchangeCut, list[BotProcess] | None, str | None]:
    """Cancel the open orders and arm the dead man's switch at once, while every matching process is listed."""
    bot, emergency = run.bot, run.settings.emergency
    cancelling = cancel_open_orders.submit(bot, emergency.keep_protective_orders)
    arming = arm_dead_mans_switch.submit(bot, emergency.dead_mans_switch_seconds) \
        if emergency.dead_mans_switch_seconds else None
    processes, lookup_error = settle(list_bot_processes.submit(bot))
    orders, cancel_error = settle(cancelling)
    switch, switch_error = settle(arming) if arming is not None else (None, None)
    cut = ExchangeCut(orders, cancel_error, switch, switch_error)
    _record_cancel(run, orders, cancel_error)
    if switch is not None:
        run.act("dead-mans-switch", switch.summary(), ok=switch.armed,
                detail={"at": switch.at.isoformat() if switch.at else None, "detail": switch.detail})
    elif switch_error:
        run.act("dead-mans-switch", f"not armed: {switch_error}", ok=False)
    run.add_evidence("Processes matching the bot (at the start)", processes_table(processes or [])
                     if processes is not None else f"**The process lookup failed:** {lookup_error}")
    return cut, processes, lookup_error


def _record_cancel(run: IncidentRun, orders: CancelReport | None, error: str | None) -> None:
    if orders is not None:
        run.act("cancel-orders", orders.summary(), ok=orders.cleared,
                detail={"cancelled": [c.__dict__ for c in orders.cancelled], "failed": [c.__dict__ for c in orders.failed],
                        "kept": [c.__dict__ for c in orders.kept], "remaining": orders.remaining})
    else:
        run.act("cancel-orders", f"open orders NOT cancelled: {error}", ok=False)


def stop_processes(run: IncidentRun, processes: list[BotProcess] | None, lookup_error: str | None,
                   assume_yes: bool) -> tuple[bool, str, list[BotProcess]]:
    """The runbook's `pkill -f trading_bot`, done safely: every listed process (each verified right before it is
    signalled; nothing else), a supervised bot through its supervisor first so it stays stopped.
    Several matches need a person's yes (or --yes) even under `kill = "auto"`: someone should see the list.
    Returns (every match gone, what happened, what still runs)."""
    bot, policy, emergency = run.bot, run.settings.policy, run.settings.emergency
    if processes is None:
        run.act("stop", f"not stopped: the process lookup failed ({lookup_error})", ok=False)
        return False, f"process lookup FAILED ({lookup_error}); nothing stopped", []
    if not processes and not bot.supervised:
        run.act("stop", "no bot process was running")
        return True, "no bot process was running", []
    listing = "; ".join(p.describe() for p in processes) or "none running"
    via = (f" (first `{' '.join(bot.supervisor_command('stop'))}`, so its supervisor does not start it again)"
           if bot.supervised else "")
    what = (f"stop {len(processes)} processes matching the bot{via}: {listing}" if len(processes) > 1
            else f"stop the trading bot{via}: {listing}")
    kill = Policy.approve if len(processes) > 1 and policy.kill is Policy.auto else policy.kill
    decision = authorize(kill, what, policy.approval_timeout_seconds, assume_yes)
    details = {"processes": [p.to_dict() for p in processes]}
    if not decision.allowed:
        run.act("stop", f"NOT stopped ({decision.how}); still running: {listing}", ok=False,
                dry_run=decision.dry_run, detail=details)
        return False, f"TRADING NOT STOPPED ({decision.how}): {len(processes)} process(es) run: {listing}", processes
    done: list[str] = []
    if bot.supervised:
        text, error = settle(supervisor_control.submit(bot, "stop"))
        done.append(text or f"supervisor stop FAILED: {error}")
    stops = [stop_process.submit(p, bot, emergency.stop_timeout_seconds) for p in processes]
    for process, future in zip(processes, stops):
        text, error = settle(future)
        done.append(text or f"PID {process.pid} NOT stopped: {error}")
    still = find_bot_processes(bot)
    details["still_running"] = [p.to_dict() for p in still]
    if still:
        left = "; ".join(p.describe() for p in still)
        run.act("stop", f"BOT STILL RUNNING after {'; '.join(done)}: {left}", ok=False, detail=details)
        return False, f"BOT STILL RUNNING ({left})", still
    run.act("stop", f"{'; '.join(done)} ({decision.how})", detail=details)
    return True, f"bot stopped ({'; '.join(done)})", []


def _settle_switch(run: IncidentRun, cut: ExchangeCut, bot_stopped: bool) -> str:
    """The dead man's switch after the stop: once every process is gone it would only cancel the protective orders
    kept for the open positions, so it is disarmed then; while something still runs it stays armed."""
    switch = cut.switch
    if switch is None:
        return f"dead man's switch NOT armed ({cut.switch_error})" if cut.switch_error else ""
    if not (switch.armed and bot_stopped and run.settings.emergency.keep_protective_orders):
        return switch.summary()
    off, error = settle(disarm_dead_mans_switch.submit(run.bot))
    if off is None or not off.accepted:
        why = error or (off.detail if off else "")
        run.act("dead-mans-switch", f"could NOT be disarmed ({why}): every order, the protective ones too, goes at "
                f"{switch.at:%H:%M:%S} UTC", ok=False)
        return f"{switch.summary()} (could not be disarmed: {why})"
    run.act("dead-mans-switch", "disarmed once every bot process was verified stopped, so the kept protective "
            "orders stay on the book")
    return "dead man's switch was armed while the bot was being stopped, then disarmed (protective orders kept)"


def stop_all_trading(run: IncidentRun, assume_yes: bool, started: float) -> TradingStop:
    """Runbook "Stop All Trading": the exchange side at once, then the processes, then one more sweep."""
    bot, emergency = run.bot, run.settings.emergency
    cut, processes, lookup_error = cut_exchange_side(run)
    several = processes is not None and len(processes) > 1
    run.tell("OPEN", f"Complete system failure. {cut.text()}. Processes matching the bot: "
             + ("; ".join(p.describe() for p in processes) or "none" if processes is not None
                else f"lookup failed ({lookup_error})"),
             (["approve stopping every process listed (Prefect UI or `runbook approve RUN_ID`)"] if several else [])
             + ["stop the bot process(es)", "preserve evidence", "liquidate open positions (needs approval)"],
             mention_level="L1")
    bot_stopped, stop_text, running = stop_processes(run, processes, lookup_error, assume_yes)
    orders = cut.orders
    if bot_stopped and orders is not None:
        # Orders a dying bot placed after the cancel read the book: one more sweep now that it is gone.
        sweep, sweep_error = settle(cancel_open_orders.submit(bot, emergency.keep_protective_orders))
        if sweep is not None:
            orders = orders.merge(sweep)
            if sweep.cancelled:
                _record_cancel(run, sweep, None)
        else:
            run.act("cancel-orders", f"second sweep failed: {sweep_error}", ok=False)
    switch_text = _settle_switch(run, cut, bot_stopped)
    seconds = time.monotonic() - started
    order_part = orders.summary() if orders is not None else f"open orders NOT cancelled ({cut.cancel_error})"
    stop = TradingStop(bot_stopped, orders, "; ".join(x for x in (stop_text, order_part, switch_text) if x),
                       running=running, failed=not bot_stopped or orders is None or not orders.cleared, seconds=seconds)
    if stop.stopped:
        run.note(f"trading stopped {seconds:.2f}s after the flow started")
    return stop


# --- step 3: liquidation ---------------------------------------------------------------------------


@dataclass
class Liquidation:
    text: str
    flat: bool | None  # None: the account could not be read
    remaining: list[Position] = field(default_factory=list)
    failed: bool = False
    protection: list[str] = field(default_factory=list)  # one line per position left open: its stops, or none


def protection_of(run: IncidentRun, positions: list[Position]) -> list[str]:
    """For each open position, the protective orders (reduce-only stop-loss / take-profit) on the book now."""
    orders, error = settle(get_open_orders.submit(run.bot.hyperliquid))
    lines = []
    for p in positions:
        if orders is None:
            lines.append(f"{p.side} {abs(p.size)} {p.coin}: protective orders UNKNOWN ({error})")
            continue
        stops = [o for o in orders if o.coin == p.coin and o.reduce_only and o.is_trigger]
        lines.append(f"{p.side} {abs(p.size)} {p.coin}: " + (
            "protected by " + ", ".join(f"{o.order_type} #{o.oid} at {o.trigger_px}" for o in stops) if stops
            else "UNPROTECTED (no stop-loss or take-profit on the book)"))
    return lines


def _left_open(run: IncidentRun, text: str, positions: list[Position], failed: bool = False,
               flat: bool | None = False) -> Liquidation:
    protection = protection_of(run, positions)
    run.add_evidence("Positions left open and their protective orders", "\n".join(f"- {line}" for line in protection))
    return Liquidation(text, flat, positions, failed=failed, protection=protection)


def close_one(run: IncidentRun, coin: str, how: str) -> bool:
    """Close one position; once it is verified flat, its protective orders (orphans now) are cancelled."""
    emergency = run.settings.emergency
    try:
        result = close_position_task(run.bot, coin, emergency.liquidation_slippage,
                                     emergency.liquidation_attempts, emergency.liquidation_retry_delay_seconds)
    except Exception as error:  # noqa: BLE001 - the next position is still closed
        run.act("liquidate", f"{coin}: close failed: {error}", ok=False)
        return False
    run.act("liquidate", f"{result.summary()} ({how})", ok=result.flat,
            detail={"coin": coin, "start_size": str(result.start_size), "remaining": str(result.remaining),
                    "attempts": [a.__dict__ for a in result.attempts]})
    if not result.flat:
        return False  # its stops stay: the rest of the position still needs them
    orphans, error = settle(cancel_coin_orders.submit(run.bot, coin))
    if orphans is None:
        run.act("cancel-protective", f"{coin} is flat but its protective orders were NOT cancelled: {error}", ok=False)
    elif orphans.found:
        run.act("cancel-protective", f"{coin} verified flat; its orders: {orphans.summary()}", ok=orphans.cleared)
    return True


def liquidate(run: IncidentRun, state: AccountState, stop: TradingStop, assume_yes: bool) -> Liquidation:
    positions = [p for p in state.positions if p.size != 0]
    if not positions:
        run.note("no open positions: nothing to liquidate")
        return Liquidation("no open positions (account flat)", True)
    if not stop.stopped:
        run.act("liquidate", "not liquidated: trading is not stopped, and the bot would trade against the closes",
                ok=False)
        return _left_open(run, f"{len(positions)} position(s) left open because trading is not stopped", positions,
                          failed=True)
    emergency, policy = run.settings.emergency, run.settings.policy
    choice = choose_positions(policy.liquidate, positions, assume_yes, emergency.liquidation_slippage,
                              policy.approval_timeout_seconds)
    run.note(f"liquidation: {choice.how}")
    if not choice.coins:
        run.act("liquidate", f"no position closed: {choice.how}", ok=False, dry_run=choice.dry_run,
                detail={"positions": [p.coin for p in positions]})
        return _left_open(run, f"{len(positions)} position(s) left open "
                          f"({'dry-run' if choice.dry_run else choice.how})", positions)
    failed = False
    for coin in choice.coins:  # one at a time: one key, one nonce sequence, and a clear record per position
        failed = not close_one(run, coin, choice.how) or failed
    after, error = settle(get_account_state.submit(run.bot.hyperliquid))
    if after is None:
        run.act("verify-flat", f"could not read the account after liquidating: {error}", ok=False)
        return Liquidation(f"closed {', '.join(choice.coins)}; flatness NOT verified ({error})", None, failed=True)
    remaining = [p for p in after.positions if p.size != 0]
    still = [p for p in remaining if p.coin in choice.coins]
    kept = [p for p in remaining if p.coin not in choice.coins]
    if not remaining:
        run.act("verify-flat", "account verified flat on the exchange")
        return Liquidation(f"closed {', '.join(choice.coins)}; account verified flat", True)
    text = "; ".join(([f"STILL OPEN after liquidation: {', '.join(position_line(p) for p in still)}"] if still else [])
                     + ([f"kept open as decided: {', '.join(position_line(p) for p in kept)}"] if kept else []))
    run.act("verify-flat", f"account not flat: {text}", ok=not still)
    return _left_open(run, text, remaining, failed=failed or bool(still))


# --- the flow ---------------------------------------------------------------------------------------


@flow(name="system-failure",
      description="Runbook: Complete System Failure — stop all trading, preserve evidence, assess positions, "
                  "liquidate only with approval, verify flat, tell stakeholders, escalate.")
def system_failure(bot: str | None = None, config: str | None = None, incident_id: int | None = None,
                   assume_yes: bool = False) -> Outcome:
    """Stop all trading now, preserve evidence, and close what is open if a person says so.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
        assume_yes: a person's yes given up front (`runbook run system-failure --yes`): answers the
            approvals (stop, liquidation) without pausing; never overrides a dry-run policy
    """
    started = time.monotonic()
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.start_response()
    # The exchange side first, then tell, then the processes: every second the bot trades on is money at risk.
    stop = stop_all_trading(run, assume_yes, started)

    # Assess damage and preserve evidence at once: both only read.
    evidence = backup_evidence.submit(run.bot_name, run.bot, run.settings.backup)
    account = get_account_state.submit(run.bot.hyperliquid)
    state, state_error = settle(account)
    backup, backup_error = settle(evidence)
    _record_evidence(run, backup, backup_error)
    if state is None:
        run.add_evidence("Open positions", f"**Could not read the account from the exchange:** {state_error}")
        liquidation = Liquidation(f"positions UNKNOWN: the exchange could not be read ({state_error})", None, failed=True)
    else:
        run.add_evidence("Open positions (exchange, after trading stopped)",
                         positions_table([p for p in state.positions if p.size != 0]) if state.positions
                         else "_none: the account is flat_")
        run.note(f"account value {usd(state.account_value)} USD, {len(state.positions)} open position(s)")
        run.tell("INVESTIGATING", f"Trading: {stop.text}. Open positions: "
                 + ("; ".join(position_line(p) for p in state.positions) or "none"),
                 ["approve or reject the liquidation in the Prefect UI (or `runbook approve RUN_ID`)"]
                 if state.positions and run.settings.policy.liquidate is Policy.approve and not assume_yes else [])
        liquidation = liquidate(run, state, stop, assume_yes)

    _tell_stakeholders(run, stop, liquidation, backup)
    failed = stop.failed or liquidation.failed or backup is None
    protected = f" Open and protected: {'; '.join(liquidation.protection)}." if liquidation.protection else ""
    summary = (f"Complete system failure. Trading: {stop.text}. Positions: {liquidation.text}.{protected} Evidence: "
               + (f"{backup.path}" if backup else f"NOT preserved ({backup_error})")
               + ". Trading stays stopped until a person decides to resume.")
    next_steps = [f"STOP TRADING BY HAND: {stop.text}"] if not stop.stopped else []
    if liquidation.remaining:
        next_steps.append("decide on the open positions: " + "; ".join(liquidation.protection or [
            position_line(p) for p in liquidation.remaining]))
    if backup is None:
        next_steps.append(f"preserve evidence by hand (`runbook run emergency-backup`): {backup_error}")
    next_steps += ["find the root cause in the incident report and the evidence archive",
                   "resume trading only when the cause is fixed (restart the bot, then `runbook resolve "
                   f"{run.incident_id}`)"]
    outcome = run.escalate("L2" if failed else "L1", summary, next_steps, outcome=j.FAILED if failed else j.OUTCOME_ESCALATED)
    if backup is not None:
        outcome.details["archive"] = str(backup.path)
    return outcome


def _record_evidence(run: IncidentRun, backup: BackupResult | None, error: str | None) -> None:
    if backup is not None:
        run.act("backup", f"evidence archived: {backup.summary()}", detail=backup.to_dict())
        run.add_evidence("Evidence archive", backup.markdown())
    else:
        run.act("backup", f"evidence backup failed: {error}", ok=False)
        run.add_evidence("Evidence archive", f"**The evidence backup failed:** {error}")


def _tell_stakeholders(run: IncidentRun, stop: TradingStop, liquidation: Liquidation,
                       backup: BackupResult | None) -> None:
    incident = run.journal.get(run.incident_id)
    since = j.utcnow() - incident.fired_at
    minutes = int(since.total_seconds() // 60)
    update = StakeholderUpdate(
        severity=run.alert.severity.value,
        brief_description=f"Complete failure of the trading system (bot {run.bot_name}); all trading was stopped.",
        impact_on_trading=("Trading stopped" if stop.stopped else "Trading could NOT be fully stopped")
        + f"; positions: {liquidation.text}."
        + (f" Open positions and their protection: {'; '.join(liquidation.protection)}." if liquidation.protection else ""),
        downtime_duration=f"{minutes} min so far (since {incident.fired_at:%Y-%m-%d %H:%M} UTC); ongoing until a "
                          "person resumes trading",
        identified_cause="under investigation" + (f"; evidence preserved ({backup.path.name})" if backup else ""),
        steps_taken=list(run.actions_taken),
        preventive_measures="to be decided in the post-incident review",
        status="halted: trading stopped pending investigation",
        on_call_engineer=run.settings.slack.escalation.get("L1", "the on-call engineer"),
    )
    notify_stakeholders(run.settings.slack, run.settings.journal_url, run.incident_id, update)
