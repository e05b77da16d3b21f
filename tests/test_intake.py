"""The webhook intake over real HTTP: a real uvicorn server on loopback, a real SQLite journal, and (for
everything that fires) the session's real Prefect server receiving the events."""

from __future__ import annotations

import json
import logging
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.intake import DISABLED_MESSAGE, IntakeDisabled, IntakeServer, create_app, intake_token
from runbook.alerts import CATALOGUE
from runbook.journal import OPEN, Journal
from runbook.settings import Settings, load_settings

TOKEN = "intake-test-token-7f3a9c"
LIMIT = 2048
BOT = """
[bots.{name}]
working_dir = "{tmp}/{name}"
process_match = ["trading_bot.py"]
start_command = ["python", "trading_bot.py"]
"""


def write_config(tmp: Path, *, token: str | None = TOKEN, bots: tuple[str, ...] = ("alpha",),
                 journal_url: str | None = None) -> Settings:
    text = f'journal_url = "{journal_url or f"sqlite:///{tmp}/journal.db"}"\n'
    text += "".join(BOT.format(name=name, tmp=tmp) for name in bots)
    text += f'\n[intake]\nhost = "127.0.0.1"\nport = 0\nmax_body_bytes = {LIMIT}\n'
    if token is not None:
        text += f'token = "{token}"\n'
    path = tmp / "runbook.toml"
    path.write_text(text)
    return load_settings(path)


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNBOOK_INTAKE_TOKEN", raising=False)
    monkeypatch.delenv("RUNBOOK_INTAKE__TOKEN", raising=False)


class Intake:
    """A running intake and an HTTP client for it."""

    def __init__(self, settings: Settings, server: IntakeServer, url: str) -> None:
        self.settings = settings
        self.server = server
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=10)

    @property
    def journal(self) -> Journal:
        return Journal(self.settings.journal_url)

    def post(self, source: str, payload: Any = None, *, token: str | None = TOKEN, content: Any = None,
             content_type: str | None = "application/json") -> httpx.Response:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if content is None:
            content = json.dumps(payload).encode()
        return self.client.post(f"/alerts/{source}", content=content, headers=headers)


@contextmanager
def running(settings: Settings, automated: set[str] | None = None) -> Iterator[Intake]:
    server = IntakeServer(settings, automated if automated is not None else {"crash-recovery"})
    url = server.start()
    assert url is not None
    intake = Intake(settings, server, url)
    try:
        yield intake
    finally:
        intake.client.close()
        server.stop()


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    with running(write_config(tmp_path)) as it:
        yield it


def am_alert(name: str = "TradingBotDown", status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "instance": "bot-host:8000", "job": "trading-bot", **labels},
        "annotations": {"summary": f"{name} on the trading bot", "description": "process gone"},
        "startsAt": "2026-11-25T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-25T10:05:00.000Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up%3D%3D0",
        "fingerprint": "c6a1f3e2b4d5a697",
    }


def am_payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    alerts = alerts or (am_alert(),)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="TradingBotDown"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "runbook",
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": {"job": "trading-bot"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def grafana_payload(name: str = "HighMemoryUsage", status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "receiver": "runbook-webhook",
        "status": status,
        "orgId": 1,
        "alerts": [{
            "status": status,
            "labels": {"alertname": name, "grafana_folder": "Trading", **labels},
            "annotations": {"summary": "memory above 80%"},
            "startsAt": "2026-11-25T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://grafana:3000/alerting/grafana/abc/view",
            "fingerprint": "57c6d9296de2ad39",
            "silenceURL": "http://grafana:3000/alerting/silence/new",
            "dashboardURL": "http://grafana:3000/d/bot",
            "panelURL": "http://grafana:3000/d/bot?viewPanel=3",
            "values": {"B": 83.5, "C": 1},
            "valueString": "[ var='B' value=83.5 ]",
        }],
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name},
        "commonAnnotations": {},
        "externalURL": "http://grafana:3000/",
        "version": "1",
        "groupKey": '{}:{alertname="HighMemoryUsage"}',
        "truncatedAlerts": 0,
        "title": f"[FIRING:1] {name}",
        "state": "alerting",
        "message": "**Firing**",
    }


