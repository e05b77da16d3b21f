"""Trading actions on Hyperliquid through the official SDK: cancel open orders, close a position.

Orders are signed by the bot's own key — for the sandbox and for a well-run bot an *agent* key approved for
the account, which can trade but not withdraw — with `hyperliquid.exchange.Exchange` pointed at the
configured `api_url`. The key is loaded with eth-account from the configured key file (JSON with
"private_key", or a bare hex key) or environment variable at the moment of use, inside the task that
signs, and is never returned, logged or put in an error message (errors name the file or variable only).

A close is what the SDK's `market_close` sends: a reduce-only IOC limit order priced at the mid ± a
bounded slippage, which fills what it can at once and cancels the rest — it can never open or flip a
position and never rests on the book. Each answer is checked (`filled` / `error`), each filled order's
final status is read back (`orderStatus`), and what did not fill is retried from a fresh mid, a bounded
number of times. Every request carries `expiresAfter`, so a close delayed in transit is rejected by the
exchange rather than executed late.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from hyperliquid.exchange import Exchange
from hyperliquid.utils.error import ClientError, ServerError
from prefect import task

from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY
from tasks.keys import KeyProblem, load_wallet

EXPIRES_AFTER_MS = 15_000
ZERO = Decimal(0)


class ExchangeActionError(Exception):
    """A trading action failed; the message says which and why (never with key material)."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class KeyUnavailable(ExchangeActionError):
    """The bot's signing key cannot be loaded from where the configuration says it is."""


# --- the key -----------------------------------------------------------------------------------


def load_signing_key(bot: BotSettings) -> LocalAccount:
    """The bot's signing key from its key file or environment variable (KeyUnavailable says which failed)."""
    try:
        return load_wallet(bot)
    except KeyProblem as error:
        raise KeyUnavailable(str(error)) from None


def trading_client(bot: BotSettings) -> tuple[Exchange, str]:
    """An SDK Exchange signing with the bot's key for its account, and the account address."""
    wallet = load_signing_key(bot)
    account = bot.hyperliquid
    address = account.account_address or wallet.address.lower()
    try:
        exchange = Exchange(wallet, account.api_url, account_address=account.account_address or None,
                            timeout=account.timeout_seconds)
    except (ClientError, ServerError, requests.RequestException) as error:
        raise ExchangeActionError(f"cannot reach the exchange at {account.api_url}: {_reason(error)}",
                                  retryable=True) from None
    return exchange, address


def _reason(error: Exception) -> str:
    if isinstance(error, ClientError):
        return f"HTTP {error.status_code}: {error.error_message}"
    if isinstance(error, ServerError):
        return f"HTTP {error.status_code}: {error.message}"
    return f"{type(error).__name__}: {error}"


def _transient(error: Exception) -> bool:
    return isinstance(error, (ServerError, requests.RequestException)) or (
        isinstance(error, ClientError) and error.status_code == 429)


def _statuses(response: Any, what: str) -> list[Any]:
    """The per-order/per-cancel statuses of an /exchange answer; a whole-request refusal raises."""
    if not isinstance(response, dict) or response.get("status") != "ok":
        detail = response.get("response") if isinstance(response, dict) else response
        raise ExchangeActionError(f"{what}: the exchange refused the request: {detail}")
    try:
        return list(response["response"]["data"]["statuses"])
    except (KeyError, TypeError):
        raise ExchangeActionError(f"{what}: unexpected answer {str(response)[:200]}") from None


def _expire_soon(exchange: Exchange) -> None:
    exchange.set_expires_after(int(time.time() * 1000) + EXPIRES_AFTER_MS)


# --- cancelling -----------------------------------------------------------------------------------


@dataclass
class OrderCancel:
    coin: str
    oid: int
    order_type: str
    side: str
    size: str
    reduce_only: bool
    ok: bool
    detail: str


@dataclass
class CancelReport:
    found: int
    cancelled: list[OrderCancel] = field(default_factory=list)
    failed: list[OrderCancel] = field(default_factory=list)
    kept: list[OrderCancel] = field(default_factory=list)
    remaining: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cleared(self) -> bool:
        """No order that could still trade is left (kept protective orders aside)."""
        return not self.remaining

    def summary(self) -> str:
        if not self.found:
            return "no open orders on the exchange"
        parts = [f"{len(self.cancelled)} of {self.found} open orders cancelled"]
        if self.kept:
            parts.append(f"{len(self.kept)} protective (reduce-only stop/take-profit) kept")
        if self.failed:
            parts.append(f"{len(self.failed)} refused ({self.failed[0].detail})")
        if self.remaining:
            parts.append(f"{len(self.remaining)} STILL OPEN: " + ", ".join(
                f"{o.get('coin')} #{o.get('oid')}" for o in self.remaining[:5]))
        return "; ".join(parts)

    def merge(self, other: CancelReport) -> CancelReport:
        return CancelReport(self.found + other.found, self.cancelled + other.cancelled, self.failed + other.failed,
                            other.kept, other.remaining)


