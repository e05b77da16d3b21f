"""Read the bot's Hyperliquid account over the public info API (`POST {api_url}/info`).

`HyperliquidInfo` is a small typed client over httpx: every request has the configured timeout and is
retried with exponential backoff and jitter when the exchange answers 5xx or 429 (honouring
Retry-After) or the connection fails or times out. Whatever still goes wrong, and every answer that is
not the shape the API documents (HTML, JSON `null`, a list where an object belongs, missing or
non-numeric fields), becomes one `HyperliquidError` whose message names the request type and what
happened, e.g. ``clearinghouseState: rate-limited by the exchange (HTTP 429) after 3 attempts``.

Money and sizes are `Decimal` (the API sends numbers as strings), times are timezone-aware UTC
datetimes (the API sends epoch milliseconds). The @task wrappers at the bottom are what flows call.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from prefect import task

from runbook.settings import HyperliquidAccount
from tasks import NO_CACHE_POLICY

FILLS_PAGE_CAP = 2000
"""Most fills one userFillsByTime answer holds; a page this long means there may be more."""
MAX_FILL_PAGES = 100
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 30.0
DEFAULT_MAX_RETRY_AFTER = 60.0
CANDLE_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "8h", "12h", "1d", "3d", "1w", "1M")

_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_log = logging.getLogger(__name__)


class HyperliquidError(Exception):
    """A Hyperliquid request failed; `str()` is one readable line starting with the request type.

    `retryable` tells whether asking again later could help (timeouts, 5xx, 429, connection errors),
    as opposed to a rejected request or an answer of the wrong shape.
    """

    def __init__(
        self,
        message: str,
        *,
        request_type: str,
        status_code: int | None = None,
        attempts: int = 0,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.request_type = request_type
        self.status_code = status_code
        self.attempts = attempts
        self.retryable = retryable


class _Unexpected(Exception):
    """The answer does not have the documented shape (turned into HyperliquidError by `_parsing`)."""


# ----------------------------------------------------------------------------------------------
# typed results


@dataclass
class Position:
    coin: str
    size: Decimal  # signed: > 0 long, < 0 short
    entry_px: Decimal | None
    position_value: Decimal
    unrealized_pnl: Decimal
    liquidation_px: Decimal | None  # None when no liquidation price is reachable
    leverage: int
    leverage_type: str  # "cross" or "isolated"
    margin_used: Decimal
    return_on_equity: Decimal | None = None

    @property
    def side(self) -> str:
        return "long" if self.size > 0 else "short" if self.size < 0 else "flat"


@dataclass
class AccountState:
    account_value: Decimal
    withdrawable: Decimal
    total_margin_used: Decimal
    total_ntl_pos: Decimal
    # Maintenance margin of cross positions; None when the exchange did not send it (older answers).
    cross_maintenance_margin_used: Decimal | None
    cross_account_value: Decimal
    positions: list[Position]
    time: datetime  # the exchange's snapshot time, or when we received it if the answer had none

    @property
    def margin_usage(self) -> Decimal | None:
        """Initial margin in use as a fraction of account value (None for an empty account)."""
        return self.total_margin_used / self.account_value if self.account_value > 0 else None

    @property
    def maintenance_ratio(self) -> Decimal | None:
        """Cross maintenance margin / cross account value: liquidation when it reaches 1."""
        if self.cross_maintenance_margin_used is None or self.cross_account_value <= 0:
            return None
        return self.cross_maintenance_margin_used / self.cross_account_value

    def position(self, coin: str) -> Position | None:
        return next((p for p in self.positions if p.coin == coin), None)


@dataclass
class OpenOrder:
    coin: str
    oid: int
    side: str  # "B" (buy) or "A" (sell)
    size: Decimal  # remaining
    orig_size: Decimal | None
    limit_px: Decimal
    is_trigger: bool
    trigger_px: Decimal | None  # None for plain limit orders
    trigger_condition: str  # "N/A" for plain orders, else e.g. "Price below 3400.0"
    order_type: str  # "Limit", "Stop Market", "Take Profit Market", ...
    reduce_only: bool
    is_position_tpsl: bool
    timestamp: datetime
    tif: str | None = None
    cloid: str | None = None
    children: list[OpenOrder] = field(default_factory=list)

    @property
    def is_buy(self) -> bool:
        return self.side == "B"


@dataclass
class Candle:
    coin: str
    interval: str
    open_time: datetime
    close_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal  # base units
    trades: int


@dataclass
class RateLimit:
    """The address-based action limit (userRateLimit): `used` of `cap` requests, `headroom` left."""

    used: int
    cap: int
    surplus: int
    cum_volume: Decimal

    @property
    def headroom(self) -> int:
        return self.cap - self.used

    @property
    def usage(self) -> float:
        return self.used / self.cap if self.cap > 0 else 1.0


@dataclass
class Agent:
    """A named API wallet of an account (extraAgents); `valid_until` None when the answer has no expiry."""

    name: str
    address: str
    valid_until: datetime | None

    @property
    def expired(self) -> bool:
        return self.valid_until is not None and self.valid_until < datetime.now(UTC)


# ----------------------------------------------------------------------------------------------
# conversions


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Unexpected(f"{path or 'body'} is {_kind(value)}, expected an object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Unexpected(f"{path or 'body'} is {_kind(value)}, expected a list")
    return value


def _dec(value: Any, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Unexpected(f"{path} is {_kind(value)}, expected a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _Unexpected(f"{path} is {value!r}, expected a number") from None
    if not number.is_finite():
        raise _Unexpected(f"{path} is {value!r}, expected a finite number")
    return number


def _opt_dec(value: Any, path: str) -> Decimal | None:
    """None for null and for the "NaN" old answers sent when no price applies."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("nan", "")):
        return None
    return _dec(value, path)


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unexpected(f"{path} is {_kind(value)}, expected an integer")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _Unexpected(f"{path} is {_kind(value)}, expected a string")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Unexpected(f"{path} is {_kind(value)}, expected true/false")
    return value


