"""The simulated trading bot: a real process with the shape the runbook shows of the real one.

`python -m sandbox.bot --home HOME` runs the bot whose working dir is HOME. It trades small perp
positions on the (local) Hyperliquid API through the official SDK with an agent key, always behind
a reduce-only stop-loss trigger order, and exposes what the runbook probes: a pidfile, `/health`,
Prometheus metrics, JSON-lines logs, `config/config.json` and `data/trades.jsonl`.

Faults from the sandbox switchboard (`sandbox.faults`) change its behaviour within about a second;
see docs/bot-contract.md for what each one does here.

Two shapes (`bot.shape` in its config.json): `default` is the bot contract as documented; `alt` is
the same bot speaking another dialect, the way a real bot that is not ours would: plain-text log lines
with other wording, other /health paths and status words, a millisecond latency histogram under another
name and other config key names. The runbook adapts to it by configuration alone (the runbook.toml
`sandbox up --shape alt` writes); see ALT_* below for the whole dialect.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import eth_account
import psutil
import requests
from hyperliquid.api import API
from hyperliquid.exchange import Exchange
from hyperliquid.utils.error import ClientError, ServerError
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

from sandbox.faults import FaultBoard

PIDFILE = "trading_bot.pid"
LOG_FILE = Path("logs/trading_bot.log")
ERROR_LOG_FILE = Path("logs/trading_bot_errors.log")
TRADES_FILE = Path("data/trades.jsonl")
CONFIG_FILE = Path("config/config.json")

EXIT_CONFIG = 2  # bad config, missing key, or already running
EXIT_NO_START = 3  # the `no-start` fault

SLOW_CALL_MS = 5000.0  # the runbook's API latency threshold; slower calls degrade health
MEMORY_WARN_MB = 256.0  # RSS above this degrades health
MARKET_SLIPPAGE = 0.05  # IoC limit distance from the mid, as the SDK's market orders use
WEBSOCKET_TICK = 0.5  # seconds between simulated websocket messages
FAULT_POLL = 0.25  # how often blocked loops re-check the fault board
MAX_BACKOFF = 30.0
AUTH_MARKERS = ("does not exist", "signature", "unauthori", "not approved", "invalid key", "auth")

log = logging.getLogger("trading_bot")

SHAPES = ("default", "alt")

# --- the alt shape's dialect ----------------------------------------------------------------

# config.json: where the alt bot keeps each setting (the default shape's names on the left).
ALT_CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "stop_loss_pct": ("risk", "stop_pct"), "take_profit_pct": ("risk", "target_pct"),
    "max_position_usd": ("risk", "position_cap_usd"), "daily_loss_limit_usd": ("limits", "max_daily_loss"),
    "min_balance_usd": ("limits", "balance_floor"), "base_size_usd": ("sizing", "order_usd"),
    "max_positions": ("sizing", "slots"), "strategy_name": ("strategy_params", "id"),
    "coins": ("strategy_params", "coins"), "max_hold_seconds": ("strategy_params", "hold_limit_s"),
}
DEFAULT_CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "stop_loss_pct": ("risk_management", "stop_loss_pct"), "take_profit_pct": ("risk_management", "take_profit_pct"),
    "max_position_usd": ("risk_management", "max_position_usd"),
    "daily_loss_limit_usd": ("risk_limits", "daily_loss_limit_usd"),
    "min_balance_usd": ("risk_limits", "min_balance_usd"), "base_size_usd": ("position_sizing", "base_size_usd"),
    "max_positions": ("position_sizing", "max_positions"), "strategy_name": ("strategy", "name"),
    "coins": ("strategy", "coins"), "max_hold_seconds": ("strategy", "max_hold_seconds"),
}
# /health status words.
ALT_STATUS = {"healthy": "green", "degraded": "amber", "unhealthy": "red", "stopped": "paused"}
# Log messages: the default wording rewritten (first match wins; the rest of a message is kept).
ALT_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(a), b) for a, b in (
    (r"^TRADE EXIT (\S+) (\S+) size=(\S+) entry=(\S+) exit=(\S+) pnl=(\S+) reason=stop_loss (WIN|LOSS)$",
     r"closed \1/\2 qty \3 in \4 out \5 pnl \6 cause stop -> \7"),
    (r"^TRADE EXIT (\S+) (\S+) size=(\S+) entry=(\S+) exit=(\S+) pnl=(\S+) reason=(\S+) (WIN|LOSS)$",
     r"closed \1/\2 qty \3 in \4 out \5 pnl \6 cause \7 -> \8"),
    (r"^websocket connected$", "feed up"),
    (r"^websocket disconnected: (.*)$", r"feed down (\1)"),
    (r"^websocket reconnect attempt (\d+) in (\S+)s$", r"feed retry #\1, next in \2 s"),
    (r"^rate limit hit on (\S+) \(HTTP 429\)$", r"throttled by exchange on \1"),
    (r"^API CALL (\S+) (\S+)$", r"call \1 took \2"),
    (r"^auth failed: (.*)$", r"credentials refused: \1"),
    (r"^circuit breaker tripped: (.*)$", r"RISK HALT: \1"),
))
ALT_LEVELS = {"WARNING": "WARN", "CRITICAL": "FATAL"}


ALT_RESULTS = {"-> WIN": "-> gain", "-> LOSS": "-> drawdown"}


def alt_message(message: str) -> str:
    for pattern, replacement in ALT_MESSAGES:
        rewritten, count = pattern.subn(replacement, message)
        if count:
            for old, new in ALT_RESULTS.items():
                if rewritten.endswith(old):
                    rewritten = rewritten[: -len(old)] + new
            return rewritten
    return message


def alt_health(report: dict[str, Any]) -> dict[str, Any]:
    """The default /health document in the alt shape's layout."""
    checks, metrics = report["checks"], report["metrics"]
    ws, auth, book, breaker = (checks["websocket_connectivity"], checks["api_auth"], checks["position_health"],
                               checks["circuit_breaker"])
    return {
        "state": ALT_STATUS[report["status"]],
        "at": report["timestamp"],
        "process": {"pid": report["pid"], "up_s": report["uptime_seconds"]},
        "components": {
            "feed": {"up": ws["connected"], "age_s": ws["last_message_age_seconds"],
                     "retries": ws["reconnect_attempts"]},
            "exchange": {"login": "ok" if auth["status"] == "pass" else "denied", "error": auth["last_error"],
                         "last_call_ms": checks["api_connectivity"]["last_latency_ms"]},
            "book": {"state": book["status"], "unprotected": book["positions_without_stop"], "open": [
                {"symbol": row["coin"], "qty": row["szi"], "avg_entry": row["entry_px"], "mark": row["mark_px"],
                 "stop": row["stop_px"], "upnl": row["unrealized_pnl"]} for row in book["positions"]]},
            "risk": {"halted": breaker["tripped"], "why": breaker["reason"]},
            "memory": checks["memory"],
        },
        "stats": {"pnl": {"total": metrics["total_pnl"], "today": metrics["daily_pnl"]},
                  "equity": metrics["account_balance"], "free_usd": metrics["withdrawable"],
                  "peak_equity": metrics["peak_balance"], "winrate": metrics["win_rate"],
                  "trades_today": metrics["trades_today"], "trades": metrics["total_trades"],
                  "positions": metrics["open_positions"]},
    }


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class BotConfig:
    """The parts of `config/config.json` the bot acts on (the manager writes the whole file)."""

    home: Path
    health_port: int
    metrics_port: int
    faults_file: Path
    exchange_url: str
    account_address: str
    key_file: Path
    startup_seconds: float
    trade_interval_seconds: float
    api_timeout_seconds: float
    seed: int
    stop_loss_pct: float
    take_profit_pct: float
    max_position_usd: float
    daily_loss_limit_usd: float
    min_balance_usd: float
    base_size_usd: float
    max_positions: int
    strategy_name: str
    coins: tuple[str, ...]
    max_hold_seconds: float
    shape: str = "default"

    @classmethod
    def load(cls, home: Path) -> BotConfig:
        raw = json.loads((home / CONFIG_FILE).read_text())
        bot = raw["bot"]
        shape = str(bot.get("shape", "default"))
        if shape not in SHAPES:
            raise ValueError(f"bot.shape must be one of {', '.join(SHAPES)}, not {shape!r}")
        where = ALT_CONFIG_KEYS if shape == "alt" else DEFAULT_CONFIG_KEYS

        def setting(name: str, default: Any = KeyError) -> Any:
            section, key = where[name]
            part = raw.get(section, {})
            if key not in part:
                if default is KeyError:
                    raise KeyError(f"{section}.{key}")
                return default
            return part[key]

        return cls(
            shape=shape,
            home=home,
            health_port=int(bot["health_port"]),
            metrics_port=int(bot["metrics_port"]),
            faults_file=home / bot["faults_file"],
            exchange_url=str(bot["exchange_url"]).rstrip("/"),
            account_address=str(bot["account_address"]).lower(),
            key_file=home / bot.get("key_file", "config/agent_key.json"),
            startup_seconds=float(bot.get("startup_seconds", 1.5)),
            trade_interval_seconds=float(bot.get("trade_interval_seconds", 3.0)),
            api_timeout_seconds=float(bot.get("api_timeout_seconds", 10.0)),
            seed=int(bot.get("seed", 7)),
            stop_loss_pct=float(setting("stop_loss_pct")),
            take_profit_pct=float(setting("take_profit_pct")),
            max_position_usd=float(setting("max_position_usd")),
            daily_loss_limit_usd=float(setting("daily_loss_limit_usd")),
            min_balance_usd=float(setting("min_balance_usd")),
            base_size_usd=float(setting("base_size_usd")),
            max_positions=int(setting("max_positions")),
            strategy_name=str(setting("strategy_name", "random-walk")),
            coins=tuple(setting("coins")),
            max_hold_seconds=float(setting("max_hold_seconds", 20.0)),
        )


