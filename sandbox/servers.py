"""Shared plumbing for the sandbox's local HTTP servers (Hyperliquid API, Slack API).

Each server runs as its own process. Whoever starts it (the sandbox manager, a test fixture) needs to
know *when* it accepts connections and *which* port it got, so `serve()` prints exactly one line
`listening on http://HOST:PORT` after the socket is bound (port 0 picks a free port), and
`spawn()` starts such a process and waits for that line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn

LISTENING_RE = re.compile(r"listening on (http://\S+)")


class _AnnouncingServer(uvicorn.Server):
    """uvicorn server that announces its real address once the listening socket exists."""

    def __init__(self, config: uvicorn.Config, host: str, refuse: Callable[[], bool] | None = None) -> None:
        super().__init__(config)
        self._announce_host = host
        self._refuse = refuse
        self._refused_port: int | None = None  # set while we are not listening on purpose

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not getattr(self, "servers", None):
            return
        port = self.config.port
        for server in self.servers:
            for sock in server.sockets or ():
                port = sock.getsockname()[1]
                break
        print(f"listening on http://{self._announce_host}:{port}", flush=True)

    async def on_tick(self, counter: int) -> bool:
        if self._refuse is not None:
            await self._gate(self._refuse())
        return await super().on_tick(counter)

    async def _gate(self, refuse: bool) -> None:
        """An unreachable host: stop listening and reset open connections while `refuse()` holds (callers
        get "connection refused"); listen again on the same port once it no longer does."""
        if refuse and self._refused_port is None:
            port = next((sock.getsockname()[1] for server in self.servers for sock in server.sockets or ()),
                        self.config.port)
            for server in self.servers:
                server.close()
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            self._refused_port = port
        elif not refuse and self._refused_port is not None:
            config = self.config
            protocol = functools.partial(config.http_protocol_class, config=config, server_state=self.server_state,
                                         app_state=self.lifespan.state)
            server = await asyncio.get_running_loop().create_server(
                protocol, host=config.host, port=self._refused_port, backlog=config.backlog)
            self.servers = [server]
            self._refused_port = None


def serve(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
          refuse: Callable[[], bool] | None = None) -> None:
    """Serve `app` until SIGINT/SIGTERM; prints `listening on http://HOST:PORT` when ready.

    `refuse`, polled ten times a second, makes the server unreachable while it returns true.
    """
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
    _AnnouncingServer(config, host, refuse).run()


def common_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every sandbox server takes (--port, --host, --state-dir, --faults)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port; see the printed line)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-dir", type=Path, required=True, help="directory for persisted state")
    parser.add_argument("--faults", type=Path, required=True, help="fault file (see sandbox.faults)")
    parser.add_argument("--log-level", default="warning")
    return parser


def spawn(
    module: str,
    args: Sequence[str],
    *,
    timeout: float = 20.0,
    log_path: Path | None = None,
    python: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m module args...` and return (process, base URL) once it is listening.

    stdout is read until the `listening on` line; stderr goes to `log_path` (or is discarded) so a
    chatty server can never block on a full pipe. Raises RuntimeError (after killing the process) if
    the server exits or stays silent for `timeout` seconds.
    """
    stderr: Any = subprocess.DEVNULL
    log_handle = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_handle = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
        stderr = log_handle
    proc = subprocess.Popen(
        [python or sys.executable, "-u", "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        env=env if env is not None else dict(os.environ),
    )
    if log_handle is not None:
        log_handle.close()
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buffer = b""
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            match = LISTENING_RE.search(buffer.decode(errors="replace"))
            if match:
                return proc, match.group(1)
    finally:
        selector.close()
    proc.kill()
    proc.wait(timeout=5)
    raise RuntimeError(f"{module} did not start (rc={proc.returncode}); output: {buffer.decode(errors='replace')}")