_REQUIRED = object()


class _Node:
    """One JSON object of an answer plus its path, so every shape error names the field it is about."""

    def __init__(self, value: Any, path: str = "") -> None:
        self.data = _obj(value, path)
        self.path = path

    def _raw(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise _Unexpected(f"{_where(self.path, key)} is missing")
        return default

    def node(self, key: str) -> _Node:
        return _Node(self._raw(key, _REQUIRED), _where(self.path, key))

    def opt_node(self, key: str) -> _Node | None:
        value = self._raw(key, None)
        return None if value is None else _Node(value, _where(self.path, key))

    def nodes(self, key: str, default: Any = _REQUIRED) -> list[_Node]:
        where = _where(self.path, key)
        return [_Node(item, f"{where}[{i}]") for i, item in enumerate(_list(self._raw(key, default), where))]

    def num(self, key: str) -> Decimal:
        return _dec(self._raw(key, _REQUIRED), _where(self.path, key))

    def opt_num(self, key: str) -> Decimal | None:
        return _opt_dec(self._raw(key, None), _where(self.path, key))

    def integer(self, key: str, default: Any = _REQUIRED) -> int:
        return _int(self._raw(key, default), _where(self.path, key))

    def text(self, key: str, default: Any = _REQUIRED) -> str:
        return _str(self._raw(key, default), _where(self.path, key))

    def opt_text(self, key: str) -> str | None:
        value = self._raw(key, None)
        return None if value is None else _str(value, _where(self.path, key))

    def flag(self, key: str, default: Any = _REQUIRED) -> bool:
        return _bool(self._raw(key, default), _where(self.path, key))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_snippet(value, 40)!r}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _fill_key(fill: dict[str, Any]) -> tuple[Any, ...]:
    """De-dup key of a fill: its trade id, else (hash, oid, time, px, sz) for fills without one."""
    tid = fill.get("tid")
    if isinstance(tid, int) and not isinstance(tid, bool):
        return ("tid", tid)
    return ("fill", fill.get("hash"), fill.get("oid"), fill.get("time"), fill.get("px"), fill.get("sz"))


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow or task run (so retries show in the UI), else ours."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            return _log
    except ImportError:  # pragma: no cover - prefect is a dependency
        return _log


