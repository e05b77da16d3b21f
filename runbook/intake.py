"""The webhook intake: Prometheus Alertmanager (v4) and Grafana alert webhooks in, fired alerts out.

`POST /alerts/alertmanager` and `POST /alerts/grafana` take a bearer token (`intake.token`, else
`$RUNBOOK_INTAKE_TOKEN`; compared in constant time) and a JSON body of at most `intake.max_body_bytes`
(checked on Content-Length and again while the body streams in, before anything is parsed). Each alert is
mapped by its `alertname` label (through `intake.alert_names`, or a catalogue key as is) and its bot label
onto the catalogue; a firing alert goes through `fire_alert` (journal + Prefect event), a resolved one is
recorded on the open incident and closes nothing. Everything the intake cannot take gets a 4xx with the
reason; a journal that cannot be written gets 503 so the sender retries. Without a token the intake does
not start.

People answer here too:

`POST /incidents/{id}/ack` (same bearer token; optional JSON body `{"by": NAME, "note": TEXT}`) acknowledges
an incident, e.g. from a pager's webhook: the escalation ladder stops. `POST /slack/interactions` takes
Slack's button clicks (Acknowledge, Approve, Reject), form-encoded as Slack sends them and verified with the
app's signing secret (`slack.signing_secret`: HMAC-SHA256 over `v0:timestamp:body`, the timestamp within
5 minutes, a signature seen before refused as a replay); anything else gets 401 and changes nothing.

Responses (JSON):
  202 {"accepted": [{alertname, alert, bot, incident_id, created, status, message}], "rejected": [{alertname, reason}]}
  401 / 413 / 415 {"error": reason}
  422 {"error": reason, "fields": [{field, message}]}  (invalid JSON or payload)
  422 {"error": reason, "accepted": [], "rejected": [...]}  (no alert could be taken)
  503 {"error": reason}  (journal unavailable: retry)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from slack_sdk.signature import SignatureVerifier
from starlette.requests import ClientDisconnect

from runbook.alerts import CATALOGUE
from runbook.firing import fire_alert
from runbook.journal import Journal, JournalError
from runbook.redact import redact
from runbook.settings import Settings

log = logging.getLogger("runbook.intake")

TOKEN_ENV = "RUNBOOK_INTAKE_TOKEN"
DISABLED_MESSAGE = "intake disabled: no token configured (set intake.token or RUNBOOK_INTAKE_TOKEN)"
SOURCES = {"alertmanager": "Alertmanager", "grafana": "Grafana"}
_ECHO_LIMIT = 200  # at most this much of any sender-supplied name is echoed back or logged
_SUMMARY_LIMIT = 2000


class IntakeError(Exception):
    """The intake cannot start or stopped unexpectedly."""


class IntakeDisabled(IntakeError):
    """No token is configured, so there is no intake."""


def intake_token(settings: Settings) -> str | None:
    """The bearer token: `intake.token` (also RUNBOOK_INTAKE__TOKEN), else $RUNBOOK_INTAKE_TOKEN. Never log it."""
    if settings.intake.token is not None:
        value = settings.intake.token.get_secret_value().strip()
        if value:
            return value
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value or None


# --- payload models -----------------------------------------------------------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Labels(BaseModel):
    """An alert's labels: `alertname` is required; every label value is a string."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str]

    alertname: str = Field(min_length=1)

    def as_dict(self) -> dict[str, str]:
        return {"alertname": self.alertname, **(self.model_extra or {})}


class AlertmanagerAlert(_Payload):
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: dict[str, str] = {}
    startsAt: str | None = None
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None


