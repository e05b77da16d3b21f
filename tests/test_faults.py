"""Faults of the runbook's own parts: its journal, its worker, its Prefect server.

Each test asserts what the person on call would find afterwards: the incident's state in the journal,
the bot's state, the run's answer. Real parts throughout: SQLite on a real (tiny, full) tmpfs, a real
`runbook run` process killed with SIGKILL, a second real Prefect server stopped and started again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.localserver import free_port, server_env, start_server
from app.watcher import Watcher
from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot
from conftest import running_sandbox

RUNBOOK = str(Path(sys.executable).with_name("runbook"))


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {seconds:g}s")


def health_code(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


# -- the journal ---------------------------------------------------------------------------------


def test_a_journal_locked_for_a_moment_makes_writers_wait_not_fail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    journal = Journal(url)
    journal.ping()
    holder = sqlite3.connect(tmp_path / "journal.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock (a backup, a long query)
    release = threading.Timer(2.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    incident, created = journal.open_incident("crash-recovery", "bot-a", "CRITICAL", "process gone")
    waited = time.monotonic() - started
    release.join()
    holder.close()
    assert created and waited >= 1.5, waited  # it waited for the lock instead of failing
    assert [i.id for i in Journal(url).incidents(open_only=True)] == [incident.id]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real filesystem that really fills up (needs root, as CI has)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this machine's tests run as root in CI")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(fd)
    return filler


def test_an_alert_seen_while_the_journal_disk_is_full_is_recorded_once_there_is_room(
        tmp_path: Path, tiny_disk: Path, prefect_server: object, caplog: pytest.LogCaptureFixture) -> None:
    bot_dir = tmp_path / "bot"
    (bot_dir / "logs").mkdir(parents=True)
    log = bot_dir / "logs" / "trading_bot.log"
    log.write_text("")
    config = tmp_path / "runbook.toml"
    config.write_text(f"""
