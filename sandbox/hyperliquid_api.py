"""A local Hyperliquid API for the sandbox: `POST /info` and signed `POST /exchange`.

The project's client code, the bot simulator and the official `hyperliquid-python-sdk` talk to this
server exactly as they would to api.hyperliquid.xyz, so it reproduces the real wire format: numbers
as strings, ids/timestamps as ints (ms), lower-case addresses, HTTP 200 with `status: "err"` for
business errors, 422 text/plain for bodies it cannot deserialize, 429 with body `null`.

Prices follow a deterministic seeded random walk driven by wall-clock seconds (the same second
gives the same mid in every process with the same seed); `POST /_sandbox/set_mid` pins a mid so a
test can make a stop fire on purpose. Accounts, positions, orders, fills and nonces live in memory
and are persisted to `STATE_DIR/state.json` after every change, so a restart keeps them.

Run: `python -m sandbox.hyperliquid_api --port P --state-dir D --faults F [--seed N] [--recorded DIR]`.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from hyperliquid.utils.signing import recover_agent_or_user_from_l1_action, recover_user_from_user_signed_action

from sandbox.faults import FaultBoard
from sandbox.servers import common_arguments, serve

JsonDict = dict[str, Any]

DESERIALIZE_ERROR = "Failed to deserialize the JSON body into the target type"
TAKER_FEE_RATE = Decimal("0.00035")
MAKER_FEE_RATE = Decimal("0.0001")
MIN_ORDER_VALUE = Decimal("10")
RATE_LIMIT_BUFFER = 10_000
MAX_FILLS_PER_RESPONSE = 2000
MAX_CANDLES = 5000
MAX_CLOSED_ORDERS_KEPT = 2000
NONCES_KEPT = 100
NONCE_PAST_MS = 2 * 86_400_000
NONCE_FUTURE_MS = 86_400_000
SWEEP_INTERVAL_S = 0.5
ZERO = Decimal(0)
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
CLOID_RE = re.compile(r"^0x[0-9a-fA-F]{32}$")
ERR_NO_MATCH = "Order could not immediately match against any resting orders."
ERR_REDUCE_ONLY = "Reduce only order would increase position."
ERR_MARGIN = "Insufficient margin to place order."
ERR_MIN_VALUE = "Order must have minimum value of $10."
ERR_TICK = "Price must be divisible by tick size."
ERR_SIZE = "Order has invalid size."
ERR_CANCEL = "Order was never placed, already canceled, or filled."
# The dead man's switch (scheduleCancel) is refused below this cumulative traded volume, as on the exchange.
SCHEDULE_CANCEL_MIN_VOLUME = Decimal("1000000")
# approveAgent is user-signed by the master key (EIP-712 "HyperliquidTransaction:ApproveAgent").
APPROVE_AGENT_TYPES = [{"name": "hyperliquidChain", "type": "string"}, {"name": "agentAddress", "type": "address"},
                       {"name": "agentName", "type": "string"}, {"name": "nonce", "type": "uint64"}]


class BadRequest(Exception):
    """A body the real API would refuse to deserialize (answered 422 text/plain)."""


# --------------------------------------------------------------------------------------------
# Market definition and number formatting


@dataclass(frozen=True)
class CoinSpec:
    name: str
    asset: int
    sz_decimals: int
    max_leverage: int
    base_px: float
    daily_volume: float  # in coin units, only for candle volumes

    @property
    def default_leverage(self) -> int:
        return min(20, self.max_leverage)

    @property
    def maintenance_rate(self) -> Decimal:
        """Hyperliquid's maintenance margin is half the initial margin at max leverage."""
        return Decimal(1) / Decimal(2 * self.max_leverage)


COINS: tuple[CoinSpec, ...] = (
    CoinSpec("BTC", 0, 5, 50, 95_000.0, 25_000.0),
    CoinSpec("ETH", 1, 4, 50, 3_500.0, 400_000.0),
    CoinSpec("SOL", 2, 2, 20, 180.0, 5_000_000.0),
)
COIN_BY_NAME = {c.name: c for c in COINS}
COIN_BY_ASSET = {c.asset: c for c in COINS}