class AlertmanagerPayload(_Payload):
    """Alertmanager webhook, version 4 (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""

    version: Literal["4"] | None = None
    groupKey: str | None = None
    truncatedAlerts: int | None = None
    status: Literal["firing", "resolved"] | None = None
    receiver: str | None = None
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str | None = None
    alerts: list[AlertmanagerAlert] = Field(min_length=1)


class GrafanaAlert(AlertmanagerAlert):
    values: dict[str, Any] | None = None
    silenceURL: str | None = None
    dashboardURL: str | None = None
    panelURL: str | None = None


class GrafanaPayload(_Payload):
    """Grafana unified alerting webhook (version "1")."""

    receiver: str | None = None
    status: Literal["firing", "resolved"] | None = None
    orgId: int | None = None
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str | None = None
    version: str | None = None
    groupKey: str | None = None
    truncatedAlerts: int | None = None
    title: str | None = None
    state: str | None = None
    message: str | None = None
    alerts: list[GrafanaAlert] = Field(min_length=1)


MODELS: dict[str, type[AlertmanagerPayload] | type[GrafanaPayload]] = {
    "alertmanager": AlertmanagerPayload,
    "grafana": GrafanaPayload,
}


# --- responses ----------------------------------------------------------------------------------------


class _Json(JSONResponse):
    """JSON with every non-ASCII character escaped, so no sender-supplied string can break the encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, reason: str, headers: dict[str, str] | None = None, **extra: Any) -> _Json:
    return _Json({"error": reason, **extra}, status_code=status, headers=headers)


def _echo(value: str) -> str:
    return value if len(value) <= _ECHO_LIMIT else value[:_ECHO_LIMIT] + "..."


@dataclass(frozen=True)
class Accepted:
    alertname: str
    alert: str
    bot: str
    incident_id: int | None
    created: bool
    status: str  # opened | repeat | resolved-recorded | no-open-incident
    message: str


@dataclass(frozen=True)
class Rejected:
    alertname: str
    reason: str


class _Unavailable(Exception):
    """The journal (or the event emitter) failed: answer 503 so the sender retries."""


# --- the app ------------------------------------------------------------------------------------------


