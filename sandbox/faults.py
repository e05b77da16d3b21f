"""The sandbox's fault switchboard: one JSON file every sandbox process reads.

`runbook sandbox fault KIND` writes `DIR/faults.json` ({"kind": {params}}); the bot, the local
Hyperliquid API and the local Slack API each re-read it when its mtime changes, so a fault takes
effect within one poll and `clear` undoes all of them.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

# Every kind `runbook sandbox fault` accepts, with what it does. `crash` is an action, not a state.
FAULT_KINDS: dict[str, str] = {
    "crash": "kill the bot process (SIGKILL); it stays down",
    "hang": "the bot stays alive but /health never answers and trading stops",
    "sick": "the bot reports itself unhealthy (503, its own order_engine check failing); a restart cures it",
    "stall": "the bot's trading loop stops: /health still answers 200 but its metrics stop changing; a restart cures it",
    "smtp-down": "the local SMTP server refuses connections",
    "smtp-hang": "the local SMTP server accepts connections and never answers",
    "pager-down": "the local pager endpoint refuses connections",
    "pager-hang": "the local pager endpoint accepts pages and never answers",
    "websocket": "the bot's websocket disconnects and does not come back until cleared",
    "websocket-blip": "the bot's websocket drops and reconnects by itself after a few seconds",
    "stop-loss": "the bot's open position hits its stop and is closed at a loss",
    "daily-loss": "the bot's daily loss limit is reached; its circuit breaker stops trading",
    "auth": "the exchange rejects the bot's key (User or API Wallet does not exist)",
    "low-balance": "the account balance drops below what trading needs",
    "latency": "the exchange answers slowly (6 s by default; param seconds)",
    "memory": "the bot's memory grows steadily (param mb_per_second)",
    "no-start": "the bot exits at start-up (for restarts that fail)",
    "exchange-down": "the exchange answers 503 to everything",
    "exchange-ratelimit": "the exchange answers 429 with body null",
    "exchange-unreachable": "the exchange stops listening and drops its connections (connection refused)",
    "slack-down": "the Slack API answers 503",
    "slack-ratelimit": "the Slack API answers 429 with Retry-After",
    "slack-hang": "the Slack API takes every call and never answers",
    "metrics-hang": "the bot's metrics endpoint takes connections and never answers",
    "slack-auth": "the Slack API answers invalid_auth",
}


def write_faults(path: Path, faults: dict[str, dict[str, Any]]) -> None:
    """Replace the fault file atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".faults.")
    with os.fdopen(fd, "w") as handle:
        json.dump(faults, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_faults(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class FaultBoard:
    """Cached view of the fault file, re-read only when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._faults: dict[str, dict[str, Any]] = {}

    def current(self) -> dict[str, dict[str, Any]]:
        # write_faults replaces the file, so the inode changes on every write even when two writes
        # land within one mtime tick.
        try:
            info = self.path.stat()
            stamp: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._faults = read_faults(self.path) if stamp is not None else {}
                self._stamp = stamp
            return self._faults

    def active(self, kind: str) -> bool:
        return kind in self.current()

    def param(self, kind: str, name: str, default: Any) -> Any:
        params = self.current().get(kind) or {}
        return params.get(name, default) if isinstance(params, dict) else default
