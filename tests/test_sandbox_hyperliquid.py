"""The sandbox Hyperliquid API, exercised over real HTTP with httpx and the official SDK."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import eth_account
import httpx
import pytest
from eth_account.signers.local import LocalAccount
from hyperliquid.exchange import Exchange
from hyperliquid.info import Info
from hyperliquid.utils.error import ClientError, ServerError
from hyperliquid.utils.types import Cloid

from sandbox.faults import write_faults
from sandbox.hyperliquid_api import COIN_BY_NAME, PriceWalk, candle_opens
from sandbox.servers import spawn

# copied from the shared reference into the repository, sources named in its README.md
RECORDED_DIR = Path(__file__).parent / "fixtures" / "hyperliquid-recorded"


@dataclass
class Server:
    url: str
    faults: Path
    state_dir: Path
    proc: subprocess.Popen[bytes]


def start_server(tmp: Path, *extra: str) -> Server:
    faults = tmp / "faults.json"
    state_dir = tmp / "state"
    proc, url = spawn(
        "sandbox.hyperliquid_api",
        ["--port", "0", "--state-dir", str(state_dir), "--faults", str(faults), *extra],
        log_path=tmp / "server.log",
    )
    return Server(url, faults, state_dir, proc)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module")
def hl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("hl"))
    yield server
    stop_server(server)


@pytest.fixture
def http(hl: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hl.url, timeout=10) as client:
        yield client


def set_faults(path: Path, faults: dict[str, dict[str, Any]]) -> None:
    # FaultBoard re-reads on mtime change; file mtimes are coarse (a few ms), so never write twice
    # within one tick.
    time.sleep(0.03)
    write_faults(path, faults)


@contextlib.contextmanager
def fault(server: Server, kind: str, **params: Any) -> Iterator[None]:
    set_faults(server.faults, {kind: params})
    try:
        yield
    finally:
        set_faults(server.faults, {})


@contextlib.contextmanager
def pinned(http: httpx.Client, coin: str, px: str) -> Iterator[None]:
    pin(http, coin, px)
    try:
        yield
    finally:
        pin(http, coin, None)


def pin(http: httpx.Client, coin: str, px: str | None) -> dict[str, Any]:
    response = http.post("/_sandbox/set_mid", json={"coin": coin, "px": px})
    response.raise_for_status()
    return response.json()


def new_account(http: httpx.Client, balance: str = "10000") -> tuple[LocalAccount, LocalAccount]:
    master, agent = eth_account.Account.create(), eth_account.Account.create()
    body = {"address": master.address, "balance": balance, "agents": [agent.address]}
    response = http.post("/_sandbox/accounts", json=body)
    response.raise_for_status()
    return master, agent


def info_post(http: httpx.Client, body: dict[str, Any]) -> Any:
    response = http.post("/info", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def statuses(result: dict[str, Any]) -> list[Any]:
    assert result["status"] == "ok", result
    return result["response"]["data"]["statuses"]


def assert_number_string(value: Any) -> None:
    assert isinstance(value, str), value
    Decimal(value)


# --------------------------------------------------------------------------------------------
# /info shapes


def test_sdk_constructs_and_reads_market_data(hl: Server) -> None:
    info = Info(hl.url, skip_ws=True, timeout=10)
    meta = info.meta()
    assert [(c["name"], c["szDecimals"], c["maxLeverage"]) for c in meta["universe"]] == [
        ("BTC", 5, 50),
        ("ETH", 4, 50),
        ("SOL", 2, 20),
    ]
    assert info.name_to_asset("SOL") == 2
    mids = info.all_mids()
    assert set(mids) == {"BTC", "ETH", "SOL"}
    for value in mids.values():
        assert_number_string(value)
    assert 50_000 < float(mids["BTC"]) < 200_000
    assert 100 < float(mids["SOL"]) < 400

    book = info.l2_snapshot("ETH")
    bids, asks = book["levels"]
    assert book["coin"] == "ETH" and isinstance(book["time"], int)
    assert float(bids[0]["px"]) < float(asks[0]["px"]) and isinstance(bids[0]["n"], int)

    ctx_meta, ctxs = info.meta_and_asset_ctxs()
    assert ctx_meta["universe"][0]["name"] == "BTC" and len(ctxs) == 3
    assert {"markPx", "oraclePx", "funding", "openInterest", "midPx", "impactPxs"} <= set(ctxs[0])


def test_candles_are_well_formed(hl: Server) -> None:
    info = Info(hl.url, skip_ws=True, timeout=10)
    now = int(time.time() * 1000)
    candles = info.candles_snapshot("BTC", "1m", now - 30 * 60_000, now)
    assert 30 <= len(candles) <= 32
    for candle in candles:
        assert set(candle) == {"t", "T", "s", "i", "o", "c", "h", "l", "v", "n"}
        assert isinstance(candle["t"], int) and candle["T"] == candle["t"] + 59_999
        assert candle["s"] == "BTC" and candle["i"] == "1m" and isinstance(candle["n"], int)
        o, c, h, lo = (Decimal(candle[k]) for k in "ochl")
        assert lo <= min(o, c) <= max(o, c) <= h
    assert [b["t"] - a["t"] for a, b in zip(candles, candles[1:], strict=False)] == [60_000] * (len(candles) - 1)
    # consecutive candles are one continuous walk: each opens where the previous closed
    assert all(abs(Decimal(b["o"]) / Decimal(a["c"]) - 1) < Decimal("0.01") for a, b in zip(candles, candles[1:]))
    capped = info.candles_snapshot("ETH", "1h", 0, now)
    assert len(capped) == 5000 and capped[-1]["t"] <= now


def test_price_walk_is_deterministic_per_second() -> None:
    btc = COIN_BY_NAME["BTC"]
    t = 1_732_500_000_123
    assert PriceWalk(7).price(btc, t) == PriceWalk(7).price(btc, t + 500)  # same second
    assert PriceWalk(7).price(btc, t) != PriceWalk(8).price(btc, t)
    assert PriceWalk(7).price(btc, t) != PriceWalk(7).price(btc, t + 1000)
    step = abs(PriceWalk(7).price(btc, t + 1000) / PriceWalk(7).price(btc, t) - 1)
    assert step < 0.005
    # boundaries agree across resolutions, so coarse candles stay consistent with fine ones
    hour = 1_732_500_000 // 3600 * 3600 * 1000
    walk = PriceWalk(7)
    assert walk.price(btc, hour, "hour") == walk.price(btc, hour, "minute") == walk.price(btc, hour)
    assert candle_opens("1w", 0, 8 * 86_400_000)[0][0] % 86_400_000 == 0


def test_account_views_for_fresh_account(http: httpx.Client) -> None:
    master, agent = new_account(http, balance="2500")
    user = master.address
    state = info_post(http, {"type": "clearinghouseState", "user": user, "dex": ""})
    assert state["assetPositions"] == []
    assert state["marginSummary"]["accountValue"] == "2500.0"
    assert state["withdrawable"] == "2500.0"
    assert set(state["crossMarginSummary"]) == {"accountValue", "totalMarginUsed", "totalNtlPos", "totalRawUsd"}
    assert isinstance(state["time"], int)
    agent_state = info_post(http, {"type": "clearinghouseState", "user": agent.address})
    assert agent_state["marginSummary"]["accountValue"] == "0.0"  # agents hold nothing themselves
    spot = info_post(http, {"type": "spotClearinghouseState", "user": user})
    assert spot["balances"][0]["coin"] == "USDC"
    assert info_post(http, {"type": "openOrders", "user": user, "dex": ""}) == []
    assert info_post(http, {"type": "frontendOpenOrders", "user": user, "dex": ""}) == []
    assert info_post(http, {"type": "userFills", "user": user}) == []
    body = {"type": "userFillsByTime", "user": user, "startTime": 0, "endTime": None, "aggregateByTime": False}
    assert info_post(http, body) == []
    limits = info_post(http, {"type": "userRateLimit", "user": user})
    assert limits == {"cumVlm": "0.0", "nRequestsUsed": 0, "nRequestsCap": 10000, "nRequestsSurplus": 0}
    assert info_post(http, {"type": "userRole", "user": user}) == {"role": "user"}
    assert info_post(http, {"type": "userRole", "user": agent.address}) == {
        "role": "agent",
        "data": {"user": user.lower()},
    }
    stranger = eth_account.Account.create().address
    assert info_post(http, {"type": "userRole", "user": stranger}) == {"role": "missing"}
    agents = info_post(http, {"type": "extraAgents", "user": user})
    assert agents[0]["address"] == agent.address.lower() and isinstance(agents[0]["validUntil"], int)
    assert info_post(http, {"type": "orderStatus", "user": user, "oid": 1}) == {"status": "unknownOid"}
    assert info_post(http, {"type": "userFunding", "user": user, "startTime": 0}) == []
    portfolio = info_post(http, {"type": "portfolio", "user": user})
    assert [period for period, _ in portfolio][:4] == ["day", "week", "month", "allTime"]
    assert portfolio[0][1]["accountValueHistory"][-1][1] == "2500.0"


def test_bad_bodies_get_422_plain_text(http: httpx.Client) -> None:
    for body in (
        {"type": "noSuchType"},
        {"type": "clearinghouseState", "user": "0x1234"},
        {"user": "0x" + "a" * 40},
        [1, 2],
    ):
        response = http.post("/info", json=body)
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == "Failed to deserialize the JSON body into the target type"
    assert http.post("/info", content=b"not json").status_code == 422
    assert http.post("/exchange", json={"action": {"type": "noop"}}).status_code == 422


# --------------------------------------------------------------------------------------------
# /exchange with the official SDK


def test_market_open_then_market_close(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    info = Info(hl.url, skip_ws=True, timeout=10)
    with pinned(http, "ETH", "3500"):
        opened = exchange.market_open("ETH", True, 0.05)
        assert opened["response"]["type"] == "order"
        fill = statuses(opened)[0]["filled"]
        assert fill["totalSz"] == "0.05" and fill["avgPx"] == "3500.0" and isinstance(fill["oid"], int)

        state = info.user_state(master.address)
        position = state["assetPositions"][0]
        assert position["type"] == "oneWay"
        pos = position["position"]
        assert (pos["coin"], pos["szi"], pos["entryPx"]) == ("ETH", "0.05", "3500.0")
        assert pos["leverage"] == {"type": "cross", "value": 20} and pos["maxLeverage"] == 50
        assert pos["positionValue"] == "175.0" and pos["marginUsed"] == "8.75"
        for key in ("unrealizedPnl", "returnOnEquity"):
            assert_number_string(pos[key])
        assert set(pos["cumFunding"]) == {"allTime", "sinceOpen", "sinceChange"}

        pin(http, "ETH", "3600")
        assert info.user_state(master.address)["assetPositions"][0]["position"]["unrealizedPnl"] == "5.0"
        closed = exchange.market_close("ETH")
        assert statuses(closed)[0]["filled"]["totalSz"] == "0.05"
        assert info.user_state(master.address)["assetPositions"] == []
        assert exchange.market_close("ETH") is None  # nothing left to close

    fills = info.user_fills(master.address)
    assert [f["dir"] for f in fills] == ["Close Long", "Open Long"]  # newest first
    close = fills[0]
    assert set(close) == {
        "coin", "px", "sz", "side", "time", "startPosition", "dir", "closedPnl",
        "hash", "oid", "crossed", "fee", "tid", "feeToken",
    }  # fmt: skip
    assert (close["side"], close["px"], close["startPosition"], close["closedPnl"]) == ("A", "3600.0", "0.05", "5.0")
    assert close["fee"] == "0.063" and close["feeToken"] == "USDC" and close["crossed"] is True
    assert isinstance(close["tid"], int) and close["hash"].startswith("0x") and len(close["hash"]) == 66
    balance = Decimal(info.user_state(master.address)["marginSummary"]["accountValue"])
    assert balance == Decimal("10000") + Decimal("5") - Decimal("0.06125") - Decimal("0.063")
    limits = info.user_rate_limit(master.address)
    assert limits["nRequestsUsed"] == 2 and limits["cumVlm"] == "355.0" and limits["nRequestsCap"] == 10355


def test_master_key_can_trade_and_flip(hl: Server, http: httpx.Client) -> None:
    master, _agent = new_account(http)
    exchange = Exchange(master, hl.url, timeout=10)  # signs as the account itself
    info = Info(hl.url, skip_ws=True, timeout=10)
    with pinned(http, "SOL", "200"):
        statuses(exchange.market_open("SOL", True, 1))
        pin(http, "SOL", "190")
        statuses(exchange.market_open("SOL", False, 3))
        pos = info.user_state(master.address)["assetPositions"][0]["position"]
        assert pos["szi"] == "-2.0" and pos["entryPx"] == "190.0" and pos["leverage"]["value"] == 20
        liq = Decimal(pos["liquidationPx"])
        assert liq > 190
        flip = info.user_fills(master.address)[0]
        assert flip["dir"] == "Long > Short" and flip["closedPnl"] == "-10.0" and flip["startPosition"] == "1.0"
        statuses(exchange.market_close("SOL"))
        assert info.user_fills(master.address)[0]["dir"] == "Close Short"


def test_unregistered_key_does_not_exist(hl: Server) -> None:
    stranger = eth_account.Account.create()
    exchange = Exchange(stranger, hl.url, timeout=10)
    result = exchange.noop(int(time.time() * 1000))
    assert result == {
        "status": "err",
        "response": f"L1 error: User or API Wallet {stranger.address.lower()} does not exist.",
    }


def test_reused_nonce_is_rejected(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    nonce = int(time.time() * 1000)
    assert exchange.noop(nonce) == {"status": "ok", "response": {"type": "default"}}
    assert exchange.noop(nonce) == {"status": "err", "response": f"Invalid nonce: duplicate nonce {nonce}"}
    assert exchange.noop(nonce - 3 * 86_400_000)["status"] == "err"  # older than two days
    exchange.set_expires_after(int(time.time() * 1000) - 1000)
    assert exchange.noop(nonce + 1)["status"] == "err"  # expiresAfter already passed
    exchange.set_expires_after(int(time.time() * 1000) + 60_000)
    assert exchange.noop(nonce + 2)["status"] == "ok"


def test_order_rejections_and_cancels(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http, balance="50")
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    info = Info(hl.url, skip_ws=True, timeout=10)
    with pinned(http, "ETH", "3500"):
        ioc = {"limit": {"tif": "Ioc"}}
        gtc = {"limit": {"tif": "Gtc"}}
        assert statuses(exchange.order("ETH", True, 0.001, 3600, ioc)) == [
            {"error": "Order must have minimum value of $10."}
        ]
        assert statuses(exchange.order("ETH", True, 0.01, 3400, ioc)) == [
            {"error": "Order could not immediately match against any resting orders."}
        ]
        assert statuses(exchange.order("ETH", False, 0.01, 3400, ioc, reduce_only=True)) == [
            {"error": "Reduce only order would increase position."}
        ]
        assert statuses(exchange.order("ETH", True, 1, 3600, ioc)) == [{"error": "Insufficient margin to place order."}]
        assert statuses(exchange.order("ETH", True, 0.01, 3500.123, ioc)) == [
            {"error": "Price must be divisible by tick size."}
        ]
        alo = statuses(exchange.order("ETH", True, 0.01, 3600, {"limit": {"tif": "Alo"}}))[0]
        assert alo["error"].startswith("Post only order would have immediately matched")

        cloid = Cloid.from_int(42)
        resting = statuses(exchange.order("ETH", True, 0.01, 3000, gtc, cloid=cloid))[0]["resting"]
        assert resting["cloid"] == cloid.to_raw()
        oid = resting["oid"]
        plain = info.open_orders(master.address)
        assert plain == [
            {"coin": "ETH", "limitPx": "3000.0", "oid": oid, "side": "B", "sz": "0.01",
             "timestamp": plain[0]["timestamp"], "cloid": cloid.to_raw()}
        ]  # fmt: skip
        status = info.query_order_by_oid(master.address, oid)
        assert status["status"] == "order" and status["order"]["status"] == "open"
        assert info.query_order_by_cloid(master.address, cloid)["order"]["order"]["oid"] == oid
        assert statuses(exchange.cancel("ETH", oid)) == ["success"]
        assert statuses(exchange.cancel("ETH", oid)) == [
            {"error": "Order was never placed, already canceled, or filled."}
        ]
        assert info.query_order_by_oid(master.address, oid)["order"]["status"] == "canceled"

        second = statuses(exchange.order("ETH", True, 0.01, 3000, gtc, cloid=Cloid.from_int(43)))[0]["resting"]["oid"]
        assert statuses(exchange.cancel_by_cloid("ETH", Cloid.from_int(43))) == ["success"]
        assert info.query_order_by_oid(master.address, second)["order"]["status"] == "canceled"

        # a resting limit fills when the mid reaches it
        third = statuses(exchange.order("ETH", True, 0.01, 3400, gtc))[0]["resting"]["oid"]
        pin(http, "ETH", "3390")
        assert info.query_order_by_oid(master.address, third)["order"]["status"] == "filled"
        maker = info.user_fills(master.address)[0]
        assert maker["px"] == "3400.0" and maker["crossed"] is False and maker["dir"] == "Open Long"

        assert exchange.update_leverage(5, "ETH") == {"status": "ok", "response": {"type": "default"}}
        position = info.user_state(master.address)["assetPositions"][0]["position"]
        assert position["leverage"] == {"type": "cross", "value": 5}
        assert exchange.update_leverage(51, "ETH")["status"] == "err"
        # The dead man's switch is refused below the exchange's traded-volume minimum, then taken.
        in_a_minute = int(time.time() * 1000) + 60_000
        refused = exchange.schedule_cancel(in_a_minute)
        assert refused["status"] == "err"
        assert refused["response"].startswith("Cannot set scheduled cancel time until enough volume traded. "
                                              "Required: $1000000. Traded: $")
        http.post("/_sandbox/accounts", json={"address": master.address, "cum_vlm": "1000000"}).raise_for_status()
        assert exchange.schedule_cancel(in_a_minute) == {"status": "ok", "response": {"type": "default"}}
        assert exchange.schedule_cancel(None)["status"] == "ok"


def test_stop_loss_trigger_fires_when_mid_crosses(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    info = Info(hl.url, skip_ws=True, timeout=10)
    with pinned(http, "ETH", "3500"):
        statuses(exchange.market_open("ETH", True, 0.1))
        stop = {"trigger": {"triggerPx": 3400, "isMarket": True, "tpsl": "sl"}}
        oid = statuses(exchange.order("ETH", False, 0.1, 3230, stop, reduce_only=True))[0]["resting"]["oid"]
        take = {"trigger": {"triggerPx": 3700, "isMarket": True, "tpsl": "tp"}}
        statuses(exchange.order("ETH", False, 0.1, 3500, take, reduce_only=True))
        orders = {o["oid"]: o for o in info.frontend_open_orders(master.address)}
        sl = orders[oid]
        assert sl == {
            "children": [], "coin": "ETH", "isPositionTpsl": False, "isTrigger": True, "limitPx": "3230.0",
            "oid": oid, "orderType": "Stop Market", "origSz": "0.1", "reduceOnly": True, "side": "A",
            "sz": "0.1", "tif": None, "timestamp": sl["timestamp"],
            "triggerCondition": "Price below 3400.0", "triggerPx": "3400.0",
        }  # fmt: skip
        assert {o["orderType"] for o in orders.values()} == {"Stop Market", "Take Profit Market"}
        conditions = [o["triggerCondition"] for o in orders.values() if o["orderType"] != "Stop Market"]
        assert conditions == ["Price above 3700.0"]

        pin(http, "ETH", "3450")
        assert info.user_state(master.address)["assetPositions"]  # not yet
        pin(http, "ETH", "3390")
        assert info.user_state(master.address)["assetPositions"] == []
        fill = info.user_fills(master.address)[0]
        assert (fill["dir"], fill["px"], fill["oid"], fill["closedPnl"]) == ("Close Long", "3390.0", oid, "-11.0")
        assert info.query_order_by_oid(master.address, oid)["order"]["status"] == "filled"
        # the take-profit is still there; with no position it is cancelled when it fires
        pin(http, "ETH", "3710")
        assert info.frontend_open_orders(master.address) == []


def test_partial_fill_cap(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    info = Info(hl.url, skip_ws=True, timeout=10)
    with pinned(http, "ETH", "3500"):
        statuses(exchange.market_open("ETH", True, 0.03))
        assert http.post("/_sandbox/fill_limit", json={"coin": "ETH", "max_sz": "0.01"}).status_code == 200
        try:
            first = statuses(exchange.market_close("ETH"))[0]["filled"]
            assert first["totalSz"] == "0.01"
            assert info.user_state(master.address)["assetPositions"][0]["position"]["szi"] == "0.02"
            attempts = 1
            while info.user_state(master.address)["assetPositions"]:
                statuses(exchange.market_close("ETH"))
                attempts += 1
            assert attempts == 3
        finally:
            http.post("/_sandbox/fill_limit", json={"coin": "ETH", "max_sz": None})
    assert [f["dir"] for f in info.user_fills(master.address)] == ["Close Long"] * 3 + ["Open Long"]


def test_fills_by_time_is_inclusive_and_oldest_first(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    info = Info(hl.url, skip_ws=True, timeout=10)
    with pinned(http, "BTC", "95000"):
        for _ in range(3):
            statuses(exchange.market_open("BTC", True, 0.001))
            time.sleep(0.005)
    fills = info.user_fills_by_time(master.address, 0)
    times = [f["time"] for f in fills]
    assert len(fills) == 3 and times == sorted(times)
    assert info.user_fills_by_time(master.address, times[1], times[2]) == fills[1:]
    assert info.user_fills_by_time(master.address, times[2] + 1) == []


def test_reset_keeps_accounts(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    with pinned(http, "SOL", "180"):
        statuses(exchange.market_open("SOL", True, 1))
    state = http.get("/_sandbox/state").json()
    assert state["positions"][master.address.lower()]["SOL"]["szi"] == "1.0"
    assert http.post("/_sandbox/reset").json()["ok"] is True
    state = http.get("/_sandbox/state").json()
    assert state["positions"] == {} and state["fills"] == {}
    assert master.address.lower() in state["accounts"]
    assert info_post(http, {"type": "userRole", "user": agent.address})["role"] == "agent"


# --------------------------------------------------------------------------------------------
# faults


def test_latency_fault_slows_api_but_not_control(hl: Server, http: httpx.Client) -> None:
    with fault(hl, "latency", seconds=0.4):
        started = time.monotonic()
        info_post(http, {"type": "allMids"})
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        http.get("/_sandbox/state").raise_for_status()
        assert time.monotonic() - started < 0.3


def test_ratelimit_fault_is_429_null(hl: Server, http: httpx.Client) -> None:
    info = Info(hl.url, skip_ws=True, timeout=10)
    with fault(hl, "exchange-ratelimit"):
        response = http.post("/info", json={"type": "allMids"})
        assert response.status_code == 429 and response.text == "null"
        assert response.headers["content-type"].startswith("application/json")
        with pytest.raises(ClientError) as caught:
            info.all_mids()
        assert caught.value.status_code == 429 and caught.value.error_message == "null"


def test_exchange_down_fault_is_503(hl: Server, http: httpx.Client) -> None:
    info = Info(hl.url, skip_ws=True, timeout=10)
    with fault(hl, "exchange-down"):
        assert http.post("/exchange", json={}).status_code == 503
        with pytest.raises(ServerError) as caught:
            info.all_mids()
        assert caught.value.status_code == 503
    assert info.all_mids()


def test_auth_fault_rejects_agent(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    with fault(hl, "auth"):
        result = exchange.noop(int(time.time() * 1000))
        assert result == {
            "status": "err",
            "response": f"L1 error: User or API Wallet {agent.address.lower()} does not exist.",
        }
        assert info_post(http, {"type": "userRole", "user": agent.address}) == {"role": "missing"}
    assert exchange.noop(int(time.time() * 1000))["status"] == "ok"


def test_low_balance_fault(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    with fault(hl, "low-balance", balance=3):
        state = info_post(http, {"type": "clearinghouseState", "user": master.address})
        assert Decimal(state["marginSummary"]["accountValue"]) <= 3 and Decimal(state["withdrawable"]) <= 3
        assert statuses(exchange.market_open("ETH", True, 0.01)) == [{"error": "Insufficient margin to place order."}]
    assert "filled" in statuses(exchange.market_open("ETH", True, 0.01))[0]


# --------------------------------------------------------------------------------------------
# recorded mode and restarts (their own server processes)


def test_recorded_mode_replays_real_responses(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--recorded", str(RECORDED_DIR))
    try:
        recorded = json.loads((RECORDED_DIR / "clearinghouseState.json").read_text())["response"]
        info = Info(server.url, skip_ws=True, timeout=10)
        assert info.user_state("0x5e9ee1089755c3435139848e47e6635505d5a13a") == recorded
        assert info.all_mids()["kPEPE"] == "0.001565"
        assert info.user_role("0x31ca8395cf837de08b24da3f660e77761dfb974b") == {"role": "vault"}
        assert info.frontend_open_orders("0x" + "1" * 40)[0]["orderType"] == "Take Profit Market"
        # those two cassettes hold a `meta` reply, so candles and books stay simulated
        now = int(time.time() * 1000)
        assert isinstance(info.candles_snapshot("BTC", "1h", now - 3_600_000, now), list)
    finally:
        stop_server(server)


def test_state_survives_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            master, agent = new_account(http)
            exchange = Exchange(agent, server.url, account_address=master.address, timeout=10)
            statuses(exchange.market_open("BTC", True, 0.001))
    finally:
        stop_server(server)
    assert (tmp_path / "state" / "state.json").exists()
    server = start_server(tmp_path)
    try:
        info = Info(server.url, skip_ws=True, timeout=10)
        assert info.user_state(master.address)["assetPositions"][0]["position"]["szi"] == "0.001"
        assert len(info.user_fills(master.address)) == 1
        assert info.user_role(agent.address)["role"] == "agent"
    finally:
        stop_server(server)


def test_background_sweeper_fires_an_already_crossed_trigger(hl: Server, http: httpx.Client) -> None:
    master, agent = new_account(http)
    exchange = Exchange(agent, hl.url, account_address=master.address, timeout=10)
    with pinned(http, "BTC", "95000"):
        statuses(exchange.market_open("BTC", True, 0.001))
        stop = {"trigger": {"triggerPx": 96000, "isMarket": True, "tpsl": "sl"}}  # already below trigger
        oid = statuses(exchange.order("BTC", False, 0.001, 90000, stop, reduce_only=True))[0]["resting"]["oid"]
        deadline = time.monotonic() + 3
        order: dict[str, Any] = {}
        while time.monotonic() < deadline:  # /_sandbox/state does not sweep; only the thread can fire it
            order = http.get("/_sandbox/state").json()["orders"][master.address.lower()][str(oid)]
            if order["status"] != "open":
                break
            time.sleep(0.1)
        assert order["status"] == "filled"


def test_approve_agent_replaces_the_agent_of_the_same_name(hl: Server, http: httpx.Client) -> None:
    """approveAgent is signed by the master key; a new agent under a taken name drops the old one, which the
    exchange then no longer knows (userRole "missing", its orders refused). An agent cannot approve agents."""
    master, old = eth_account.Account.create(), eth_account.Account.create()
    http.post("/_sandbox/accounts", json={"address": master.address, "balance": "1000",
                                          "agents": [{"address": old.address, "name": "bot"}]}).raise_for_status()
    info = Info(hl.url, skip_ws=True)
    assert info.user_role(old.address) == {"role": "agent", "data": {"user": master.address.lower()}}
    as_agent = Exchange(old, hl.url, account_address=master.address)
    assert as_agent.approve_agent("bot")[0]["status"] == "err"  # an agent cannot approve agents
    answer, new_key = Exchange(master, hl.url).approve_agent("bot")
    assert answer == {"status": "ok", "response": {"type": "default"}}
    new = eth_account.Account.from_key(new_key)
    assert info.user_role(old.address) == {"role": "missing"}
    assert [(a["name"], a["address"]) for a in info.extra_agents(master.address)] == [("bot", new.address.lower())]
    refused = as_agent.schedule_cancel(None)
    assert refused["status"] == "err" and "does not exist" in refused["response"]
    assert Exchange(new, hl.url, account_address=master.address).schedule_cancel(None)["status"] == "ok"