def is_protective(order: dict[str, Any]) -> bool:
    """A stop-loss or take-profit: a reduce-only trigger order, which can only shrink a position."""
    return bool(order.get("reduceOnly")) and bool(order.get("isTrigger"))


def cancel_all_orders(bot: BotSettings, keep_protective: bool = False, coin: str | None = None) -> CancelReport:
    """Cancel every open order of the account (plain and trigger) — or of one coin — or all but the protective
    ones (reduce-only triggers); then read the book back."""
    exchange, address = trading_client(bot)
    try:
        orders = [o for o in exchange.info.frontend_open_orders(address) if coin is None or o.get("coin") == coin]
        kept = [o for o in orders if keep_protective and is_protective(o)]
        targets = [o for o in orders if o not in kept]
        report = CancelReport(found=len(orders), kept=[_cancel_row(o, True, "kept: reduce-only") for o in kept])
        if targets:
            _expire_soon(exchange)
            statuses = _statuses(exchange.bulk_cancel([{"coin": o["coin"], "oid": int(o["oid"])} for o in targets]),
                                 "cancel")
            for order, status in zip(targets, statuses):
                if status == "success":
                    report.cancelled.append(_cancel_row(order, True, "cancelled"))
                else:
                    detail = status.get("error") if isinstance(status, dict) else str(status)
                    report.failed.append(_cancel_row(order, False, str(detail)))
        left = [o for o in exchange.info.frontend_open_orders(address) if coin is None or o.get("coin") == coin]
    except (ClientError, ServerError, requests.RequestException) as error:
        raise ExchangeActionError(f"cancelling open orders failed: {_reason(error)}", retryable=_transient(error)) from None
    kept_oids = {o.oid for o in report.kept}
    report.remaining = [o for o in left if int(o["oid"]) not in kept_oids]
    # An order reported "never placed, already canceled, or filled" that is no longer open is not a failure.
    still = {int(o["oid"]) for o in report.remaining}
    gone = [f for f in report.failed if f.oid not in still]
    report.failed = [f for f in report.failed if f.oid in still]
    report.cancelled += [OrderCancel(**{**f.__dict__, "ok": True, "detail": f"already gone ({f.detail})"}) for f in gone]
    return report


def _cancel_row(order: dict[str, Any], ok: bool, detail: str) -> OrderCancel:
    return OrderCancel(coin=str(order.get("coin")), oid=int(order.get("oid", 0)),
                       order_type=str(order.get("orderType", "Limit")), side=str(order.get("side")),
                       size=str(order.get("sz")), reduce_only=bool(order.get("reduceOnly")), ok=ok, detail=detail)


def _retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except ExchangeActionError as error:
        return error.retryable
    except Exception:  # noqa: BLE001
        return True
    return False


@task(name="cancel open orders", cache_policy=NO_CACHE_POLICY, retries=2, retry_delay_seconds=[0.5, 2],
      retry_condition_fn=_retry_transient)
def cancel_open_orders(bot: BotSettings, keep_protective: bool = False) -> CancelReport:
    """Runbook "Stop All Trading", on the exchange: no order of the bot's is left to fill."""
    return cancel_all_orders(bot, keep_protective)


@task(name="cancel a flat position's protective orders", cache_policy=NO_CACHE_POLICY, retries=2,
      retry_delay_seconds=[0.5, 2], retry_condition_fn=_retry_transient)
def cancel_coin_orders(bot: BotSettings, coin: str) -> CancelReport:
    """After a position is verified flat: its stop-loss / take-profit orders would be orphans; cancel them."""
    return cancel_all_orders(bot, keep_protective=False, coin=coin)


# --- the dead man's switch ---------------------------------------------------------------------------


@dataclass
class DeadMansSwitch:
    """Hyperliquid's scheduleCancel: at `at` the exchange cancels every open order of the account."""

    accepted: bool  # the exchange took the request
    at: datetime | None  # when it fires; None: not armed (disarmed, or refused)
    detail: str

    @property
    def armed(self) -> bool:
        return self.accepted and self.at is not None

    def summary(self) -> str:
        if self.armed:
            return f"dead man's switch ARMED: the exchange cancels every open order at {self.at:%H:%M:%S} UTC"
        if self.accepted:
            return "dead man's switch disarmed"
        return f"dead man's switch NOT armed: {self.detail}"


def schedule_cancel(bot: BotSettings, seconds: float | None) -> DeadMansSwitch:
    """Arm scheduleCancel `seconds` from now (None: disarm). The exchange refuses it for an account below its
    traded-volume minimum: that is an answer (armed=False with its reason), not an error."""
    exchange, _ = trading_client(bot)
    at = None if seconds is None else datetime.now(timezone.utc) + timedelta(seconds=seconds)
    try:
        _expire_soon(exchange)
        response = exchange.schedule_cancel(None if at is None else int(at.timestamp() * 1000))
    except (ClientError, ServerError, requests.RequestException) as error:
        raise ExchangeActionError(f"scheduleCancel failed: {_reason(error)}", retryable=_transient(error)) from None
    if isinstance(response, dict) and response.get("status") == "ok":
        return DeadMansSwitch(True, at, "armed" if at else "disarmed")
    refusal = response.get("response") if isinstance(response, dict) else response
    return DeadMansSwitch(False, None, f"the exchange refused it: {str(refusal).rstrip('.')}")


