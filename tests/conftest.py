"""Test session: one real Prefect server (SQLite) for the whole session, real sandbox processes per test.

The server is started once (it costs 5-15 s here) and every test and every subprocess talks to it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: a private home, no telemetry, quick log shipping.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="runbook-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect-client")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("RUNBOOK_CONFIG", None)

from runbook.localserver import LocalServer, start_server  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[LocalServer]:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    server = start_server(_SESSION_HOME / "prefect-server")
    previous = {key: os.environ.get(key) for key in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    os.environ["PREFECT_API_URL"] = server.url  # for subprocesses (`runbook run ...`)
    os.environ["PREFECT_UI_URL"] = server.ui_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_UI_URL: server.ui_url}):
            yield server
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
