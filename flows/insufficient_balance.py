"""💸 Insufficient Balance (RUNBOOK.md), as a flow. Read-only: it changes nothing.

Immediate actions: check the balance (the bot's /health and the exchange, compared), verify the circuit
breaker stopped trading, assess margin requirements (margin in use, open positions).
Investigation: recent losses (fills of the last 24 h), the position sizing of the bot's config against
the balance.
Recovery: concrete recommendations with numbers — reduce base size to X, add Y USDC, leverage Z — for a
person to carry out; a real shortfall ends escalated to L1 with them.

The sizing model: a full book is `max_positions` positions of `base_size_usd`, each needing
`base_size_usd / leverage` of initial margin (`risk_management.leverage`, 1x when absent); on top of that
the flow keeps a margin buffer (`margin_buffer`, 50 % by default) for adverse moves and fees. The balance
needed to trade is the largest of that, the bot's own floor (`risk_limits.min_balance_usd`, below which
the bot halts itself) and the alert threshold (`watch.min_balance_usd`, or one base-size position's
margin when unset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task

from reports.trades import TradeMetrics, compute_metrics
from runbook import journal as j
from runbook.markdown import table, usd
from tasks import NO_CACHE_POLICY
from tasks.botconfig import BotConfig, read_bot_config
from tasks.futures import settle
from tasks.hyperliquid import AccountState, get_account_state, get_fills
from tasks.incident import IncidentRun, Outcome
from tasks.probes import HealthReport, breaker_state, check_health, dig, health_field, number

ALERT = "insufficient-balance"
MIN_ORDER_USD = 10.0  # Hyperliquid refuses orders below 10 USD of value
MAX_SUGGESTED_LEVERAGE = 5  # never suggest raising leverage past this to make a small balance fit
HIGH_MARGIN_USAGE = 0.8
RECENT_HOURS = 24


def _floor2(value: float) -> float:
    return math.floor(value * 100) / 100



@dataclass(frozen=True)
class Sizing:
    """The bot's position sizing from its config, and what it needs of the balance."""

    base_size: float
    max_positions: int
    leverage: float
    leverage_configured: bool
    margin_buffer: float
    bot_min_balance: float | None  # risk_limits.min_balance_usd: the bot halts below it
    watch_min_balance: float | None  # the runbook's alert threshold (watch.min_balance_usd)

    @property
    def margin_per_position(self) -> float:
        return self.base_size / self.leverage

    @property
    def margin_needed(self) -> float:
        """Initial margin of a full book: max_positions positions of base size at the leverage."""
        return self.max_positions * self.margin_per_position

    @property
    def funds_needed(self) -> float:
        return self.margin_needed * (1 + self.margin_buffer)

    @property
    def alert_threshold(self) -> float:
        """Below this the balance is too low: watch.min_balance_usd, else one base-size position's margin."""
        return self.watch_min_balance if self.watch_min_balance is not None else self.margin_per_position

    @property
    def required(self) -> tuple[float, str]:
        """The balance needed to keep trading at this sizing, and which rule sets it."""
        options = [(self.funds_needed, f"{self.max_positions} x {self.base_size:,.2f} USD at {self.leverage:g}x "
                    f"plus a {self.margin_buffer:.0%} margin buffer"),
                   (self.alert_threshold, "the alert threshold")]
        if self.bot_min_balance is not None:
            options.append((self.bot_min_balance, "the bot's own floor risk_limits.min_balance_usd"))
        return max(options, key=lambda option: option[0])

    def max_base_size(self, balance: float) -> float:
        """The largest base size `balance` carries for a full book at this leverage and buffer."""
        return _floor2(max(balance, 0.0) * self.leverage / (self.max_positions * (1 + self.margin_buffer)))

    def leverage_needed(self, balance: float) -> int | None:
        """The leverage at which `balance` carries a full book of base-size positions plus the buffer."""
        if balance <= 0:
            return None
        return max(1, math.ceil(self.max_positions * self.base_size * (1 + self.margin_buffer) / balance - 1e-9))


