"""The sandbox exchange's actions (signed `POST /exchange`): orders, cancels, leverage, scheduled cancels,
matching and fills, and the background sweep that fires triggers and fills resting limits. `Venue` is the
whole exchange: its info views, its signature checks and these actions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sandbox.hl_info import VenueInfo
from sandbox.hl_market import (
    COIN_BY_NAME,
    ERR_CANCEL,
    ERR_MARGIN,
    ERR_MIN_VALUE,
    ERR_NO_MATCH,
    ERR_REDUCE_ONLY,
    ERR_SIZE,
    ERR_TICK,
    MAKER_FEE_RATE,
    MAX_CLOSED_ORDERS_KEPT,
    MIN_ORDER_VALUE,
    TAKER_FEE_RATE,
    ZERO,
    BadRequest,
    CoinSpec,
    D,
    JsonDict,
    coin_for_asset,
    decimals_of,
    fmt,
    fmt_px,
    fmt_sz,
    fmt_usd,
    is_valid_price,
    now_ms,
    sign,
)
from sandbox.hl_signatures import VenueAuth
from sandbox.hl_state import ExchangeError


class Venue(VenueInfo, VenueAuth):
    """All trading state and logic; every public method takes the lock, so the HTTP handlers and the
    background trigger thread can call it concurrently."""

    def execute(self, master: str, action: JsonDict) -> JsonDict:
        """Run one signed L1 action for `master` and answer in the real response shape."""
        kind = action.get("type")
        handlers: dict[str, Callable[[str, JsonDict], JsonDict]] = {
            "order": self._action_order,
            "cancel": self._action_cancel,
            "cancelByCloid": self._action_cancel_by_cloid,
            "noop": lambda _m, _a: {"type": "default"},
            "updateLeverage": self._action_update_leverage,
            "scheduleCancel": self._action_schedule_cancel,
        }
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise BadRequest(f"unsupported action {kind!r}")
        with self._lock:
            self.sweep()
            weight = len(action.get("orders") or action.get("cancels") or [None])
            self.state["requests"][master] = int(self.state["requests"].get(master, 0)) + weight
            response = handler(master, action)
            self._save()
            return {"status": "ok", "response": response}

    def _action_update_leverage(self, master: str, action: JsonDict) -> JsonDict:
        coin = coin_for_asset(action.get("asset"))
        leverage = action.get("leverage")
        if coin is None or not isinstance(leverage, int) or isinstance(leverage, bool):
            raise BadRequest("bad updateLeverage")
        if not 1 <= leverage <= coin.max_leverage:
            raise ExchangeError("Invalid leverage value")
        kind = "cross" if action.get("isCross", True) else "isolated"
        self.state["accounts"][master]["leverage"][coin.name] = {"type": kind, "value": leverage}
        return {"type": "default"}

    def _action_schedule_cancel(self, master: str, action: JsonDict) -> JsonDict:
        when = action.get("time")
        if when is not None:
            if not isinstance(when, int) or when < now_ms() + 5000:
                raise ExchangeError("Scheduled cancel time too early, must be at least 5 seconds from now.")
        self.state["accounts"][master]["scheduled_cancel"] = when
        return {"type": "default"}

    def _find_open(self, master: str, coin: CoinSpec, match: Callable[[JsonDict], bool]) -> JsonDict | None:
        for order in self.state["orders"].get(master, {}).values():
            if order["status"] == "open" and order["coin"] == coin.name and match(order):
                return order
        return None

    def _cancel_statuses(self, master: str, cancels: Any, asset_key: str, match_key: str) -> JsonDict:
        if not isinstance(cancels, list):
            raise BadRequest("cancels must be a list")
        statuses: list[Any] = []
        for cancel in cancels:
            if not isinstance(cancel, dict):
                raise BadRequest("bad cancel")
            coin = coin_for_asset(cancel.get(asset_key))
            target = cancel.get(match_key)
            order = None
            if coin is not None:
                if match_key == "o":
                    order = self._find_open(master, coin, lambda o: o["oid"] == target)
                else:
                    wanted = str(target).lower()
                    order = self._find_open(master, coin, lambda o: (o.get("cloid") or "").lower() == wanted)
            if order is None:
                statuses.append({"error": ERR_CANCEL})
                continue
            self._close_order(order, "canceled")
            statuses.append("success")
        return {"type": "cancel", "data": {"statuses": statuses}}

    def _action_cancel(self, master: str, action: JsonDict) -> JsonDict:
        return self._cancel_statuses(master, action.get("cancels"), "a", "o")

    def _action_cancel_by_cloid(self, master: str, action: JsonDict) -> JsonDict:
        return self._cancel_statuses(master, action.get("cancels"), "asset", "cloid")

    def _action_order(self, master: str, action: JsonDict) -> JsonDict:
        orders = action.get("orders")
        if not isinstance(orders, list):
            raise BadRequest("orders must be a list")
        grouping = action.get("grouping", "na")
        statuses = [self._place_order(master, wire, grouping) for wire in orders]
        return {"type": "order", "data": {"statuses": statuses}}

    def _position_szi(self, master: str, coin: CoinSpec) -> Decimal:
        pos = self.state["positions"].get(master, {}).get(coin.name)
        return D(pos["szi"]) if pos else ZERO

    def _check_margin(self, master: str, coin: CoinSpec, is_buy: bool, size: Decimal, px: Decimal) -> bool:
        """Whether the opening part of an order fits the free margin (always False under low-balance)."""
        szi = self._position_szi(master, coin)
        signed = size if is_buy else -size
        if szi == 0 or sign(szi) == sign(signed):
            opening = size  # adds to (or opens) a position
        else:
            opening = max(ZERO, size - abs(szi))  # only the part beyond a flip opens anything
        if opening <= 0:
            return True
        if self._low_balance_cap() is not None:
            return False
        figures = self._margin_figures(master, self.mids())
        required = opening * px / self._leverage(master, coin)[1]
        return figures["account_value"] - figures["margin"] >= required

    def _place_order(self, master: str, wire: Any, grouping: Any) -> JsonDict:
        if not isinstance(wire, dict) or not {"a", "b", "p", "s", "r", "t"} <= wire.keys():
            raise BadRequest("bad order wire")
        if not isinstance(wire["a"], int) or isinstance(wire["a"], bool):
            raise BadRequest("asset must be an int")
        coin = coin_for_asset(wire["a"])
        if coin is None:
            return {"error": f"Asset {wire['a']} is out of range."}
        is_buy, reduce_only, order_type = bool(wire["b"]), bool(wire["r"]), wire["t"]
        px, size = D(wire["p"]), D(wire["s"])
        cloid = wire.get("c")
        if size <= 0 or decimals_of(size) > coin.sz_decimals:
            return {"error": ERR_SIZE}
        if not is_valid_price(px, coin):
            return {"error": ERR_TICK}
        if not reduce_only and px * size < MIN_ORDER_VALUE:
            return {"error": ERR_MIN_VALUE}
        now = now_ms()
        mid = self.mid(coin)
        if isinstance(order_type, dict) and "trigger" in order_type:
            trigger = order_type["trigger"]
            if not isinstance(trigger, dict) or trigger.get("tpsl") not in ("tp", "sl"):
                raise BadRequest("bad trigger")
            trigger_px = D(trigger.get("triggerPx"))
            if not is_valid_price(trigger_px, coin):
                return {"error": ERR_TICK}
            if not reduce_only and not self._check_margin(master, coin, is_buy, size, px):
                return {"error": ERR_MARGIN}
            is_market = bool(trigger.get("isMarket"))
            tpsl = trigger["tpsl"]
            label = ("Stop" if tpsl == "sl" else "Take Profit") + (" Market" if is_market else " Limit")
            below = (tpsl == "sl") != is_buy  # a sell stop / buy take-profit fires on the way down
            order = self._new_order(master, coin, is_buy, px, size, reduce_only, cloid, now)
            order.update(
                {
                    "orderType": label,
                    "tif": None,
                    "isTrigger": True,
                    "triggerPx": fmt_px(trigger_px),
                    "triggerDirection": "below" if below else "above",
                    "isMarket": is_market,
                    "isPositionTpsl": grouping == "positionTpsl",
                }
            )
            return self._resting_status(order)
        if not isinstance(order_type, dict) or not isinstance(order_type.get("limit"), dict):
            raise BadRequest("bad order type")
        szi = self._position_szi(master, coin)  # trigger orders are only checked when they fire
        if reduce_only and (szi == 0 or (szi > 0) == is_buy):
            return {"error": ERR_REDUCE_ONLY}
        tif = order_type["limit"].get("tif")
        if tif not in ("Gtc", "Ioc", "Alo"):
            raise BadRequest("bad tif")
        crosses = px >= mid if is_buy else px <= mid
        if tif == "Alo" and crosses:
            tick = self.tick(coin, mid)
            return {"error": f"Post only order would have immediately matched, bbo was {mid - tick}@{mid + tick}."}
        if tif == "Ioc" and not crosses:
            return {"error": ERR_NO_MATCH}
        if not self._check_margin(master, coin, is_buy, size, px):
            return {"error": ERR_MARGIN}
        order = self._new_order(master, coin, is_buy, px, size, reduce_only, cloid, now)
        order["tif"] = tif
        if not crosses:
            return self._resting_status(order)
        filled = self._taker_fill(master, order, mid)
        if tif == "Ioc" or D(order["sz"]) == 0:
            if order["status"] == "open":
                self._close_order(order, "filled" if D(order["sz"]) == 0 else "canceled")
        status: JsonDict = {"totalSz": fmt_sz(filled, coin), "avgPx": fmt_px(mid), "oid": order["oid"]}
        if cloid:
            status["cloid"] = cloid
        return {"filled": status}

    @staticmethod
    def _resting_status(order: JsonDict) -> JsonDict:
        status: JsonDict = {"oid": order["oid"]}
        if order.get("cloid"):
            status["cloid"] = order["cloid"]
        return {"resting": status}

    def _new_order(
        self,
        master: str,
        coin: CoinSpec,
        is_buy: bool,
        px: Decimal,
        size: Decimal,
        reduce_only: bool,
        cloid: Any,
        now: int,
    ) -> JsonDict:
        oid = int(self.state["next_oid"])
        self.state["next_oid"] = oid + 1
        order: JsonDict = {
            "oid": oid,
            "coin": coin.name,
            "side": "B" if is_buy else "A",
            "limitPx": fmt_px(px),
            "sz": fmt_sz(size, coin),
            "origSz": fmt_sz(size, coin),
            "timestamp": now,
            "reduceOnly": reduce_only,
            "orderType": "Limit",
            "tif": "Gtc",
            "isTrigger": False,
            "triggerPx": "0.0",
            "triggerDirection": None,
            "isMarket": False,
            "isPositionTpsl": False,
            "cloid": cloid.lower() if isinstance(cloid, str) else None,
            "status": "open",
            "statusTimestamp": now,
        }
        self.state["orders"].setdefault(master, {})[str(oid)] = order
        self._prune_orders(master)
        return order

    def _prune_orders(self, master: str) -> None:
        orders = self.state["orders"].get(master, {})
        closed = [o for o in orders.values() if o["status"] != "open"]
        if len(closed) > MAX_CLOSED_ORDERS_KEPT:
            closed.sort(key=lambda o: o["statusTimestamp"])
            for order in closed[: len(closed) - MAX_CLOSED_ORDERS_KEPT]:
                orders.pop(str(order["oid"]), None)

    def _close_order(self, order: JsonDict, status: str) -> None:
        order["status"] = status
        order["statusTimestamp"] = now_ms()
        self._dirty = True

    def _taker_fill(self, master: str, order: JsonDict, px: Decimal) -> Decimal:
        """Fill what an aggressive order can take now: reduce-only clipped, `fill_limit` capped."""
        coin = COIN_BY_NAME[order["coin"]]
        size = D(order["sz"])
        if order["reduceOnly"]:
            size = min(size, abs(self._position_szi(master, coin)))
        cap = self.state["fill_limits"].get(coin.name)
        if cap is not None:
            size = min(size, D(cap))
        if size > 0:
            self._fill(master, order, size, px, crossed=True)
        return size

    def _fill(self, master: str, order: JsonDict, size: Decimal, px: Decimal, crossed: bool) -> None:
        """Apply one fill: position (weighted entry, realised PnL, flips), balance, fee, fill record."""
        coin = COIN_BY_NAME[order["coin"]]
        is_buy = order["side"] == "B"
        positions = self.state["positions"].setdefault(master, {})
        pos = positions.get(coin.name)
        start = D(pos["szi"]) if pos else ZERO
        entry = D(pos["entryPx"]) if pos else ZERO
        signed = size if is_buy else -size
        end = start + signed
        closing = min(abs(start), size) if start != 0 and sign(start) != sign(signed) else ZERO
        closed_pnl = closing * (px - entry) if start > 0 else closing * (entry - px)
        if end == 0:
            positions.pop(coin.name, None)
            self._cancel_position_tpsl(master, coin)
        elif start == 0 or sign(start) == sign(signed):
            new_entry = (abs(start) * entry + size * px) / abs(end)
            positions[coin.name] = {"szi": fmt_sz(end, coin), "entryPx": fmt(new_entry, 8)}
        elif sign(end) == sign(start):
            positions[coin.name] = {"szi": fmt_sz(end, coin), "entryPx": pos["entryPx"]}  # type: ignore[index]
        else:
            positions[coin.name] = {"szi": fmt_sz(end, coin), "entryPx": fmt_px(px)}
        if start == 0 or (sign(start) == sign(signed)):
            direction = "Open Long" if is_buy else "Open Short"
        elif is_buy:
            direction = "Close Short" if end <= 0 else "Short > Long"
        else:
            direction = "Close Long" if end >= 0 else "Long > Short"
        notional = px * size
        fee = (notional * (TAKER_FEE_RATE if crossed else MAKER_FEE_RATE)).quantize(Decimal("0.000001"))
        account = self.state["accounts"][master]
        account["balance"] = fmt_usd(D(account["balance"]) + closed_pnl - fee)
        account["cum_vlm"] = fmt_usd(D(account.get("cum_vlm", "0")) + notional)
        order["sz"] = fmt_sz(D(order["sz"]) - size, coin)
        self._dirty = True
        tid = int(self.state["next_tid"])
        self.state["next_tid"] = tid + 1
        fill_time = now_ms()
        digest = hashlib.sha256(f"{self.seed}:{master}:{order['oid']}:{tid}".encode()).hexdigest()
        self.state["fills"].setdefault(master, []).append(
            {
                "coin": coin.name,
                "px": fmt_px(px),
                "sz": fmt_sz(size, coin),
                "side": order["side"],
                "time": fill_time,
                "startPosition": fmt_sz(start, coin),
                "dir": direction,
                "closedPnl": fmt_usd(closed_pnl),
                "hash": "0x" + digest,
                "oid": order["oid"],
                "crossed": crossed,
                "fee": fmt_usd(fee),
                "tid": tid,
                "feeToken": "USDC",
            }
        )

    def _cancel_position_tpsl(self, master: str, coin: CoinSpec) -> None:
        for order in self.state["orders"].get(master, {}).values():
            if order["status"] == "open" and order["coin"] == coin.name and order["isPositionTpsl"]:
                self._close_order(order, "canceled")

    # ---------------- triggers, resting limits, scheduled cancels

    def sweep(self) -> bool:
        """Fire triggers, fill resting limits the mid crossed, run due scheduled cancels; True if changed."""
        with self._lock:
            self._dirty = False
            mids = self.mids()
            now = now_ms()
            for master, account in self.state["accounts"].items():
                due = account.get("scheduled_cancel")
                orders = self.state["orders"].get(master, {})
                for order in sorted(orders.values(), key=lambda o: o["oid"]):
                    if order["status"] != "open":
                        continue
                    if due is not None and now >= due:
                        self._close_order(order, "scheduledCancel")
                    elif order["isTrigger"]:
                        self._maybe_trigger(master, order, mids[order["coin"]])
                    else:
                        self._maybe_fill_resting(master, order, mids[order["coin"]])
                if due is not None and now >= due:
                    account["scheduled_cancel"] = None
                    self._dirty = True
            changed = self._dirty
            if changed:
                self._save()
            return changed

    def _maybe_trigger(self, master: str, order: JsonDict, mid: Decimal) -> None:
        trigger_px = D(order["triggerPx"])
        fired = mid <= trigger_px if order["triggerDirection"] == "below" else mid >= trigger_px
        if not fired:
            return
        coin = COIN_BY_NAME[order["coin"]]
        is_buy = order["side"] == "B"
        szi = self._position_szi(master, coin)
        if order["reduceOnly"] and (szi == 0 or (szi > 0) == is_buy):
            self._close_order(order, "reduceOnlyCanceled")
            return
        limit_px = D(order["limitPx"])
        crosses = limit_px >= mid if is_buy else limit_px <= mid
        if order["isMarket"] or crosses:
            self._taker_fill(master, order, mid)
            self._close_order(order, "filled" if D(order["sz"]) == 0 else "canceled")
        else:  # a triggered limit order becomes a plain resting limit order
            order.update({"isTrigger": False, "orderType": "Limit", "tif": "Gtc", "triggerDirection": None})
            order["statusTimestamp"] = now_ms()
            self._dirty = True

    def _maybe_fill_resting(self, master: str, order: JsonDict, mid: Decimal) -> None:
        limit_px = D(order["limitPx"])
        is_buy = order["side"] == "B"
        if not (mid <= limit_px if is_buy else mid >= limit_px):
            return
        coin = COIN_BY_NAME[order["coin"]]
        size = D(order["sz"])
        if order["reduceOnly"]:
            szi = self._position_szi(master, coin)
            if szi == 0 or (szi > 0) == is_buy:
                self._close_order(order, "reduceOnlyCanceled")
                return
            size = min(size, abs(szi))
        self._fill(master, order, size, limit_px, crossed=False)
        if D(order["sz"]) == 0:
            self._close_order(order, "filled")
