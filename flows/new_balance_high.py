"""🏆 New Balance High (RUNBOOK.md), as a flow (INFO). The watcher fires it when the bot's balance rises
`watch.balance_high_min_increase_usd` above the highest it has seen; the flow confirms it and does the
section's actions:

* Celebrate success 🎉 — the incident's Slack post says it, with the numbers;
* Document strategy effectiveness — the strategy settings that produced the high (config.json's strategy,
  position sizing and risk sections) and the performance since the previous high (closed trades from the
  exchange's fills), recorded with the high in the journal (`balance_highs`) and in the incident report;
* Consider scaling up (if appropriate) — a recommendation from those numbers; nothing is changed;
* Backup configuration — a timestamped copy of the bot's config.json beside it (`config.json.bak-...`).

It is a new high only if the balance (the exchange's account value; the bot's /health balance when the
exchange cannot be read) is above the highest recorded in the journal; otherwise the incident ends as a
false positive (a restarted watcher, for one, starts from the balance it first sees) and nothing is
recorded or copied. Read-only towards the bot and the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prefect import flow

from reports.trades import TradeMetrics, compute_metrics
from runbook import journal as j
from runbook.markdown import table, usd
from tasks.botconfig import RISK_SECTIONS, BotConfig, backup_bot_config, read_bot_config
from tasks.futures import settle
from tasks.hyperliquid import AccountState, get_account_state, get_fills
from tasks.incident import IncidentRun, Outcome
from tasks.probes import HealthReport, check_health, dig, number

ALERT = "new-balance-high"
PERFORMANCE_DAYS = 30  # performance window when there is no previous high to measure from
# Scaling up is suggested only when all of these hold over the window since the previous high.
SCALE_MIN_TRADES = 20
SCALE_MIN_PROFIT_FACTOR = 1.5
SCALE_MIN_WIN_RATE = 0.5
SCALE_MAX_DRAWDOWN = 0.05  # of the peak; or half the bot's own risk_limits.max_drawdown_pct when lower
SCALE_STEP = "10-20 %"


@dataclass
class Look:
    health: HealthReport
    account: AccountState | None
    account_error: str | None
    config: BotConfig | None
    config_error: str | None


def look(run: IncidentRun) -> Look:
    """The bot's /health, the exchange account and the bot's config, read concurrently."""
    bot = run.bot
    health = check_health.submit(bot)
    account = get_account_state.submit(bot.hyperliquid)
    config = read_bot_config.submit(bot.path(bot.config_file))
    (h, he), (a, ae), (c, ce) = (settle(x) for x in (health, account, config))
    if h is None:
        h = HealthReport(url=bot.health_url, reachable=False, error=he)
    return Look(h, a, ae, c, ce)


def strategy_settings(config: BotConfig) -> dict[str, Any]:
    """The sections of config.json that decide how the bot trades (what produced the high)."""
    return {section: config.data[section] for section in RISK_SECTIONS if isinstance(config.data.get(section), dict)}


def scaling_advice(metrics: TradeMetrics | None, config: BotConfig | None) -> tuple[bool, str]:
    """Whether the numbers since the previous high support scaling up, and why (pure; tests recompute it)."""
    if metrics is None:
        return False, "Do not scale up yet: the trades since the previous high could not be read."
    limit = SCALE_MAX_DRAWDOWN
    bot_limit = config.number("risk_limits", "max_drawdown_pct") if config else None
    if bot_limit:
        limit = min(limit, bot_limit / 100 / 2)
    missing = []
    if metrics.trades < SCALE_MIN_TRADES:
        missing.append(f"only {metrics.trades} closed trades (want {SCALE_MIN_TRADES})")
    if metrics.profit_factor is None or metrics.profit_factor < SCALE_MIN_PROFIT_FACTOR:
        shown = "n/a" if metrics.profit_factor is None else f"{metrics.profit_factor:.2f}"
        missing.append(f"profit factor {shown} (want {SCALE_MIN_PROFIT_FACTOR:g})")
    if metrics.win_rate is None or metrics.win_rate < SCALE_MIN_WIN_RATE:
        shown = "n/a" if metrics.win_rate is None else f"{metrics.win_rate:.0%}"
        missing.append(f"win rate {shown} (want {SCALE_MIN_WIN_RATE:.0%})")
    if metrics.max_drawdown_pct > limit:
        missing.append(f"max drawdown {metrics.max_drawdown_pct:.1%} (want at most {limit:.1%})")
    if missing:
        return False, "Do not scale up yet: " + "; ".join(missing) + "."
    return True, (f"The numbers support a measured scale-up: {metrics.trades} trades, profit factor "
                  f"{metrics.profit_factor:.2f}, win rate {metrics.win_rate:.0%}, max drawdown "
                  f"{metrics.max_drawdown_pct:.1%}. Raise position_sizing.base_size_usd by at most {SCALE_STEP} "
                  "(a person decides; daily-loss-limit and risk limits scale with it) and review after a week.")


@flow(name="new-balance-high",
      description="Runbook: New Balance High — confirm the high against the journal, record it with the strategy "
                  "settings and performance that produced it, back up the bot's config, advise on scaling up, "
                  "celebrate in Slack. Changes nothing on the bot.")
def new_balance_high(bot: str | None = None, config: str | None = None, incident_id: int | None = None) -> Outcome:
    """Record a new all-time balance high and what produced it.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
    """
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.start_response()
    seen = look(run)
    fields = run.bot.fields
    health_balance = number(dig(seen.health.body or {}, fields.account_balance))
    if seen.account is not None:
        balance, source = seen.account.account_value, "exchange"
    elif health_balance is not None:
        balance, source = Decimal(str(health_balance)), "bot /health"
    else:
        return run.resolve(j.FAILED, f"Could not read the balance: exchange ({seen.account_error}) and the bot's "
                           f"/health ({seen.health.summary()}). Nothing recorded.")
    previous = run.journal.balance_high(run.bot_name)
    run.add_evidence("Balance", table(["", ""], [
        ["Balance now", f"{usd(balance)} USD ({source})"],
        ["Exchange account value", usd(seen.account.account_value) if seen.account else f"n/a: {seen.account_error}"],
        ["Bot /health balance", usd(health_balance)],
        ["Previous recorded high", f"{usd(previous.amount)} USD on {j._iso(previous.at)}" if previous else "none yet"],
    ]))
    if previous is not None and balance <= previous.amount:
        return run.resolve(j.FALSE_POSITIVE, f"Balance {usd(balance)} USD ({source}) is not above the recorded high "
                           f"{usd(previous.amount)} USD of {j._iso(previous.at)}: not a new all-time high; nothing "
                           "recorded.")

    # Document strategy effectiveness: what produced the high, and how it traded since the last one.
    since = previous.at if previous else datetime.now(UTC) - timedelta(days=PERFORMANCE_DAYS)
    metrics: TradeMetrics | None = None
    fills, fills_error = settle(get_fills.submit(run.bot.hyperliquid, since))
    if fills is not None:
        made = compute_metrics(fills, start_balance=balance).trade_pnl
        opening = balance - made if balance - made > 0 else balance
        metrics = compute_metrics(fills, start_balance=opening)
        run.add_evidence(f"Performance since {'the previous high' if previous else f'{PERFORMANCE_DAYS} days ago'}",
                         table(["", ""], [
                             ["From", j._iso(since)], ["Closed trades", metrics.trades],
                             ["Win rate", "n/a" if metrics.win_rate is None else f"{metrics.win_rate:.1%}"],
                             ["Profit factor", "n/a" if metrics.profit_factor is None else f"{metrics.profit_factor:.2f}"],
                             ["Net P&L (USD)", usd(metrics.total_pnl, True)], ["Fees (USD)", usd(metrics.fees)],
                             ["Max drawdown", f"{usd(metrics.max_drawdown)} USD ({metrics.max_drawdown_pct:.1%})"],
                         ]))
    else:
        run.note(f"trades since {j._iso(since)} not read: {fills_error}")
    strategy = strategy_settings(seen.config) if seen.config else {}
    if seen.config:
        run.add_evidence("Strategy settings that produced it", table(
            ["section", "key", "value"], [[s, k, v] for s, k, v in seen.config.risk_parameters()]))
    else:
        run.note(f"the bot's config could not be read: {seen.config_error}")
    scale, advice = scaling_advice(metrics, seen.config)
    run.add_evidence("Consider scaling up", advice)

    # Backup configuration.
    backup_path: str | None = None
    try:
        backup_path = str(backup_bot_config(run.bot.path(run.bot.config_file)))
        run.act("backup-config", f"config backed up to {backup_path}")
    except Exception as error:  # the high is recorded anyway; the report says the copy is missing
        run.act("backup-config", f"config backup failed: {error}", ok=False)

    performance = None if metrics is None else {
        "since": j._iso(since), "trades": metrics.trades, "win_rate": metrics.win_rate,
        "profit_factor": None if metrics.profit_factor_infinite else metrics.profit_factor,
        "net_pnl": float(metrics.total_pnl), "max_drawdown_pct": metrics.max_drawdown_pct}
    run.journal.record_balance_high(
        run.bot_name, balance, source=source, previous=previous.amount if previous else None,
        incident_id=run.incident_id, config_backup=backup_path,
        detail={"strategy": strategy, "performance": performance, "scale_up": scale, "advice": advice})
    run.act("record-high", f"new high {usd(balance)} USD recorded in the journal")
    gain = f", +{usd(balance - previous.amount)} USD over the previous high of {j._iso(previous.at)}" if previous \
        else " (the first one recorded)"
    name = strategy.get("strategy", {}).get("name") if isinstance(strategy.get("strategy"), dict) else None
    return run.resolve(j.AUTO_RESOLVED, f"🎉 New all-time balance high: {usd(balance)} USD ({source}){gain}. "
                       + (f"Strategy {name!r}; " if name else "")
                       + (f"{metrics.trades} trades since, win rate {metrics.win_rate:.0%}. " if metrics and
                          metrics.win_rate is not None else "")
                       + (f"Config backed up to {backup_path}. " if backup_path else "Config backup FAILED. ")
                       + advice)
