"""The account's orders beyond the open ones: the order history (historicalOrders: which order closed a
position, whether it was a stop trigger, which stops it replaced) and whether each open position has a stop
covering it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from prefect import task

from runbook.settings import HyperliquidAccount
from tasks.hyperliquid import (
    _TASK_OPTIONS as EXCHANGE_TASK_OPTIONS,  # the same retry policy as every other exchange read
)
from tasks.hyperliquid import AccountState, HyperliquidError, HyperliquidInfo, OpenOrder, from_ms

@dataclass
class PastOrder:
    """One entry of historicalOrders: an order and what became of it."""

    oid: int
    coin: str
    side: str  # "B" / "A"
    order_type: str  # "Stop Market", "Limit", ...
    is_trigger: bool
    trigger_px: Decimal | None
    orig_size: Decimal | None
    reduce_only: bool
    placed_at: datetime
    status: str
    status_at: datetime

    @property
    def is_stop(self) -> bool:
        return self.is_trigger and self.order_type.lower().startswith("stop")


@task(name="read Hyperliquid order history", timeout_seconds=120, **EXCHANGE_TASK_OPTIONS)
def get_order_history(account: HyperliquidAccount) -> list[PastOrder]:
    """The account's recent orders with their final status (historicalOrders, at most 2000): which order
    closed a position, whether it was a stop trigger, and which stops were replaced before it."""
    kind = "historicalOrders"
    if not account.account_address:
        raise HyperliquidError(f"{kind}: no account address configured", request_type=kind)
    with HyperliquidInfo.from_account(account) as client:
        body = client.post({"type": kind, "user": account.account_address.lower()})
    if not isinstance(body, list):
        raise HyperliquidError(f"{kind}: unexpected response: body is {type(body).__name__}, expected a list",
                               request_type=kind)
    orders = []
    for item in body:
        try:
            order = item["order"]
            trigger = order.get("triggerPx")
            is_trigger = bool(order.get("isTrigger", False))
            orders.append(PastOrder(
                oid=int(order["oid"]), coin=str(order["coin"]), side=str(order["side"]),
                order_type=str(order.get("orderType", "Limit")), is_trigger=is_trigger,
                trigger_px=Decimal(str(trigger)) if is_trigger and trigger not in (None, "") else None,
                orig_size=Decimal(str(order["origSz"])) if order.get("origSz") is not None else None,
                reduce_only=bool(order.get("reduceOnly", False)), placed_at=from_ms(int(order["timestamp"])),
                status=str(item["status"]), status_at=from_ms(int(item["statusTimestamp"])),
            ))
        except (KeyError, TypeError, ValueError, ArithmeticError):
            continue  # one odd entry does not hide the others
    return orders


@dataclass
class PositionCheck:
    coin: str
    side: str
    size: Decimal  # absolute
    entry_px: Decimal | None
    mark_px: Decimal | None
    unrealized_pnl: Decimal
    stops: list[OpenOrder]
    covered: Decimal

    @property
    def status(self) -> str:
        if not self.stops:
            return "NO STOP"
        return "protected" if self.covered >= self.size else "PARTIAL"

    @property
    def unprotected(self) -> bool:
        return self.status != "protected"


def _is_stop_for(order: OpenOrder, coin: str, long: bool) -> bool:
    closes = order.side == ("A" if long else "B")
    return (order.coin == coin and order.is_trigger and order.order_type.lower().startswith("stop") and closes
            and (order.reduce_only or order.is_position_tpsl))


def check_positions(state: AccountState, orders: list[OpenOrder]) -> list[PositionCheck]:
    checks = []
    for position in state.positions:
        if position.size == 0:
            continue
        long, size = position.size > 0, abs(position.size)
        stops = [o for o in orders if _is_stop_for(o, position.coin, long)]
        # A position TP/SL with size 0 covers the whole position, whatever its size.
        covered = size if any(o.is_position_tpsl and o.size == 0 for o in stops) else sum(
            (o.size for o in stops), Decimal(0))
        mark = position.position_value / size if size else None
        checks.append(PositionCheck(position.coin, position.side, size, position.entry_px, mark,
                                    position.unrealized_pnl, stops, covered))
    return checks