def coin_for_asset(value: Any) -> CoinSpec | None:
    """The coin behind an /exchange asset id (None for anything that is not a listed asset)."""
    return COIN_BY_ASSET.get(value) if isinstance(value, int) and not isinstance(value, bool) else None


def D(value: Any) -> Decimal:
    """Decimal from a wire string/number; raises BadRequest on junk so callers answer 422."""
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise BadRequest(f"not a number: {value!r}") from exc
    if not result.is_finite():
        raise BadRequest(f"not a finite number: {value!r}")
    return result


def fmt(value: Decimal, places: int) -> str:
    """Wire style for numbers: at most `places` decimals, trailing zeros trimmed, never bare ints."""
    quantum = Decimal(1).scaleb(-places)
    text = format(value.quantize(quantum, rounding=ROUND_HALF_EVEN).normalize(), "f")
    if "." not in text:
        text += ".0"
    return "0.0" if text in ("-0.0", "-0") else text


def fmt_usd(value: Decimal) -> str:
    return fmt(value, 6)


def fmt_sz(value: Decimal, coin: CoinSpec) -> str:
    return fmt(value, coin.sz_decimals)


def round_px(value: float | Decimal, coin: CoinSpec) -> Decimal:
    """A valid Hyperliquid perp price: 5 significant figures and at most 6 - szDecimals decimals."""
    five_sig = Decimal(f"{float(value):.5g}")
    return five_sig.quantize(Decimal(1).scaleb(-(6 - coin.sz_decimals)), rounding=ROUND_HALF_EVEN)


def fmt_px(value: Decimal) -> str:
    return fmt(value, 8)


def is_valid_price(px: Decimal, coin: CoinSpec) -> bool:
    """Tick-size rule: integers always pass; else <= 5 significant figures and <= 6 - szDecimals decimals."""
    if px <= 0:
        return False
    if px == px.to_integral_value():
        return True
    normalized = px.normalize()
    decimals = -normalized.as_tuple().exponent
    return isinstance(decimals, int) and decimals <= 6 - coin.sz_decimals and len(normalized.as_tuple().digits) <= 5


