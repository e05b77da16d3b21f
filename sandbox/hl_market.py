"""The sandbox exchange's market: its coins and their number formats, the limits and error texts of
the real API, and the deterministic seeded price walk (and candle boundaries) every process agrees on."""

from __future__ import annotations

import calendar
import datetime as dt
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

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
