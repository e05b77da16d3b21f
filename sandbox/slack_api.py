"""A local Slack Web API for the sandbox that records everything the runbook sends.

`slack_sdk.WebClient(token=T, base_url="http://127.0.0.1:P/api/")` works against it unchanged,
including `files_upload_v2` (the upload URL it hands out points back at this server). Every call,
failed ones included, is appended to `STATE_DIR/messages.jsonl`, and uploaded files are kept under
`STATE_DIR/files/`, so tests and drills can assert on exactly what on-call would have seen.

Like a real Slack app with interactivity turned on, it can deliver a person's click on a message's
button to the configured Request URL, signed with the app's signing secret (`POST /_sandbox/click`):
tests press Acknowledge / Approve / Reject through the same signed path Slack uses.

Run: `python -m sandbox.slack_api --port P --state-dir D --faults F --token T --channel NAME ...
[--signing-secret S --interactivity-url URL]`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from sandbox.faults import FaultBoard
from sandbox.servers import common_arguments, serve

JsonDict = dict[str, Any]

TEAM_ID = "T0SANDBOX"
USER_ID = "U0SANDBOX"
BOT_ID = "B0SANDBOX"
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class SlackError(Exception):
    """An API-level failure, answered HTTP 200 `{"ok": false, "error": code}` like Slack does."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def channel_id_for(name: str) -> str:
    """Stable Slack-looking id for a channel name, identical across restarts."""
    return "C" + hashlib.sha1(name.encode()).hexdigest()[:10].upper()