# --- logging --------------------------------------------------------------------------------

_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, plus any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _RECORD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The alt shape: `2026-12-05 12:00:00.123 WARN  [trading_bot.websocket] feed down (...)`, in UTC, with
    the alt dialect's wording."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        level = ALT_LEVELS.get(record.levelname, record.levelname)
        line = f"{stamp} {level:<5} [{record.name}] {alt_message(record.getMessage())}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def configure_logging(home: Path, shape: str = "default") -> None:
    """All records to logs/trading_bot.log, ERROR and above also to logs/trading_bot_errors.log."""
    (home / LOG_FILE).parent.mkdir(parents=True, exist_ok=True)
    formatter: logging.Formatter = TextFormatter() if shape == "alt" else JsonFormatter()
    main = logging.FileHandler(home / LOG_FILE)
    errors = logging.FileHandler(home / ERROR_LOG_FILE)
    errors.setLevel(logging.ERROR)
    for handler in (main, errors):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- metrics --------------------------------------------------------------------------------


class Metrics:
    """The Prometheus series the runbook and the watcher read (default registry, one bot per process)."""

    def __init__(self, shape: str = "default") -> None:
        if shape == "alt":  # milliseconds, under another name
            histogram = Histogram(
                "exchange_call_latency_ms", "Hyperliquid API request duration (ms)", ["endpoint"],
                buckets=(10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 7500, 10000, 15000, 30000),
            )
            self.observe_api = lambda endpoint, seconds: histogram.labels(endpoint=endpoint).observe(seconds * 1000)
        else:
            histogram = Histogram(
                "api_request_duration_seconds", "Hyperliquid API request duration", ["endpoint"],
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 15, 30),
            )
            self.observe_api = lambda endpoint, seconds: histogram.labels(endpoint=endpoint).observe(seconds)
        self.api_requests = Counter("api_requests_total", "Hyperliquid API requests", ["endpoint", "outcome"])
        self.trades = Counter("trades_total", "Closed trades", ["coin", "result"])
        self.balance = Gauge("account_balance_usd", "Account value reported by the exchange")
        self.total_pnl = Gauge("total_pnl_usd", "Realised P&L of all recorded trades")
        self.daily_pnl = Gauge("daily_pnl_usd", "Realised P&L today (UTC) since the bot started")
        self.websocket = Gauge("websocket_connected", "1 while the market-data websocket is connected")
        self.open_positions = Gauge("open_positions", "Open positions")
        self.breaker = Gauge("circuit_breaker_tripped", "1 while the circuit breaker stops trading")


