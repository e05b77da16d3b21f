"""🚨 Complete System Failure (RUNBOOK.md "Emergency Procedures"), as a flow.

1. Stop All Trading — the runbook's `pkill -f trading_bot`, done safely: the bot is stopped by its
   verified PID (SIGTERM, SIGKILL after `[emergency] stop_timeout_seconds`) while its open orders are
   cancelled on the exchange, both at once and under the `kill` policy; once the bot is gone the exchange
   is read again for orders it placed while dying.
2. Assess Damage — positions, mark prices, unrealised P&L and margin from the exchange, read while
4. Preserve Evidence — the evidence backup (logs, data, config; key files never) is written.
3. Manual Liquidation if Needed — only with a person's yes: the run pauses with a form listing each
   position (coin, side, size, mark price, unrealised P&L), one tick box per position (approve all, some
   or none); or `runbook run system-failure --yes`; or `[policy] liquidate = "auto"`. `dry-run` only
   says what it would close. One position at a time through the official SDK (reduce-only IOC, bounded
   slippage), every order's status checked, what did not fill retried within limits; then the account is
   read again to verify it is flat.
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
from prefect.input import RunInput
from pydantic import Field

from runbook import journal as j
from runbook.incident import IncidentRun, Outcome
from runbook.markdown import table, usd
from runbook.policy import ApprovalGate, ask, decided_by
from runbook.settings import Policy
from tasks.evidence import BackupResult, backup_evidence
from tasks.exchange import CancelReport, cancel_open_orders, close_position_task
from tasks.futures import settle
from tasks.hyperliquid import AccountState, Position, get_account_state
from tasks.notify import StakeholderUpdate, notify_stakeholders
from tasks.process import BotProcess, check_process, locate_bot, stop_process

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
                     timeout_seconds: int, gate: ApprovalGate | None = None) -> LiquidationChoice:
    """Which positions may be closed: by policy, by --yes, or by a person's answer to the form (journaled
    and asked in the incident's thread through `gate`)."""
    coins = [p.coin for p in positions]
    listing = "; ".join(position_line(p) for p in positions)
    if policy is Policy.dry_run:
        return LiquidationChoice([], f"dry-run: would close {listing}", dry_run=True)
    if policy is Policy.auto:
        return LiquidationChoice(coins, "allowed by policy 'auto'")
    if assume_yes:
        return LiquidationChoice(coins, "approved with --yes from the shell")
    form = liquidation_form(positions, slippage, timeout_seconds)
    answer, approval = ask(form, f"close {listing}", timeout_seconds, gate)
    if answer is None:
        return LiquidationChoice([], f"not approved within {timeout_seconds} s")
    note = f" ({answer.note})" if answer.note else ""
    if not answer.approve:
        return LiquidationChoice([], f"rejected by {decided_by(approval)}{note}")
    chosen = [coin for coin in coins if getattr(answer, close_field(coin), True)]
    kept = [coin for coin in coins if coin not in chosen]
    return LiquidationChoice(chosen, f"approved by {decided_by(approval)} for {', '.join(chosen) or 'no position'}"
                             + (f", keeping {', '.join(kept)}" if kept else "") + note)


# --- step 1: stop all trading ------------------------------------------------------------------


@dataclass
class TradingStop:
    bot_stopped: bool
    orders: CancelReport | None
    text: str
    failed: bool = False
    seconds: float | None = None

    @property
    def stopped(self) -> bool:
        return self.bot_stopped and self.orders is not None and self.orders.cleared


def stop_all_trading(run: IncidentRun, assume_yes: bool, started: float) -> TradingStop:
    """Stop the bot (verified PID) and cancel its open orders, concurrently; then sweep once more."""
    bot, policy, emergency = run.bot, run.settings.policy, run.settings.emergency
    try:
        process: BotProcess | None = check_process(bot)
    except Exception as error:  # several matching processes: refuse to guess, a person must look
        run.act("stop", f"not stopped: {error}", ok=False)
        return TradingStop(False, None, f"cannot tell which process is the bot ({error}); NOTHING stopped", failed=True)
    what = ((f"stop the trading bot (PID {process.pid})" if process else "make sure no bot process runs")
            + " and cancel its open orders on the exchange"
            + (" (reduce-only protective orders kept)" if emergency.keep_protective_orders else ""))
    decision = run.authorize("kill", what, assume_yes)
    if not decision.allowed:
        run.act("stop", f"trading not stopped: {decision.how}", ok=False, dry_run=decision.dry_run)
        return TradingStop(False, None, f"TRADING NOT STOPPED ({decision.how})")
    stopping = stop_process.submit(process, bot, emergency.stop_timeout_seconds) if process else None
    cancelling = cancel_open_orders.submit(bot, emergency.keep_protective_orders)
    stop_text, stop_error = settle(stopping) if stopping else ("no bot process was running", None)
    try:
        again = locate_bot(bot)
    except Exception as error:  # noqa: BLE001 - reported below
        again, stop_error = None, stop_error or str(error)
    bot_stopped = stop_error is None and again is None
    orders, cancel_error = settle(cancelling)
    if bot_stopped and orders is not None:
        # Orders the dying bot placed after the cancel read the book: one more sweep now that it is gone.
        sweep, sweep_error = settle(cancel_open_orders.submit(bot, emergency.keep_protective_orders))
        orders, cancel_error = (orders.merge(sweep), None) if sweep is not None else (orders, sweep_error)
    seconds = time.monotonic() - started
    pid = process.pid if process else None
    if bot_stopped:
        run.act("stop", f"{stop_text} ({decision.how})", detail={"pid": pid})
    else:
        why = stop_error or (f"a bot process runs again as PID {again.pid}" if again else "unknown")
        run.act("stop", f"bot NOT stopped: {why}", ok=False, detail={"pid": pid})
    if orders is not None:
        run.act("cancel-orders", orders.summary(), ok=orders.cleared,
                detail={"cancelled": [c.__dict__ for c in orders.cancelled], "failed": [c.__dict__ for c in orders.failed],
                        "kept": [c.__dict__ for c in orders.kept], "remaining": orders.remaining})
    else:
        run.act("cancel-orders", f"open orders NOT cancelled: {cancel_error}", ok=False)
    stop = TradingStop(bot_stopped, orders, "", failed=not bot_stopped or orders is None or not orders.cleared,
                       seconds=seconds)
    bot_part = (f"bot stopped ({stop_text})" if bot_stopped else
                f"BOT STILL RUNNING ({stop_error or 'restarted as PID ' + str(again.pid if again else '?')})")
    order_part = orders.summary() if orders is not None else f"open orders NOT cancelled ({cancel_error})"
    stop.text = f"{bot_part}; {order_part}"
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


