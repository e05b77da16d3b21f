"""What both benchmarks share: a throw-away Prefect server + sandbox, progress lines, the bot's own
start-up time (the reference), statistics and the table.

Everything a benchmark starts lives in one temporary folder and is stopped by `Stack.close()`, which
runs on normal exit, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
RUNBOOK = str(Path(sys.executable).with_name("runbook"))
# The flow's start_bot never hands these to the bot it starts; the reference start does the same.
SECRET_ENV_PREFIXES = ("RUNBOOK_", "PREFECT_API_KEY", "SLACK_")


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """Timestamped progress lines on stderr (stdout is kept for the table or the JSON)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)


def sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` that cleans up always runs."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


# --- the stack: Prefect server + sandbox ------------------------------------------------------


class Stack:
    """A local Prefect server and a sandbox (bot, exchange, Slack) in a temporary folder."""

    def __init__(self, say: Progress, keep: bool = False) -> None:
        self.say = say
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="runbook-bench-"))
        self.server: Any = None
        self.sandbox_dir = self.root / "sandbox"
        self.sandbox_up = False
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    def start(self, startup_seconds: float = 1.5, sandbox: bool = True, database_url: str | None = None,
              server_settings: dict[str, str] | None = None) -> "Stack":
        from runbook.localserver import start_server

        home = self.root / "prefect"
        self.say(f"starting a local Prefect server in {home} (5-15 s; more on a loaded machine)")
        try:
            self.server = start_server(home, database_url=database_url, timeout_seconds=300,
                                       server_settings=server_settings)
        except BaseException:  # interrupted or failed while it was coming up: do not leave it running
            stop_orphan_server(home)
            raise
        # Every child (runbook run / serve, the flows they run) talks to this server.
        os.environ.update(self.server.env)
        self.say(f"Prefect server up at {self.server.url}")
        if not sandbox:
            return self

        from sandbox import manager

        self.say("starting the sandbox (bot, local Hyperliquid API, local Slack API)")
        self.sandbox_up = True
        info = manager.up(self.sandbox_dir, startup_seconds=startup_seconds)
        self.say(f"sandbox up: bot health {info.health_url}")
        return self

    @property
    def config(self) -> Path:
        return self.sandbox_dir / "runbook.toml"

    def on_close(self, what: str, action: Callable[[], None]) -> None:
        """Register a clean-up step; they run last-registered first, before the sandbox and server."""
        self._cleanups.append((what, action))

    def close(self) -> None:
        for what, action in reversed(self._cleanups):
            try:
                self.say(f"stopping {what}")
                action()
            except BaseException as error:  # keep cleaning up whatever happens
                self.say(f"  could not stop {what}: {error!r}")
        self._cleanups.clear()
        if self.sandbox_up:
            try:
                from sandbox import manager

                self.say("stopping the sandbox")
                manager.down(self.sandbox_dir)
            except BaseException as error:
                self.say(f"  could not stop the sandbox: {error!r}")
            self.sandbox_up = False
        if self.server is not None:
            try:
                self.say("stopping the Prefect server")
                self.server.stop()
            except BaseException as error:
                self.say(f"  could not stop the Prefect server: {error!r}")
            self.server = None
        if self.keep:
            self.say(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- the Prefect API, plainly over HTTP (the bench does not need a Prefect client) -----------

    def api_get(self, path: str) -> Any:
        response = httpx.get(f"{self.server.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def api_post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(f"{self.server.url}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()


def stop_orphan_server(home: Path) -> None:
    """A `prefect server start` whose PREFECT_HOME is our own temporary `home` (nothing else matches)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "server" in (proc.info["cmdline"] or []) and proc.environ().get("PREFECT_HOME") == str(home):
                os.killpg(proc.pid, signal.SIGTERM)  # it leads its own session (start_new_session)
                proc.wait(timeout=15)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue


def stop_process_group(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM a process started with start_new_session (and its group); SIGKILL after `grace`."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=5)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"


# --- the bot ----------------------------------------------------------------------------------


def health_code(url: str, timeout: float = 1.0) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def wait_until(ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll `ready()` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def stop_bot(bot: Any, expected_pid: int | None = None, timeout: float = 10.0) -> int | None:
    """Stop the bot by its verified PID (pidfile + command line, same creation time): SIGTERM, then SIGKILL."""
    from tasks.process import locate_bot

    found = locate_bot(bot)
    if found is None:
        return None
    if expected_pid is not None and found.pid != expected_pid:
        raise BenchError(f"the bot is PID {found.pid}, not the PID {expected_pid} we started; not touching it")
    proc = psutil.Process(found.pid)
    if proc.create_time() != found.create_time:
        raise BenchError(f"PID {found.pid} was recycled; not touching it")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
    return found.pid


def measure_bot_startup(bot: Any, rounds: int, say: Progress) -> list[float]:
    """The reference: the bot's own start-up time, from running its start command (as the flow does:
    cwd working_dir, new session, no RUNBOOK_/SLACK_ variables) to /health answering 200.

    The running bot is stopped (verified PID) before each start; the last one started is left running.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_ENV_PREFIXES)}
    stdout_path = bot.path(bot.stdout_log)
    times: list[float] = []
    previous: subprocess.Popen[bytes] | None = None
    for i in range(1, rounds + 1):
        stop_bot(bot, expected_pid=previous.pid if previous else None)
        if previous is not None:
            previous.wait(timeout=5)  # our child: reap it
        wait_until(lambda: health_code(bot.health_url, 0.5) is None, 10, "the stopped bot's /health to go away", 0.05)
        with open(stdout_path, "ab") as sink:
            started = time.monotonic()
            child = subprocess.Popen(bot.start_command, cwd=bot.working_dir, stdin=subprocess.DEVNULL, stdout=sink,
                                     stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env)
        deadline = started + 60
        while health_code(bot.health_url) != 200:
            if child.poll() is not None:
                raise BenchError(f"the bot exited with {child.returncode} during start-up; see {stdout_path}")
            if time.monotonic() > deadline:
                raise BenchError(f"the bot did not answer /health 200 within 60 s; see {stdout_path}")
            time.sleep(0.02)
        times.append(time.monotonic() - started)
        say(f"reference {i}/{rounds}: bot start command -> /health 200 in {times[-1]:.2f} s")
        previous = child
    return times


# --- figures ----------------------------------------------------------------------------------


def stats(values: Iterable[float | None]) -> dict[str, float | int | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"n": 0, "median": None, "worst": None, "best": None}
    return {"n": len(present), "median": statistics.median(present), "worst": max(present), "best": min(present)}


def seconds(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with aligned columns (readable in a terminal, pastes into README.md)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def machine() -> dict[str, Any]:
    """Where and when: the figures only mean something next to this."""
    from importlib.metadata import version

    load = os.getloadavg()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "prefect": version("prefect"),
        "platform": platform.platform(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["load_average_1_5_15"])
    end = info.get("load_average_end")
    at_end = f" ({', '.join(f'{x:.2f}' for x in end)} at the end)" if end else ""
    return (f"{info['date']} — {info['cores']} cores, load average {load} at start{at_end}; "
            f"Python {info['python']}, Prefect {info['prefect']}; {info['platform']}")


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


# --- results for `make bench` (bench/run_all.py) -----------------------------------------------

# Each benchmark, besides its own printed tables, writes its headline rows as JSON to the file named
# by this variable (when set), so `python -m bench.run_all` can print one table of every benchmark.
RESULTS_ENV = "BENCH_RESULTS"


def result_row(measure: str, project: str, reference: str, ratio_value: float | None, target: str,
               met: bool | str | None) -> dict[str, Any]:
    """One line of the `make bench` table: what was measured, our figure, the reference measured in the
    same run, ratio = ours / reference (None where a ratio means nothing), the target, and whether it
    is met (True / False / a qualified string such as "median only" / None when there is no target)."""
    met_text = "-" if met is None else met if isinstance(met, str) else ("yes" if met else "NO")
    return {"measure": measure, "project": project, "reference": reference,
            "ratio": ratio_value, "ratio_text": "-" if ratio_value is None else f"{ratio_value:.2f}x",
            "target": target, "met": met, "met_text": met_text}


def write_results(benchmark: str, rows: Sequence[dict[str, Any]], failure: str | None = None) -> None:
    """Write this benchmark's rows where $BENCH_RESULTS says (nothing when it is unset)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    Path(path).write_text(json.dumps({"benchmark": benchmark, "rows": list(rows), "failure": failure,
                                      "machine": machine()}, indent=2, default=str))


# --- serve ------------------------------------------------------------------------------------


ALERT = "crash-recovery"
STORM_MAX = "1000"


def start_serve(stack: Stack, poll_interval: float | None, runner_poll: float | None, mode_env: dict[str, str],
                mode: str, say: Progress, flags: Sequence[str] = ("--no-intake",)) -> subprocess.Popen[bytes]:
    """`runbook serve` on the stack's config, logging to serve-MODE.log; stopped by `stack.close()`."""
    env = {**os.environ, "RUNBOOK_RECOVERY__RESTART_STORM_MAX": STORM_MAX, **mode_env}
    if poll_interval is not None:
        env["RUNBOOK_WATCH__POLL_INTERVAL_SECONDS"] = f"{poll_interval:g}"
    if runner_poll is not None:
        env["RUNBOOK_WATCH__RUNNER_POLL_SECONDS"] = f"{runner_poll:g}"
    log_path = stack.root / f"serve-{mode}.log"
    say(f"[{mode}] starting `runbook serve --config {stack.config} {' '.join(flags)}` "
        f"({' '.join(f'{k}={v}' for k, v in mode_env.items())} RUNBOOK_RECOVERY__RESTART_STORM_MAX={STORM_MAX}; "
        f"log {log_path})")
    with open(log_path, "ab") as log:
        process = subprocess.Popen([RUNBOOK, "serve", "--config", str(stack.config), *flags],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    stack.on_close("runbook serve (SIGTERM)", lambda: stop_process_group(process))
    return process


def wait_serve_ready(stack: Stack, process: subprocess.Popen[bytes], mode: str, timeout: float = 600.0) -> dict[str, Any]:
    """The crash-recovery deployment exists, is not paused, its runner is polling, and its trigger exists."""
    log_path = stack.root / f"serve-{mode}.log"
    found: dict[str, Any] = {}

    def ready() -> bool:
        if process.poll() is not None:
            raise BenchError(f"runbook serve exited with {process.returncode}; end of {log_path}:\n{tail(log_path)}")
        deployments = stack.api_post("/deployments/filter", {"deployments": {"name": {"any_": [ALERT]}}})
        if not deployments:
            return False
        deployment = deployments[0]
        if deployment.get("paused") or deployment.get("status") != "READY":
            return False
        automations = stack.api_post("/automations/filter", {})
        trigger = [a for a in automations if a.get("enabled") and any(
            action.get("deployment_id") == deployment["id"] for action in a.get("actions", []))]
        if not trigger or "serving" not in log_path.read_text(errors="replace"):
            return False
        found.update(deployment=deployment, automation=trigger[0])
        return True

    wait_until(ready, timeout, "runbook serve to register the crash-recovery deployment and its trigger", 0.5)
    return found
