"""The sandbox exchange's state: accounts, positions, orders, fills and nonces in memory, persisted to
`STATE_DIR/state.json` after every change; the venue's core (prices, persistence, the test controls, whose
account an address acts for, margin figures) that the info views and the exchange actions share."""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from sandbox.faults import FaultBoard
from sandbox.hl_market import (
    ADDRESS_RE,
    COIN_BY_NAME,
    COINS,
    ZERO,
    BadRequest,
    CoinSpec,
    D,
    JsonDict,
    PriceWalk,
    fmt_px,
    fmt_sz,
    fmt_usd,
    now_ms,
    round_px,
)

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
# The venue's core: prices, persistence and control, accounts


class VenueState:
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