# ----------------------------------------------------------------------------------------------
# the client


class HyperliquidInfo:
    """Typed reader for `POST {api_url}/info`. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        api_url: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self._http = httpx.Client(
            base_url=self.api_url, timeout=timeout, headers={"Content-Type": "application/json"}
        )

    @classmethod
    def from_account(cls, account: HyperliquidAccount, **options: Any) -> HyperliquidInfo:
        return cls(account.api_url, timeout=account.timeout_seconds, **options)

    def __enter__(self) -> HyperliquidInfo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, capped at max_delay."""
        delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def post(self, body: dict[str, Any]) -> Any:
        """POST one info request and return its decoded JSON (any JSON value, `null` included).

        Retries 5xx, 429 and transport failures up to `max_attempts` times, waiting the server's
        Retry-After (at most `max_retry_after` s) or else an exponential backoff with jitter starting at
        `base_delay` and capped at `max_delay`; raises HyperliquidError.
        """
        kind = str(body.get("type"))
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            status: int | None = None
            try:
                response = self._http.post("/info", json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout:g}s (timeout)"
            except httpx.TransportError as error:
                problem = f"cannot reach {self.api_url} ({type(error).__name__}: {error or 'no detail'})"
            else:
                status = response.status_code
                if status == 429:
                    problem = "rate-limited by the exchange (HTTP 429)"
                    retry_after = _retry_after(response)
                elif status >= 500:
                    text = _snippet(response.text, 80)
                    problem = f"exchange error (HTTP {status}{': ' + text if text else ''})"
                    retry_after = _retry_after(response)
                elif not 200 <= status < 300:
                    text = _snippet(response.text) or response.reason_phrase
                    raise HyperliquidError(
                        f"{kind}: request rejected (HTTP {status}): {text}",
                        request_type=kind, status_code=status, attempts=attempt,
                    )
                else:
                    return self._decode(kind, response, attempt)
            if attempt >= self.max_attempts:
                plural = "attempt" if attempt == 1 else "attempts"
                raise HyperliquidError(
                    f"{kind}: {problem} after {attempt} {plural}",
                    request_type=kind, status_code=status, attempts=attempt, retryable=True,
                )
            wait = min(self.max_retry_after, retry_after) if retry_after is not None else self._backoff(attempt)
            _run_logger().warning(
                "Hyperliquid %s: %s (attempt %d/%d); retrying in %.2fs", kind, problem, attempt, self.max_attempts, wait
            )
            time.sleep(wait)

    @staticmethod
    def _decode(kind: str, response: httpx.Response, attempt: int) -> Any:
        try:
            return response.json()
        except ValueError:
            content_type = response.headers.get("content-type", "no content-type")
            raise HyperliquidError(
                f"{kind}: unexpected response: the body is not JSON ({content_type}): {_snippet(response.text, 80)!r}",
                request_type=kind, status_code=response.status_code, attempts=attempt,
            ) from None

    @contextlib.contextmanager
    def _parsing(self, kind: str) -> Iterator[None]:
        """Turn any shape problem while reading an answer into HyperliquidError('<kind>: unexpected response: ...')."""
        try:
            yield
        except _Unexpected as error:
            raise HyperliquidError(f"{kind}: unexpected response: {error}", request_type=kind) from None
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError) as error:
            raise HyperliquidError(
                f"{kind}: unexpected response: {type(error).__name__}: {error}", request_type=kind
            ) from error

    @staticmethod
    def _user(kind: str, address: str) -> str:
        if not address:
            raise HyperliquidError(f"{kind}: no account address configured", request_type=kind)
        if not _ADDRESS_RE.match(address):
            raise HyperliquidError(
                f"{kind}: {address!r} is not a 0x-prefixed 20-byte hex address", request_type=kind
            )
        return address.lower()

    # ------------------------------------------------------------------ requests

    def account_state(self, address: str) -> AccountState:
        """Perp account summary and positions (clearinghouseState)."""
        kind = "clearinghouseState"
        body = self.post({"type": kind, "user": self._user(kind, address), "dex": ""})
        received = datetime.now(UTC)
        with self._parsing(kind):
            state = _Node(body)
            summary = state.node("marginSummary")
            cross = state.opt_node("crossMarginSummary") or summary
            server_time = state.data.get("time")
            return AccountState(
                account_value=summary.num("accountValue"),
                withdrawable=state.num("withdrawable"),
                total_margin_used=summary.num("totalMarginUsed"),
                total_ntl_pos=summary.num("totalNtlPos"),
                cross_maintenance_margin_used=state.opt_num("crossMaintenanceMarginUsed"),
                cross_account_value=cross.num("accountValue"),
                positions=[self._position(item) for item in state.nodes("assetPositions")],
                time=received if server_time is None else from_ms(state.integer("time")),
            )

    @staticmethod
    def _position(item: _Node) -> Position:
        raw = item.node("position")
        leverage = raw.node("leverage")
        return Position(
            coin=raw.text("coin"),
            size=raw.num("szi"),
            entry_px=raw.opt_num("entryPx"),
            position_value=raw.num("positionValue"),
            unrealized_pnl=raw.num("unrealizedPnl"),
            liquidation_px=raw.opt_num("liquidationPx"),
            leverage=leverage.integer("value"),
            leverage_type=leverage.text("type", "cross"),
            margin_used=raw.num("marginUsed"),
            return_on_equity=raw.opt_num("returnOnEquity"),
        )

    def fills(
        self,
        address: str,
        start: datetime,
        end: datetime | None = None,
        *,
        page_cap: int = FILLS_PAGE_CAP,
        max_pages: int = MAX_FILL_PAGES,
    ) -> list[dict[str, Any]]:
        """Every fill from `start` to `end` (inclusive; None = now) as the API's raw dicts, oldest first.

        userFillsByTime returns at most `page_cap` fills per answer; a full page is followed by another
        starting at the last fill's time (the bounds are inclusive, so the overlap is de-duplicated by
        `tid`, or by (hash, oid, time, px, sz) for fills without one).
        """
        kind = "userFillsByTime"
        user = self._user(kind, address)
        start_ms, end_ms = to_ms(start), None if end is None else to_ms(end)
        if end_ms is not None and end_ms < start_ms:
            raise ValueError(f"fills: end {end} is before start {start}")
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        cursor = start_ms
        for _page in range(max_pages):
            body = {"type": kind, "user": user, "startTime": cursor, "endTime": end_ms, "aggregateByTime": False}
            answer = self.post(body)
            with self._parsing(kind):
                page = _list(answer, "")
                times = []
                for i, item in enumerate(page):
                    fill = _Node(item, f"[{i}]")
                    times.append(fill.integer("time"))
                    found.setdefault(_fill_key(fill.data), fill.data)
            if len(page) < page_cap:
                break
            last = max(times)
            if last <= cursor:
                raise HyperliquidError(
                    f"{kind}: unexpected response: a full page of {len(page)} fills all at "
                    f"{from_ms(cursor).isoformat()}; cannot page past them",
                    request_type=kind,
                )
            cursor = last
        else:
            raise HyperliquidError(
                f"{kind}: still more fills after {max_pages} pages of {page_cap} (up to "
                f"{from_ms(cursor).isoformat()}); narrow the time range",
                request_type=kind,
            )
        return sorted(found.values(), key=lambda f: (f["time"], f.get("tid") if isinstance(f.get("tid"), int) else 0))

    def open_orders(self, address: str) -> list[OpenOrder]:
        """Open orders including trigger (TP/SL) orders (frontendOpenOrders)."""
        kind = "frontendOpenOrders"
        body = self.post({"type": kind, "user": self._user(kind, address), "dex": ""})
        with self._parsing(kind):
            return [self._order(_Node(item, f"[{i}]")) for i, item in enumerate(_list(body, ""))]

    @classmethod
    def _order(cls, raw: _Node) -> OpenOrder:
        is_trigger = raw.flag("isTrigger", False)
        return OpenOrder(
            coin=raw.text("coin"),
            oid=raw.integer("oid"),
            side=raw.text("side"),
            size=raw.num("sz"),
            orig_size=raw.opt_num("origSz"),
            limit_px=raw.num("limitPx"),
            is_trigger=is_trigger,
            trigger_px=raw.opt_num("triggerPx") if is_trigger else None,
            trigger_condition=raw.text("triggerCondition", "N/A"),
            order_type=raw.text("orderType", "Limit"),
            reduce_only=raw.flag("reduceOnly", False),
            is_position_tpsl=raw.flag("isPositionTpsl", False),
            timestamp=from_ms(raw.integer("timestamp")),
            tif=raw.opt_text("tif"),
            cloid=raw.opt_text("cloid"),
            children=[cls._order(child) for child in raw.nodes("children", [])],
        )

    def mids(self) -> dict[str, Decimal]:
        """Mid price of every coin (allMids)."""
        kind = "allMids"
        body = self.post({"type": kind, "dex": ""})
        with self._parsing(kind):
            return {_str(coin, "a key"): _dec(px, coin) for coin, px in _obj(body, "").items()}

    def candles(self, coin: str, interval: str, start: datetime, end: datetime | None = None) -> list[Candle]:
        """OHLCV candles of `coin` opening between `start` and `end` (None = now), oldest first."""
        kind = "candleSnapshot"
        if interval not in CANDLE_INTERVALS:
            raise ValueError(f"candles: interval {interval!r} is not one of {', '.join(CANDLE_INTERVALS)}")
        end_ms = to_ms(end if end is not None else datetime.now(UTC))
        req = {"coin": coin, "interval": interval, "startTime": to_ms(start), "endTime": end_ms}
        body = self.post({"type": kind, "req": req})
        with self._parsing(kind):
            result = []
            for i, item in enumerate(_list(body, "")):
                raw = _Node(item, f"[{i}]")
                opened = raw.integer("t")
                result.append(
                    Candle(
                        coin=raw.text("s", coin),
                        interval=raw.text("i", interval),
                        open_time=from_ms(opened),
                        close_time=from_ms(raw.integer("T", opened)),
                        open=raw.num("o"),
                        high=raw.num("h"),
                        low=raw.num("l"),
                        close=raw.num("c"),
                        volume=raw.num("v"),
                        trades=raw.integer("n", 0),
                    )
                )
            return sorted(result, key=lambda c: c.open_time)

    def rate_limit(self, address: str) -> RateLimit:
        """The address's action budget (userRateLimit); `headroom` is what is left of it."""
        kind = "userRateLimit"
        body = self.post({"type": kind, "user": self._user(kind, address)})
        with self._parsing(kind):
            raw = _Node(body)
            return RateLimit(
                used=raw.integer("nRequestsUsed"),
                cap=raw.integer("nRequestsCap"),
                surplus=raw.integer("nRequestsSurplus", 0),  # absent from some real answers
                cum_volume=raw.num("cumVlm"),
            )

    def account_value_history(self, address: str) -> list[tuple[datetime, Decimal]]:
        """The account's value over time (portfolio), oldest first: the points of the "day", "week", "month"
        and "allTime" periods together, so recent times have the finest points the exchange keeps."""
        kind = "portfolio"
        body = self.post({"type": kind, "user": self._user(kind, address)})
        with self._parsing(kind):
            periods = {_str(item[0], f"[{i}][0]"): item[1] for i, item in enumerate(_list(body, ""))}
            if "allTime" not in periods:
                raise _Unexpected(f"no 'allTime' period (got {', '.join(periods) or 'none'})")
            points: dict[int, Decimal] = {}
            for name in ("allTime", "month", "week", "day"):
                if name not in periods:
                    continue
                raw = _Node(periods[name], name)
                where = f"{name}.accountValueHistory"
                for i, point in enumerate(_list(raw.data.get("accountValueHistory"), where)):
                    points[_int(point[0], f"{where}[{i}][0]")] = _dec(point[1], f"{where}[{i}][1]")
            return [(from_ms(ms), value) for ms, value in sorted(points.items())]

    def funding(self, address: str, start: datetime, end: datetime | None = None,
                *, page_cap: int = 500, max_pages: int = MAX_FILL_PAGES) -> list[dict[str, Any]]:
        """Funding payments between `start` and `end` (userFunding, paged by time, de-duplicated), oldest first."""
        kind = "userFunding"
        user = self._user(kind, address)
        end_ms = None if end is None else to_ms(end)
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        cursor = to_ms(start)
        for _page in range(max_pages):
            answer = self.post({"type": kind, "user": user, "startTime": cursor, "endTime": end_ms})
            with self._parsing(kind):
                page = [_Node(item, f"[{i}]") for i, item in enumerate(_list(answer, ""))]
                for entry in page:
                    delta = entry.node("delta")
                    found.setdefault((entry.integer("time"), entry.opt_text("hash"), delta.opt_text("coin")), entry.data)
            if len(page) < page_cap:
                break
            last = max(entry.integer("time") for entry in page)
            if last <= cursor:
                break
            cursor = last
        return sorted(found.values(), key=lambda entry: entry["time"])

    def user_role(self, address: str) -> tuple[str, str | None]:
        """(role, master): role is user/agent/vault/subAccount/missing; master for agents and sub-accounts."""
        kind = "userRole"
        body = self.post({"type": kind, "user": self._user(kind, address)})
        with self._parsing(kind):
            raw = _Node(body)
            data = raw.opt_node("data")
            master = None
            if data is not None:
                master = data.opt_text("user") or data.opt_text("master")
            return raw.text("role"), None if master is None else master.lower()

    def extra_agents(self, address: str) -> list[Agent]:
        """The account's named API wallets (extraAgents), with their expiry."""
        kind = "extraAgents"
        body = self.post({"type": kind, "user": self._user(kind, address)})
        with self._parsing(kind):
            agents = []
            for i, item in enumerate(_list(body, "")):
                raw = _Node(item, f"[{i}]")
                until = raw.data.get("validUntil")
                agents.append(Agent(name=raw.text("name", ""), address=raw.text("address").lower(),
                                    valid_until=None if until is None else from_ms(raw.integer("validUntil"))))
            return agents
