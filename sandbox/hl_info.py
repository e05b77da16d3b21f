"""`POST /info` of the sandbox exchange: the venue's read-only views (account, orders, fills and history,
market) in the real wire format, and the dispatch of an info request to them."""

from __future__ import annotations

import copy
import json
import random
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from sandbox.hl_market import (
    ADDRESS_RE,
    CLOID_RE,
    COIN_BY_NAME,
    COINS,
    INTERVAL_MS,
    MAX_CANDLES,
    MAX_FILLS_PER_RESPONSE,
    RATE_LIMIT_BUFFER,
    ZERO,
    BadRequest,
    CoinSpec,
    D,
    JsonDict,
    candle_opens,
    fmt,
    fmt_px,
    fmt_sz,
    fmt_usd,
    now_ms,
    round_px,
)
from sandbox.hl_state import VenueState


class VenueInfo(VenueState):
    """The info views; every public method takes the lock."""

    def clearinghouse_state(self, user: str) -> JsonDict:
        with self._lock:
            master = user.lower()
            mids = self.mids()
            figures = self._margin_figures(master, mids)
            asset_positions = []
            for coin_name, pos in sorted(
                self.state["positions"].get(master, {}).items(), key=lambda kv: COIN_BY_NAME[kv[0]].asset
            ):
                coin = COIN_BY_NAME[coin_name]
                szi, entry, mark = D(pos["szi"]), D(pos["entryPx"]), mids[coin_name]
                lev_type, lev = self._leverage(master, coin)
                value = abs(szi) * mark
                upnl = szi * (mark - entry)
                margin_used = value / lev
                initial = abs(szi) * entry / lev
                leverage: JsonDict = {"type": lev_type, "value": lev}
                if lev_type == "isolated":
                    leverage["rawUsd"] = fmt_usd(initial - szi * entry)
                liq = self._liquidation_px(master, coin, mids)
                asset_positions.append(
                    {
                        "position": {
                            "coin": coin_name,
                            "cumFunding": {"allTime": "0.0", "sinceChange": "0.0", "sinceOpen": "0.0"},
                            "entryPx": fmt_px(entry),
                            "leverage": leverage,
                            "liquidationPx": fmt_px(liq) if liq is not None else None,
                            "marginUsed": fmt_usd(margin_used),
                            "maxLeverage": coin.max_leverage,
                            "positionValue": fmt_usd(value),
                            "returnOnEquity": fmt(upnl / initial if initial else ZERO, 8),
                            "szi": fmt_sz(szi, coin),
                            "unrealizedPnl": fmt_usd(upnl),
                        },
                        "type": "oneWay",
                    }
                )
            account_value = figures["account_value"]
            cap = self._low_balance_cap()
            if cap is not None:
                account_value = min(account_value, cap)
            withdrawable = max(ZERO, account_value - figures["margin"])
            summary = {
                "accountValue": fmt_usd(account_value),
                "totalMarginUsed": fmt_usd(figures["margin"]),
                "totalNtlPos": fmt_usd(figures["ntl"]),
                "totalRawUsd": fmt_usd(account_value - figures["signed_ntl"]),
            }
            return {
                "assetPositions": asset_positions,
                "crossMaintenanceMarginUsed": fmt_usd(figures["maintenance"]),
                "crossMarginSummary": dict(summary),
                "marginSummary": summary,
                "time": now_ms(),
                "withdrawable": fmt_usd(withdrawable),
            }

    def spot_clearinghouse_state(self, user: str) -> JsonDict:
        # Perp collateral lives in the perp clearinghouse (standard account mode); spot holds nothing.
        with self._lock:
            if user.lower() not in self.state["accounts"]:
                return {"balances": []}
            return {"balances": [{"coin": "USDC", "token": 0, "hold": "0.0", "total": "0.0", "entryNtl": "0.0"}]}

    # ---------------- orders: views

    @staticmethod
    def _trigger_condition(order: JsonDict) -> str:
        if not order["isTrigger"]:
            return "N/A"
        return f"Price {order['triggerDirection']} {order['triggerPx']}"

    def _frontend_order(self, order: JsonDict, with_cloid: bool = False) -> JsonDict:
        view: JsonDict = {
            "children": [],
            "coin": order["coin"],
            "isPositionTpsl": order["isPositionTpsl"],
            "isTrigger": order["isTrigger"],
            "limitPx": order["limitPx"],
            "oid": order["oid"],
            "orderType": order["orderType"],
            "origSz": order["origSz"],
            "reduceOnly": order["reduceOnly"],
            "side": order["side"],
            "sz": order["sz"],
            "tif": order["tif"],
            "timestamp": order["timestamp"],
            "triggerCondition": self._trigger_condition(order),
            "triggerPx": order["triggerPx"],
        }
        if with_cloid or order.get("cloid"):
            view["cloid"] = order.get("cloid")
        return view

    def _open_orders(self, master: str) -> list[JsonDict]:
        orders = [o for o in self.state["orders"].get(master, {}).values() if o["status"] == "open"]
        return sorted(orders, key=lambda o: o["oid"], reverse=True)

    def open_orders(self, user: str) -> list[JsonDict]:
        with self._lock:
            result = []
            for order in self._open_orders(user.lower()):
                view = {k: order[k] for k in ("coin", "limitPx", "oid", "side", "sz", "timestamp")}
                if order.get("cloid"):
                    view["cloid"] = order["cloid"]
                result.append(view)
            return result

    def frontend_open_orders(self, user: str) -> list[JsonDict]:
        with self._lock:
            return [self._frontend_order(o) for o in self._open_orders(user.lower())]

    def order_status(self, user: str, oid: Any) -> JsonDict:
        with self._lock:
            orders = self.state["orders"].get(user.lower(), {})
            found = None
            if isinstance(oid, int) and not isinstance(oid, bool):
                found = orders.get(str(oid))
            elif isinstance(oid, str) and CLOID_RE.match(oid):
                found = next((o for o in orders.values() if (o.get("cloid") or "").lower() == oid.lower()), None)
            else:
                raise BadRequest("oid must be an int or a 16-byte hex cloid")
            if found is None:
                return {"status": "unknownOid"}
            return {
                "status": "order",
                "order": {
                    "order": self._frontend_order(found, with_cloid=True),
                    "status": found["status"],
                    "statusTimestamp": found["statusTimestamp"],
                },
            }

    def historical_orders(self, user: str) -> list[JsonDict]:
        with self._lock:
            orders = sorted(self.state["orders"].get(user.lower(), {}).values(), key=lambda o: -o["statusTimestamp"])
            return [
                {
                    "order": self._frontend_order(o, with_cloid=True),
                    "status": o["status"],
                    "statusTimestamp": o["statusTimestamp"],
                }
                for o in orders[:MAX_FILLS_PER_RESPONSE]
            ]

    # ---------------- fills and history views

    def user_fills(self, user: str) -> list[JsonDict]:
        with self._lock:
            fills = self.state["fills"].get(user.lower(), [])
            return copy.deepcopy(list(reversed(fills[-MAX_FILLS_PER_RESPONSE:])))

    def user_fills_by_time(self, user: str, start: int, end: int | None) -> list[JsonDict]:
        with self._lock:
            stop = now_ms() if end is None else end
            fills = [f for f in self.state["fills"].get(user.lower(), []) if start <= f["time"] <= stop]
            return copy.deepcopy(fills[:MAX_FILLS_PER_RESPONSE])

    def user_rate_limit(self, user: str) -> JsonDict:
        with self._lock:
            address = user.lower()
            account = self.state["accounts"].get(address, {})
            cum_vlm = D(account.get("cum_vlm", "0"))
            used = int(self.state["requests"].get(address, 0))
            cap = RATE_LIMIT_BUFFER + int(cum_vlm)
            return {
                "cumVlm": fmt_usd(cum_vlm),
                "nRequestsUsed": used,
                "nRequestsCap": cap,
                "nRequestsSurplus": 0,  # nothing is ever reserved in the sandbox
            }

    def user_role(self, user: str) -> JsonDict:
        with self._lock:
            address = user.lower()
            if address in self.state["accounts"]:
                return {"role": "user"}
            master = self.master_of(address)
            if master is None or self.faults.active("auth"):
                return {"role": "missing"}
            return {"role": "agent", "data": {"user": master}}

    def extra_agents(self, user: str) -> list[JsonDict]:
        with self._lock:
            agents = self.state["accounts"].get(user.lower(), {}).get("agents", {})
            return [{"name": a["name"], "address": addr, "validUntil": a["validUntil"]} for addr, a in agents.items()]

    def portfolio(self, user: str) -> list[JsonDict]:
        """Equity/PnL history rebuilt from fills: value(t) = value now - net realised PnL after t."""
        with self._lock:
            master = user.lower()
            now = now_ms()
            known = master in self.state["accounts"]
            current = D(self.clearinghouse_state(master)["marginSummary"]["accountValue"]) if known else ZERO
            fills = self.state["fills"].get(master, [])
            periods = {"day": 86_400_000, "week": 7 * 86_400_000, "month": 30 * 86_400_000, "allTime": None}
            result: list[Any] = []
            for prefix in ("", "perp"):
                for name, span in periods.items():
                    start = 0 if span is None else now - span
                    window = [f for f in fills if f["time"] >= start]
                    after = sum((D(f["closedPnl"]) - D(f["fee"]) for f in window), ZERO)
                    first_value = current - after
                    value_points = [[window[0]["time"] - 1 if window else start or now, fmt_usd(first_value)]]
                    pnl_points = [[value_points[0][0], "0.0"]]
                    running = first_value
                    for fill in window:
                        running += D(fill["closedPnl"]) - D(fill["fee"])
                        value_points.append([fill["time"], fmt_usd(running)])
                        pnl_points.append([fill["time"], fmt_usd(running - first_value)])
                    value_points.append([now, fmt_usd(current)])
                    pnl_points.append([now, fmt_usd(current - first_value)])
                    volume = sum((D(f["px"]) * D(f["sz"]) for f in window), ZERO)
                    label = name if not prefix else prefix + name[0].upper() + name[1:]
                    result.append(
                        [label, {"accountValueHistory": value_points, "pnlHistory": pnl_points, "vlm": fmt_usd(volume)}]
                    )
            return result

    # ---------------- market views

    def meta(self) -> JsonDict:
        return {
            "universe": [
                {
                    "szDecimals": c.sz_decimals,
                    "name": c.name,
                    "maxLeverage": c.max_leverage,
                    "marginTableId": c.max_leverage,
                }
                for c in COINS
            ],
            "marginTables": [
                [lev, {"description": "", "marginTiers": [{"lowerBound": "0.0", "maxLeverage": lev}]}]
                for lev in sorted({c.max_leverage for c in COINS}, reverse=True)
            ],
            "collateralToken": 0,
        }

    @staticmethod
    def spot_meta() -> JsonDict:
        return {
            "tokens": [
                {
                    "name": "USDC",
                    "szDecimals": 8,
                    "weiDecimals": 8,
                    "index": 0,
                    "tokenId": "0x6d1e7cde53ba9467b783cb7c530ce054",
                    "isCanonical": True,
                    "evmContract": None,
                    "fullName": None,
                },
                {
                    "name": "PURR",
                    "szDecimals": 0,
                    "weiDecimals": 5,
                    "index": 1,
                    "tokenId": "0xc1fb593aeffbeb02f85e0308e9956a90",
                    "isCanonical": True,
                    "evmContract": None,
                    "fullName": None,
                },
            ],
            "universe": [{"name": "PURR/USDC", "tokens": [1, 0], "index": 0, "isCanonical": True}],
        }

    def asset_ctxs(self) -> list[JsonDict]:
        t = now_ms()
        ctxs = []
        for coin in COINS:
            mid = self.mid(coin, t)
            prev = round_px(self.walk.price(coin, t - 86_400_000), coin)
            tick = self.tick(coin, mid)
            day_volume = Decimal(str(coin.daily_volume))
            ctxs.append(
                {
                    "funding": "0.0000125",
                    "openInterest": fmt_sz(day_volume / 4, coin),
                    "prevDayPx": fmt_px(prev),
                    "dayNtlVlm": fmt_usd(day_volume * mid),
                    "premium": "0.0",
                    "oraclePx": fmt_px(mid),
                    "markPx": fmt_px(mid),
                    "midPx": fmt_px(mid),
                    "impactPxs": [fmt_px(mid - tick), fmt_px(mid + tick)],
                    "dayBaseVlm": fmt_sz(day_volume, coin),
                }
            )
        return ctxs

    def l2_book(self, coin: CoinSpec) -> JsonDict:
        mid = self.mid(coin)
        tick = self.tick(coin, mid)
        rng = random.Random(f"{self.seed}:book:{coin.name}:{now_ms() // 1000}")
        unit = Decimal(str(coin.daily_volume)) / 20000
        bids, asks = [], []
        for level in range(1, 11):
            for side, px in ((bids, mid - tick * level), (asks, mid + tick * level)):
                size = (unit * Decimal(str(rng.uniform(0.2, 3.0)))).quantize(
                    Decimal(1).scaleb(-coin.sz_decimals), rounding=ROUND_DOWN
                )
                size = max(size, Decimal(1).scaleb(-coin.sz_decimals))
                side.append({"px": fmt_px(px), "sz": fmt_sz(size, coin), "n": rng.randint(1, 12)})
        return {"coin": coin.name, "time": now_ms(), "levels": [bids, asks]}

    def candles(self, coin: CoinSpec, interval: str, start: int, end: int) -> list[JsonDict]:
        now = now_ms()
        end = min(end, now)
        if interval not in INTERVAL_MS and interval != "1M":
            raise BadRequest(f"unknown interval {interval}")
        spans = [span for span in candle_opens(interval, start, end) if span[0] <= now][-MAX_CANDLES:]
        length = INTERVAL_MS.get(interval, 30 * 86_400_000)
        # sample coarser boundaries for long candles so 5000 of them stay cheap to build
        resolution = "hour" if length >= 86_400_000 else "minute" if length >= 300_000 else "second"
        result = []
        for opened, closes in spans:
            last = min(closes, now)
            samples = [opened + (last - opened) * k // 11 for k in range(12)]
            prices = [self.walk.price(coin, t, resolution) for t in samples]
            prices[-1] = self.walk.price(coin, last)
            rng = random.Random(f"{self.seed}:vol:{coin.name}:{interval}:{opened}")
            volume = Decimal(str(coin.daily_volume * (last - opened + 1) / 86_400_000 * rng.uniform(0.6, 1.4)))
            result.append(
                {
                    "t": opened,
                    "T": closes,
                    "s": coin.name,
                    "i": interval,
                    "o": fmt_px(round_px(prices[0], coin)),
                    "c": fmt_px(round_px(prices[-1], coin)),
                    "h": fmt_px(round_px(max(prices), coin)),
                    "l": fmt_px(round_px(min(prices), coin)),
                    "v": fmt_sz(volume, coin),
                    "n": max(1, int(rng.uniform(0.5, 1.5) * (last - opened + 1) / 1000)),
                }
            )
        return result



# --------------------------------------------------------------------------------------------
# HTTP layer

USER_TYPES = {
    "clearinghouseState",
    "spotClearinghouseState",
    "openOrders",
    "frontendOpenOrders",
    "userFills",
    "userFillsByTime",
    "userRateLimit",
    "userRole",
    "extraAgents",
    "orderStatus",
    "portfolio",
    "userFunding",
    "userNonFundingLedgerUpdates",
    "historicalOrders",
}


def load_recorded(recorded_dir: Path | None) -> dict[str, Any]:
    """Recorded responses keyed by the *recorded request's* type (two cassettes hold a `meta` reply)."""
    recorded: dict[str, Any] = {}
    if recorded_dir is None:
        return recorded
    for path in sorted(Path(recorded_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        request = data.get("request") if isinstance(data, dict) else None
        kind = request.get("type") if isinstance(request, dict) else None
        if isinstance(kind, str) and "response" in data:
            # a file named after its own type wins over a cassette that merely starts with that type
            if kind not in recorded or path.stem == kind:
                recorded[kind] = data["response"]
    return recorded


def _require_user(body: JsonDict) -> str:
    user = body.get("user")
    if not isinstance(user, str) or not ADDRESS_RE.match(user):
        raise BadRequest("user must be 0x + 40 hex")
    return user


def _require_int(body: JsonDict, key: str, optional: bool = False) -> int | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{key} must be an int")
    return value


def answer_info(venue: VenueInfo, body: JsonDict) -> Any:
    """Dispatch one /info request on its `type` (raises BadRequest for what the real API rejects)."""
    kind = body.get("type")
    user = _require_user(body) if kind in USER_TYPES else ""
    if kind == "meta":
        return venue.meta()
    if kind == "spotMeta":
        return venue.spot_meta()
    if kind == "metaAndAssetCtxs":
        return [venue.meta(), venue.asset_ctxs()]
    if kind == "allMids":
        return {name: fmt_px(px) for name, px in venue.mids().items()}
    if kind == "perpDexs":
        return [None]
    if kind == "clearinghouseState":
        return venue.clearinghouse_state(user)
    if kind == "spotClearinghouseState":
        return venue.spot_clearinghouse_state(user)
    if kind == "openOrders":
        return venue.open_orders(user)
    if kind == "frontendOpenOrders":
        return venue.frontend_open_orders(user)
    if kind == "userFills":
        return venue.user_fills(user)
    if kind == "userFillsByTime":
        start = _require_int(body, "startTime")
        assert start is not None
        return venue.user_fills_by_time(user, start, _require_int(body, "endTime", optional=True))
    if kind == "userRateLimit":
        return venue.user_rate_limit(user)
    if kind == "userRole":
        return venue.user_role(user)
    if kind == "extraAgents":
        return venue.extra_agents(user)
    if kind == "orderStatus":
        return venue.order_status(user, body.get("oid"))
    if kind == "historicalOrders":
        return venue.historical_orders(user)
    if kind == "portfolio":
        return venue.portfolio(user)
    if kind in ("userFunding", "userNonFundingLedgerUpdates"):
        _require_int(body, "startTime")
        return []
    if kind == "l2Book":
        coin = COIN_BY_NAME.get(str(body.get("coin")))
        if coin is None:
            return None
        return venue.l2_book(coin)
    if kind == "candleSnapshot":
        req = body.get("req")
        if not isinstance(req, dict) or not isinstance(req.get("interval"), str):
            raise BadRequest("candleSnapshot needs req{coin,interval,startTime,endTime}")
        start = _require_int(req, "startTime")
        end = _require_int(req, "endTime", optional=True)
        assert start is not None
        coin = COIN_BY_NAME.get(str(req.get("coin")))
        if coin is None:
            return []
        return venue.candles(coin, req["interval"], start, now_ms() if end is None else end)
    raise BadRequest(f"unknown info type {kind!r}")