def create_app(settings: Settings, automated: set[str]) -> FastAPI:
    """The intake ASGI app. Raises IntakeDisabled when no token is configured."""
    token = intake_token(settings)
    if token is None:
        raise IntakeDisabled(DISABLED_MESSAGE)
    token_digest = hashlib.sha256(token.encode("utf-8")).digest()
    limit = settings.intake.max_body_bytes
    automated = set(automated)
    journal_lock = threading.Lock()
    journal_box: dict[str, Journal] = {}

    def journal() -> Journal:
        # Opened on first use and kept; a journal that cannot be opened yet is a 503, not a dead intake.
        with journal_lock:
            if "journal" not in journal_box:
                journal_box["journal"] = Journal(settings.journal_url)
            return journal_box["journal"]

    app = FastAPI(title="runbook intake", docs_url=None, redoc_url=None, openapi_url=None)

    async def _backstop(request: Request, exc: Exception) -> _Json:
        log.exception("intake: unexpected error on %s", request.url.path)
        return _error(503, "the intake could not process this request; retry later", {"Retry-After": "30"})

    app.add_exception_handler(Exception, _backstop)

    def authorised(request: Request) -> _Json | None:
        header = request.headers.get("authorization")
        client = request.client.host if request.client else "?"
        unauthorised = {"WWW-Authenticate": 'Bearer realm="runbook-intake"', "Connection": "close"}
        if not header:
            log.warning("intake: request from %s without a bearer token refused", client)
            return _error(401, "missing bearer token (Authorization: Bearer <token>)", unauthorised)
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            log.warning("intake: request from %s with a non-bearer Authorization header refused", client)
            return _error(401, "Authorization must be a bearer token", unauthorised)
        digest = hashlib.sha256(presented.strip().encode("latin-1", "replace")).digest()
        if not hmac.compare_digest(digest, token_digest):
            log.warning("intake: request from %s with a wrong bearer token refused", client)
            return _error(401, "invalid bearer token", unauthorised)
        return None

    async def read_body(request: Request) -> bytes | _Json:
        too_large = _error(413, f"request body larger than {limit} bytes", {"Connection": "close"})
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    return too_large
            except ValueError:
                return _error(400, "invalid Content-Length", {"Connection": "close"})
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            shown = _echo(media_type) or "none"
            return _error(415, f"content type must be application/json, not {shown}", {"Connection": "close"})
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # counted as it arrives: a chunked or lying body cannot pass
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def receive(request: Request, source: str) -> _Json:
        refusal = authorised(request)
        if refusal is not None:
            return refusal
        try:
            body = await read_body(request)
        except ClientDisconnect:
            return _error(400, "client disconnected")
        if isinstance(body, _Json):
            return body
        name = SOURCES[source]
        try:
            data = _parse_json(body)
        except ValueError as error:
            return _error(422, f"invalid JSON: {error}", fields=[{"field": "(body)", "message": str(error)}])
        try:
            payload = MODELS[source].model_validate(data)
        except ValidationError as error:
            fields = _field_errors(error)
            listed = "; ".join(f"{item['field']}: {item['message']}" for item in fields)
            return _error(422, f"invalid {name} payload: {listed}", fields=fields)
        try:
            accepted, rejected = await run_in_threadpool(
                _take, settings, journal, payload.alerts, payload.commonAnnotations, source, automated, token
            )
        except _Unavailable as error:
            return _error(503, str(error), {"Retry-After": "30"})
        content = {"accepted": [asdict(item) for item in accepted], "rejected": [asdict(item) for item in rejected]}
        if not accepted and rejected:
            reasons = "; ".join(item.reason for item in rejected)
            return _error(422, f"no alert could be taken: {reasons}", **content)
        return _Json(content, status_code=202)

    @app.post("/alerts/alertmanager")
    async def alertmanager(request: Request) -> _Json:
        return await receive(request, "alertmanager")

    @app.post("/alerts/grafana")
    async def grafana(request: Request) -> _Json:
        return await receive(request, "grafana")

    verifier = SignatureVerifier(settings.slack.signing_secret.get_secret_value()) \
        if settings.slack.signing_secret is not None and settings.slack.signing_secret.get_secret_value().strip() \
        else None
    seen_signatures: dict[str, float] = {}
    seen_lock = threading.Lock()

    def replayed(signature: str) -> bool:
        """A signature already taken within the window Slack's timestamps are valid for is a replay."""
        now = time.time()
        with seen_lock:
            for old in [sig for sig, at in seen_signatures.items() if now - at > SLACK_WINDOW_SECONDS * 2]:
                del seen_signatures[old]
            if signature in seen_signatures:
                return True
            seen_signatures[signature] = now
            return False

    @app.post("/slack/interactions")
    async def slack_interactions(request: Request) -> _Json:
        client = request.client.host if request.client else "?"
        if verifier is None:
            log.warning("intake: Slack click from %s refused: no slack.signing_secret configured", client)
            return _error(401, "Slack interactivity is not set up here (no slack.signing_secret)")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, f"request body larger than {limit} bytes", {"Connection": "close"})
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        try:
            valid = bool(timestamp and signature) and verifier.is_valid(body, timestamp, signature)
        except ValueError:  # a timestamp that is not a number
            valid = False
        if not valid:
            log.warning("intake: Slack click from %s refused: missing, wrong or stale signature", client)
            return _error(401, "invalid Slack signature (or a timestamp older than 5 minutes)")
        if replayed(signature):
            log.warning("intake: Slack click from %s refused: replayed signature", client)
            return _error(401, "replayed Slack request")
        try:
            payload = json.loads(dict(parse_qsl(body.decode("utf-8"))).get("payload", ""))
            action = payload["actions"][0]
            action_id, value = str(action["action_id"]), str(action["value"])
            user = payload.get("user") or {}
            who = f"@{user.get('username') or user.get('name') or '?'} ({user.get('id', '?')})"
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return _error(400, "not a Slack block_actions payload with an action")
        status, content = await run_in_threadpool(_slack_action, settings, journal, action_id, value, who)
        return _Json(content, status_code=status)

    @app.post("/incidents/{incident_id}/ack")
    async def acknowledge(incident_id: int, request: Request) -> _Json:
        refusal = authorised(request)
        if refusal is not None:
            return refusal
        raw = await request.body()
        try:
            data = _parse_json(raw) if raw.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            by, note = str(data.get("by") or "pager")[:_ECHO_LIMIT], str(data.get("note") or "")[:_SUMMARY_LIMIT]
        except ValueError as error:
            return _error(422, f"invalid JSON: {error}")
        status, content = await run_in_threadpool(_acknowledge, settings, incident_id, by, "pager", note)
        return _Json(content, status_code=status)

    @app.get("/healthz")
    async def healthz() -> _Json:
        return _Json({"ok": True})

    return app


SLACK_WINDOW_SECONDS = 300