def sizing_from(config: BotConfig, margin_buffer: float, watch_min_balance: float | None) -> Sizing:
    base = config.number("position_sizing", "base_size_usd")
    positions = config.number("position_sizing", "max_positions")
    if base is None or base <= 0 or positions is None or positions < 1:
        raise ValueError(f"{config.path}: position_sizing.base_size_usd and max_positions must be positive numbers")
    leverage = config.number("risk_management", "leverage")
    return Sizing(base, int(positions), leverage if leverage and leverage > 0 else 1.0,
                  bool(leverage and leverage > 0), margin_buffer,
                  config.number("risk_limits", "min_balance_usd"), watch_min_balance)


def recommend(balance: float, sizing: Sizing, margin_usage: float | None = None) -> list[str]:
    """Concrete, numbered recommendations for this balance and sizing (pure; the tests recompute them)."""
    out: list[str] = []
    required, because = sizing.required
    if balance < required:
        out.append(f"add {required - balance:,.2f} USDC (to reach {required:,.2f} USD, set by {because})")
    largest = sizing.max_base_size(balance)
    if largest < sizing.base_size:
        text = (f"reduce base size to {largest:,.2f} USD (from {sizing.base_size:,.2f}): what {balance:,.2f} USD "
                f"carries for {sizing.max_positions} positions at {sizing.leverage:g}x with a "
                f"{sizing.margin_buffer:.0%} margin buffer")
        if largest < MIN_ORDER_USD:
            text += f" — below Hyperliquid's {MIN_ORDER_USD:g} USD minimum order, so sizing alone cannot fix this"
        if sizing.bot_min_balance is not None and balance < sizing.bot_min_balance:
            text += (f"; the bot still halts below its floor of {sizing.bot_min_balance:,.2f} USD "
                     "(risk_limits.min_balance_usd), so funds are needed in any case")
        out.append(text)
    needed = sizing.leverage_needed(balance)
    if needed is None:
        out.append("leverage cannot help: the account holds nothing")
    elif needed > sizing.leverage:
        if needed <= MAX_SUGGESTED_LEVERAGE:
            out.append(f"or raise leverage to {needed}x (from {sizing.leverage:g}x) so the balance carries the sizing "
                       "— more liquidation risk; prefer adding funds")
        else:
            out.append(f"do not raise leverage: the sizing would need {needed}x on this balance (from "
                       f"{sizing.leverage:g}x; at most {MAX_SUGGESTED_LEVERAGE}x is advisable)")
    elif needed < sizing.leverage:
        out.append(f"lower leverage to {needed}x (from {sizing.leverage:g}x): the balance carries the sizing with "
                   "less liquidation risk")
    if margin_usage is not None and margin_usage >= HIGH_MARGIN_USAGE:
        out.append(f"reduce open positions: margin usage is {margin_usage:.0%} of the account value")
    if not sizing.leverage_configured:
        out.append("set risk_management.leverage in the bot's config (none configured: 1x assumed here)")
    return out


@task(name="summarise recent losses", cache_policy=NO_CACHE_POLICY)
def recent_losses(fills: list[dict[str, Any]], balance: float) -> TradeMetrics:
    """Runbook: "Analyze recent losses" — metrics of the last 24 h of fills."""
    metrics = compute_metrics(fills, start_balance=10_000)
    start = balance - float(metrics.total_pnl)
    return compute_metrics(fills, start_balance=round(start, 6)) if start > 0 else metrics


@dataclass
class Look:
    health: HealthReport
    config: BotConfig | None
    config_error: str | None
    account: AccountState | None
    account_error: str | None
    fills: list[dict[str, Any]] | None
    fills_error: str | None


def look(run: IncidentRun) -> Look:
    """Health, config, account and recent fills, read concurrently."""
    bot, account = run.bot, run.bot.hyperliquid
    health = check_health.submit(bot)
    config = read_bot_config.submit(bot.path(bot.config_file))
    state = get_account_state.submit(account)
    fills = get_fills.submit(account, datetime.now(UTC) - timedelta(hours=RECENT_HOURS))
    (h, he), (c, ce), (a, ae), (f, fe) = (settle(x) for x in (health, config, state, fills))
    if h is None:  # the probe itself never raises; the task machinery might
        h = HealthReport(url=bot.health_url, reachable=False, error=he)
    return Look(h, c, ce, a, ae, f, fe)


@flow(name="insufficient-balance",
      description="Runbook: Insufficient Balance — balance and margin from the bot and the exchange, breaker, "
                  "recent losses, sizing against the balance, recommendations with numbers. Read-only.")
