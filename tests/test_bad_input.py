"""The bad-input corpus: what the person on call sees when the bot, its host or a service answers badly.

Every case asserts the finding or the error message, not only that nothing raised. Related cases live
next to the code they exercise and are not repeated here: /health HTML, invalid JSON, wrong types and
slow answers (test_probes), exchange 429/5xx/garbage/null (test_hyperliquid_client, and each flow's
tests with the sandbox's exchange faults), fuzzed webhooks (test_intake), config files (test_settings).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.watcher import LogCursor
from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import BotSettings, load_settings
from sandbox import manager
from tasks.logs import MAX_LINE_CHARS, scan_log, tail_log
from tasks.probes import probe_health_once, read_metrics_once
from conftest import running_sandbox

RUNBOOK = str(Path(sys.executable).with_name("runbook"))
TEN_MB = 10 * 2**20


def record(level: str, message: str) -> bytes:
    return json.dumps({"timestamp": "2026-11-25T03:00:00Z", "level": level, "message": message}).encode()


# Each kind of bad line a real log ends up with, between good lines.
CORPUS: list[tuple[str, bytes]] = [
    ("good", record("INFO", "websocket connected")),
    ("not json", b"Traceback (most recent call last): ConnectionError: exchange error"),
    ("truncated json", record("ERROR", "order rejected: margin error")[:40]),
    ("binary", b"\x00\x01\x02\xff\xfe ERROR \x00\x00"),
    ("not utf-8", "caf\xe9 error: r\xe9ponse invalide".encode("latin-1")),
    ("json list", b'["ERROR", "a list, not an object"]'),
    ("ten megabytes", b'{"level": "ERROR", "message": "' + b"x" * TEN_MB + b' error"}'),
    ("crlf", record("ERROR", "api error 502") + b"\r"),
    ("good", record("ERROR", "API error: timeout after 5000 ms")),
]
# The kinds that are not a JSON object (the 10 MB line is valid JSON, just huge; CRLF is tolerated).
MALFORMED = {"not json", "truncated json", "binary", "not utf-8", "json list"}


@pytest.fixture(scope="module")
def corpus_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "trading_bot.log"
    path.write_bytes(b"\n".join(line for _, line in CORPUS) + b"\n")
    return path


def test_tail_shows_every_bad_line_as_text_and_counts_it(corpus_log: Path) -> None:
    tail = tail_log.fn(corpus_log, lines=len(CORPUS))
    assert tail.error is None and len(tail.lines) == len(CORPUS)
    assert tail.malformed == len(MALFORMED)
    messages = tail.messages()
    assert messages[0] == "websocket connected" and messages[-1] == "API error: timeout after 5000 ms"
    assert messages[7] == "api error 502"  # a CRLF line is still JSON
    assert "caf\ufffd error" in messages[4]  # not UTF-8: shown with replacement characters, not dropped
    assert messages[2].startswith('{"timestamp"')  # truncated JSON: its raw text
    huge = messages[6]
    assert len(huge) < MAX_LINE_CHARS + 100 and huge.endswith("more chars]")  # 10 MB never reach a report


def test_scan_counts_what_grep_counts_over_bad_lines(corpus_log: Path) -> None:
    scan = scan_log.fn(corpus_log, "error")
    grep = subprocess.run(["grep", "-a", "-c", "-i", "error", str(corpus_log)], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})
    assert scan.error is None and scan.matches == int(grep.stdout)
    # the matching lines that are not JSON objects
    assert scan.malformed == sum(1 for kind, line in CORPUS if kind in MALFORMED and b"error" in line.lower())
    assert all(len(message) <= MAX_LINE_CHARS + 100 for message in scan.last_matches)


def test_missing_unreadable_and_wrong_kind_of_files_are_findings(tmp_path: Path) -> None:
    missing = tmp_path / "logs" / "trading_bot.log"
    assert tail_log.fn(missing).error == f"{missing} does not exist"
    assert scan_log.fn(missing).error == f"{missing} does not exist"
    assert LogCursor(missing).new_messages() == []
    folder = tmp_path / "a-folder.log"
    folder.mkdir()
    assert "cannot read" in (tail_log.fn(folder).error or "") and "Is a directory" in tail_log.fn(folder).error
    assert "cannot read" in (scan_log.fn(folder).error or "")


def test_a_log_truncated_or_rotated_while_read_never_breaks_the_reader(tmp_path: Path) -> None:
    log = tmp_path / "trading_bot.log"
    log.write_bytes(b"\n".join(record("ERROR", f"api error {i}") for i in range(20_000)) + b"\n")
    stop = threading.Event()

    def churn() -> None:  # logrotate's copytruncate and rename-and-recreate, as fast as possible
        n = 0
        while not stop.is_set():
            n += 1
            if n % 2:
                with open(log, "r+b") as handle:
                    handle.truncate(0)
            else:
                log.rename(tmp_path / "trading_bot.log.1")
            log.write_bytes(b"\n".join(record("ERROR", f"after rotation {n} {i}") for i in range(2_000)) + b"\n")

    cursor = LogCursor(log)
    cursor.new_messages()
    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(30):
            scan, tail = scan_log.fn(log, "error"), tail_log.fn(log, 50)
            for found in (scan.error, tail.error):
                assert found is None or "does not exist" in found  # between rename and re-create
            # every line is one of ours, or the raw text of the one being written as we read (a torn last line)
            assert all(m.startswith(("api error", "after rotation", '{"timestamp"')) or m == ""
                       for m in tail.messages()), tail.messages()[-3:]
            cursor.new_messages()
    finally:
        stop.set()
        worker.join()
    time.sleep(0.05)
    log.write_bytes(record("ERROR", "the last line") + b"\n")  # one more rotation: a fresh, shorter file
    assert cursor.new_messages()[-1:] == ["the last line"]


# -- /health and /metrics that misbehave at the socket level ---------------------------------------


class RawServer:
    """Answers each connection with a fixed behaviour: bytes then close, or silence."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            if self.behaviour == "silent":  # accepts, reads the request, never answers
                self.held.append(conn)
                continue
            if self.behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            elif self.behaviour == "html500":
                body = b"<html><h1>500 Internal Server Error</h1></html>"
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            elif self.behaviour == "metrics-html":
                body = b"<html>login required</html>"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            elif self.behaviour == "half":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                             b'{"status": "heal')
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def raw_server(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    server = RawServer(request.param)
    yield server
    server.close()


def probe_bot(url: str) -> BotSettings:
    return BotSettings(working_dir=Path("/tmp"), process_match=["x"], start_command=["x"], health_url=url + "/health",
                       metrics_url=url + "/metrics", probe_timeout_seconds=1)


@pytest.mark.parametrize("raw_server, condition, finding", [
    ("silent", "hung", "no answer within 1s"),
    ("reset", "unreachable", "unreachable"),
    ("html500", "invalid", "HTTP 500"),
    ("half", "unreachable", "RemoteProtocolError"),
], indirect=["raw_server"])
def test_health_answers_at_the_socket_level(raw_server: RawServer, condition: str, finding: str) -> None:
    report = probe_health_once(probe_bot(raw_server.url))
    assert not report.healthy and report.condition == condition, report.summary()
    assert finding in report.summary()


@pytest.mark.parametrize("raw_server, finding", [
    ("silent", "timed out"),
    ("metrics-html", "malformed"),
], indirect=["raw_server"])
def test_metrics_that_are_not_metrics(raw_server: RawServer, finding: str) -> None:
    snapshot = read_metrics_once(probe_bot(raw_server.url))
    assert snapshot.error and finding in snapshot.error, snapshot.error


# -- configuration from the shell ---------------------------------------------------------------------


def test_a_bad_config_is_named_field_by_field_before_anything_runs(tmp_path: Path) -> None:
    config = tmp_path / "runbook.toml"
    config.write_text("""
journal_url = 7
[bots.alpha]
process_match = []
start_command = ["python", "bot.py"]
probe_timeout_seconds = "soon"
[policy]
restart = "sometimes"
""")
    done = subprocess.run([RUNBOOK, "run", "crash-recovery", "--config", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    for field in ("journal_url", "bots.alpha.working_dir", "bots.alpha.process_match",
                  "bots.alpha.probe_timeout_seconds", "policy.restart"):
        assert field in done.stderr, (field, done.stderr)
    assert not (tmp_path / "runbook-journal.db").exists()  # nothing ran


# -- Slack answering badly: the remediation goes on, the notification waits in the journal -----------


@pytest.fixture(scope="module")
def quiet_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server: object) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("bad-input") / "sandbox") as directory:
        yield directory


@pytest.mark.parametrize("fault, channel, reason", [
    ("slack-auth", None, "invalid_auth"),
    ("slack-ratelimit", None, "ratelimited"),
    (None, "#no-such-channel", "channel_not_found"),
])
def test_slack_refusing_loses_neither_the_incident_nor_its_messages(
        quiet_sandbox: Path, monkeypatch: pytest.MonkeyPatch, fault: str | None, channel: str | None,
        reason: str) -> None:
    from flows.insufficient_balance import insufficient_balance

    if channel:
        monkeypatch.setenv("RUNBOOK_SLACK__CHANNEL", channel)
    manager.fault(quiet_sandbox, "clear")
    if fault:
        manager.fault(quiet_sandbox, fault)
    try:
        outcome = insufficient_balance(config=str(quiet_sandbox / "runbook.toml"))
    finally:
        manager.fault(quiet_sandbox, "clear")
    # The balance is fine: the flow finished its work and said so, Slack or not.
    assert outcome.status == j.RESOLVED and outcome.outcome == j.FALSE_POSITIVE, outcome.summary
    journal = Journal(load_settings(quiet_sandbox / "runbook.toml").journal_url)
    kept = journal.undelivered(outcome.incident_id)
    assert kept, "the failed notifications were not kept"
    assert {n.status_line for n in kept} >= {"OPEN", "RESOLVED"}
    assert all(reason in (n.error or "") for n in kept), [n.error for n in kept]
    assert Path(outcome.report_path).read_text().count(f"incident #{outcome.incident_id}") >= 1