# --- exchange access ------------------------------------------------------------------------


class ExchangeError(Exception):
    """A failed exchange call, already logged and reflected in /health by the gateway."""


@dataclass
class ApiStatus:
    """What the last exchange calls said, for /health."""

    reachable: bool = True
    last_latency_ms: float | None = None
    last_error: str | None = None
    rate_limited: bool = False
    auth_ok: bool = True
    auth_error: str | None = None


def _is_auth_error(message: str) -> bool:
    return any(marker in message.lower() for marker in AUTH_MARKERS)


def _round_px(px: float, sz_decimals: int) -> float:
    """Hyperliquid perp prices: 5 significant figures and at most 6 - szDecimals decimals."""
    return round(float(f"{px:.5g}"), 6 - sz_decimals)


class Gateway:
    """Every exchange call goes through here: timed into the histogram, logged, and classified."""

    def __init__(self, config: BotConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._wallet = _load_wallet(config.key_file)
        self._api = API(config.exchange_url, timeout=config.api_timeout_seconds)
        self._exchange: Exchange | None = None
        self._sz_decimals: dict[str, int] = {}
        self.status = ApiStatus()

    @property
    def ready(self) -> bool:
        return self._exchange is not None

    def connect(self) -> None:
        """Fetch the perp universe once and build the SDK client (retried each tick until it works)."""
        meta = self._timed("meta", lambda: self._api.post("/info", {"type": "meta"}))
        self._sz_decimals = {asset["name"]: int(asset["szDecimals"]) for asset in meta["universe"]}
        self._exchange = Exchange(
            self._wallet, self._config.exchange_url, meta=meta, spot_meta={"universe": [], "tokens": []},
            account_address=self._config.account_address, timeout=self._config.api_timeout_seconds,
        )
        log.info("exchange client ready", extra={"coins": sorted(self._sz_decimals), "agent": self._wallet.address})

    def info(self, kind: str, **fields: Any) -> Any:
        return self._timed(kind, lambda: self._api.post("/info", {"type": kind, **fields}))

    def market(self, coin: str, is_buy: bool, size: float, mid: float, reduce_only: bool) -> tuple[float, float]:
        """An IoC order at the mid plus slippage; returns (filled size, average price)."""
        szd = self._sz_decimals[coin]
        limit = _round_px(mid * (1 + MARKET_SLIPPAGE if is_buy else 1 - MARKET_SLIPPAGE), szd)
        status = self._order(coin, is_buy, round(size, szd), limit, {"limit": {"tif": "Ioc"}}, reduce_only)
        filled = status.get("filled")
        if not filled:
            raise self._rejected("order", f"order for {coin} did not fill: {status}")
        return float(filled["totalSz"]), float(filled["avgPx"])

    def place_stop(self, coin: str, position_is_long: bool, size: float, trigger_px: float) -> int:
        """A reduce-only market stop-loss trigger; returns its order id."""
        szd = self._sz_decimals[coin]
        trigger = _round_px(trigger_px, szd)
        limit = _round_px(trigger * (0.9 if position_is_long else 1.1), szd)
        order_type = {"trigger": {"triggerPx": trigger, "isMarket": True, "tpsl": "sl"}}
        status = self._order(coin, not position_is_long, round(size, szd), limit, order_type, True)
        for value in status.values():
            if isinstance(value, dict) and "oid" in value:
                return int(value["oid"])
        raise self._rejected("order", f"stop for {coin} was not accepted: {status}")

    def cancel(self, coin: str, oid: int) -> None:
        exchange = self._require()
        self._check("cancel", self._timed("cancel", lambda: exchange.cancel(coin, oid)))

    def stop_px(self, coin: str, position_is_long: bool, entry_px: float) -> float:
        distance = self._config.stop_loss_pct / 100
        return _round_px(entry_px * (1 - distance if position_is_long else 1 + distance), self._sz_decimals[coin])

    def check_agent(self) -> None:
        """Ask the exchange whether the agent key is still approved for the account (every tick)."""
        role = self.info("userRole", user=self._wallet.address)
        if isinstance(role, dict) and role.get("role") == "missing":
            self._auth_failed(f"User or API Wallet {self._wallet.address.lower()} does not exist.")
        else:
            self._auth_ok()

    def pin_mid(self, coin: str, px: float | None) -> None:
        """Move (or release) the sandbox market's mid: how the sandbox makes prices hit stops."""
        wire = None if px is None else str(_round_px(px, self._sz_decimals[coin]))
        try:
            self._api.post("/_sandbox/set_mid", {"coin": coin, "px": wire})
        except Exception as error:  # the market simulation is best effort; trading goes on
            log.warning(f"market simulation unavailable: {error}")

    def _order(self, coin: str, is_buy: bool, size: float, limit: float, order_type: Any, reduce_only: bool) -> dict:
        exchange = self._require()
        response = self._timed("order", lambda: exchange.order(coin, is_buy, size, limit, order_type, reduce_only))
        statuses = self._check("order", response)["response"]["data"]["statuses"]
        status = statuses[0] if statuses else {}
        if "error" in status:
            raise self._rejected("order", status["error"])
        return status

    def _require(self) -> Exchange:
        if self._exchange is None:
            raise ExchangeError("exchange client not connected yet")
        return self._exchange

    def _check(self, endpoint: str, response: Any) -> dict:
        """An /exchange answer with status err is a rejection; the key's rejection is an auth failure."""
        if isinstance(response, dict) and response.get("status") == "ok":
            self._auth_ok()
            return response
        message = str(response.get("response") if isinstance(response, dict) else response)
        if _is_auth_error(message):
            self._auth_failed(message)
            raise ExchangeError(message)
        self._auth_ok()
        raise self._rejected(endpoint, message)

    @staticmethod
    def _rejected(endpoint: str, message: str) -> ExchangeError:
        log.error(f"exchange rejected {endpoint}: {message}", extra={"endpoint": endpoint})
        return ExchangeError(message)

    def _auth_ok(self) -> None:
        if not self.status.auth_ok:
            log.info("auth restored: exchange accepts the agent key again")
        self.status.auth_ok, self.status.auth_error = True, None

    def _auth_failed(self, message: str) -> None:
        self.status.auth_ok, self.status.auth_error = False, message
        log.error(f"auth failed: {message}", extra={"agent": self._wallet.address})

    def _timed(self, endpoint: str, call: Callable[[], Any]) -> Any:
        started = time.monotonic()
        outcome = "ok"
        try:
            result = call()
            self.status.reachable, self.status.rate_limited, self.status.last_error = True, False, None
            return result
        except ClientError as error:
            self.status.reachable = True  # it answered, if only to refuse
            if error.status_code == 429:
                outcome = "rate_limited"
                self.status.rate_limited, self.status.last_error = True, "HTTP 429"
                log.warning(f"rate limit hit on {endpoint} (HTTP 429)", extra={"endpoint": endpoint})
                raise ExchangeError("HTTP 429") from None
            outcome = "rejected"
            message = str(error.error_message)
            self.status.last_error = message
            if _is_auth_error(message):
                self._auth_failed(message)
                raise ExchangeError(message) from None
            raise self._rejected(endpoint, f"HTTP {error.status_code} {message}") from None
        except (ServerError, requests.RequestException) as error:
            outcome = "unreachable"
            message = f"HTTP {error.status_code}" if isinstance(error, ServerError) else type(error).__name__
            self.status.reachable, self.status.last_error = False, message
            log.error(f"exchange unreachable on {endpoint}: {message}", extra={"endpoint": endpoint})
            raise ExchangeError(message) from None
        except Exception as error:  # a malformed answer must not take the bot down
            outcome = "error"
            self.status.last_error = repr(error)
            log.error(f"exchange call {endpoint} failed: {error!r}", extra={"endpoint": endpoint})
            raise ExchangeError(repr(error)) from None
        finally:
            elapsed = time.monotonic() - started
            self.status.last_latency_ms = round(elapsed * 1000, 1)
            self._metrics.observe_api(endpoint, elapsed)
            self._metrics.api_requests.labels(endpoint=endpoint, outcome=outcome).inc()
            log.info(f"API CALL {endpoint} {elapsed * 1000:.0f}ms",
                     extra={"endpoint": endpoint, "latency_ms": round(elapsed * 1000, 1), "outcome": outcome})


def _load_wallet(key_file: Path) -> Any:
    """The agent key from its JSON key file ({"address", "private_key"}) or a bare hex key."""
    text = key_file.read_text().strip()
    key = json.loads(text)["private_key"] if text.startswith("{") else text
    return eth_account.Account.from_key(key)


# --- the bot's own records ------------------------------------------------------------------


@dataclass
class Position:
    coin: str
    is_long: bool
    size: float
    entry_px: float
    opened_at: float = field(default_factory=time.time)
    stop_px: float | None = None
    stop_oid: int | None = None
    hold_seconds: float = 0.0  # the strategy exits after this long (0: on its next decision)

    @property
    def side(self) -> str:
        return "long" if self.is_long else "short"

    def pnl_at(self, px: float) -> float:
        return (px - self.entry_px) * self.size * (1 if self.is_long else -1)


class Ledger:
    """Closed trades: appended to data/trades.jsonl and summed for /health and the metrics.

    Totals cover every recorded trade; the daily figures count trades closed today (UTC) since this
    process started, so restarting the bot is how the runbook's "reset daily loss counter" is done.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.total_pnl = 0.0
        self.total_trades = 0
        self.wins = 0
        self.day = _utcnow().date()
        self.daily_pnl = 0.0
        self.trades_today = 0
        for trade in self._read():
            self.total_pnl += float(trade.get("pnl", 0.0))
            self.total_trades += 1
            self.wins += trade.get("result") == "WIN"

    def _read(self) -> Iterator[dict]:
        if not self._path.exists():
            return
        for line in self._path.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue

    def record(self, trade: dict) -> None:
        with self._path.open("a") as handle:
            handle.write(json.dumps(trade) + "\n")
        self.roll_day()
        self.total_pnl += trade["pnl"]
        self.total_trades += 1
        self.wins += trade["result"] == "WIN"
        self.daily_pnl += trade["pnl"]
        self.trades_today += 1

    def roll_day(self) -> None:
        today: date = _utcnow().date()
        if today != self.day:
            self.day, self.daily_pnl, self.trades_today = today, 0.0, 0

    @property
    def win_rate(self) -> float | None:
        return round(self.wins / self.total_trades, 4) if self.total_trades else None


# --- the simulated market-data websocket ----------------------------------------------------


class SimulatedWebsocket:
    """A connection that 'receives' a message every half second, and drops when a fault says so."""

    def __init__(self, board: FaultBoard, stop: threading.Event, gate: Callable[[], None]) -> None:
        self._board = board
        self._stop = stop
        self._gate = gate
        self._log = log.getChild("websocket")
        self.connected = False
        self.last_message_at: float | None = None
        self.reconnect_attempts = 0
        self._blip_seen = False
        # Like `hang`, a stuck connection belongs to the process that saw the `websocket` fault begin:
        # a bot (re)started while it is set connects (a restart is the cure the runbook offers).
        self._stuck_armed = not board.active("websocket")

    def run(self) -> None:
        self._connect()
        while not self._stop.is_set():
            self._gate()
            if not self._board.active("websocket"):
                self._stuck_armed = True
            if self._board.active("websocket") and self._stuck_armed:
                self._outage(lambda: not self._board.active("websocket"), "connection lost")
            elif self._board.active("exchange-unreachable"):  # same host: no websocket either
                self._outage(lambda: not self._board.active("exchange-unreachable"), "connection refused")
            elif self._board.active("websocket-blip") and not self._blip_seen:
                self._blip_seen = True
                seconds = float(self._board.param("websocket-blip", "seconds", 3))
                back_at = time.monotonic() + seconds
                self._outage(lambda: time.monotonic() >= back_at, "connection reset by peer")
            else:
                self._blip_seen = self._board.active("websocket-blip")
                self.last_message_at = time.monotonic()
                self._stop.wait(WEBSOCKET_TICK)

    def _connect(self) -> None:
        self.connected, self.reconnect_attempts, self.last_message_at = True, 0, time.monotonic()
        self._log.info("websocket connected")

    def _outage(self, over: Callable[[], bool], reason: str) -> None:
        """Disconnected: retry with exponential backoff (1, 2, 4 .. 30 s) until `over()` says it is back."""
        self.connected = False
        self._log.warning(f"websocket disconnected: {reason}")
        while not self._stop.is_set() and not over():
            self.reconnect_attempts += 1
            delay = min(2.0 ** (self.reconnect_attempts - 1), MAX_BACKOFF)
            self._log.warning(f"websocket reconnect attempt {self.reconnect_attempts} in {delay:.0f}s")
            retry_at = time.monotonic() + delay
            while time.monotonic() < retry_at and not self._stop.is_set() and not over():
                self._stop.wait(FAULT_POLL)
        if not self._stop.is_set():
            self._connect()

    @property
    def message_age(self) -> float | None:
        return None if self.last_message_at is None else round(time.monotonic() - self.last_message_at, 2)


# --- the bot --------------------------------------------------------------------------------


class TradingBot:
    """Trading loop, risk controls, fault behaviour and the state /health reports."""

    def __init__(self, config: BotConfig, board: FaultBoard, metrics: Metrics) -> None:
        self.config = config
        self.board = board
        self.metrics = metrics
        self.stop = threading.Event()
        self.started = time.time()
        self.gateway = Gateway(config, metrics)
        self.ledger = Ledger(config.home / TRADES_FILE)
        self.websocket = SimulatedWebsocket(board, self.stop, self.wait_while_hung)
        self.rng = random.Random(config.seed)
        self.strategy_log = log.getChild("strategy")
        self.risk_log = log.getChild("risk")
        self._lock = threading.Lock()
        self.positions: dict[str, Position] = {}
        self.mids: dict[str, float] = {}
        self.balance: float | None = None
        self.withdrawable: float | None = None
        self.peak_balance: float | None = None
        self.breaker_reason: str | None = None
        # Faults that are events, not conditions, hit only a process that saw them begin.
        self._hang_armed = not board.active("hang")
        self._sick_armed = not board.active("sick")
        self._stall_armed = not board.active("stall")
        self._stop_loss_done = board.active("stop-loss")
        self._ballast: list[bytes] = []
        self._process = psutil.Process()

    # -- lifecycle --

    def start(self) -> None:
        """Connect the websocket and start trading, each in its own thread."""
        for target, name in ((self.websocket.run, "websocket"), (self._trading_loop, "trading")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def keep_house(self) -> None:
        """Memory fault and gauges, once a second until SIGTERM."""
        while not self.stop.is_set():
            self.wait_while_hung()
            self._memory_step()
            self._publish_gauges()
            self.stop.wait(1.0)

    def wait_while_hung(self) -> None:
        """The `hang` fault: whoever calls this stops here, silently, until it is cleared."""
        while self._hung() and not self.stop.is_set():
            self.stop.wait(FAULT_POLL)

    def _hung(self) -> bool:
        """A hang is a deadlock of the process that saw it begin: a restarted bot is not hung."""
        if not self.board.active("hang"):
            self._hang_armed = True
            return False
        return self._hang_armed

    def _event_fault(self, kind: str) -> bool:
        """`sick` and `stall` hit the process that saw them begin, like `hang`: a restart cures them."""
        armed = f"_{kind}_armed"
        if not self.board.active(kind):
            setattr(self, armed, True)
            return False
        return bool(getattr(self, armed))

    @property
    def sick(self) -> bool:
        return self._event_fault("sick")

    # -- trading --

    def _trading_loop(self) -> None:
        self.strategy_log.info(f"strategy {self.config.strategy_name} started",
                               extra={"coins": list(self.config.coins), "seed": self.config.seed})
        while not self.stop.is_set():
            self.wait_while_hung()
            if self._event_fault("stall"):  # the loop is wedged: /health still answers, metrics stand still
                self.stop.wait(FAULT_POLL)
                continue
            try:
                self._tick()
            except ExchangeError:
                pass  # already logged and reflected in health by the gateway
            except Exception:
                log.exception("trading loop error")
            self.stop.wait(self.config.trade_interval_seconds)

    def _tick(self) -> None:
        if not self.gateway.ready:
            self.gateway.connect()
        self._sync()
        self.gateway.check_agent()
        self._check_balance()
        if not self.board.active("stop-loss"):
            self._stop_loss_done = False
        elif not self._stop_loss_done:
            self._force_stop_loss()
        if self.board.active("daily-loss") and self.breaker_reason is None:
            self._losing_streak()
        if self.breaker_reason is None:
            self._strategy_step()

    def _sync(self) -> None:
        """Read account, mids and open orders; adopt unknown positions, notice ones the exchange closed."""
        mids = self.gateway.info("allMids")
        self.mids = {coin: float(px) for coin, px in mids.items() if coin in self.config.coins}
        state = self.gateway.info("clearinghouseState", user=self.config.account_address)
        orders = self.gateway.info("frontendOpenOrders", user=self.config.account_address)
        self.balance = float(state["marginSummary"]["accountValue"])
        self.withdrawable = float(state.get("withdrawable", self.balance))
        self.peak_balance = max(self.peak_balance or self.balance, self.balance)
        live = {(order["coin"], int(order["oid"])): order for order in orders}
        on_exchange = {}
        for item in state.get("assetPositions", []):
            pos = item["position"]
            if float(pos["szi"]) != 0:
                on_exchange[pos["coin"]] = pos
        with self._lock:
            gone = [p for coin, p in self.positions.items() if coin not in on_exchange]
            for position in gone:
                del self.positions[position.coin]
            for coin, position in self.positions.items():
                if position.stop_oid is not None and (coin, position.stop_oid) not in live:
                    position.stop_oid, position.stop_px = None, None
            for coin, pos in on_exchange.items():
                if coin not in self.positions:
                    self._adopt(coin, pos, live.values())
        for position in gone:
            self._closed_by_exchange(position, (position.coin, position.stop_oid) in live)
        self._ensure_stops()

    def _adopt(self, coin: str, pos: dict, orders: Any) -> None:
        """A position the bot did not open in this process (a restart): track it and its stop."""
        szi = float(pos["szi"])
        position = Position(coin, szi > 0, abs(szi), float(pos["entryPx"]))
        for order in orders:
            if order["coin"] == coin and order.get("isTrigger") and order.get("reduceOnly", True):
                position.stop_oid, position.stop_px = int(order["oid"]), float(order["triggerPx"])
        self.positions[coin] = position
        log.info(f"position {coin} {position.side} adopted size={position.size} entry={position.entry_px} "
                 f"stop={position.stop_px}", extra={"coin": coin})

    def _ensure_stops(self) -> None:
        """Every open position carries a stop-loss order; replace any that went missing."""
        for position in list(self.positions.values()):
            if position.stop_oid is None:
                self._place_stop(position)
                if position.stop_oid is not None:
                    log.info(f"position {position.coin} stop placed px={position.stop_px}", extra={"coin": position.coin})

    def _place_stop(self, position: Position) -> None:
        stop_px = self.gateway.stop_px(position.coin, position.is_long, position.entry_px)
        try:
            position.stop_oid = self.gateway.place_stop(position.coin, position.is_long, position.size, stop_px)
            position.stop_px = stop_px
        except ExchangeError as error:
            log.error(f"position {position.coin} has no stop-loss: {error}", extra={"coin": position.coin})

    def _strategy_step(self) -> None:
        """At most one decision per tick: take profit, exit a position held long enough, or enter one."""
        for position in list(self.positions.values()):
            mark = self.mids.get(position.coin, position.entry_px)
            if position.pnl_at(mark) / (position.entry_px * position.size) * 100 >= self.config.take_profit_pct:
                self._close(position, "take_profit")
                return
        held_out = [p for p in self.positions.values() if time.time() >= p.opened_at + p.hold_seconds]
        if held_out:
            self.strategy_log.info(f"strategy {self.config.strategy_name}: exit signal {held_out[0].coin}")
            self._close(held_out[0], "signal")
            return
        free = [coin for coin in self.config.coins if coin not in self.positions and coin in self.mids]
        if free and len(self.positions) < self.config.max_positions and (not self.positions or self.rng.random() < 0.5):
            coin, is_long = self.rng.choice(free), self.rng.random() < 0.5
            self.strategy_log.info(f"strategy {self.config.strategy_name}: entry signal {coin} "
                                   f"{'long' if is_long else 'short'}")
            position = self._open(coin, is_long, self.config.base_size_usd)
            if position is not None:
                position.hold_seconds = self.rng.uniform(self.config.max_hold_seconds / 2, self.config.max_hold_seconds)

    def _open(self, coin: str, is_long: bool, notional: float) -> Position | None:
        mid = self.mids[coin]
        notional = min(notional, self.config.max_position_usd)
        if self.withdrawable is not None and self.withdrawable < notional / 10:
            self.risk_log.error(f"insufficient balance for {coin}: withdrawable {self.withdrawable:.2f}")
            return None
        size, px = self.gateway.market(coin, is_long, notional / mid, mid, reduce_only=False)
        position = Position(coin, is_long, size, px)
        with self._lock:
            self.positions[coin] = position
        self._place_stop(position)
        log.info(f"TRADE ENTRY {coin} {position.side} size={size} px={px} stop={position.stop_px}",
                 extra={"coin": coin, "side": position.side, "size": size, "px": px, "stop_px": position.stop_px})
        return position

    def _close(self, position: Position, reason: str) -> None:
        mid = self.mids.get(position.coin, position.entry_px)
        _, px = self.gateway.market(position.coin, not position.is_long, position.size, mid, reduce_only=True)
        if position.stop_oid is not None:
            try:
                self.gateway.cancel(position.coin, position.stop_oid)
            except ExchangeError as error:
                log.warning(f"position {position.coin} stop cancel failed: {error}")
        with self._lock:
            self.positions.pop(position.coin, None)
        self._record_exit(position, px, reason)

    def _closed_by_exchange(self, position: Position, stop_still_open: bool) -> None:
        """The exchange closed a tracked position: its stop fired (or someone closed it by hand)."""
        reason = "external" if stop_still_open or position.stop_oid is None else "stop_loss"
        exit_px = self._exit_px(position) or position.stop_px or position.entry_px
        if reason == "external":
            log.warning(f"position {position.coin} closed outside the bot", extra={"coin": position.coin})
            if position.stop_oid is not None:
                try:
                    self.gateway.cancel(position.coin, position.stop_oid)
                except ExchangeError:
                    pass
        self._record_exit(position, exit_px, reason)

    def _exit_px(self, position: Position) -> float | None:
        """The price of the fill that closed the position, from the account's fills."""
        since_ms = int(position.opened_at * 1000) - 1000
        try:
            fills = self.gateway.info("userFillsByTime", user=self.config.account_address, startTime=since_ms)
        except ExchangeError:
            return None
        closing_side = "A" if position.is_long else "B"
        matches = [f for f in fills if f.get("coin") == position.coin and f.get("side") == closing_side]
        return float(max(matches, key=lambda f: f.get("time", 0))["px"]) if matches else None

    def _record_exit(self, position: Position, exit_px: float, reason: str) -> None:
        pnl = round(position.pnl_at(exit_px), 4)
        result = "WIN" if pnl > 0 else "LOSS"
        now = _utcnow()
        self.ledger.record({
            "closed_at": now.isoformat(timespec="milliseconds"),
            "opened_at": datetime.fromtimestamp(position.opened_at, timezone.utc).isoformat(timespec="milliseconds"),
            "coin": position.coin, "side": position.side, "size": position.size,
            "entry_px": position.entry_px, "exit_px": exit_px, "pnl": pnl, "reason": reason, "result": result,
        })
        self.metrics.trades.labels(coin=position.coin, result=result).inc()
        log.info(f"TRADE EXIT {position.coin} {position.side} size={position.size} entry={position.entry_px} "
                 f"exit={exit_px} pnl={pnl:.2f} reason={reason} {result}",
                 extra={"coin": position.coin, "side": position.side, "pnl": pnl, "reason": reason, "result": result})
        if self.ledger.daily_pnl <= -self.config.daily_loss_limit_usd and self.breaker_reason is None:
            self._trip("daily loss limit reached",
                       f"daily_pnl={self.ledger.daily_pnl:.2f} limit={self.config.daily_loss_limit_usd:.2f}")

    # -- risk controls --

    def _trip(self, reason: str, detail: str) -> None:
        self.breaker_reason = reason
        self.risk_log.error(f"circuit breaker tripped: {reason} ({detail}); trading halted",
                            extra={"reason": reason})

    def _check_balance(self) -> None:
        """Below the minimum balance the breaker stops trading; it resets itself once the balance is back."""
        if self.balance is None:
            return
        if self.balance < self.config.min_balance_usd:
            if self.breaker_reason is None:
                self.risk_log.error(f"insufficient balance: account value {self.balance:.2f} below minimum "
                                    f"{self.config.min_balance_usd:.2f}", extra={"balance": self.balance})
                self._trip("insufficient balance", f"balance={self.balance:.2f}")
        elif self.breaker_reason == "insufficient balance":
            self.breaker_reason = None
            self.risk_log.info(f"circuit breaker reset: balance restored to {self.balance:.2f}")

    # -- faults that act through the market --

    def _force_stop_loss(self) -> None:
        """`stop-loss`: push one position's mark through its stop and let the exchange fire it."""
        position = next((p for p in self.positions.values() if p.stop_oid is not None), None)
        if position is None and self.breaker_reason is None:
            free = [coin for coin in self.config.coins if coin not in self.positions and coin in self.mids]
            position = self._open(free[0], True, self.config.base_size_usd) if free else None
        if position is None or position.stop_px is None:
            return
        self._stop_loss_done = True
        through = position.stop_px * (0.99 if position.is_long else 1.01)
        log.warning(f"position {position.coin} {position.side} mark moving through stop {position.stop_px}",
                    extra={"coin": position.coin})
        self.gateway.pin_mid(position.coin, through)
        try:
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline and not self.stop.is_set():
                self.stop.wait(0.5)
                self._sync()
                if position.coin not in self.positions:
                    return
            self.mids[position.coin] = through
            self._close(position, "stop_loss")
        finally:
            self.gateway.pin_mid(position.coin, None)

    def _losing_streak(self) -> None:
        """`daily-loss`: trades go against the bot (just inside the stop) until the daily limit trips."""
        loss_pct = self.config.stop_loss_pct * 0.9 / 100
        while (self.breaker_reason is None and self.board.active("daily-loss") and not self.stop.is_set()
               and self.ledger.daily_pnl > -self.config.daily_loss_limit_usd):
            self.wait_while_hung()
            free = [coin for coin in self.config.coins if coin not in self.positions and coin in self.mids]
            if not free:
                self._close(min(self.positions.values(), key=lambda p: p.opened_at), "signal")
                continue
            coin = free[0]
            position = self._open(coin, True, self.config.max_position_usd)
            if position is None:
                return
            adverse = position.entry_px * (1 - loss_pct)
            self.gateway.pin_mid(coin, adverse)
            try:
                self.mids[coin] = adverse
                self.strategy_log.info(f"strategy {self.config.strategy_name}: exit signal {coin} (adverse move)")
                self._close(position, "signal")
            finally:
                self.gateway.pin_mid(coin, None)
            self.stop.wait(0.5)

    # -- housekeeping --

    def _memory_step(self) -> None:
        """`memory`: grow by mb_per_second up to max_mb; free it all once the fault is cleared."""
        if self.board.active("memory"):
            limit = float(self.board.param("memory", "max_mb", 400))
            step = int(float(self.board.param("memory", "mb_per_second", 20)))
            if len(self._ballast) + step <= limit:
                self._ballast.extend(b"\x01" * (1 << 20) for _ in range(step))
            log.warning(f"memory usage high: rss={self._rss_mb():.0f}MB cache={len(self._ballast)}MB growing",
                        extra={"rss_mb": self._rss_mb()})
        elif self._ballast:
            self._ballast.clear()
            log.info(f"memory released: rss={self._rss_mb():.0f}MB", extra={"rss_mb": self._rss_mb()})

    def _rss_mb(self) -> float:
        return round(self._process.memory_info().rss / (1 << 20), 1)

    def _publish_gauges(self) -> None:
        if self.balance is not None:
            self.metrics.balance.set(self.balance)
        self.ledger.roll_day()
        self.metrics.total_pnl.set(self.ledger.total_pnl)
        self.metrics.daily_pnl.set(self.ledger.daily_pnl)
        self.metrics.websocket.set(1 if self.websocket.connected else 0)
        self.metrics.open_positions.set(len(self.positions))
        self.metrics.breaker.set(1 if self.breaker_reason else 0)

    # -- /health --

    def health(self) -> dict[str, Any]:
        api, ws = self.gateway.status, self.websocket
        with self._lock:
            positions = list(self.positions.values())
        rows = [{
            "coin": p.coin, "szi": p.size if p.is_long else -p.size, "entry_px": p.entry_px,
            "mark_px": self.mids.get(p.coin), "stop_px": p.stop_px,
            "unrealized_pnl": round(p.pnl_at(self.mids[p.coin]), 4) if p.coin in self.mids else None,
        } for p in positions]
        unprotected = [p.coin for p in positions if p.stop_oid is None]
        slow = api.last_latency_ms is not None and api.last_latency_ms > SLOW_CALL_MS
        rss = self._rss_mb()
        checks = {
            "websocket_connectivity": {
                "status": "pass" if ws.connected else "fail", "connected": ws.connected,
                "last_message_age_seconds": ws.message_age, "reconnect_attempts": ws.reconnect_attempts,
            },
            "api_connectivity": {
                "status": "fail" if not api.reachable else "warn" if slow or api.rate_limited else "pass",
                "last_latency_ms": api.last_latency_ms, "last_error": api.last_error, "rate_limited": api.rate_limited,
            },
            "api_auth": {"status": "pass" if api.auth_ok else "fail", "last_error": api.auth_error},
            "position_health": {"status": "fail" if unprotected else "pass", "positions": rows,
                                "positions_without_stop": unprotected},
            "circuit_breaker": {"status": "fail" if self.breaker_reason else "pass",
                                "tripped": self.breaker_reason is not None, "reason": self.breaker_reason},
            "memory": {"status": "warn" if rss > MEMORY_WARN_MB else "pass", "rss_mb": rss},
        }
        if self.sick:  # a failure of the bot's own: its order engine, not anything outside
            checks["order_engine"] = {"status": "fail", "error": "order engine wedged: internal queue not draining"}
        if not (ws.connected and api.reachable and api.auth_ok) or self.sick:
            status = "unhealthy"
        elif self.breaker_reason:
            status = "stopped"
        elif any(check["status"] != "pass" for check in checks.values()):
            status = "degraded"
        else:
            status = "healthy"
        ledger = self.ledger
        return {
            "status": status,
            "timestamp": _utcnow().isoformat(timespec="milliseconds"),
            "uptime_seconds": round(time.time() - self.started, 1),
            "pid": os.getpid(),
            "checks": checks,
            "metrics": {
                "total_pnl": round(ledger.total_pnl, 4), "daily_pnl": round(ledger.daily_pnl, 4),
                "account_balance": self.balance, "withdrawable": self.withdrawable,
                "peak_balance": self.peak_balance, "win_rate": ledger.win_rate,
                "trades_today": ledger.trades_today, "total_trades": ledger.total_trades,
                "open_positions": len(positions),
            },
        }


class HealthHandler(BaseHTTPRequestHandler):
    """GET /health: 503 when unhealthy, 200 otherwise; never answers while the bot is hung."""

    server: HealthServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0].rstrip("/") != "/health":
            self.send_error(404)
            return
        bot = self.server.bot
        bot.wait_while_hung()
        report = bot.health()
        unhealthy = report["status"] == "unhealthy"
        if bot.config.shape == "alt":
            report = alt_health(report)
        body = json.dumps(report).encode()
        self.send_response(503 if unhealthy else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the prober gave up (a timeout during `hang`): nobody is left to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep probes out of stderr
        return


def serve_metrics(port: int, board: FaultBoard) -> None:
    """Prometheus text on http://127.0.0.1:PORT/metrics (prometheus_client's handler), in a daemon thread;
    under `metrics-hang` a scrape is taken and never answered."""

    class Handler(MetricsHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            while board.active("metrics-hang"):
                time.sleep(FAULT_POLL)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, bot: TradingBot) -> None:
        super().__init__(("127.0.0.1", port), HealthHandler)
        self.bot = bot


# --- process entry --------------------------------------------------------------------------


def _running_instance(pidfile: Path, home: Path) -> int | None:
    """The PID in the pidfile if it is a live bot for this same home (not a stale file or a reused PID)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = psutil.Process(pid).cmdline()
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    if pid != os.getpid() and "sandbox.bot" in cmdline and str(home) in cmdline:
        return pid
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The sandbox's simulated Hyperliquid trading bot.")
    parser.add_argument("--home", type=Path, required=True, help="the bot's working dir (config/, logs/, data/)")
    home = parser.parse_args(argv).home.resolve()
    os.chdir(home)
    try:
        config = BotConfig.load(home)
    except (OSError, KeyError, ValueError) as error:
        configure_logging(home)
        log.error(f"startup failed: bad {CONFIG_FILE}: {error!r}")
        return EXIT_CONFIG
    configure_logging(home, config.shape)
    pidfile = home / PIDFILE
    other = _running_instance(pidfile, home)
    if other is not None:
        log.error(f"startup failed: trading bot already running with pid {other}")
        return EXIT_CONFIG

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    log.info("trading bot starting", extra={"pid": os.getpid(), "home": str(home)})
    if stopping.wait(config.startup_seconds):
        log.info("shutdown during startup")
        return 0
    board = FaultBoard(config.faults_file)
    if board.active("no-start"):
        log.error("startup failed: exchange client initialisation error (fault no-start)")
        return EXIT_NO_START

    try:
        bot = TradingBot(config, board, Metrics(config.shape))
        health = HealthServer(config.health_port, bot)
        serve_metrics(config.metrics_port, board)
    except (OSError, ValueError, KeyError) as error:
        log.error(f"startup failed: {error!r}")
        return EXIT_CONFIG
    signal.signal(signal.SIGTERM, lambda *_: bot.stop.set())
    signal.signal(signal.SIGINT, lambda *_: bot.stop.set())
    if stopping.is_set():
        bot.stop.set()
    bot.start()
    threading.Thread(target=health.serve_forever, args=(0.25,), name="health", daemon=True).start()
    pidfile.write_text(f"{os.getpid()}\n")
    log.info("trading bot started", extra={"pid": os.getpid(), "health_port": config.health_port,
                                           "metrics_port": config.metrics_port})
    try:
        bot.keep_house()
    finally:
        health.shutdown()
        if _pid_in(pidfile) == os.getpid():
            pidfile.unlink()
        log.info("shutdown complete: received stop signal, pidfile removed")
    return 0


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