# ----------------------------------------------------------------------------------------------
# Prefect tasks


def _worth_retrying(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry the task for transient failures only: a rejected request or a malformed answer stays failed."""
    error = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if error is None:
        try:
            state.result()
        except HyperliquidError as raised:
            error = raised
        except Exception:  # noqa: BLE001 - anything else follows the retry policy
            return True
    return not isinstance(error, HyperliquidError) or error.retryable


_TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [1, 4],
    "retry_condition_fn": _worth_retrying,
    "cache_policy": NO_CACHE_POLICY,
}


@task(name="read Hyperliquid account state", timeout_seconds=120, **_TASK_OPTIONS)
def get_account_state(account: HyperliquidAccount) -> AccountState:
    """Runbook: check positions and margin on Hyperliquid (clearinghouseState)."""
    with HyperliquidInfo.from_account(account) as client:
        return client.account_state(account.account_address)


@task(name="read Hyperliquid fills", timeout_seconds=600, **_TASK_OPTIONS)
def get_fills(account: HyperliquidAccount, start: datetime, end: datetime | None = None) -> list[dict[str, Any]]:
    """Every fill of the account between `start` and `end` (userFillsByTime, paged and de-duplicated)."""
    with HyperliquidInfo.from_account(account) as client:
        return client.fills(account.account_address, start, end)


@task(name="read Hyperliquid open orders", timeout_seconds=120, **_TASK_OPTIONS)
def get_open_orders(account: HyperliquidAccount) -> list[OpenOrder]:
    """Open limit and trigger (stop-loss / take-profit) orders (frontendOpenOrders)."""
    with HyperliquidInfo.from_account(account) as client:
        return client.open_orders(account.account_address)


@task(name="read Hyperliquid mid prices", timeout_seconds=120, **_TASK_OPTIONS)
def get_mids(account: HyperliquidAccount) -> dict[str, Decimal]:
    with HyperliquidInfo.from_account(account) as client:
        return client.mids()


@task(name="read Hyperliquid candles", timeout_seconds=120, **_TASK_OPTIONS)
def get_candles(
    account: HyperliquidAccount, coin: str, interval: str, start: datetime, end: datetime | None = None
) -> list[Candle]:
    with HyperliquidInfo.from_account(account) as client:
        return client.candles(coin, interval, start, end)


@task(name="read Hyperliquid rate limit", timeout_seconds=120, **_TASK_OPTIONS)
def get_rate_limit(account: HyperliquidAccount) -> RateLimit:
    """Runbook: how much of the address's action budget is left (a bot at its limit cannot close fast)."""
    with HyperliquidInfo.from_account(account) as client:
        return client.rate_limit(account.account_address)


@task(name="read Hyperliquid role of an address", **_TASK_OPTIONS)
def get_user_role(account: HyperliquidAccount, address: str) -> tuple[str, str | None]:
    """userRole: (role, master) — is `address` an account ("user"), an agent (and of whom), or unknown."""
    with HyperliquidInfo.from_account(account) as client:
        return client.user_role(address)


@task(name="read Hyperliquid agents", **_TASK_OPTIONS)
def get_extra_agents(account: HyperliquidAccount) -> list[Agent]:
    """extraAgents of the configured account: its named API wallets and when each expires."""
    with HyperliquidInfo.from_account(account) as client:
        return client.extra_agents(account.account_address)


@task(name="read Hyperliquid account value history", timeout_seconds=120, **_TASK_OPTIONS)
def get_account_value_history(account: HyperliquidAccount) -> list[tuple[datetime, Decimal]]:
    """The account's value over time (portfolio allTime): the equity a report's window starts from."""
    with HyperliquidInfo.from_account(account) as client:
        return client.account_value_history(account.account_address)


@task(name="read Hyperliquid funding", timeout_seconds=600, **_TASK_OPTIONS)
def get_funding(account: HyperliquidAccount, start: datetime, end: datetime | None = None) -> list[dict[str, Any]]:
    """Funding paid and received between `start` and `end` (userFunding): reported apart from trading P&L."""
    with HyperliquidInfo.from_account(account) as client:
        return client.funding(account.account_address, start, end)


@task(name="probe Hyperliquid rate limit", cache_policy=NO_CACHE_POLICY)
def probe_rate_limit(account: HyperliquidAccount) -> RateLimit:
    """userRateLimit asked once, without retries: during a latency or rate-limit incident a retry adds
    load and time, and a failed read is itself the finding."""
    with HyperliquidInfo.from_account(account, max_attempts=1) as client:
        return client.rate_limit(account.account_address)