@task(name="arm the dead man's switch", cache_policy=NO_CACHE_POLICY, retries=2, retry_delay_seconds=[0.5, 2],
      retry_condition_fn=_retry_transient)
def arm_dead_mans_switch(bot: BotSettings, seconds: float) -> DeadMansSwitch:
    """Exchange-side insurance while the bot is being stopped: every open order goes at now + `seconds`."""
    return schedule_cancel(bot, seconds)


@task(name="disarm the dead man's switch", cache_policy=NO_CACHE_POLICY, retries=2, retry_delay_seconds=[0.5, 2],
      retry_condition_fn=_retry_transient)
def disarm_dead_mans_switch(bot: BotSettings) -> DeadMansSwitch:
    """Unset scheduleCancel, so the protective orders kept on the book outlive it."""
    return schedule_cancel(bot, None)


# --- closing a position ------------------------------------------------------------------------------


@dataclass
class CloseAttempt:
    attempt: int
    size_before: str
    filled: str = "0"
    avg_px: str | None = None
    oid: int | None = None
    order_status: str | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"attempt {self.attempt}: {self.error}"
        px = f" at {self.avg_px}" if self.avg_px else ""
        return f"attempt {self.attempt}: filled {self.filled} of {self.size_before}{px} (order #{self.oid} {self.order_status})"


@dataclass
class CloseResult:
    coin: str
    start_size: Decimal
    remaining: Decimal
    attempts: list[CloseAttempt]

    @property
    def flat(self) -> bool:
        return self.remaining == 0

    def summary(self) -> str:
        side = "long" if self.start_size > 0 else "short"
        head = (f"{self.coin} {side} {abs(self.start_size)}: " + ("closed" if self.flat else f"{abs(self.remaining)} STILL OPEN")
                + f" after {len(self.attempts)} order(s)")
        return head + (" — " + "; ".join(a.describe() for a in self.attempts) if self.attempts else "")


def _position_size(exchange: Exchange, address: str, coin: str) -> Decimal:
    state = exchange.info.user_state(address)
    for item in state.get("assetPositions", []):
        position = item.get("position", {})
        if position.get("coin") == coin:
            return Decimal(str(position.get("szi", "0")))
    return ZERO


def close_position(bot: BotSettings, coin: str, slippage: float, attempts: int, retry_delay: float) -> CloseResult:
    """Close `coin` with reduce-only IOC orders (bounded slippage), retrying what did not fill."""
    exchange, address = trading_client(bot)
    tries: list[CloseAttempt] = []
    try:
        start = remaining = _position_size(exchange, address, coin)
    except (ClientError, ServerError, requests.RequestException) as error:
        raise ExchangeActionError(f"{coin}: cannot read the position: {_reason(error)}", retryable=True) from None
    for number in range(1, attempts + 1):
        if remaining == 0:
            break
        attempt = CloseAttempt(number, str(abs(remaining)))
        tries.append(attempt)
        try:
            _expire_soon(exchange)
            response = exchange.market_close(coin, slippage=slippage)
            if response is None:  # the SDK found no position left in `coin`
                attempt.error = "no position left to close"
            else:
                status = _statuses(response, f"close {coin}")[0]
                if isinstance(status, dict) and "filled" in status:
                    filled = status["filled"]
                    attempt.filled, attempt.avg_px, attempt.oid = str(filled["totalSz"]), str(filled["avgPx"]), int(filled["oid"])
                    answer = exchange.info.query_order_by_oid(address, attempt.oid)
                    attempt.order_status = str((answer.get("order") or {}).get("status", answer.get("status")))
                elif isinstance(status, dict) and "resting" in status:  # an IOC never rests; if it did, take it off
                    attempt.oid = int(status["resting"]["oid"])
                    exchange.cancel(coin, attempt.oid)
                    attempt.error = f"order #{attempt.oid} rested on the book (cancelled)"
                else:
                    attempt.error = str(status.get("error") if isinstance(status, dict) else status)
            remaining = _position_size(exchange, address, coin)
        except ExchangeActionError as error:
            attempt.error = str(error)
        except (ClientError, ServerError, requests.RequestException) as error:
            attempt.error = _reason(error)
            try:
                remaining = _position_size(exchange, address, coin)
            except (ClientError, ServerError, requests.RequestException):
                pass
        if remaining != 0 and number < attempts:
            time.sleep(retry_delay)
    return CloseResult(coin=coin, start_size=start, remaining=remaining, attempts=tries)


@task(name="close position", cache_policy=NO_CACHE_POLICY)
def close_position_task(bot: BotSettings, coin: str, slippage: float, attempts: int, retry_delay: float) -> CloseResult:
    """Runbook "Manual Liquidation": one position, reduce-only IOC, retried within limits."""
    return close_position(bot, coin, slippage, attempts, retry_delay)