def _acknowledge(settings: Settings, incident_id: int, by: str, via: str, note: str) -> tuple[int, dict[str, Any]]:
    from tasks.people import acknowledge

    try:
        incident, first = acknowledge(settings, incident_id, by, via, note)
    except JournalError as error:
        return (404 if "no incident" in str(error) else 409), {"error": str(error)}
    except SQLAlchemyError as error:
        return 503, {"error": f"the incident journal is unavailable ({type(error).__name__}); retry later"}
    text = (f"incident #{incident_id} acknowledged by {by} via {via}" if first else
            f"incident #{incident_id} was already acknowledged by {incident.acknowledged_by}")
    log.info("intake: %s", text)
    return 200, {"ok": True, "incident_id": incident_id, "first": first, "text": text}


def _slack_action(settings: Settings, get_journal: Callable[[], Journal], action_id: str, value: str,
                  who: str) -> tuple[int, dict[str, Any]]:
    """A verified click: Acknowledge an incident, or Approve / Reject a paused run."""
    from runbook.policy import ApprovalError, answer_approval
    from tasks.notify import ACK_ACTION, APPROVE_ACTION, REJECT_ACTION

    if action_id == ACK_ACTION:
        try:
            incident_id = int(value)
        except ValueError:
            return 400, {"error": f"not an incident id: {_echo(value)!r}"}
        return _acknowledge(settings, incident_id, who, "slack", "")
    if action_id in (APPROVE_ACTION, REJECT_ACTION):
        approve = action_id == APPROVE_ACTION
        try:
            answer_approval(get_journal(), value, approve, who, "slack")
        except ApprovalError as error:
            return 409, {"error": str(error)}
        text = f"{'approved' if approve else 'rejected'} by {who} via Slack: flow run {value}"
        log.info("intake: %s", text)
        return 200, {"ok": True, "text": text}
    return 400, {"error": f"unknown action {_echo(action_id)!r}"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no lone surrogates (they cannot be stored or echoed)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"body is not UTF-8 ({error.reason} at byte {error.start})") from None
    if not text.strip():
        raise ValueError("empty body")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired UTF-16 surrogate escape") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return data


def _field_errors(error: ValidationError, limit: int = 10) -> list[dict[str, str]]:
    fields = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "(body)"
        fields.append({"field": _echo(where), "message": item["msg"]})
    if error.error_count() > limit:
        fields.append({"field": "...", "message": f"{error.error_count() - limit} more error(s)"})
    return fields


def _summary(alert: AlertmanagerAlert, common: dict[str, str], source: str, token: str) -> str:
    text = (alert.annotations.get("summary") or alert.annotations.get("description")
            or common.get("summary") or common.get("description")
            or f"{alert.labels.alertname} ({SOURCES[source]})")
    text = redact(text.strip(), [token])
    return text if len(text) <= _SUMMARY_LIMIT else text[:_SUMMARY_LIMIT] + "..."


def _resolve_target(settings: Settings, labels: dict[str, str]) -> tuple[str, str] | str:
    """(catalogue key, bot) for an alert's labels, or the reason it cannot be taken."""
    name = labels["alertname"]
    mapped = settings.intake.alert_names.get(name)
    if mapped is not None:
        if mapped not in CATALOGUE:
            return f"intake.alert_names maps {_echo(name)!r} to {mapped!r}, which is not in the catalogue"
        key = mapped
    elif name in CATALOGUE:
        key = name
    else:
        return (f"alert name {_echo(name)!r} is neither a catalogue key nor mapped in intake.alert_names "
                f"(mapped: {', '.join(sorted(settings.intake.alert_names)) or 'none'})")
    label = settings.intake.bot_label
    bot = labels.get(label, "").strip()
    configured = ", ".join(settings.bots)
    if not bot:
        if len(settings.bots) != 1:
            return f"no {label!r} label and several bots are configured ({configured})"
        bot = next(iter(settings.bots))
    elif bot not in settings.bots:
        return f"bot {_echo(bot)!r} (label {label!r}) is not configured; configured: {configured}"
    return key, bot


