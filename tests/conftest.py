"""Test session: one real Prefect server (SQLite) for the whole session, real sandbox processes per test.

The server is started once (it costs 5-15 s here) and every test and every subprocess talks to it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: a private home, no telemetry, quick log shipping.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="runbook-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect-client")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.pop("RUNBOOK_CONFIG", None)

from runbook.localserver import LocalServer, free_port, server_env, start_server  # noqa: E402

# The session server's address is fixed now, before Prefect reads its settings, so that every thread
# (a flow run in a worker thread does not see a settings context) and every subprocess agrees on it.
_SERVER_HOME = _SESSION_HOME / "prefect-server"
_SERVER_PORT = free_port()
for _key in ("PREFECT_API_URL", "PREFECT_UI_URL"):
    os.environ[_key] = server_env(_SERVER_HOME, _SERVER_PORT)[_key]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[LocalServer]:
    # A generous deadline: on a 2-core machine shared with other test runs the server takes minutes.
    server = start_server(_SERVER_HOME, port=_SERVER_PORT, exact_port=True, timeout_seconds=300)
    try:
        yield server
    finally:
        # Send queued events while the server is still there; otherwise the process waits on them at exit.
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30, at_exit=False)
        server.stop()


@pytest.fixture
def sandbox(tmp_path: Path, prefect_server: LocalServer) -> Iterator[Path]:
    """A fresh sandbox (bot, exchange, Slack, journal) per test, stopped afterwards whatever happens."""
    from sandbox import manager

    directory = tmp_path / "sandbox"
    manager.up(directory, startup_seconds=0.5)
    try:
        yield directory
    finally:
        manager.down(directory)


@contextmanager
def running_sandbox(directory: Path) -> Iterator[Path]:
    """A sandbox for a whole module (starting one costs seconds), stopped afterwards whatever happens.

    Queued Prefect events are sent first, while the session server is still up: left to interpreter
    exit, they are retried against a stopped server and hold the process for a minute."""
    from prefect.events.worker import EventsWorker

    from sandbox import manager

    manager.up(directory, startup_seconds=0.5)
    try:
        yield directory
    finally:
        EventsWorker.drain_all(timeout=30, at_exit=False)
        manager.down(directory)