journal_url = "sqlite:///{tiny_disk / 'journal.db'}"
[bots.alpha]
working_dir = "{bot_dir}"
process_match = ["no-such-bot-{os.getpid()}"]
start_command = ["true"]
health_url = "http://127.0.0.1:9/health"
metrics_url = "http://127.0.0.1:9/metrics"
probe_timeout_seconds = 0.5
[watch]
log_patterns = {{ "insufficient-balance" = "insufficient balance" }}
""")
    settings = load_settings(config)
    journal = Journal(settings.journal_url)
    journal.ping()
    watcher = Watcher(settings, journal, automated=set())
    watcher.poll_once()  # the process is gone: crash-recovery opens while there is room
    filler = fill(tiny_disk)
    # The one-off evidence: a single log line, read once.
    with open(log, "a") as handle:
        handle.write(json.dumps({"level": "ERROR", "message": "order rejected: insufficient balance"}) + "\n")
    with caplog.at_level(logging.ERROR, logger="runbook.watcher"):
        fired = watcher.poll_once()
    assert not any(f.alert == "insufficient-balance" for f in fired)
    assert ("insufficient-balance", "alpha") in watcher.pending
    assert "database or disk is full" in caplog.text and "retried on the next poll" in caplog.text

    filler.unlink()  # someone frees the disk
    fired = watcher.poll_once()
    assert [f.alert for f in fired if f.created] == ["insufficient-balance"]
    assert not watcher.pending
    found = Journal(settings.journal_url).incidents(alert="insufficient-balance")
    assert len(found) == 1 and found[0].status == j.OPEN
    assert found[0].summary and "insufficient balance" in found[0].summary


# -- the runbook worker and the Prefect server ------------------------------------------------------


@pytest.fixture(scope="module")
def shared_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server: object) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("faults") / "sandbox") as directory:
        yield directory


def run_flow(config: Path, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([RUNBOOK, "run", name, "--config", str(config), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RUNBOOK_RECOVERY__STOP_TIMEOUT_SECONDS": "2", **(env or {})})


def paused_runs(incident_started_after: float) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return [r for r in runs if r.start_time and r.start_time.timestamp() >= incident_started_after]


def test_a_worker_killed_mid_remediation_leaves_the_incident_open_and_the_next_run_finishes_it(
        shared_sandbox: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    config = shared_sandbox / "runbook.toml"
    settings = load_settings(config)
    bot = settings.bots["sandbox"]
    journal = Journal(settings.journal_url)
    manager.fault(shared_sandbox, "crash")
    began = time.time() - 1
    # The run stops to ask a person before restarting; the worker dies while it waits (holding the bot lock).
    worker = run_flow(config, "crash-recovery", {"RUNBOOK_POLICY__RESTART": "approve"})
    try:
        paused = wait_for(lambda: paused_runs(began), 90, "the run pausing for approval")[0]  # type: ignore[index]
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    with get_client(sync_client=True) as client:  # what an operator does with the orphan in the UI
        client.set_flow_run_state(paused.id, Crashed(message="worker killed (test)"), force=True)

    open_now = journal.incidents(open_only=True, alert="crash-recovery")
    assert len(open_now) == 1, [i.as_dict() for i in open_now]
    incident = open_now[0]
    assert incident.response_started_at is not None and incident.status != j.RESOLVED
    assert locate_bot(bot) is None  # nothing was restarted behind the person's back

    # The next run (a re-fired alert or a person) joins the same incident and finishes it, once the dead
    # worker's lease on the bot lock has expired.
    nxt = run_flow(config, "crash-recovery")
    out, err = nxt.communicate(timeout=240)
    assert nxt.returncode == 0, err[-3000:]
    outcome = json.loads(out)
    assert outcome["incident_id"] == incident.id and outcome["outcome"] == j.AUTO_RESOLVED
    assert health_code(bot.health_url) == 200
    assert len(journal.incidents(alert="crash-recovery")) == 1


def test_the_prefect_server_restarting_mid_remediation_does_not_lose_the_recovery(
        shared_sandbox: Path, tmp_path: Path) -> None:
    """A second server (its own SQLite) is stopped while the run works, and started again on the same port."""
    config = shared_sandbox / "runbook.toml"
    settings = load_settings(config)
    bot = settings.bots["sandbox"]
    journal = Journal(settings.journal_url)
    home, port = tmp_path / "prefect", free_port()
    server = start_server(home, port=port, exact_port=True)
    env = {**server_env(home, port), "RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS": "60"}
    try:
        manager.fault(shared_sandbox, "crash")
        before = {i.id for i in journal.incidents(alert="crash-recovery")}
        worker = run_flow(config, "crash-recovery", env)
        new = wait_for(lambda: [i for i in journal.incidents(alert="crash-recovery")
                                if i.id not in before and i.response_started_at], 90, "the response starting")
        server.stop()  # mid-remediation: the response has started, the bot is being restarted
        time.sleep(2)
        server = start_server(home, port=port, exact_port=True)
        out, err = worker.communicate(timeout=240)
    finally:
        server.stop()
    incident = journal.get(new[0].id)  # type: ignore[index]
    assert health_code(bot.health_url) == 200, err[-3000:]
    assert incident.status == j.RESOLVED and incident.outcome == j.AUTO_RESOLVED, (incident.as_dict(), err[-3000:])
    assert worker.returncode == 0, err[-3000:]
    assert json.loads(out)["incident_id"] == incident.id


def test_two_alerts_for_one_bot_at_once_restart_it_once(shared_sandbox: Path) -> None:
    """WebSocket stuck: the watcher's two alerts (crash recovery sees /health unhealthy, the websocket flow
    sees the socket down) start two remediations at once; the bot lock lets one act, the other finds it fixed."""
    from datetime import timedelta

    config = shared_sandbox / "runbook.toml"
    settings = load_settings(config)
    journal = Journal(settings.journal_url)
    restarts_before = journal.count_actions("sandbox", "restart", timedelta(hours=1))
    manager.fault(shared_sandbox, "clear")
    wait_for(lambda: health_code(settings.bots["sandbox"].health_url) == 200, 60, "a healthy bot")
    manager.fault(shared_sandbox, "websocket")
    wait_for(lambda: health_code(settings.bots["sandbox"].health_url) == 503, 30, "the websocket down")
    env = {"RUNBOOK_INFRA__WEBSOCKET_RECONNECT_WAIT_SECONDS": "3"}
    runs = [run_flow(config, name, env) for name in ("websocket-disconnected", "crash-recovery")]
    results = [(run.wait(timeout=300), run.communicate()) for run in runs]
    manager.fault(shared_sandbox, "clear")
    outcomes = [json.loads(out) for _, (out, _) in results]
    assert journal.count_actions("sandbox", "restart", timedelta(hours=1)) - restarts_before == 1, \
        [(o["alert"], o["outcome"], o["summary"]) for o in outcomes]
    assert health_code(settings.bots["sandbox"].health_url) == 200
    assert all(o["status"] == j.RESOLVED for o in outcomes), [(o["alert"], o["summary"]) for o in outcomes]
