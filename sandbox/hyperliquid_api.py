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
import contextlib
import json
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from sandbox.faults import FaultBoard
from sandbox.hl_exchange import Venue
from sandbox.hl_info import answer_info, load_recorded
from sandbox.hl_market import (
    COIN_BY_NAME,
    DESERIALIZE_ERROR,
    SWEEP_INTERVAL_S,
    BadRequest,
    JsonDict,
    PriceWalk,
    candle_opens,
    now_ms,
)
from sandbox.hl_signatures import parse_exchange_body, recover_signer
from sandbox.hl_state import ExchangeError, StateStore
from sandbox.servers import common_arguments, serve

# Names callers took from this module before it was split by concern (market, state, info, signatures,
# exchange actions): the entry point keeps them.
__all__ = ["COIN_BY_NAME", "PriceWalk", "candle_opens", "create_app", "main"]


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
            signer = recover_signer(action, signature, vault, nonce, expires)
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