# --- firing, repeats, resolved ---------------------------------------------------------------------------


def test_alertmanager_fires_then_counts_repeat(intake: Intake, prefect_server: Any) -> None:
    first = intake.post("alertmanager", am_payload())
    assert first.status_code == 202, first.text
    [item] = first.json()["accepted"]
    assert first.json()["rejected"] == []
    assert item["alertname"] == "TradingBotDown" and item["alert"] == "crash-recovery" and item["bot"] == "alpha"
    assert item["created"] is True and item["status"] == "opened"
    incident = intake.journal.get(item["incident_id"])
    assert (incident.alert, incident.bot, incident.status) == ("crash-recovery", "alpha", OPEN)
    assert incident.summary == "TradingBotDown on the trading bot"
    assert incident.event_id  # the Prefect event that triggers the remediation went out

    again = intake.post("alertmanager", am_payload())
    assert again.status_code == 202
    [repeat] = again.json()["accepted"]
    assert repeat["created"] is False and repeat["status"] == "repeat"
    assert repeat["incident_id"] == item["incident_id"]
    assert intake.journal.get(item["incident_id"]).repeat_count == 1
    assert len(intake.journal.incidents()) == 1


def test_grafana_fires_then_counts_repeat(intake: Intake, prefect_server: Any) -> None:
    first = intake.post("grafana", grafana_payload())
    assert first.status_code == 202, first.text
    [item] = first.json()["accepted"]
    assert (item["alert"], item["bot"], item["created"]) == ("memory-usage", "alpha", True)
    incident = intake.journal.get(item["incident_id"])
    assert (incident.alert, incident.bot, incident.summary) == ("memory-usage", "alpha", "memory above 80%")

    again = intake.post("grafana", grafana_payload())
    assert again.status_code == 202
    assert again.json()["accepted"][0]["created"] is False
    assert intake.journal.get(item["incident_id"]).repeat_count == 1


def test_catalogue_key_accepted_as_alertname(intake: Intake, prefect_server: Any) -> None:
    response = intake.post("alertmanager", am_payload(am_alert("api-latency", bot="alpha")))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"][0]["alert"] == "api-latency"


def test_resolved_is_recorded_and_closes_nothing(intake: Intake, prefect_server: Any) -> None:
    none_open = intake.post("alertmanager", am_payload(am_alert(status="resolved"), status="resolved"))
    assert none_open.status_code == 202
    [item] = none_open.json()["accepted"]
    assert item["status"] == "no-open-incident" and item["incident_id"] is None
    assert intake.journal.incidents() == []

    fired = intake.post("alertmanager", am_payload()).json()["accepted"][0]
    resolved = intake.post("alertmanager", am_payload(am_alert(status="resolved"), status="resolved"))
    assert resolved.status_code == 202
    [item] = resolved.json()["accepted"]
    assert item["status"] == "resolved-recorded" and item["incident_id"] == fired["incident_id"]
    incident = intake.journal.get(fired["incident_id"])
    assert incident.status == OPEN and incident.resolved_at is None
    [action] = [a for a in incident.actions if a.step == "external-resolved"]
    assert action.description.startswith("Alertmanager reports resolved: ")


def test_bot_from_label_and_bot_rejections(tmp_path: Path, prefect_server: Any) -> None:
    with running(write_config(tmp_path, bots=("alpha", "beta"))) as intake:
        fired = intake.post("alertmanager", am_payload(am_alert("HighAPILatency", bot="beta")))
        assert fired.status_code == 202
        assert fired.json()["accepted"][0]["bot"] == "beta"

        unknown = intake.post("alertmanager", am_payload(am_alert(bot="gamma")))
        assert unknown.status_code == 422
        assert "'gamma'" in unknown.json()["rejected"][0]["reason"]

        unlabelled = intake.post("alertmanager", am_payload(am_alert()))
        assert unlabelled.status_code == 422
        assert "several bots" in unlabelled.json()["error"]

        # One taken, one not: 202, with the rejected one and its reason in the answer.
        mixed = intake.post("alertmanager", am_payload(am_alert("HighAPILatency", bot="alpha"), am_alert("Nope")))
        assert mixed.status_code == 202
        assert [a["alertname"] for a in mixed.json()["accepted"]] == ["HighAPILatency"]
        assert [r["alertname"] for r in mixed.json()["rejected"]] == ["Nope"]


