"""Start a local Prefect server (SQLite) for the demo and the test session, and wait until it is healthy.

`prefect server start` returns long before the API answers; we poll /api/health instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


class ServerError(Exception):
    pass


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there, else any free loopback port."""
    candidates = ([preferred] if preferred else []) + [0]
    for port in candidates:
        with socket.socket() as sock:
            # As uvicorn does: connections of a server just stopped (TIME_WAIT) do not hold its port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise ServerError("no free port")


def server_env(home: Path, port: int) -> dict[str, str]:
    """The environment a client of this server (and the server itself) needs."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        # SQLite has one writer. The server's task-run recorder inserts each task run in a transaction of
        # its own (Prefect's batch size: 1) and its event persister 20 events at a time; during a burst of
        # task runs their commits make the API's own deferred transactions fail with SQLITE_BUSY, which
        # the API answers with 503 and the client retries after 2-17 s. Batches of up to 500 written once
        # a second make far fewer, larger transactions (docs/benchmarks.md, "empty flow run").
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
    }


@dataclass
class LocalServer:
    process: subprocess.Popen[bytes]
    url: str
    ui_url: str
    env: dict[str, str]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_server(home: Path, port: int | None = None, *, exact_port: bool = False,
                 timeout_seconds: float = 90.0, database_url: str | None = None,
                 server_settings: dict[str, str] | None = None) -> LocalServer:
    """Start `prefect server start` on `port` (another free one if taken, unless `exact_port`); its
    database is SQLite in `home` unless `database_url` names another (postgresql+asyncpg://...);
    `server_settings` (PREFECT_SERVER_* variables) override server_env's for this server only."""
    home.mkdir(parents=True, exist_ok=True)
    chosen = free_port(port)
    if exact_port and chosen != port:
        raise ServerError(f"port {port} is already in use")
    port = chosen
    env = server_env(home, port)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    env.update(server_settings or {})
    log_path = home / "server.log"
    prefect = Path(sys.executable).with_name("prefect")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LocalServer(process, env["PREFECT_API_URL"], env["PREFECT_UI_URL"], env, log_path)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"prefect server exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise ServerError(f"prefect server not healthy after {timeout_seconds:g}s; see {log_path}")