def parse_json_field(value: Any) -> Any:
    """Form bodies carry `blocks`/`files` as JSON strings; JSON bodies carry them as lists."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class SlackWorkspace:
    """Channels, posted messages, pending uploads and the call log of one fake workspace."""

    def __init__(self, state_dir: Path, token: str, channels: list[str]) -> None:
        self.state_dir = Path(state_dir)
        self.log_path = self.state_dir / "messages.jsonl"
        self.files_dir = self.state_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.created = int(time.time())
        self.channels: dict[str, str] = {}  # id -> name
        for raw in channels:
            name = raw.lstrip("#")
            self.channels[channel_id_for(name)] = name
        self.messages: dict[tuple[str, str], JsonDict] = {}
        self.uploads: dict[str, JsonDict] = {}
        self._last_ts_us = 0
        self._lock = threading.Lock()
        self._replay_log()

    # ---------------- persistence

    def _replay_log(self) -> None:
        """Rebuild posted messages from the log so chat.update/reactions work after a restart."""
        for record in self.read_log():
            if not record.get("ok") or record.get("method") not in ("chat.postMessage", "chat.update"):
                continue
            key = (record.get("channel"), record.get("ts"))
            self.messages[key] = {  # type: ignore[index]
                "type": "message",
                "text": record.get("text") or "",
                "ts": record.get("ts"),
                "thread_ts": record.get("thread_ts"),
                "blocks": record.get("blocks"),
                "reactions": [],
            }

    def read_log(self, method: str | None = None) -> list[JsonDict]:
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if method is None or record.get("method") == method:
                records.append(record)
        return records

    def record(self, entry: JsonDict) -> None:
        with self._lock:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as handle:
                handle.write(json.dumps(entry, default=str) + "\n")

    def reset(self) -> None:
        with self._lock:
            self.log_path.unlink(missing_ok=True)
            shutil.rmtree(self.files_dir, ignore_errors=True)
            self.files_dir.mkdir(parents=True, exist_ok=True)
            self.messages.clear()
            self.uploads.clear()

    # ---------------- helpers

    def next_ts(self) -> str:
        """Unique, strictly increasing message timestamp in Slack's `seconds.micro` format."""
        with self._lock:
            now_us = int(time.time() * 1_000_000)
            self._last_ts_us = max(self._last_ts_us + 1, now_us)
            return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def resolve_channel(self, value: Any) -> str:
        """Channel id from '#name', 'name' or an id; channel_not_found otherwise."""
        if not isinstance(value, str) or not value:
            raise SlackError("channel_not_found")
        if value in self.channels:
            return value
        name = value.lstrip("#")
        for channel_id, channel_name in self.channels.items():
            if channel_name == name:
                return channel_id
        raise SlackError("channel_not_found")

    def channel_object(self, channel_id: str) -> JsonDict:
        return {
            "id": channel_id,
            "name": self.channels[channel_id],
            "is_channel": True,
            "is_group": False,
            "is_im": False,
            "is_private": False,
            "is_archived": False,
            "is_general": False,
            "is_member": True,
            "created": self.created,
            "creator": USER_ID,
            "name_normalized": self.channels[channel_id],
            "num_members": 3,
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "sandbox channel", "creator": "", "last_set": 0},
        }

    def _message(self, args: JsonDict, ts: str) -> JsonDict:
        message: JsonDict = {
            "type": "message",
            "user": USER_ID,
            "bot_id": BOT_ID,
            "app_id": "A0SANDBOX",
            "text": args.get("text") or "",
            "ts": ts,
            "team": TEAM_ID,
        }
        blocks = parse_json_field(args.get("blocks"))
        if blocks:
            message["blocks"] = blocks
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        return message

    # ---------------- methods

    def auth_test(self, _args: JsonDict, _base: str) -> JsonDict:
        return {
            "url": "https://sandbox.slack.com/",
            "team": "Sandbox",
            "user": "runbook-bot",
            "team_id": TEAM_ID,
            "user_id": USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def post_message(self, args: JsonDict, _base: str) -> JsonDict:
        channel = self.resolve_channel(args.get("channel"))
        if not args.get("text") and not args.get("blocks") and not args.get("attachments"):
            raise SlackError("no_text")
        ts = self.next_ts()
        message = self._message(args, ts)
        with self._lock:
            self.messages[(channel, ts)] = {**message, "reactions": []}
        return {"channel": channel, "ts": ts, "message": message}

    def update_message(self, args: JsonDict, _base: str) -> JsonDict:
        channel = self.resolve_channel(args.get("channel"))
        ts = str(args.get("ts") or "")
        with self._lock:
            existing = self.messages.get((channel, ts))
            if existing is None:
                raise SlackError("message_not_found")
            if "text" in args:
                existing["text"] = args.get("text") or ""
            if "blocks" in args:
                existing["blocks"] = parse_json_field(args.get("blocks"))
        message = {k: v for k, v in existing.items() if k != "reactions" and v is not None}
        return {"channel": channel, "ts": ts, "text": existing["text"], "message": message}

    def conversations_list(self, _args: JsonDict, _base: str) -> JsonDict:
        return {
            "channels": [self.channel_object(cid) for cid in self.channels],
            "response_metadata": {"next_cursor": ""},
        }

    def conversations_info(self, args: JsonDict, _base: str) -> JsonDict:
        return {"channel": self.channel_object(self.resolve_channel(args.get("channel")))}

    def get_upload_url(self, args: JsonDict, base: str) -> JsonDict:
        filename = args.get("filename")
        length = args.get("length")
        if not filename:
            raise SlackError("invalid_arguments")
        try:
            size = int(length)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise SlackError("invalid_arguments") from exc
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        with self._lock:
            self.uploads[file_id] = {"filename": str(filename), "length": size, "alt_txt": args.get("alt_txt")}
        return {"upload_url": f"{base}/_upload/{file_id}", "file_id": file_id}

    def store_upload(self, file_id: str, data: bytes) -> JsonDict:
        with self._lock:
            pending = self.uploads.get(file_id)
            if pending is None:
                raise SlackError("file_not_found")
            path = self.files_dir / f"{file_id}-{SAFE_NAME_RE.sub('_', pending['filename'])}"
            path.write_bytes(data)
            pending.update({"path": str(path), "size": len(data)})
            return dict(pending)

    def complete_upload(self, args: JsonDict, _base: str) -> JsonDict:
        requested = parse_json_field(args.get("files"))
        if not isinstance(requested, list) or not requested:
            raise SlackError("invalid_arguments")
        targets: list[str] = []
        if args.get("channel_id"):
            targets.append(self.resolve_channel(args["channel_id"]))
        for name in str(args.get("channels") or "").split(","):
            if name.strip():
                targets.append(self.resolve_channel(name.strip()))
        files = []
        for item in requested:
            file_id = item.get("id") if isinstance(item, dict) else None
            with self._lock:
                upload = self.uploads.get(file_id or "")
            if upload is None or "path" not in upload:
                raise SlackError("file_not_found")
            name = upload["filename"]
            files.append(
                {
                    "id": file_id,
                    "created": int(time.time()),
                    "timestamp": int(time.time()),
                    "name": name,
                    "title": item.get("title") or name,
                    "mimetype": "application/octet-stream",
                    "filetype": name.rsplit(".", 1)[-1] if "." in name else "binary",
                    "user": USER_ID,
                    "size": upload["size"],
                    "url_private": f"https://files.sandbox.slack.com/files-pri/{TEAM_ID}-{file_id}/{name}",
                    "permalink": f"https://sandbox.slack.com/files/{USER_ID}/{file_id}/{name}",
                    "channels": targets,
                    "shares": {},
                    "path": upload["path"],
                }
            )
        return {"files": files}

    def add_reaction(self, args: JsonDict, _base: str) -> JsonDict:
        channel = self.resolve_channel(args.get("channel"))
        name = str(args.get("name") or "").strip(":")
        if not name:
            raise SlackError("invalid_name")
        with self._lock:
            message = self.messages.get((channel, str(args.get("timestamp") or "")))
            if message is None:
                raise SlackError("message_not_found")
            if name in message["reactions"]:
                raise SlackError("already_reacted")
            message["reactions"].append(name)
        return {}


def sign(secret: str, timestamp: int, body: str) -> str:
    """Slack's request signature: v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""
    return "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()


def find_button(message: JsonDict, action_id: str) -> tuple[str | None, JsonDict] | None:
    """(block_id, button) of the message's button with this action id."""
    for block in message.get("blocks") or []:
        if not isinstance(block, dict) or block.get("type") != "actions":
            continue
        for element in block.get("elements") or []:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return block.get("block_id"), element
    return None


def create_app(state_dir: Path, faults_file: Path, token: str, channels: list[str], signing_secret: str | None = None,
               interactivity_url: str | None = None) -> FastAPI:
    """Build the ASGI app serving `POST /api/<method>` plus `/_sandbox/*` inspection endpoints."""
    faults = FaultBoard(Path(faults_file))
    workspace = SlackWorkspace(Path(state_dir), token, channels)
    methods: dict[str, Callable[[JsonDict, str], JsonDict]] = {
        "auth.test": workspace.auth_test,
        "chat.postMessage": workspace.post_message,
        "chat.update": workspace.update_message,
        "conversations.list": workspace.conversations_list,
        "conversations.info": workspace.conversations_info,
        "files.getUploadURLExternal": workspace.get_upload_url,
        "files.completeUploadExternal": workspace.complete_upload,
        "reactions.add": workspace.add_reaction,
    }
    app = FastAPI(title="Sandbox Slack API", docs_url=None, redoc_url=None)
    app.state.workspace = workspace

    def fault_response() -> Response | None:
        if faults.active("slack-down"):
            return JSONResponse({"ok": False, "error": "service_unavailable"}, status_code=503)
        if faults.active("slack-ratelimit"):
            return JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429, headers={"Retry-After": "1"})
        return None

    async def read_args(request: Request) -> JsonDict:
        args: JsonDict = dict(request.query_params)
        raw = await request.body()
        content_type = request.headers.get("content-type", "")
        if raw and "json" in content_type:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SlackError("invalid_json") from exc
            if isinstance(body, dict):
                args.update(body)
        elif raw:
            args.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        return args

    def token_of(request: Request, args: JsonDict) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        value = args.get("token")
        return str(value) if value else None

    def log_entry(method: str, args: JsonDict, status: int, body: JsonDict) -> JsonDict:
        channel = body.get("channel") if isinstance(body.get("channel"), str) else None
        if channel is None:
            try:
                channel = workspace.resolve_channel(args.get("channel") or args.get("channel_id"))
            except SlackError:
                channel = args.get("channel") or args.get("channel_id")
        files = body.get("files")
        thread_ts = args.get("thread_ts")
        return {
            "method": method,
            "channel": channel,
            "channel_name": workspace.channels.get(channel or ""),
            "text": args.get("text") if method != "files.completeUploadExternal" else args.get("initial_comment"),
            "blocks": parse_json_field(args.get("blocks")),
            "thread_ts": str(thread_ts) if thread_ts else None,
            "thread_parent_found": (channel, str(thread_ts)) in workspace.messages if thread_ts else None,
            "ts": body.get("ts") or args.get("ts") or args.get("timestamp"),
            "files": [
                {k: f.get(k) for k in ("id", "name", "title", "size", "path")} for f in files
            ]
            if isinstance(files, list)
            else None,
            "args": {k: v for k, v in args.items() if k != "token"},
            "time": time.time(),
            "status": status,
            "ok": bool(body.get("ok")),
            "error": body.get("error"),
        }

    @app.api_route("/api/{method}", methods=["GET", "POST"])
    async def api(method: str, request: Request) -> Response:
        args: JsonDict = {}
        try:
            args = await read_args(request)
            faulted = fault_response()
            if faulted is not None:
                body = json.loads(faulted.body)
                workspace.record(log_entry(method, args, faulted.status_code, body))
                return faulted
            handler = methods.get(method)
            if handler is None:
                raise SlackError("unknown_method")
            if faults.active("slack-auth") or token_of(request, args) != workspace.token:
                raise SlackError("invalid_auth")
            body = {"ok": True, **handler(args, str(request.base_url).rstrip("/"))}
        except SlackError as err:
            body = {"ok": False, "error": err.code}
        workspace.record(log_entry(method, args, 200, body))
        public = {k: v for k, v in body.items() if k != "files"}
        if isinstance(body.get("files"), list):
            public["files"] = [{k: v for k, v in f.items() if k != "path"} for f in body["files"]]
        return JSONResponse(public)

    @app.post("/_upload/{file_id}")
    async def upload(file_id: str, request: Request) -> Response:
        """Stands in for files.slack.com: the raw POST body is the file."""
        if faults.active("slack-down"):
            return PlainTextResponse("service unavailable", status_code=503)
        data = await request.body()
        try:
            stored = workspace.store_upload(file_id, data)
        except SlackError:
            workspace.record(log_entry("files.upload", {"file_id": file_id}, 404, {"ok": False}))
            return PlainTextResponse("not found", status_code=404)
        entry = log_entry("files.upload", {"file_id": file_id}, 200, {"ok": True})
        entry["files"] = [{"id": file_id, "name": stored["filename"], "size": len(data), "path": stored["path"]}]
        workspace.record(entry)
        return PlainTextResponse(f"OK - {len(data)}")

    interactivity = {"url": interactivity_url, "secret": signing_secret}

    @app.post("/_sandbox/interactivity")
    async def configure_interactivity(request: Request) -> Response:
        """Set the Request URL (and signing secret) clicks go to, as on the app's Interactivity page."""
        body = await request.json()
        for key in ("url", "secret"):
            if body.get(key):
                interactivity[key] = str(body[key])
        return JSONResponse({"ok": True, "url": interactivity["url"]})

    @app.post("/_sandbox/click")
    async def click(request: Request) -> Response:
        """A person clicks a button: `{"action_id", "ts"?, "channel"?, "user_id"?, "user_name"?}`. The newest
        message carrying that button is clicked unless `ts` names one. The signed request goes to the
        Request URL; the answer, and the request as sent (to replay or tamper with in tests), come back."""
        body = await request.json()
        action_id = str(body.get("action_id") or "")
        if not interactivity["url"] or not interactivity["secret"]:
            return JSONResponse({"ok": False, "error": "interactivity_not_configured"}, status_code=409)
        with workspace._lock:
            candidates = sorted(workspace.messages.items(), key=lambda item: item[0][1], reverse=True)
        found = None
        for (channel, ts), message in candidates:
            if body.get("ts") and ts != str(body["ts"]):
                continue
            button = find_button(message, action_id)
            if button is not None:
                found = channel, ts, message, button
                break
        if found is None:
            return JSONResponse({"ok": False, "error": "button_not_found"}, status_code=404)
        channel, ts, message, (block_id, button) = found
        user = {"id": str(body.get("user_id") or "U0ONCALL1"), "username": str(body.get("user_name") or "oncall"),
                "name": str(body.get("user_name") or "oncall"), "team_id": TEAM_ID}
        payload = {
            "type": "block_actions", "user": user, "api_app_id": "A0SANDBOX", "team": {"id": TEAM_ID, "domain": "sandbox"},
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": uuid.uuid4().hex, "channel": {"id": channel, "name": workspace.channels.get(channel)},
            "message": {k: v for k, v in message.items() if k != "reactions"},
            "response_url": f"{str(request.base_url).rstrip('/')}/_sandbox/respond/{uuid.uuid4().hex}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": block_id, "text": button.get("text"),
                         "value": button.get("value"), "style": button.get("style"), "action_ts": f"{time.time():.6f}"}],
        }
        form = urlencode({"payload": json.dumps(payload)})
        stamp = int(time.time())
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(stamp),
                   "X-Slack-Signature": sign(interactivity["secret"], stamp, form)}  # type: ignore[arg-type]
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.post(interactivity["url"], content=form, headers=headers)  # type: ignore[arg-type]
            status, text = answer.status_code, answer.text
        except httpx.HTTPError as error:
            status, text = 0, f"{type(error).__name__}: {error}"
        workspace.record({"method": "interaction", "channel": channel, "ts": ts, "text": None, "blocks": None,
                          "thread_ts": message.get("thread_ts"), "args": {"action_id": action_id, "user": user["id"]},
                          "time": time.time(), "status": status, "ok": 200 <= status < 300, "error": None})
        return JSONResponse({"ok": 200 <= status < 300, "status": status, "response": text,
                             "request": {"url": interactivity["url"], "body": form, "headers": headers}})

    @app.get("/_sandbox/messages")
    async def messages(method: str | None = None) -> Response:
        return JSONResponse(workspace.read_log(method))

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        workspace.reset()
        return JSONResponse({"ok": True})

    @app.get("/_sandbox/health")
    async def health() -> Response:
        return JSONResponse({"ok": True, "channels": {cid: name for cid, name in workspace.channels.items()}})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = common_arguments("Local Slack Web API (sandbox)")
    parser.add_argument("--token", required=True, help="the only bot token accepted")
    parser.add_argument("--channel", action="append", default=[], help="channel name (repeatable)")
    parser.add_argument("--signing-secret", default=None, help="the app's signing secret (signs clicks)")
    parser.add_argument("--interactivity-url", default=None, help="where clicks are delivered (the Request URL)")
    args = parser.parse_args(argv)
    app = create_app(args.state_dir, args.faults, token=args.token, channels=args.channel,
                     signing_secret=args.signing_secret, interactivity_url=args.interactivity_url)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