# --- refusals ---------------------------------------------------------------------------------------------


def test_no_token_is_401(intake: Intake) -> None:
    response = intake.post("alertmanager", am_payload(), token=None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "error" in response.json()
    assert intake.journal.incidents() == []


def test_wrong_token_is_401(intake: Intake) -> None:
    for token in ("wrong", TOKEN + "x", TOKEN[:-1], "Basic " + TOKEN):
        assert intake.post("grafana", grafana_payload(), token=token).status_code == 401
    scheme = intake.client.post("/alerts/alertmanager", content=b"{}",
                                headers={"Authorization": f"Basic {TOKEN}", "Content-Type": "application/json"})
    assert scheme.status_code == 401
    assert intake.journal.incidents() == []


def test_malformed_json_is_422(intake: Intake) -> None:
    for body in (b"{not json", b"", b"\xff\xfe{}", b'{"alerts": NaN}', b'{"a": "\\ud800"}', b"[" * 1500):
        response = intake.post("alertmanager", content=body)
        assert response.status_code == 422, body
        assert response.json()["error"].startswith("invalid JSON")


def test_schema_errors_are_422_naming_the_field(intake: Intake) -> None:
    missing = intake.post("alertmanager", {"version": "4", "status": "firing", "receiver": "x"})
    assert missing.status_code == 422
    assert missing.json()["fields"][0]["field"] == "alerts"
    assert "alerts" in missing.json()["error"]

    no_name = am_payload(am_alert())
    del no_name["alerts"][0]["labels"]["alertname"]
    response = intake.post("alertmanager", no_name)
    assert response.status_code == 422
    assert "alerts.0.labels.alertname" in response.json()["error"]

    bad_status = am_payload(am_alert(status="pending"))
    assert "alerts.0.status" in intake.post("alertmanager", bad_status).json()["error"]

    wrong_version = am_payload()
    wrong_version["version"] = "3"
    assert "version" in intake.post("alertmanager", wrong_version).json()["error"]

    not_object = intake.post("grafana", [1, 2, 3])
    assert not_object.status_code == 422


def test_unknown_alertname_is_422_with_reason(intake: Intake) -> None:
    response = intake.post("alertmanager", am_payload(am_alert("DiskFull")))
    assert response.status_code == 422
    body = response.json()
    assert body["accepted"] == []
    assert body["rejected"][0]["alertname"] == "DiskFull"
    assert "DiskFull" in body["rejected"][0]["reason"] and "alert_names" in body["rejected"][0]["reason"]
    assert intake.journal.incidents() == []


def test_oversized_is_413_by_content_length_and_streamed(intake: Intake) -> None:
    big = am_payload(am_alert())
    big["commonAnnotations"] = {"padding": "x" * LIMIT}
    body = json.dumps(big).encode()
    by_length = intake.post("alertmanager", content=body)
    assert by_length.status_code == 413
    assert by_length.json()["error"] == f"request body larger than {LIMIT} bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(body), 256):
            yield body[start:start + 256]

    streamed = intake.post("alertmanager", content=chunks())
    assert streamed.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413

    huge = intake.post("grafana", content=b"[" + b"0," * 500_000 + b"0]")
    assert huge.status_code == 413
    assert intake.journal.incidents() == []
    assert intake.client.get("/healthz").json() == {"ok": True}  # still serving


def test_wrong_content_type_is_415(intake: Intake) -> None:
    body = json.dumps(am_payload()).encode()
    assert intake.post("alertmanager", content=body, content_type="text/plain").status_code == 415
    assert intake.post("alertmanager", content=body, content_type=None).status_code == 415
    assert intake.post("grafana", content=body, content_type="application/x-www-form-urlencoded").status_code == 415
    assert intake.journal.incidents() == []


def test_journal_unavailable_is_503(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    settings = write_config(tmp_path, journal_url=f"sqlite:///{tmp_path}/not-a-dir/journal.db")
    with running(settings) as intake:
        response = intake.post("alertmanager", am_payload())
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert "journal" in response.json()["error"]


# --- token and server -------------------------------------------------------------------------------------


def test_no_token_configured_does_not_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = write_config(tmp_path, token=None)
    assert intake_token(settings) is None
    with pytest.raises(IntakeDisabled):
        create_app(settings, set())
    server = IntakeServer(settings, set(), port=0)
    with caplog.at_level(logging.WARNING, logger="runbook.intake"):
        assert server.start() is None
    assert DISABLED_MESSAGE in caplog.text
    assert server.url is None and not server.running
    server.stop()  # harmless


def test_token_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_INTAKE_TOKEN", "from-the-environment")
    settings = write_config(tmp_path, token=None)
    assert intake_token(settings) == "from-the-environment"
    assert intake_token(write_config(tmp_path, token="from-config")) == "from-config"  # config wins
    with running(settings) as intake:
        assert intake.post("alertmanager", {"alerts": "x"}, token="from-the-environment").status_code == 422
        assert intake.post("alertmanager", {"alerts": "x"}, token=TOKEN).status_code == 401


def test_port_zero_reports_real_port_and_stop_releases_it(tmp_path: Path) -> None:
    with running(write_config(tmp_path)) as intake:
        port = intake.server.port
        assert port and intake.url == f"http://127.0.0.1:{port}"
        assert intake.client.get("/healthz").json() == {"ok": True}
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens after stop()


def test_token_never_echoed_or_logged(intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        responses = [
            intake.post("alertmanager", am_payload(am_alert("Nope")), token=TOKEN),
            intake.post("alertmanager", am_payload(), token=TOKEN + "-wrong"),
            intake.post("alertmanager", content=b"{", token=TOKEN),
        ]
    assert all(TOKEN not in r.text for r in responses)
    assert TOKEN not in caplog.text


# --- fuzzing ----------------------------------------------------------------------------------------------

NAMES = [*CATALOGUE, "TradingBotDown", "BotCrashed", "HighAPILatency", "LowWinRate", "DiskFull", ""]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
def sometimes(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """Mostly a good value, now and then (1 in 10) a wrong one."""
    return draw(bad) if draw(st.integers(0, 9)) == 0 else draw(good)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A real-looking Alertmanager/Grafana payload with a few things (possibly) wrong in it."""
    alerts = []
    for _ in range(sometimes(draw, st.integers(1, 3), st.integers(0, 6))):
        labels: dict[str, Any] = {"alertname": sometimes(draw, st.sampled_from(NAMES), st.text(max_size=20))}
        if draw(st.booleans()):
            labels["bot"] = sometimes(draw, st.just("alpha"), st.sampled_from(["beta", ""]) | st.text(max_size=8))
        extra_values = json_values if draw(st.integers(0, 9)) == 0 else st.text(max_size=8)
        labels.update(draw(st.dictionaries(st.text(max_size=8), extra_values, max_size=2)))
        alert: dict[str, Any] = {
            "status": sometimes(draw, st.sampled_from(["firing", "resolved"]), st.just("pending") | json_values),
            "labels": labels,
            "annotations": sometimes(draw, st.dictionaries(st.sampled_from(["summary", "description", "x"]),
                                                           st.text(max_size=30), max_size=2), json_values),
            "fingerprint": draw(st.text(max_size=16)),
        }
        if draw(st.integers(0, 9)) == 0:
            for key in draw(st.lists(st.sampled_from(sorted(alert)), max_size=2, unique=True)):
                if draw(st.booleans()):
                    del alert[key]
                else:
                    alert[key] = draw(json_values)
        alerts.append(alert)
    payload: dict[str, Any] = {
        "version": sometimes(draw, st.just("4"), st.sampled_from(["1", "3", ""])),
        "status": draw(st.sampled_from(["firing", "resolved"])), "receiver": "runbook", "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "alerts": alerts,
        "orgId": sometimes(draw, st.integers(-2, 2), json_values), "extraField": draw(json_values),
    }
    if draw(st.integers(0, 9)) == 0:
        for key in draw(st.lists(st.sampled_from(sorted(payload)), max_size=2, unique=True)):
            if draw(st.booleans()):
                del payload[key]
            else:
                payload[key] = draw(json_values)
    return payload


near_valid_bodies = near_valid().map(lambda p: json.dumps(p).encode())
valid_bodies = st.builds(
    lambda make, name, status, bot: json.dumps(
        am_payload(am_alert(name, status, **bot)) if make == "am" else grafana_payload(name, status, **bot)
    ).encode(),
    st.sampled_from(["am", "grafana"]), st.sampled_from([*CATALOGUE, "TradingBotDown", "HighMemoryUsage"]),
    st.sampled_from(["firing", "resolved"]), st.sampled_from([{}, {"bot": "alpha"}]),
)
bodies = st.one_of(
    valid_bodies, valid_bodies, near_valid_bodies, near_valid_bodies, near_valid_bodies,
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.integers(LIMIT + 1, 4 * LIMIT).map(lambda n: b'{"alerts": ["' + b"x" * n + b'"]}'),
)


# Prefect's events worker runs in the background while Hypothesis draws; its use of `random` is not ours.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_fuzzed_payloads_get_a_clear_answer_and_accepted_alerts_are_journalled(
    prefect_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = write_config(tmp_path_factory.mktemp("fuzz"))
    fired: Counter[tuple[str, str]] = Counter()
    with running(settings, automated=set()) as intake:

        @hsettings(max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(source=st.sampled_from(["alertmanager", "grafana"]), body=bodies,
               token=st.sampled_from([TOKEN] * 8 + [None, "nope"]),
               content_type=st.sampled_from(["application/json"] * 8 + ["application/json; charset=utf-8",
                                                                         "text/plain"]),
               chunked=st.booleans())
        def check(source: str, body: bytes, token: str | None, content_type: str, chunked: bool) -> None:
            content: Any = iter([body[:len(body) // 2], body[len(body) // 2:]]) if chunked else body
            response = intake.post(source, token=token, content=content, content_type=content_type)
            assert response.status_code in {202, 401, 413, 415, 422}, (response.status_code, response.text)
            answer = response.json()
            event(f"HTTP {response.status_code}")
            # The order of refusals: token, declared size, content type, streamed size, then the payload.
            if token != TOKEN:
                assert response.status_code == 401
                return
            if len(body) > LIMIT and not chunked:
                assert response.status_code == 413
                return
            if content_type == "text/plain":
                assert response.status_code == 415
                return
            if len(body) > LIMIT:
                assert response.status_code == 413
                return
            if response.status_code != 202:
                assert answer["error"]
                return
            for item in answer["accepted"]:
                event(f"accepted: {item['status']}")
                if item["status"] in ("opened", "repeat"):
                    incident = intake.journal.get(item["incident_id"])  # raises if it was lost
                    assert (incident.alert, incident.bot) == (item["alert"], item["bot"])
                    fired[(item["alert"], item["bot"])] += 1
                elif item["status"] == "resolved-recorded":
                    incident = intake.journal.get(item["incident_id"])
                    assert incident.status == OPEN
                    assert any(a.step == "external-resolved" for a in incident.actions)
                else:
                    assert item["status"] == "no-open-incident"
            for item in answer["rejected"]:
                assert item["reason"]

        check()

        # Every accepted firing is in the journal: one open incident per alert and bot, its repeats counted.
        incidents = intake.journal.incidents()
        assert {(i.alert, i.bot) for i in incidents} == set(fired)
        for incident in incidents:
            assert incident.status == OPEN
            assert incident.repeat_count + 1 == fired[(incident.alert, incident.bot)]