def _take(settings: Settings, get_journal: Callable[[], Journal], alerts: list[AlertmanagerAlert], common: dict[str, str],
          source: str, automated: set[str], token: str) -> tuple[list[Accepted], list[Rejected]]:
    """Fire or record every alert of a payload (runs in a worker thread: the journal is blocking)."""
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    name = SOURCES[source]
    try:
        book = get_journal()
        for alert in alerts:
            labels = alert.labels.as_dict()
            alertname = _echo(labels["alertname"])
            target = _resolve_target(settings, labels)
            if isinstance(target, str):
                log.warning("intake: %s alert %r rejected: %s", name, alertname, target)
                rejected.append(Rejected(alertname, target))
                continue
            key, bot = target
            summary = _summary(alert, common, source, token)
            if alert.status == "firing":
                firing = fire_alert(book, key, bot, summary, source=source, automated=automated)
                message = firing.describe()
                log.info("intake: %s alert %r: %s", name, alertname, message)
                accepted.append(Accepted(alertname, key, bot, firing.incident_id, firing.created,
                                         "opened" if firing.created else "repeat", message))
                continue
            incident = book.find_open(key, bot)
            if incident is None:
                message = f"{key} on {bot}: {name} reports resolved; no open incident"
                log.info("intake: %s", message)
                accepted.append(Accepted(alertname, key, bot, None, False, "no-open-incident", message))
                continue
            book.record_action(incident.id, bot, "external-resolved", f"{name} reports resolved: {summary}",
                               detail={"source": source, "alertname": alertname,
                                       "fingerprint": alert.fingerprint, "endsAt": alert.endsAt})
            message = (f"{key} on {bot}: {name} reports resolved; recorded on incident #{incident.id}, "
                       "which stays open until its flow or a person resolves it")
            log.info("intake: %s", message)
            accepted.append(Accepted(alertname, key, bot, incident.id, False, "resolved-recorded", message))
    except (JournalError, SQLAlchemyError) as error:
        log.error("intake: journal unavailable: %s", error)
        raise _Unavailable(f"the incident journal is unavailable ({type(error).__name__}); retry later") from error
    except Exception as error:  # never a 500: whatever broke, the sender should retry
        log.exception("intake: could not take a %s payload", name)
        raise _Unavailable(f"could not take the alert ({type(error).__name__}); retry later") from error
    return accepted, rejected


# --- the server ---------------------------------------------------------------------------------------


class _ThreadServer(uvicorn.Server):
    """uvicorn without signal handlers: it runs in a background thread of a process that owns them."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class IntakeServer:
    """The intake on uvicorn in a background thread: `start()` returns the URL it listens on (or None)."""

    def __init__(self, settings: Settings, automated: set[str], *, host: str | None = None,
                 port: int | None = None) -> None:
        self.settings = settings
        self.automated = set(automated)
        self.host = host if host is not None else settings.intake.host
        self.port = port if port is not None else settings.intake.port
        self.url: str | None = None
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self, timeout: float = 15.0) -> str | None:
        """Listen and serve; None (with a warning) when no token is configured. Port 0 picks a free port."""
        if self._thread is not None:
            return self.url
        try:
            app = create_app(self.settings, self.automated)
        except IntakeDisabled:
            log.warning(DISABLED_MESSAGE)
            return None
        sock = _bind(self.host, self.port)
        bound_host, bound_port = sock.getsockname()[:2]
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", ws="none", server_header=False,
            timeout_keep_alive=5, timeout_graceful_shutdown=5, limit_concurrency=64,
        )
        server = _ThreadServer(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="runbook-intake",
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout=5)
                sock.close()
                raise IntakeError(f"the intake did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self._server, self._thread, self._socket = server, thread, sock
        self.port = bound_port
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        log.info("intake listening on %s (POST /alerts/alertmanager, /alerts/grafana, /incidents/ID/ack, "
                 "/slack/interactions)", self.url)
        return self.url

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        log.info("intake stopped")

    def __enter__(self) -> "IntakeServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """Bind here, in the caller's thread, so a taken port is a clear error and port 0 reports the real one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise IntakeError(f"intake: cannot resolve host {host!r}: {error}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise IntakeError(f"intake: cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def run_intake(settings: Settings, automated: set[str], stop_event: threading.Event) -> None:
    """Serve the intake until `stop_event` is set (for `runbook serve`); returns at once when disabled."""
    server = IntakeServer(settings, automated)
    if server.start() is None:
        return
    try:
        while not stop_event.wait(0.5):
            if not server.running:
                raise IntakeError("the intake server stopped unexpectedly")
    finally:
        server.stop()