def liquidate(run: IncidentRun, state: AccountState, stop: TradingStop, assume_yes: bool) -> Liquidation:
    positions = [p for p in state.positions if p.size != 0]
    if not positions:
        run.note("no open positions: nothing to liquidate")
        return Liquidation("no open positions (account flat)", True)
    if not stop.stopped:
        run.act("liquidate", "not liquidated: trading is not stopped, and the bot would trade against the closes",
                ok=False)
        return Liquidation(f"{len(positions)} position(s) left open because trading is not stopped", False,
                           positions, failed=True)
    emergency, policy = run.settings.emergency, run.settings.policy
    choice = choose_positions(policy.liquidate, positions, assume_yes, emergency.liquidation_slippage,
                              policy.approval_timeout_seconds, run.approval_gate("liquidate"))
    run.note(f"liquidation: {choice.how}")
    if not choice.coins:
        run.act("liquidate", f"no position closed: {choice.how}", ok=False, dry_run=choice.dry_run,
                detail={"positions": [p.coin for p in positions]})
        return Liquidation(f"{len(positions)} position(s) left open ({'dry-run' if choice.dry_run else choice.how})",
                           False, positions)
    failed = False
    for coin in choice.coins:  # one at a time: one key, one nonce sequence, and a clear record per position
        try:
            result = close_position_task(run.bot, coin, emergency.liquidation_slippage,
                                         emergency.liquidation_attempts, emergency.liquidation_retry_delay_seconds)
        except Exception as error:  # noqa: BLE001 - the next position is still closed
            run.act("liquidate", f"{coin}: close failed: {error}", ok=False)
            failed = True
            continue
        run.act("liquidate", f"{result.summary()} ({choice.how})", ok=result.flat,
                detail={"coin": coin, "start_size": str(result.start_size), "remaining": str(result.remaining),
                        "attempts": [a.__dict__ for a in result.attempts]})
        failed = failed or not result.flat
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
    return Liquidation(text, False, remaining, failed=failed or bool(still))


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
    # Stop first, tell right after: every second the bot trades on is money at risk.
    stop = stop_all_trading(run, assume_yes, started)
    run.tell("OPEN", f"Complete system failure. {stop.text}",
             ["assess positions on the exchange", "preserve evidence", "liquidate open positions (needs approval)"],
             mention_level="L1")

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
                 [f"approve or reject the liquidation: the buttons in this thread, the Prefect UI ({run.ui_url}) or "
                  f"`runbook approve {run.flow_run_id}`"]
                 if state.positions and run.settings.policy.liquidate is Policy.approve and not assume_yes else [])
        liquidation = liquidate(run, state, stop, assume_yes)

    _tell_stakeholders(run, stop, liquidation, backup)
    failed = stop.failed or liquidation.failed or backup is None
    summary = (f"Complete system failure. Trading: {stop.text}. Positions: {liquidation.text}. Evidence: "
               + (f"{backup.path}" if backup else f"NOT preserved ({backup_error})")
               + ". Trading stays stopped until a person decides to resume.")
    next_steps = [f"STOP TRADING BY HAND: {stop.text}"] if not stop.stopped else []
    if liquidation.remaining:
        next_steps.append("decide on the open positions: " + "; ".join(position_line(p) for p in liquidation.remaining)
                          + (" (their stop-loss orders were cancelled)" if not run.settings.emergency.keep_protective_orders
                             else ""))
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
        + f"; positions: {liquidation.text}.",
        downtime_duration=f"{minutes} min so far (since {incident.fired_at:%Y-%m-%d %H:%M} UTC); ongoing until a "
                          "person resumes trading",
        identified_cause="under investigation" + (f"; evidence preserved ({backup.path.name})" if backup else ""),
        steps_taken=list(run.actions_taken),
        preventive_measures="to be decided in the post-incident review",
        status="halted: trading stopped pending investigation",
        on_call_engineer=run.settings.slack.escalation.get("L1", "the on-call engineer"),
    )
    notify_stakeholders(run.settings.slack, run.settings.journal_url, run.incident_id, update)