def insufficient_balance(bot: str | None = None, config: str | None = None, incident_id: int | None = None,
                         margin_buffer: float = 0.5) -> Outcome:
    """Find out whether the balance really is too low to trade, and what would fix it.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
        margin_buffer: margin kept on top of the initial margin of a full book, for adverse moves and fees,
            as a fraction (0.5 = 50 %); used for the recommended funds, base size and leverage
    """
    if isinstance(margin_buffer, bool) or not 0 <= margin_buffer <= 10:
        raise ValueError(f"margin_buffer must be between 0 and 10, not {margin_buffer!r}")
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "Account balance too low to continue trading",
             ["check balance and margin on the exchange", "verify the circuit breaker stopped trading"],
             mention_level="L1")
    run.start_response()
    return _respond(run, margin_buffer)


def _respond(run: IncidentRun, margin_buffer: float) -> Outcome:
    seen = look(run)
    fields = run.bot.fields
    body = seen.health.body or {}
    tripped, reason = breaker_state(seen.health, fields)
    health_balance = number(dig(body, fields.account_balance))
    health_withdrawable = number(dig(body, health_field(fields, "withdrawable", "metrics.withdrawable")))
    account = seen.account
    balance = float(account.account_value) if account else health_balance
    source = "exchange" if account else "bot's /health (the exchange could not be read)"
    usage = float(account.margin_usage) if account and account.margin_usage is not None else None
    exchange_problem = "; ".join(e for e in (seen.account_error, seen.fills_error) if e) or None

    # Immediate actions: balance (both sources), breaker, margin.
    mismatch = (account is not None and health_balance is not None
                and abs(health_balance - float(account.account_value)) > max(1.0, 0.01 * float(account.account_value)))
    rows = [
        ["Account value (exchange)", usd(account.account_value) if account else f"unavailable: {seen.account_error}"],
        ["Withdrawable (exchange)", usd(account.withdrawable) if account else "n/a"],
        ["Margin used (exchange)", usd(account.total_margin_used) if account else "n/a"],
        ["Margin usage", "n/a" if usage is None else f"{usage:.1%}"],
        ["Open positions", len(account.positions) if account else "n/a"],
        ["Account balance (bot /health)", usd(health_balance)],
        ["Withdrawable (bot /health)", usd(health_withdrawable)],
        ["Health", seen.health.summary()],
        ["Circuit breaker", ("TRIPPED: trading stopped" if tripped else "not tripped: the bot may still trade")
         + (f" ({reason})" if reason else "")],
    ]
    if mismatch:
        rows.append(["Note", "the bot's balance differs from the exchange's: the bot's view is stale"])
    run.add_evidence("Balance and margin", table(["", ""], rows))
    if account and account.positions:
        run.add_evidence("Open positions (exchange)", table(
            ["coin", "side", "value (USD)", "uPnL (USD)", "leverage", "margin (USD)"],
            [[p.coin, p.side, usd(p.position_value), usd(p.unrealized_pnl, True), f"{p.leverage}x {p.leverage_type}",
              usd(p.margin_used)] for p in account.positions]))

    # Investigation: recent losses and sizing against the balance.
    pnl_24h: float | None = None
    if seen.fills is not None:
        metrics = recent_losses(seen.fills, balance or 0.0)
        pnl_24h = float(metrics.total_pnl)
        run.add_evidence(f"Recent losses (last {RECENT_HOURS} h)", table(["", ""], [
            ["Fills", metrics.fills],
            ["Closed trades", f"{metrics.trades} (wins {metrics.wins}, losses {metrics.losses})"],
            ["P&L after fees", usd(metrics.total_pnl, True)], ["Fees", usd(metrics.fees)],
            ["Worst trade", usd(metrics.worst_trade, True)], ["Max drawdown", usd(metrics.max_drawdown)],
        ]) + ("\n\n" + table(["coin", "trades", "losses", "P&L (USD)"], [
            [coin, m.trades, m.losses, usd(m.total_pnl, True)]
            for coin, m in sorted(metrics.by_coin.items(), key=lambda item: item[1].total_pnl)])
            if metrics.by_coin else ""))
    else:
        run.add_evidence("Recent losses", f"**Could not read recent fills from the exchange:** {seen.fills_error}")

    sizing: Sizing | None = None
    sizing_error = seen.config_error
    if seen.config is not None:
        try:
            sizing = sizing_from(seen.config, margin_buffer, run.settings.watch.min_balance_usd)
        except ValueError as error:
            sizing_error = str(error)
    advice: list[str] = []
    if sizing is not None and balance is not None:
        required, because = sizing.required
        advice = recommend(balance, sizing, usage)
        run.add_evidence("Position sizing against the balance", table(["", ""], [
            ["Base size (position_sizing.base_size_usd)", usd(sizing.base_size)],
            ["Max positions (position_sizing.max_positions)", sizing.max_positions],
            ["Leverage (risk_management.leverage)", f"{sizing.leverage:g}x"
             + ("" if sizing.leverage_configured else " (not configured: assumed)")],
            ["Leverage of open positions (exchange)", ", ".join(sorted({f"{p.leverage}x {p.leverage_type}" for p in
                                                                        account.positions})) or "no positions"
             if account else "n/a"],
            ["Margin per position", usd(sizing.margin_per_position)],
            ["Margin for a full book", usd(sizing.margin_needed)],
            [f"With a {sizing.margin_buffer:.0%} margin buffer", usd(sizing.funds_needed)],
            ["Bot's own floor (risk_limits.min_balance_usd)", usd(sizing.bot_min_balance)],
            ["Alert threshold", usd(sizing.alert_threshold)],
            ["Balance needed", f"{usd(required)} ({because})"],
            [f"Balance ({source})", usd(balance)],
            ["Shortfall", usd(max(0.0, required - balance))],
        ]))
        run.add_evidence("Recommendations", "\n".join(f"- {line}" for line in advice) or "_none: the balance carries "
                         "the configured sizing_")
    elif sizing is None:
        run.add_evidence("Position sizing", f"**Could not read the bot's sizing:** {sizing_error}")

    balance_reason = tripped and reason is not None and "balance" in reason.lower()
    losses = f"; last {RECENT_HOURS} h P&L {usd(pnl_24h, True)} USD" if pnl_24h is not None else ""
    run.note(f"balance {usd(balance)} USD ({source}), breaker {'tripped' if tripped else 'not tripped'}{losses}")

    if balance is None:
        return run.escalate("L1", f"Could not read the balance from the exchange ({exchange_problem}) nor from the "
                            f"bot ({seen.health.summary()}).",
                            ["check the balance on the exchange by hand", "re-run this flow once it answers"])
    threshold_ok = sizing is None or (balance >= sizing.alert_threshold
                                      and (sizing.bot_min_balance is None or balance >= sizing.bot_min_balance))
    if exchange_problem is not None:
        return run.escalate("L1", f"Could not confirm the balance on the exchange: {exchange_problem}. The bot reports "
                            f"{usd(balance)} USD (may be stale); breaker {'tripped' if tripped else 'not tripped'}."
                            + (" Recommendations on that figure: " + "; ".join(advice) + "." if advice else ""),
                            ["check the balance on the exchange by hand", "re-run this flow once the exchange answers"]
                            + advice)
    if sizing is None:
        return run.escalate("L1", f"Balance {usd(balance)} USD; the bot's sizing could not be read ({sizing_error}), "
                            "so nothing can be recommended.", ["check the bot's config.json"])
    if threshold_ok and not balance_reason:
        note = f" (the breaker is tripped for another reason: {reason})" if tripped else ""
        return run.resolve(j.FALSE_POSITIVE, f"balance {usd(balance)} USD is enough to trade (needs "
                           f"{usd(sizing.alert_threshold)} USD for the alert and "
                           f"{usd(sizing.bot_min_balance)} USD for the bot's floor){note}; nothing touched.")

    required, _ = sizing.required
    stopped = "the circuit breaker stopped trading" if tripped else "the bot is NOT halted (its breaker did not trip)"
    summary = (f"Insufficient balance: {usd(balance)} USD on the exchange (withdrawable "
               f"{usd(account.withdrawable) if account else 'n/a'}, margin usage "
               f"{'n/a' if usage is None else f'{usage:.0%}'}); {stopped}{losses}. "
               f"Trading at the configured sizing needs {usd(required)} USD. "
               + ("Recommendations: " + "; ".join(advice) + "." if advice else
                  f"The balance carries the sizing now, yet the breaker reports {reason!r}: check the bot."))
    return run.escalate("L1", summary, advice + ["implement stricter risk controls before resuming trading"])
