"""Health and metrics probes against real loopback HTTP servers that answer badly on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runbook.settings import BotSettings
from tasks.probes import probe_health_once, read_metrics_once

HEALTHY = {"status": "healthy", "checks": {"websocket_connectivity": {"connected": True}},
           "metrics": {"total_pnl": 12.5, "account_balance": "10012.5"}}

RESPONSES: dict[str, tuple[int, str, bytes, float]] = {
    "/ok": (200, "application/json", json.dumps(HEALTHY).encode(), 0),
    "/down": (503, "application/json", json.dumps({**HEALTHY, "status": "unhealthy",
              "checks": {"websocket_connectivity": {"connected": False}}}).encode(), 0),
    "/halted": (200, "application/json", json.dumps({**HEALTHY, "status": "stopped"}).encode(), 0),
    "/html": (200, "text/html", b"<html>nginx 502</html>", 0),
    "/invalid": (200, "application/json", b"{not json", 0),
    "/list": (200, "application/json", b"[1,2]", 0),
    "/wrongtype": (200, "application/json", json.dumps({"status": 7}).encode(), 0),
    "/slow": (200, "application/json", json.dumps(HEALTHY).encode(), 3),
    "/metrics": (200, "text/plain", b"# TYPE api_request_duration_seconds histogram\n"
                 b'api_request_duration_seconds_bucket{le="1.0"} 3\napi_request_duration_seconds_count 3\n', 0),
    "/badmetrics": (200, "text/plain", b"api_request_duration_seconds_bucket{le=\"1\"} notanumber\n", 0),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        code, kind, body, delay = RESPONSES[self.path]
        time.sleep(delay)
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def bot(url: str, path: str, metrics: str = "/metrics") -> BotSettings:
    return BotSettings(working_dir=Path("/tmp"), process_match=["x"], start_command=["x"],
                       health_url=url + path, metrics_url=url + metrics, probe_timeout_seconds=1)


@pytest.mark.parametrize("path, condition, fragment", [
    ("/ok", "healthy", "websocket connected"),
    ("/down", "unhealthy", "DISCONNECTED"),
    ("/halted", "halted", "'stopped'"),
    ("/html", "invalid", "not JSON (text/html)"),
    ("/invalid", "invalid", "not JSON"),
    ("/list", "invalid", "JSON list, not an object"),
    ("/wrongtype", "invalid", "missing or not a string"),
    ("/slow", "hung", "no answer within 1s"),
])
def test_health_conditions(base_url: str, path: str, condition: str, fragment: str) -> None:
    report = probe_health_once(bot(base_url, path))
    assert report.condition == condition
    assert fragment in report.summary()
    assert report.healthy is (condition == "healthy")


def test_health_reads_configured_fields(base_url: str) -> None:
    report = probe_health_once(bot(base_url, "/ok"))
    assert report.total_pnl == "12.5" and report.account_balance == "10012.5"


def test_unreachable_health(base_url: str) -> None:
    report = probe_health_once(bot("http://127.0.0.1:9", "/health"))
    assert report.condition == "unreachable" and "ConnectError" in report.summary()


def test_metrics_parse_and_malformed(base_url: str) -> None:
    good = read_metrics_once(bot(base_url, "/ok"))
    assert good.error is None and good.value("api_request_duration_seconds_bucket", le="1.0") == 3
    bad = read_metrics_once(bot(base_url, "/ok", "/badmetrics"))
    assert bad.error and "malformed" in bad.error
