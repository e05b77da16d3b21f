"""The sandbox's people channels: a local SMTP server and a local webhook pager, real servers on loopback.

What a person would have received is appended as JSON lines: mail to `SANDBOX/smtp/messages.jsonl`
(one line per message: from, to, subject, body), pager and SMS pages to `SANDBOX/pager/events.jsonl`
(one line per POST: path, title, body, type). The runbook reaches them through Apprise, exactly as it
reaches a real mail relay or pager: `mailto://127.0.0.1:PORT?...` and `json://127.0.0.1:PORT/pager/...`
(SMS goes to the same endpoint under `/sms/...`).

Faults (sandbox.faults): `smtp-down` (the SMTP port refuses connections), `smtp-hang` (the server takes
the connection and never answers), `pager-down` (the pager refuses connections), `pager-hang` (a page is
accepted and never answered).

Run: `python -m sandbox.people --smtp-port P --port Q --state-dir SANDBOX/smtp --pager-dir SANDBOX/pager
--faults F`.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sandbox.faults import FaultBoard
from sandbox.servers import common_arguments, serve

HANG_SECONDS = 3600.0  # a hung server "answers" after an hour: far past any client's deadline


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class MailRecorder:
    """aiosmtpd handler: every accepted message becomes one JSON line."""

    def __init__(self, path: Path, faults: FaultBoard) -> None:
        self.path = path
        self.faults = faults

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        message = message_from_bytes(envelope.content or b"", policy=policy.default)
        body = message.get_body(preferencelist=("plain", "html"))
        _append(self.path, {
            "at": _now(), "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
            "subject": str(message.get("Subject", "")),
            "body": body.get_content() if body is not None else "",
        })
        return "250 Message accepted for delivery"


class GatedSMTP(SMTP):
    """An SMTP session that, under `smtp-hang`, takes the connection and says nothing."""

    def __init__(self, handler: MailRecorder, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.board = handler.faults

    async def _handle_client(self) -> None:
        if self.board.active("smtp-hang"):
            await asyncio.sleep(HANG_SECONDS)
            return
        await super()._handle_client()


class SmtpGate:
    """Listens on its port unless `smtp-down` is active (then the port refuses, like a relay that is down)."""

    def __init__(self, host: str, port: int, handler: MailRecorder) -> None:
        self.host, self.port, self.handler = host, port, handler
        self.server: asyncio.base_events.Server | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: GatedSMTP(self.handler, hostname="sandbox-smtp", ident="sandbox SMTP"),
            host=self.host, port=self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def watch(self) -> None:
        while True:
            down = self.handler.faults.active("smtp-down")
            if down and self.server is not None:
                self.server.close()
                await self.server.wait_closed()
                self.server = None
            elif not down and self.server is None:
                await self.open()
            await asyncio.sleep(0.1)


def create_app(smtp: SmtpGate, pager_log: Path, faults: FaultBoard) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        await smtp.open()
        print(f"smtp on {smtp.host}:{smtp.port}", flush=True)
        watcher = asyncio.create_task(smtp.watch())
        yield
        watcher.cancel()

    app = FastAPI(title="sandbox pager", lifespan=lifespan)

    @app.post("/{path:path}")
    async def page(path: str, request: Request) -> JSONResponse:
        if faults.active("pager-hang"):
            await asyncio.sleep(HANG_SECONDS)
        raw = await request.body()
        try:
            payload = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return JSONResponse({"ok": False, "error": "body is not JSON"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"ok": False, "error": "body must be a JSON object"}, status_code=400)
        _append(pager_log, {"at": _now(), "path": "/" + path, "title": payload.get("title"),
                            "body": payload.get("message", payload.get("body")), "type": payload.get("type")})
        return JSONResponse({"ok": True})

    @app.get("/_sandbox/events")
    async def events() -> JSONResponse:
        lines = pager_log.read_text().splitlines() if pager_log.exists() else []
        return JSONResponse([json.loads(line) for line in lines])

    return app


def main(argv: list[str] | None = None) -> None:
    parser = common_arguments("Local SMTP server and webhook pager for the sandbox.")
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--pager-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    faults = FaultBoard(args.faults)
    smtp = SmtpGate(args.host, args.smtp_port, MailRecorder(args.state_dir / "messages.jsonl", faults))
    app = create_app(smtp, args.pager_dir / "events.jsonl", faults)
    serve(app, host=args.host, port=args.port, log_level=args.log_level,
          refuse=lambda: faults.active("pager-down"))


if __name__ == "__main__":
    main()