def decimals_of(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def now_ms() -> int:
    return int(time.time() * 1000)


def sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


# --------------------------------------------------------------------------------------------
# Deterministic price walk


class PriceWalk:
    """Seeded random walk of log-prices, one step per wall-clock second, deterministic per second.

    A plain cumulative walk would need every step since some origin to price a given second, so the
    walk is built as nested Brownian bridges: daily anchors (mean-reverting around the base price),
    hourly points bridged between them, minute points inside each hour and second points inside
    each minute. Each level's increments come from `random.Random(f"{seed}:{coin}:{level}:{index}")`,
    so any second (or any coarser boundary, for long candle ranges) is cheap and reproducible.
    """

    def __init__(self, seed: int, step_sigma: float = 0.0005, anchor_sigma: float = 0.05) -> None:
        self.seed = seed
        self.step_sigma = step_sigma
        self.anchor_sigma = anchor_sigma
        self._cache: dict[tuple[str, str, int], tuple[float, ...]] = {}
        self._lock = threading.Lock()

    def _rng(self, coin: str, level: str, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{coin}:{level}:{index}")

    def _day_anchor(self, coin: str, day: int) -> float:
        return self._rng(coin, "day", day).gauss(0.0, self.anchor_sigma)

    @staticmethod
    def _bridge(rng: random.Random, start: float, end: float, steps: int, sigma: float) -> tuple[float, ...]:
        walk = [0.0]
        for _ in range(steps):
            walk.append(walk[-1] + rng.gauss(0.0, sigma))
        total = walk[-1]
        return tuple(start + walk[k] + (k / steps) * (end - start - total) for k in range(steps + 1))

    def _points(self, coin: str, level: str, index: int) -> tuple[float, ...]:
        key = (coin, level, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if level == "hours":  # index = day
            start, end = self._day_anchor(coin, index), self._day_anchor(coin, index + 1)
            points = self._bridge(self._rng(coin, level, index), start, end, 24, self.step_sigma * 60.0)
        elif level == "minutes":  # index = hour since epoch
            hours = self._points(coin, "hours", index // 24)
            start, end = hours[index % 24], hours[index % 24 + 1]
            points = self._bridge(self._rng(coin, level, index), start, end, 60, self.step_sigma * math.sqrt(60.0))
        else:  # "seconds", index = minute since epoch
            minutes = self._points(coin, "minutes", index // 60)
            start, end = minutes[index % 60], minutes[index % 60 + 1]
            points = self._bridge(self._rng(coin, level, index), start, end, 60, self.step_sigma)
        with self._lock:
            if len(self._cache) > 20_000:
                self._cache.clear()
            self._cache[key] = points
        return points

    def log_offset(self, coin: str, second: int, resolution: str = "second") -> float:
        """Log-price offset at `second`; coarser resolutions snap to the hour/minute boundary before it."""
        if resolution == "hour":
            hour = second // 3600
            return self._points(coin, "hours", hour // 24)[hour % 24]
        if resolution == "minute":
            minute = second // 60
            return self._points(coin, "minutes", minute // 60)[minute % 60]
        return self._points(coin, "seconds", second // 60)[second % 60]

    def price(self, coin: CoinSpec, t_ms: int, resolution: str = "second") -> float:
        return coin.base_px * math.exp(self.log_offset(coin.name, t_ms // 1000, resolution))


INTERVAL_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "3d": 259_200_000,
    "1w": 604_800_000,
}
WEEK_OFFSET_MS = 4 * 86_400_000  # epoch day 0 was a Thursday; weekly candles open on Mondays


def candle_opens(interval: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """(open, close) ms pairs of the candles of `interval` that overlap [start_ms, end_ms]."""
    spans: list[tuple[int, int]] = []
    if interval == "1M":
        day = dt.datetime.fromtimestamp(start_ms / 1000, tz=dt.UTC)
        year, month = day.year, day.month
        while True:
            opened = calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            closes = calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
            if opened > end_ms:
                return spans
            spans.append((opened, closes - 1))
    length = INTERVAL_MS[interval]
    offset = WEEK_OFFSET_MS if interval == "1w" else 0
    opened = (start_ms - offset) // length * length + offset
    if end_ms - opened > length * (MAX_CANDLES + 1):  # only the newest 5000 matter
        opened = (end_ms - offset) // length * length + offset - length * MAX_CANDLES
    while opened <= end_ms:
        spans.append((opened, opened + length - 1))
        opened += length
    return spans


# --------------------------------------------------------------------------------------------
# State


def empty_state() -> JsonDict:
    return {
        "version": 1,
        "accounts": {},
        "positions": {},
        "orders": {},
        "fills": {},
        "nonces": {},
        "requests": {},
        "next_oid": 10_000_000_000,
        "next_tid": 100_000_000_000_000,
        "pinned_mids": {},
        "fill_limits": {},
    }


class StateStore:
    """The venue's state as one JSON document, written atomically so a crash never corrupts it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "state.json"

    def load(self) -> JsonDict:
        state = empty_state()
        try:
            loaded = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return state
        if isinstance(loaded, dict):
            state.update(loaded)
        return state

    def save(self, state: JsonDict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state.")
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, separators=(",", ":"))
        os.replace(tmp, self.path)


class ExchangeError(Exception):
    """Whole-request failure, answered as {"status": "err", "response": message}."""


# --------------------------------------------------------------------------------------------
# The venue: accounts, matching, triggers, info views


class Venue:
    """All trading state and logic; every public method takes the lock, so the HTTP handlers and the
    background trigger thread can call it concurrently."""

    def __init__(self, store: StateStore, faults: FaultBoard, seed: int) -> None:
        self.store = store
        self.faults = faults
        self.walk = PriceWalk(seed)
        self.seed = seed
        self.state = store.load()
        self._lock = threading.RLock()
        self._dirty = False  # set by anything the sweeper changes, so it only writes when needed

    # ---------------- prices

    def mid(self, coin: CoinSpec, t_ms: int | None = None) -> Decimal:
        pinned = self.state["pinned_mids"].get(coin.name)
        if pinned is not None:
            return D(pinned)
        return round_px(self.walk.price(coin, now_ms() if t_ms is None else t_ms), coin)

    def mids(self) -> dict[str, Decimal]:
        t = now_ms()
        return {coin.name: self.mid(coin, t) for coin in COINS}

    def tick(self, coin: CoinSpec, px: Decimal) -> Decimal:
        sig_tick = Decimal(1).scaleb(math.floor(math.log10(float(px))) - 4) if px > 0 else Decimal(1)
        return max(sig_tick, Decimal(1).scaleb(-(6 - coin.sz_decimals)))

    # ---------------- persistence and control

    def _save(self) -> None:
        self.store.save(self.state)

    def snapshot(self) -> JsonDict:
        with self._lock:
            data = copy.deepcopy(self.state)
            data["mids"] = {name: fmt_px(px) for name, px in self.mids().items()}
            data["time"] = now_ms()
            return data

    def upsert_account(self, body: JsonDict) -> JsonDict:
        address = body.get("address")
        if not isinstance(address, str) or not ADDRESS_RE.match(address):
            raise BadRequest("address must be 0x + 40 hex")
        master = address.lower()
        with self._lock:
            account = self.state["accounts"].setdefault(
                master, {"balance": "0.0", "agents": {}, "leverage": {}, "cum_vlm": "0.0", "scheduled_cancel": None}
            )
            if body.get("balance") is not None:
                account["balance"] = fmt_usd(D(body["balance"]))
            if body.get("agents") is not None:
                account["agents"] = self._parse_agents(body["agents"], master)
            if body.get("cum_vlm") is not None:  # traded volume, e.g. enough for the dead man's switch
                account["cum_vlm"] = fmt_usd(D(body["cum_vlm"]))
            self._save()
            return {"address": master, **copy.deepcopy(account)}

    def _parse_agents(self, raw: Any, master: str) -> JsonDict:
        if not isinstance(raw, list):
            raise BadRequest("agents must be a list")
        agents: JsonDict = {}
        created = now_ms()
        for index, item in enumerate(raw, start=1):
            entry = item if isinstance(item, dict) else {"address": item}
            address = entry.get("address")
            if not isinstance(address, str) or not ADDRESS_RE.match(address):
                raise BadRequest("agent address must be 0x + 40 hex")
            agent = address.lower()
            if agent == master or agent in self.state["accounts"]:
                raise BadRequest("an agent cannot be an account")
            for other, account in self.state["accounts"].items():  # an agent serves one master
                if other != master:
                    account["agents"].pop(agent, None)
            valid_until = entry.get("validUntil", entry.get("valid_until"))
            agents[agent] = {
                "name": str(entry.get("name") or f"agent{index}"),
                "validUntil": int(valid_until) if valid_until is not None else created + 180 * 86_400_000,
            }
        return agents

    def set_mid(self, coin_name: Any, px: Any) -> JsonDict:
        coin = self._coin_by_name(coin_name)
        with self._lock:
            if px is None:
                self.state["pinned_mids"].pop(coin.name, None)
            else:
                value = D(px)
                if value <= 0:
                    raise BadRequest("px must be positive")
                self.state["pinned_mids"][coin.name] = fmt_px(value)
            self._save()
            self.sweep()
            return {"coin": coin.name, "mid": fmt_px(self.mid(coin)), "pinned": px is not None}

    def set_fill_limit(self, coin_name: Any, max_sz: Any) -> JsonDict:
        coin = self._coin_by_name(coin_name)
        with self._lock:
            if max_sz is None:
                self.state["fill_limits"].pop(coin.name, None)
            else:
                value = D(max_sz)
                if value <= 0:
                    raise BadRequest("max_sz must be positive")
                self.state["fill_limits"][coin.name] = fmt_sz(value, coin)
            self._save()
            return {"coin": coin.name, "max_sz": self.state["fill_limits"].get(coin.name)}

    def reset(self) -> JsonDict:
        """Flat book for a fresh scenario: accounts (balances, agents) and nonces stay."""
        with self._lock:
            for key in ("positions", "orders", "fills", "requests", "pinned_mids", "fill_limits"):
                self.state[key] = {}
            for account in self.state["accounts"].values():
                account["cum_vlm"] = "0.0"
                account["scheduled_cancel"] = None
            self._save()
            return {"ok": True, "accounts": sorted(self.state["accounts"])}

    @staticmethod
    def _coin_by_name(name: Any) -> CoinSpec:
        coin = COIN_BY_NAME.get(name) if isinstance(name, str) else None
        if coin is None:
            raise BadRequest(f"unknown coin {name!r}")
        return coin

    # ---------------- account views

    def master_of(self, address: str) -> str | None:
        """The account an address acts for: itself if it is an account, its master if an agent."""
        address = address.lower()
        if address in self.state["accounts"]:
            return address
        for master, account in self.state["accounts"].items():
            agent = account["agents"].get(address)
            # An agent past its validUntil is no longer approved (it stays listed in extraAgents).
            if agent is not None and int(agent.get("validUntil") or now_ms()) >= now_ms():
                return master
        return None

    def _leverage(self, master: str, coin: CoinSpec) -> tuple[str, int]:
        setting = self.state["accounts"].get(master, {}).get("leverage", {}).get(coin.name)
        if setting:
            return setting["type"], int(setting["value"])
        return "cross", coin.default_leverage

    def _margin_figures(self, master: str, mids: dict[str, Decimal]) -> JsonDict:
        """Account value, margin and notional at current mids (before any low-balance capping)."""
        balance = D(self.state["accounts"].get(master, {}).get("balance", "0"))
        upnl = margin = ntl = signed_ntl = maint = ZERO
        for coin_name, pos in self.state["positions"].get(master, {}).items():
            coin = COIN_BY_NAME[coin_name]
            szi, entry, mark = D(pos["szi"]), D(pos["entryPx"]), mids[coin_name]
            value = abs(szi) * mark
            upnl += szi * (mark - entry)
            margin += value / self._leverage(master, coin)[1]
            maint += value * coin.maintenance_rate
            ntl += value
            signed_ntl += szi * mark
        return {
            "balance": balance,
            "account_value": balance + upnl,
            "margin": margin,
            "maintenance": maint,
            "ntl": ntl,
            "signed_ntl": signed_ntl,
        }

    def _low_balance_cap(self) -> Decimal | None:
        if not self.faults.active("low-balance"):
            return None
        return D(self.faults.param("low-balance", "balance", 5))

    def _liquidation_px(self, master: str, coin: CoinSpec, mids: dict[str, Decimal]) -> Decimal | None:
        """Cross liquidation price: where account value would meet maintenance margin, other positions fixed."""
        positions = self.state["positions"].get(master, {})
        pos = positions[coin.name]
        szi, entry = D(pos["szi"]), D(pos["entryPx"])
        others = D(self.state["accounts"][master]["balance"])
        for name, other in positions.items():
            if name == coin.name:
                continue
            other_coin, mark = COIN_BY_NAME[name], mids[name]
            other_szi = D(other["szi"])
            others += other_szi * (mark - D(other["entryPx"])) - abs(other_szi) * mark * other_coin.maintenance_rate
        mmr = coin.maintenance_rate
        if szi > 0:
            px = (szi * entry - others) / (szi * (1 - mmr))
        else:
            size = -szi
            px = (others + size * entry) / (size * (1 + mmr))
        return px if px > 0 else None

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

    # ---------------- /exchange

    def authenticate(self, signer: str, nonce: int, expires_after: int | None, vault: str | None) -> str:
        """Map the recovered signer to its account and consume the nonce; raises ExchangeError."""
        with self._lock:
            unknown = f"L1 error: User or API Wallet {signer} does not exist."
            if self.faults.active("auth"):
                raise ExchangeError(unknown)
            master = self.master_of(signer)
            if master is None:
                raise ExchangeError(unknown)
            if vault is not None and vault.lower() != master:  # only for the signer's own account
                raise ExchangeError(unknown)
            now = now_ms()
            if expires_after is not None and expires_after < now:
                raise ExchangeError(f"Action expired: expiresAfter {expires_after} is before current time {now}")
            used = self.state["nonces"].setdefault(signer, [])
            too_old = nonce < now - NONCE_PAST_MS or (len(used) >= NONCES_KEPT and nonce <= used[0])
            if nonce in used or too_old:
                raise ExchangeError(f"Invalid nonce: duplicate nonce {nonce}")
            if nonce > now + NONCE_FUTURE_MS:
                raise ExchangeError(f"Invalid nonce: nonce {nonce} is too far in the future")
            used.append(nonce)
            used.sort()
            del used[:-NONCES_KEPT]
            self._save()
            return master

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
            traded = D(self.state["accounts"][master].get("cum_vlm", "0"))
            if traded < SCHEDULE_CANCEL_MIN_VOLUME:
                raise ExchangeError("Cannot set scheduled cancel time until enough volume traded. "
                                    f"Required: ${SCHEDULE_CANCEL_MIN_VOLUME}. Traded: ${fmt_usd(traded)}.")
        self.state["accounts"][master]["scheduled_cancel"] = when
        return {"type": "default"}

    def approve_agent(self, action: JsonDict, signature: JsonDict, nonce: int) -> JsonDict:
        """`approveAgent`, signed by the master key: approve `agentAddress` under `agentName` (optionally
        "NAME valid_until MS"); an agent already approved under that name (or the unnamed one) is dropped."""
        address, raw_name = action.get("agentAddress"), action.get("agentName", "")
        if not isinstance(address, str) or not ADDRESS_RE.match(address) or not isinstance(raw_name, str):
            raise BadRequest("bad approveAgent")
        try:
            signer = recover_user_from_user_signed_action(
                {**action, "agentName": raw_name}, signature, APPROVE_AGENT_TYPES, "HyperliquidTransaction:ApproveAgent",
                False).lower()
        except Exception as exc:  # noqa: BLE001 - any undecodable signature is a bad body
            raise BadRequest("bad signature") from exc
        name, _, until = raw_name.partition(" valid_until ")
        with self._lock:
            if signer not in self.state["accounts"]:  # an agent cannot approve agents
                raise ExchangeError(f"User or API Wallet {signer} does not exist.")
            self.authenticate(signer, nonce, None, None)
            agents = self.state["accounts"][signer]["agents"]
            for old in [a for a, entry in agents.items() if entry["name"] == name]:
                del agents[old]
            for account in self.state["accounts"].values():  # an agent serves one master
                account["agents"].pop(address.lower(), None)
            agents[address.lower()] = {"name": name, "validUntil": int(until) if until.strip().isdigit()
                                       else now_ms() + 180 * 86_400_000}
            self._save()
            return {"status": "ok", "response": {"type": "default"}}

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


def answer_info(venue: Venue, body: JsonDict) -> Any:
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


def parse_exchange_body(body: Any) -> tuple[JsonDict, int, JsonDict, str | None, int | None]:
    if not isinstance(body, dict):
        raise BadRequest("body must be an object")
    action, nonce, signature = body.get("action"), body.get("nonce"), body.get("signature")
    vault, expires = body.get("vaultAddress"), body.get("expiresAfter")
    if not isinstance(action, dict) or not isinstance(action.get("type"), str):
        raise BadRequest("action must be an object with a type")
    if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce < 0:
        raise BadRequest("nonce must be an int")
    if not isinstance(signature, dict) or not {"r", "s", "v"} <= signature.keys():
        raise BadRequest("signature must have r, s, v")
    if vault is not None and (not isinstance(vault, str) or not ADDRESS_RE.match(vault)):
        raise BadRequest("bad vaultAddress")
    if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
        raise BadRequest("bad expiresAfter")
    return action, nonce, signature, vault, expires


def deserialize_error() -> Response:
    return PlainTextResponse(DESERIALIZE_ERROR, status_code=422)


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid JSON") from exc


def create_app(state_dir: Path, faults_file: Path, seed: int = 7, recorded_dir: Path | None = None) -> FastAPI:
    """Build the ASGI app; the trigger sweeper thread runs for the app's lifespan."""
    faults = FaultBoard(Path(faults_file))
    venue = Venue(StateStore(Path(state_dir)), faults, seed)
    recorded = load_recorded(recorded_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()

        def sweeper() -> None:
            while not stop.wait(SWEEP_INTERVAL_S):
                try:
                    venue.sweep()
                except Exception as exc:  # noqa: BLE001 - a sweep bug must not kill the thread
                    print(f"sweep failed: {exc!r}", file=sys.stderr, flush=True)

        thread = threading.Thread(target=sweeper, name="trigger-sweeper", daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(timeout=2)

    app = FastAPI(title="Sandbox Hyperliquid API", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.venue = venue

    async def fault_response() -> Response | None:
        """Apply the API-level faults in the order a caller would notice them."""
        if faults.active("latency"):
            await asyncio.sleep(float(faults.param("latency", "seconds", 6)))
        if faults.active("exchange-down"):
            return PlainTextResponse("503 Service Temporarily Unavailable", status_code=503)
        if faults.active("exchange-ratelimit"):
            return Response(content="null", status_code=429, media_type="application/json")
        return None

    @app.post("/info")
    async def info(request: Request) -> Response:
        faulted = await fault_response()
        if faulted is not None:
            return faulted
        try:
            body = await read_json(request)
            if not isinstance(body, dict) or not isinstance(body.get("type"), str):
                raise BadRequest("body must be an object with a type")
            venue.sweep()
            if body["type"] in recorded:
                return JSONResponse(recorded[body["type"]])
            return JSONResponse(answer_info(venue, body))
        except BadRequest:
            return deserialize_error()

    @app.post("/exchange")
    async def exchange(request: Request) -> Response:
        faulted = await fault_response()
        if faulted is not None:
            return faulted
        try:
            action, nonce, signature, vault, expires = parse_exchange_body(await read_json(request))
            if action["type"] == "approveAgent":
                try:
                    return JSONResponse(venue.approve_agent(action, signature, nonce))
                except ExchangeError as err:
                    return JSONResponse({"status": "err", "response": str(err)})
            try:
                signer = recover_agent_or_user_from_l1_action(action, signature, vault, nonce, expires, False).lower()
            except Exception as exc:  # noqa: BLE001 - any undecodable signature is a bad body
                raise BadRequest("bad signature") from exc
            try:
                master = venue.authenticate(signer, nonce, expires, vault)
                return JSONResponse(venue.execute(master, action))
            except ExchangeError as err:
                return JSONResponse({"status": "err", "response": str(err)})
        except BadRequest:
            return deserialize_error()

    async def control(request: Request, handler: Callable[[JsonDict], Any]) -> Response:
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise BadRequest("body must be an object")
            return JSONResponse(handler(body))
        except BadRequest as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)

    @app.post("/_sandbox/accounts")
    async def accounts(request: Request) -> Response:
        return await control(request, venue.upsert_account)

    @app.post("/_sandbox/set_mid")
    async def set_mid(request: Request) -> Response:
        return await control(request, lambda body: venue.set_mid(body.get("coin"), body.get("px")))

    @app.post("/_sandbox/fill_limit")
    async def fill_limit(request: Request) -> Response:
        return await control(request, lambda body: venue.set_fill_limit(body.get("coin"), body.get("max_sz")))

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        return JSONResponse(venue.reset())

    @app.get("/_sandbox/state")
    async def state() -> Response:
        return JSONResponse(venue.snapshot())

    @app.get("/_sandbox/health")
    async def health() -> Response:
        return JSONResponse({"ok": True, "time": now_ms()})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = common_arguments("Local Hyperliquid API (sandbox)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the price walk")
    parser.add_argument("--recorded", type=Path, default=None, help="directory of recorded responses to replay")
    args = parser.parse_args(argv)
    app = create_app(args.state_dir, args.faults, seed=args.seed, recorded_dir=args.recorded)
    faults = app.state.venue.faults
    serve(app, host=args.host, port=args.port, log_level=args.log_level,
          refuse=lambda: faults.active("exchange-unreachable"))


if __name__ == "__main__":
    main()
