"""The Hyperliquid info client over real HTTP: the sandbox API (recorded and live), its faults, and a
loopback server that answers badly on purpose (HTML, null, wrong shapes, 429/500 sequences) or sits in
front of the sandbox handing out short pages of fills."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import eth_account
import httpx
import pytest
from eth_account.signers.local import LocalAccount
from hyperliquid.exchange import Exchange
from prefect import flow
from prefect.logging.handlers import APILogHandler
from prefect.states import Failed

from runbook.settings import HyperliquidAccount
from sandbox.faults import write_faults
from sandbox.servers import spawn
from tasks.hyperliquid import (
    HyperliquidError,
    HyperliquidInfo,
    _worth_retrying,
    from_ms,
    get_account_state,
    get_candles,
    get_fills,
    get_mids,
    get_open_orders,
    get_rate_limit,
)

# copied from the shared reference into the repository, sources named in its README.md
RECORDED_DIR = Path(__file__).parent / "fixtures" / "hyperliquid-recorded"
RECORDED_USER = "0x5e9ee1089755c3435139848e47e6635505d5a13a"
VAULT = "0x31ca8395cf837de08b24da3f660e77761dfb974b"
FAST = {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05}


# --------------------------------------------------------------------------------------------
# servers


@dataclass
class Sandbox:
    url: str
    faults: Path
    proc: subprocess.Popen[bytes]


def start_sandbox(tmp: Path, *extra: str) -> Iterator[Sandbox]:
    faults = tmp / "faults.json"
    proc, url = spawn(
        "sandbox.hyperliquid_api",
        ["--port", "0", "--state-dir", str(tmp / "state"), "--faults", str(faults), *extra],
        log_path=tmp / "server.log",
    )
    try:
        yield Sandbox(url, faults, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from start_sandbox(tmp_path_factory.mktemp("hl-recorded"), "--recorded", str(RECORDED_DIR))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from start_sandbox(tmp_path_factory.mktemp("hl-live"))


@pytest.fixture
def control(live: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=10) as client:
        yield client


@contextlib.contextmanager
def fault(server: Sandbox, kind: str, **params: Any) -> Iterator[None]:
    time.sleep(0.03)  # the fault board re-reads on a changed stat; never write twice within one tick
    write_faults(server.faults, {kind: params})
    try:
        yield
    finally:
        time.sleep(0.03)
        write_faults(server.faults, {})


GOOD_MIDS = json.dumps({"BTC": "95000.5", "ETH": "3500.0"}).encode()
STUCK_FILLS = json.dumps([
    {"coin": "ETH", "px": "3500.0", "sz": "0.01", "side": "B", "time": 1_732_500_000_000, "oid": 7, "tid": n,
     "hash": "0x" + "0" * 64} for n in range(3)
]).encode()  # fmt: skip

# path -> list of (status, content type, body, extra headers); the last entry repeats forever
SCRIPTS: dict[str, list[tuple[int, str, bytes, dict[str, str]]]] = {
    "/html": [(200, "text/html", b"<html><body>502 Bad Gateway</body></html>", {})],
    "/null": [(200, "application/json", b"null", {})],
    "/list": [(200, "application/json", b"[]", {})],
    "/invalid": [(200, "application/json", b'{"marginSummary": ', {})],
    "/missing": [(200, "application/json", json.dumps({"marginSummary": {"accountValue": "1.0"},
                                                       "assetPositions": []}).encode(), {})],
    "/badposition": [(200, "application/json", json.dumps({
        "marginSummary": {"accountValue": "1.0", "totalMarginUsed": "0.0", "totalNtlPos": "0.0"},
        "withdrawable": "1.0",
        "assetPositions": [{"position": {"coin": "BTC", "szi": None, "leverage": {"type": "cross", "value": 20}}}],
    }).encode(), {})],
    "/wrongmids": [(200, "application/json", json.dumps({"BTC": {"px": 1}}).encode(), {})],
    "/notnumber": [(200, "application/json", json.dumps({"BTC": "about 95k"}).encode(), {})],
    "/rejected": [(422, "text/plain", b"Failed to deserialize the JSON body into the target type", {})],
    "/retry-after": [(429, "application/json", b"null", {"Retry-After": "1"}),
                     (200, "application/json", GOOD_MIDS, {})],
    "/always-429": [(429, "application/json", b"null", {"Retry-After": "0"})],
    "/flaky-500": [(500, "text/plain", b"Internal Server Error", {}), (200, "application/json", GOOD_MIDS, {})],
    "/always-500": [(500, "text/html", b"<html>Internal Server Error</html>", {})],
    "/stuck-fills": [(200, "application/json", STUCK_FILLS, {})],
}  # fmt: skip


@dataclass
class Junk:
    url: str
    upstream: str = ""
    hits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    served: dict[str, list[int]] = field(default_factory=dict)  # /proxy/N: fills handed out per page

    def requests(self, route: str) -> list[dict[str, Any]]:
        return self.hits.get(route, [])


@pytest.fixture(scope="module")
def junk(live: Sandbox) -> Iterator[Junk]:
    state = Junk(url="", upstream=live.url)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            route, _, rest = self.path.rpartition("/")
            assert rest == "info", self.path
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
            with lock:
                seen = state.hits.setdefault(route, [])
                seen.append(body)
                count = len(seen)
            if route.startswith("/proxy/"):
                return self.proxy(int(route.rsplit("/", 1)[1]), body)
            script = SCRIPTS[route]
            status, kind, payload, headers = script[min(count, len(script)) - 1]
            self.answer(status, kind, payload, headers)

        def proxy(self, page: int, body: dict[str, Any]) -> None:
            """Forward to the sandbox; answer userFillsByTime with at most `page` fills, like the real cap."""
            upstream = httpx.post(state.upstream + "/info", json=body, timeout=10)
            payload = upstream.content
            if body.get("type") == "userFillsByTime" and upstream.status_code == 200:
                fills = upstream.json()[:page]
                state.served.setdefault(f"/proxy/{page}", []).append(len(fills))
                payload = json.dumps(fills).encode()
            self.answer(upstream.status_code, upstream.headers["content-type"], payload, {})

        def answer(self, status: int, kind: str, payload: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def client_for(base: str, route: str = "", **options: Any) -> HyperliquidInfo:
    return HyperliquidInfo(base + route, **{"timeout": 5.0, **FAST, **options})


def new_account(http: httpx.Client, balance: str = "10000") -> tuple[LocalAccount, LocalAccount]:
    master, agent = eth_account.Account.create(), eth_account.Account.create()
    response = http.post("/_sandbox/accounts", json={"address": master.address, "balance": balance,
                                                     "agents": [agent.address]})
    response.raise_for_status()
    return master, agent


def pin(http: httpx.Client, coin: str, px: str | None) -> None:
    http.post("/_sandbox/set_mid", json={"coin": coin, "px": px}).raise_for_status()


def ok_statuses(result: dict[str, Any]) -> list[Any]:
    assert result["status"] == "ok", result
    statuses = result["response"]["data"]["statuses"]
    assert all("error" not in s for s in statuses), statuses
    return statuses


# --------------------------------------------------------------------------------------------
# recorded responses (real mainnet answers replayed by the sandbox)


def test_account_state_parses_recorded_clearinghouse_state(recorded: Sandbox) -> None:
    with client_for(recorded.url) as client:
        state = client.account_state(RECORDED_USER)
    assert state.account_value == Decimal("1182.312496")
    assert state.withdrawable == Decimal("1010.57173")
    assert state.total_margin_used == Decimal("171.740766")
    assert state.total_ntl_pos == Decimal("3434.815334")
    assert state.cross_maintenance_margin_used is None and state.maintenance_ratio is None  # not in 2023 answers
    assert state.margin_usage == Decimal("171.740766") / Decimal("1182.312496")
    assert state.time.tzinfo is not None and abs(datetime.now(UTC) - state.time) < timedelta(minutes=1)
    assert len(state.positions) == 12
    btc = state.position("BTC")
    assert btc is not None
    assert (btc.size, btc.side, btc.entry_px, btc.liquidation_px) == (
        Decimal("-0.00785"), "short", Decimal("26951.0"), Decimal("173198.69592357"))
    assert (btc.position_value, btc.unrealized_pnl, btc.margin_used) == (
        Decimal("211.64542"), Decimal("-0.08007"), Decimal("10.582271"))
    assert (btc.leverage, btc.leverage_type, btc.return_on_equity) == (20, "cross", Decimal("-0.00756643"))
    eth = state.position("ETH")
    assert eth is not None and eth.liquidation_px is None and eth.size == Decimal("0.1334") and eth.side == "long"
    assert all(isinstance(p.size, Decimal) for p in state.positions)


def test_recorded_mids_orders_rate_limit_and_role(recorded: Sandbox) -> None:
    with client_for(recorded.url) as client:
        mids = client.mids()
        orders = client.open_orders("0x" + "1" * 40)
        limits = client.rate_limit(VAULT)
        role = client.user_role(VAULT)
    assert mids["kPEPE"] == Decimal("0.001565") and mids["BTC"] == Decimal("30135.0") and len(mids) == 28

    assert [o.order_type for o in orders] == ["Take Profit Market", "Stop Market", "Limit"]
    take, stop, limit = orders
    assert (take.coin, take.oid, take.side, take.is_buy) == ("INJ", 3184595907, "A", False)
    assert (take.size, take.orig_size, take.limit_px) == (Decimal("12.5"), Decimal("12.5"), Decimal("9.2037"))
    assert (take.is_trigger, take.trigger_px, take.trigger_condition) == (True, Decimal("10.004"), "Price above 10.004")
    assert take.reduce_only and not take.is_position_tpsl and take.tif is None
    assert take.timestamp == datetime(2023, 11, 16, 9, 13, 42, 555000, tzinfo=UTC)
    assert stop.trigger_px == Decimal("9.995") and stop.trigger_condition == "Price below 9.995"
    assert not limit.is_trigger and limit.trigger_px is None and limit.trigger_condition == "N/A"
    assert limit.tif == "Gtc" and limit.is_buy and not limit.reduce_only
    assert [c.oid for c in limit.children] == [3184595906, 3184595907]

    # the 2025 recording has no nRequestsSurplus
    assert (limits.used, limits.cap, limits.surplus) == (36589831368, 170043731737, 0)
    assert limits.cum_volume == Decimal("170043721737.450012207")
    assert limits.headroom == 170043731737 - 36589831368 and 0.2 < limits.usage < 0.22
    assert role == ("vault", None)


# --------------------------------------------------------------------------------------------
# live sandbox: an account that trades


def test_live_account_orders_role_and_rate_limit(live: Sandbox, control: httpx.Client) -> None:
    master, agent = new_account(control)
    exchange = Exchange(agent, live.url, account_address=master.address, timeout=10)
    pin(control, "ETH", "3500")
    try:
        ok_statuses(exchange.market_open("ETH", True, 0.05))
        stop = {"trigger": {"triggerPx": 3400, "isMarket": True, "tpsl": "sl"}}
        ok_statuses(exchange.order("ETH", False, 0.05, 3230, stop, reduce_only=True))
        with client_for(live.url) as client:
            state = client.account_state(master.address)
            orders = client.open_orders(master.address)
            limits = client.rate_limit(master.address)
            assert client.user_role(master.address) == ("user", None)
            assert client.user_role(agent.address) == ("agent", master.address.lower())
            assert client.user_role(eth_account.Account.create().address) == ("missing", None)
    finally:
        pin(control, "ETH", None)
    (position,) = state.positions
    assert (position.coin, position.size, position.entry_px) == ("ETH", Decimal("0.05"), Decimal("3500.0"))
    assert position.position_value == Decimal("175.0")
    assert position.liquidation_px is None  # 10,000 USDC behind a 175 USDC long: unreachable
    assert state.cross_maintenance_margin_used is not None and state.maintenance_ratio is not None
    assert Decimal("9990") < state.account_value <= Decimal("10000")
    assert state.time.tzinfo is not None and abs(datetime.now(UTC) - state.time) < timedelta(seconds=30)
    (order,) = orders
    assert (order.order_type, order.is_trigger, order.trigger_px, order.reduce_only) == (
        "Stop Market", True, Decimal("3400.0"), True)
    assert order.trigger_condition == "Price below 3400.0" and order.side == "A"
    assert limits.used >= 0 and limits.cap >= 10_000 and limits.cum_volume > 0
    assert limits.headroom == limits.cap - limits.used


def test_live_mids_and_candles(live: Sandbox) -> None:
    end = datetime.now(UTC)
    with client_for(live.url) as client:
        mids = client.mids()
        candles = client.candles("BTC", "1m", end - timedelta(minutes=30), end)
        with pytest.raises(ValueError, match="interval '7m'"):
            client.candles("BTC", "7m", end - timedelta(hours=1), end)
    assert set(mids) == {"BTC", "ETH", "SOL"} and all(isinstance(v, Decimal) for v in mids.values())
    assert 30 <= len(candles) <= 32
    first = candles[0]
    assert first.coin == "BTC" and first.interval == "1m" and first.open_time.tzinfo is not None
    assert first.close_time - first.open_time == timedelta(seconds=59, milliseconds=999)
    assert all(c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high for c in candles)
    assert [c.open_time for c in candles] == sorted(c.open_time for c in candles)


def test_fills_are_paged_past_the_cap_and_deduplicated(live: Sandbox, control: httpx.Client, junk: Junk) -> None:
    master, agent = new_account(control)
    exchange = Exchange(agent, live.url, account_address=master.address, timeout=10)
    start = datetime.now(UTC) - timedelta(seconds=1)
    ioc = {"limit": {"tif": "Ioc"}}
    pin(control, "ETH", "3500")
    try:
        for batch in range(4):  # 4 requests x 3 orders: fills that share a millisecond within a batch
            orders = [{"coin": "ETH", "is_buy": (batch + n) % 2 == 0, "sz": 0.01,
                       "limit_px": 3600 if (batch + n) % 2 == 0 else 3400, "order_type": ioc,
                       "reduce_only": False} for n in range(3)]  # fmt: skip
            ok_statuses(exchange.bulk_orders(orders))
            time.sleep(0.003)
    finally:
        pin(control, "ETH", None)
    everything = control.post("/info", json={"type": "userFillsByTime", "user": master.address,
                                             "startTime": 0}).json()  # fmt: skip
    assert len(everything) == 12

    # the sandbox's own 2000 cap is never reached, so put a server in front that hands out 5 per page
    with client_for(junk.url, "/proxy/5") as client:
        fills = client.fills(master.address, start, page_cap=5)
    assert [f["tid"] for f in fills] == [f["tid"] for f in everything]
    assert fills == sorted(everything, key=lambda f: (f["time"], f["tid"]))
    pages = junk.requests("/proxy/5")
    starts = [p["startTime"] for p in pages]
    assert len(pages) >= 3 and starts == sorted(starts) and starts[0] < starts[1]
    assert sum(junk.served["/proxy/5"]) > 12  # inclusive bounds re-sent fills; they were de-duplicated
    assert all(p["endTime"] is None and p["aggregateByTime"] is False for p in pages)

    # directly: a small cap on the client only means one extra overlapping request
    with client_for(live.url) as client:
        assert client.fills(master.address, start, page_cap=5) == fills
        up_to = from_ms(everything[5]["time"])
        bounded = client.fills(master.address, start, up_to)
        assert bounded == [f for f in fills if f["time"] <= everything[5]["time"]] and len(bounded) >= 6
        assert client.fills(master.address, datetime.now(UTC) + timedelta(minutes=1)) == []


def test_fills_refuse_to_loop_on_a_full_page_of_one_millisecond(junk: Junk) -> None:
    with client_for(junk.url, "/stuck-fills") as client, pytest.raises(HyperliquidError) as caught:
        client.fills("0x" + "2" * 40, datetime(2024, 11, 25, tzinfo=UTC), page_cap=3)
    assert "userFillsByTime: unexpected response: a full page of 3 fills all at" in str(caught.value)
    assert "cannot page past them" in str(caught.value)
    assert len(junk.requests("/stuck-fills")) == 2


# --------------------------------------------------------------------------------------------
# faults: 429, 5xx, timeouts, garbage


def test_sandbox_ratelimit_fault_is_retried_then_a_clear_error(live: Sandbox) -> None:
    with fault(live, "exchange-ratelimit"), client_for(live.url) as client:
        with pytest.raises(HyperliquidError) as caught:
            client.account_state("0x" + "3" * 40)
    error = caught.value
    assert str(error) == "clearinghouseState: rate-limited by the exchange (HTTP 429) after 3 attempts"
    assert (error.status_code, error.attempts, error.retryable) == (429, 3, True)


def test_sandbox_exchange_down_is_retried_then_a_clear_error(live: Sandbox) -> None:
    with fault(live, "exchange-down"), client_for(live.url) as client:
        with pytest.raises(HyperliquidError) as caught:
            client.mids()
    assert str(caught.value) == (
        "allMids: exchange error (HTTP 503: 503 Service Temporarily Unavailable) after 3 attempts"
    )
    assert caught.value.status_code == 503 and caught.value.retryable


def test_sandbox_latency_beyond_the_timeout_is_a_timeout_error(live: Sandbox) -> None:
    with fault(live, "latency", seconds=2), client_for(live.url, timeout=0.3, max_attempts=2) as client:
        started = time.monotonic()
        with pytest.raises(HyperliquidError) as caught:
            client.rate_limit("0x" + "4" * 40)
        elapsed = time.monotonic() - started
    assert str(caught.value) == "userRateLimit: no answer within 0.3s (timeout) after 2 attempts"
    assert caught.value.status_code is None and caught.value.retryable
    assert 0.6 <= elapsed < 1.5


def test_retry_after_is_honoured_then_the_answer_is_used(junk: Junk) -> None:
    with client_for(junk.url, "/retry-after") as client:
        started = time.monotonic()
        mids = client.mids()
        elapsed = time.monotonic() - started
    assert mids == {"BTC": Decimal("95000.5"), "ETH": Decimal("3500.0")}
    assert len(junk.requests("/retry-after")) == 2 and elapsed >= 0.95  # waited Retry-After, not the 10 ms backoff
    with client_for(junk.url, "/always-429", max_attempts=2) as client, pytest.raises(HyperliquidError) as caught:
        client.mids()
    assert str(caught.value) == "allMids: rate-limited by the exchange (HTTP 429) after 2 attempts"


def test_http_500_is_retried(junk: Junk) -> None:
    with client_for(junk.url, "/flaky-500") as client:
        assert client.mids()["BTC"] == Decimal("95000.5")
    assert len(junk.requests("/flaky-500")) == 2
    with client_for(junk.url, "/always-500") as client, pytest.raises(HyperliquidError) as caught:
        client.account_state("0x" + "5" * 40)
    assert str(caught.value) == (
        "clearinghouseState: exchange error (HTTP 500: <html>Internal Server Error</html>) after 3 attempts"
    )
    assert len(junk.requests("/always-500")) == 3


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("/html", "clearinghouseState: unexpected response: the body is not JSON (text/html): "
                  "'<html><body>502 Bad Gateway</body></html>'"),
        ("/invalid", "clearinghouseState: unexpected response: the body is not JSON (application/json): "
                     "'{\"marginSummary\":'"),
        ("/null", "clearinghouseState: unexpected response: body is null, expected an object"),
        ("/list", "clearinghouseState: unexpected response: body is a list, expected an object"),
        ("/missing", "clearinghouseState: unexpected response: withdrawable is missing"),
        ("/badposition", "clearinghouseState: unexpected response: assetPositions[0].position.szi is null, "
                         "expected a number"),
        ("/rejected", "clearinghouseState: request rejected (HTTP 422): "
                      "Failed to deserialize the JSON body into the target type"),
    ],
)  # fmt: skip
def test_garbage_is_a_clear_error_and_not_retried(junk: Junk, route: str, message: str) -> None:
    before = len(junk.requests(route))
    with client_for(junk.url, route) as client, pytest.raises(HyperliquidError) as caught:
        client.account_state("0x" + "6" * 40)
    assert str(caught.value) == message
    assert not caught.value.retryable
    assert len(junk.requests(route)) == before + 1


def test_wrong_shapes_in_other_requests(junk: Junk) -> None:
    with client_for(junk.url, "/wrongmids") as client, pytest.raises(HyperliquidError) as caught:
        client.mids()
    assert str(caught.value) == "allMids: unexpected response: BTC is an object, expected a number"
    with client_for(junk.url, "/notnumber") as client, pytest.raises(HyperliquidError) as caught:
        client.mids()
    assert str(caught.value) == "allMids: unexpected response: BTC is 'about 95k', expected a number"
    for route in ("/null", "/list", "/html"):
        with client_for(junk.url, route) as client:
            for call in (client.mids, lambda: client.rate_limit("0x" + "7" * 40),
                         lambda: client.user_role("0x" + "7" * 40)):  # fmt: skip
                with pytest.raises(HyperliquidError, match="unexpected response"):
                    call()
            if route == "/list":  # an empty list is a valid (empty) answer for these
                assert client.open_orders("0x" + "7" * 40) == []
                assert client.candles("BTC", "1h", datetime(2024, 1, 1, tzinfo=UTC)) == []
            else:
                with pytest.raises(HyperliquidError, match="^frontendOpenOrders: unexpected response"):
                    client.open_orders("0x" + "7" * 40)
                with pytest.raises(HyperliquidError, match="^candleSnapshot: unexpected response"):
                    client.candles("BTC", "1h", datetime(2024, 1, 1, tzinfo=UTC))
                with pytest.raises(HyperliquidError, match="^userFillsByTime: unexpected response"):
                    client.fills("0x" + "7" * 40, datetime(2024, 1, 1, tzinfo=UTC))


def test_unreachable_exchange_and_bad_addresses() -> None:
    with HyperliquidInfo("http://127.0.0.1:9", timeout=1, max_attempts=2, base_delay=0.01) as client:
        with pytest.raises(HyperliquidError) as caught:
            client.mids()
        assert str(caught.value).startswith("allMids: cannot reach http://127.0.0.1:9 (ConnectError")
        assert str(caught.value).endswith("after 2 attempts") and caught.value.retryable
        with pytest.raises(HyperliquidError, match="^clearinghouseState: no account address configured$"):
            client.account_state("")
        with pytest.raises(HyperliquidError, match="is not a 0x-prefixed 20-byte hex address"):
            client.open_orders("0x1234")


# --------------------------------------------------------------------------------------------
# the Prefect tasks


def test_tasks_read_through_the_configured_account(recorded: Sandbox, junk: Junk) -> None:
    account = HyperliquidAccount(api_url=recorded.url, account_address=RECORDED_USER, timeout_seconds=5)
    assert get_account_state.fn(account).position("BTC").size == Decimal("-0.00785")  # type: ignore[union-attr]
    assert len(get_open_orders.fn(account)) == 3
    assert get_mids.fn(account)["ETH"] == Decimal("1903.95")
    assert get_rate_limit.fn(account).cap == 170043731737
    end = datetime.now(UTC)
    assert isinstance(get_candles.fn(account, "BTC", "1h", end - timedelta(hours=3), end), list)
    proxy = HyperliquidAccount(api_url=junk.url + "/proxy/2000", account_address="0x" + "8" * 40)
    assert get_fills.fn(proxy, end - timedelta(days=1)) == []
    for wrapper in (get_account_state, get_fills, get_open_orders, get_mids, get_candles, get_rate_limit):
        assert wrapper.retries == 2 and wrapper.retry_delay_seconds == [1, 4] and wrapper.timeout_seconds


def test_task_retry_condition_only_retries_transient_failures() -> None:
    def decide(error: BaseException) -> bool:
        return _worth_retrying(None, None, Failed(data=error))

    assert decide(HyperliquidError("x", request_type="allMids", status_code=429, retryable=True))
    assert not decide(HyperliquidError("x", request_type="allMids", status_code=422))
    assert not decide(HyperliquidError("x: unexpected response: null", request_type="allMids"))
    assert decide(TimeoutError("task timed out"))


def test_task_in_a_flow_is_not_retried_when_rejected(prefect_server: Any, junk: Junk) -> None:
    @flow(name="hyperliquid-task-retry-check")
    def read_mids(account: HyperliquidAccount) -> str:
        try:
            get_mids(account)
        except HyperliquidError as error:
            return str(error)
        return "no error"

    account = HyperliquidAccount(api_url=junk.url + "/rejected", account_address="0x" + "9" * 40)
    before = len(junk.requests("/rejected"))
    result = read_mids(account)
    assert result == "allMids: request rejected (HTTP 422): Failed to deserialize the JSON body into the target type"
    assert len(junk.requests("/rejected")) == before + 1  # Prefect did not retry it either
    APILogHandler().flush()  # ship the run's logs while the session's Prefect server is still up
