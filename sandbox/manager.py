"""The sandbox's lifecycle: `up`, `down`, `status` and `fault` (the CLI's `runbook sandbox ...`).

`up(DIR)` starts three detached processes on free loopback ports — the local Hyperliquid API, the
local Slack API and the simulated bot — funds a fresh account whose trading key is an approved
agent, and writes `DIR/runbook.toml`, a complete runbook configuration pointing at them. The
runbook then treats the sandbox bot like any real one: it finds it by pidfile and command line and
restarts it with the TOML's `start_command`, never through this module.

Layout of DIR::

    state.json       ports, PIDs, URLs, addresses (no secrets)
    runbook.toml     the runbook configuration (holds the Slack token: mode 0600)
    faults.json      the fault switchboard every process reads (sandbox.faults)
    exchange/        the Hyperliquid API's state;  slack/  the Slack API's (messages.jsonl)
    logs/            exchange.log, slack.log (their stdout/stderr)
    bot/             the bot's home: config/, logs/, data/, trading_bot.pid
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil
from eth_account import Account

from sandbox.faults import FAULT_KINDS, read_faults, write_faults

MODULES = {"exchange": "sandbox.hyperliquid_api", "slack": "sandbox.slack_api", "bot": "sandbox.bot"}
ALERT_CHANNEL = "#trading-alerts"
STATUS_CHANNEL = "#trading-status"
STARTING_BALANCE = "10000"
PREFECT_PORT = 4200  # the Prefect server's default port: never hand it to a sandbox process
STOP_GRACE_SECONDS = 5.0
READY_TIMEOUT_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 2.0
# Ports claimed by every sandbox on this machine, so two sandboxes (or a crashed bot that comes back)
# never collide even while one of them is down.
PORT_REGISTRY = Path(tempfile.gettempdir()) / "runbook-sandbox-ports.json"

# The bot's runbook-facing configuration: small sizes so the 10 000 USDC account lasts, and a daily
# loss limit the `daily-loss` fault reaches in a few trades.
BOT_SECTIONS: dict[str, dict[str, Any]] = {
    "risk_management": {"stop_loss_pct": 2.0, "trailing_stop": False, "take_profit_pct": 3.0,
                        "max_position_usd": 1000.0, "leverage": 3},
    "risk_limits": {"daily_loss_limit_usd": 100.0, "max_drawdown_pct": 10.0, "min_balance_usd": 1000.0},
    "position_sizing": {"base_size_usd": 50.0, "max_positions": 2},
    "strategy": {"name": "random-walk", "coins": ["BTC", "ETH", "SOL"], "max_hold_seconds": 30.0},
}


class SandboxError(Exception):
    """The sandbox cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxInfo:
    """Where a running sandbox answers (what `runbook sandbox up` prints)."""

    directory: Path
    config: Path
    already_running: bool
    exchange_url: str
    slack_url: str
    health_url: str
    metrics_url: str
    account_address: str
    pids: dict[str, int]


# --- public API -----------------------------------------------------------------------------


def up(directory: Path, seed: int = 7, startup_seconds: float = 1.5) -> SandboxInfo:
    """Start the exchange, Slack and the bot in DIR and write DIR/runbook.toml; report if already up."""
    directory = directory.resolve()
    state = _read_state(directory)
    if state is not None:
        alive = {name: _component_pid(directory, state, name) is not None for name in MODULES}
        if all(alive.values()):
            return _info(directory, state, already_running=True)
        if any(alive.values()):
            down_parts = ", ".join(name for name, running in alive.items() if not running)
            raise SandboxError(f"the sandbox in {directory} is partly running ({down_parts} down); "
                               f"run `runbook sandbox down --dir {directory}` first")
    try:
        return _start(directory, seed, startup_seconds)
    except BaseException:
        if _read_state(directory) is not None:
            down(directory)
        raise


def start_bot(directory: Path) -> int:
    """Start the bot detached, exactly as the TOML's start_command does; returns its PID."""
    directory = directory.resolve()
    state = _require_state(directory)
    home = directory / "bot"
    pid = _launch(_bot_command(home), cwd=home, output=home / "logs" / "stdout.log")
    state["pids"]["bot"] = pid
    _write_state(directory, state)
    return pid


def down(directory: Path) -> list[str]:
    """Stop every sandbox process by its recorded PID (each verified to be ours); one line per process."""
    directory = directory.resolve()
    state = _require_state(directory)
    targets: list[tuple[str, psutil.Process]] = []
    lines: list[str] = []
    for name in ("bot", "slack", "exchange"):
        found = [proc for pid in _candidate_pids(directory, state, name)
                 if (proc := _verified(pid, name, directory)) is not None]
        if not found:
            lines.append(f"{name}: not running")
        targets.extend((name, proc) for proc in found if proc.pid not in {p.pid for _, p in targets})
    for _, proc in targets:
        _signal(proc, signal.SIGTERM)
    _, stubborn = psutil.wait_procs([proc for _, proc in targets], timeout=STOP_GRACE_SECONDS)
    for proc in stubborn:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(stubborn, timeout=STOP_GRACE_SECONDS)
    for name, proc in targets:
        how = "SIGKILL after 5 s" if proc in stubborn else "SIGTERM"
        lines.append(f"{name}: stopped pid {proc.pid} ({how})")
    _remove_stale_pidfile(directory)
    state["stopped_at"] = _now()
    _write_state(directory, state)
    _release_ports(directory)
    return lines


def status(directory: Path) -> dict[str, Any]:
    """Each component's PID, whether it is alive, its URL and the HTTP code it answers with; the faults."""
    directory = directory.resolve()
    state = _require_state(directory)
    urls = state["urls"]
    probes: dict[str, Callable[[], int]] = {
        "exchange": lambda: httpx.post(f"{urls['exchange']}/info", json={"type": "meta"},
                                       timeout=PROBE_TIMEOUT_SECONDS).status_code,
        "slack": lambda: httpx.post(f"{urls['slack']}auth.test", headers={"Authorization": f"Bearer {_token(directory)}"},
                                    timeout=PROBE_TIMEOUT_SECONDS).status_code,
        "bot": lambda: httpx.get(urls["health"], timeout=PROBE_TIMEOUT_SECONDS).status_code,
    }
    components: dict[str, dict[str, Any]] = {}
    for name, probe in probes.items():
        pid = _component_pid(directory, state, name)
        components[name] = {
            "pid": pid if pid is not None else state["pids"].get(name),
            "alive": pid is not None,
            "url": urls["health"] if name == "bot" else urls[name],
            "answering": _probe(probe) if pid is not None else None,
        }
    return {
        "directory": str(directory),
        "up": all(component["alive"] for component in components.values()),
        "components": components,
        "metrics_url": urls["metrics"],
        "faults": read_faults(directory / "faults.json"),
    }


def fault(directory: Path, kind: str, params: dict[str, Any] | None = None) -> str:
    """Inject one fault (see sandbox.faults.FAULT_KINDS), `crash` the bot now, or `clear` them all."""
    directory = directory.resolve()
    state = _require_state(directory)
    faults_file = directory / "faults.json"
    if kind == "clear":
        active = sorted(read_faults(faults_file))
        write_faults(faults_file, {})
        return f"cleared faults: {', '.join(active)}" if active else "no faults were active"
    if kind not in FAULT_KINDS:
        raise SandboxError(f"unknown fault {kind!r}; valid: {', '.join([*FAULT_KINDS, 'clear'])}")
    if kind == "crash":
        pid = _component_pid(directory, state, "bot")
        if pid is None:
            raise SandboxError("crash: the bot is not running")
        proc = psutil.Process(pid)
        _signal(proc, signal.SIGKILL)
        psutil.wait_procs([proc], timeout=STOP_GRACE_SECONDS)
        return f"crash: killed bot pid {pid} with SIGKILL; it stays down until restarted"
    faults = read_faults(faults_file)
    faults[kind] = dict(params or {})
    write_faults(faults_file, faults)
    detail = f" {json.dumps(params, sort_keys=True)}" if params else ""
    return f"fault {kind}{detail} active: {FAULT_KINDS[kind]}"


# --- starting -------------------------------------------------------------------------------


def _start(directory: Path, seed: int, startup_seconds: float) -> SandboxInfo:
    home = directory / "bot"
    for folder in (directory / "logs", directory / "reports", home / "config", home / "logs", home / "data"):
        folder.mkdir(parents=True, exist_ok=True)
    faults_file = directory / "faults.json"
    write_faults(faults_file, {})
    exchange_port, slack_port, health_port, metrics_port, intake_port = _claim_ports(directory, 5)
    urls = {
        "exchange": f"http://127.0.0.1:{exchange_port}",
        "slack": f"http://127.0.0.1:{slack_port}/api/",
        "health": f"http://127.0.0.1:{health_port}/health",
        "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
    }
    # The master key only proves the account exists; it is never stored. The bot trades with an agent.
    master = Account.create().address.lower()
    agent = Account.create()
    token = f"xoxb-sandbox-{secrets.token_hex(12)}"
    signing_secret = secrets.token_hex(16)
    state: dict[str, Any] = {
        "directory": str(directory), "created_at": _now(), "seed": seed, "python": sys.executable,
        "ports": {"exchange": exchange_port, "slack": slack_port, "health": health_port, "metrics": metrics_port,
                  "intake": intake_port},
        "urls": urls, "pids": {}, "account_address": master, "agent_address": agent.address.lower(),
    }
    _write_state(directory, state)

    state["pids"]["exchange"] = _launch(
        [sys.executable, "-m", MODULES["exchange"], "--port", str(exchange_port), "--state-dir",
         str(directory / "exchange"), "--faults", str(faults_file), "--seed", str(seed)],
        cwd=directory, output=directory / "logs" / "exchange.log")
    state["pids"]["slack"] = _launch(
        [sys.executable, "-m", MODULES["slack"], "--port", str(slack_port), "--state-dir", str(directory / "slack"),
         "--faults", str(faults_file), "--token", token, "--signing-secret", signing_secret,
         "--interactivity-url", f"http://127.0.0.1:{intake_port}/slack/interactions",
         "--channel", ALERT_CHANNEL.lstrip("#"), "--channel", STATUS_CHANNEL.lstrip("#")],
        cwd=directory, output=directory / "logs" / "slack.log")
    _write_state(directory, state)
    _wait_ready("exchange", state["pids"]["exchange"], directory / "logs" / "exchange.log",
                lambda: httpx.post(f"{urls['exchange']}/info", json={"type": "meta"}, timeout=1).status_code == 200)
    _wait_ready("slack", state["pids"]["slack"], directory / "logs" / "slack.log",
                lambda: httpx.post(f"{urls['slack']}auth.test", headers={"Authorization": f"Bearer {token}"},
                                   timeout=1).json().get("ok") is True)

    response = httpx.post(f"{urls['exchange']}/_sandbox/accounts", timeout=5, json={
        "address": master, "balance": STARTING_BALANCE, "agents": [agent.address.lower()]})
    if response.status_code != 200:
        raise SandboxError(f"the local Hyperliquid API refused the account: {response.text}")
    key_file = home / "config" / "agent_key.json"
    _write_private(key_file, json.dumps({"address": agent.address.lower(), "private_key": "0x" + bytes(agent.key).hex()}))
    _write_bot_config(home, state, faults_file, startup_seconds)
    _write_private(directory / "runbook.toml", _runbook_toml(directory, state, token, secrets.token_urlsafe(24),
                                                                 signing_secret))

    start_bot(directory)
    state = _require_state(directory)
    _wait_ready("bot", state["pids"]["bot"], home / "logs" / "trading_bot.log",
                lambda: httpx.get(urls["health"], timeout=1).status_code == 200,
                timeout=READY_TIMEOUT_SECONDS + startup_seconds)
    _check_config(directory / "runbook.toml")
    return _info(directory, state, already_running=False)


def _write_bot_config(home: Path, state: dict[str, Any], faults_file: Path, startup_seconds: float) -> None:
    config = {
        "bot": {
            "name": "sandbox",
            "health_port": state["ports"]["health"],
            "metrics_port": state["ports"]["metrics"],
            "faults_file": str(faults_file),
            "exchange_url": state["urls"]["exchange"],
            "account_address": state["account_address"],
            "key_file": "config/agent_key.json",
            "startup_seconds": startup_seconds,
            "trade_interval_seconds": 3.0,
            "api_timeout_seconds": 10.0,
            "seed": state["seed"],
        },
        **BOT_SECTIONS,
    }
    (home / "config" / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _runbook_toml(directory: Path, state: dict[str, Any], token: str, intake_token: str, signing_secret: str) -> str:
    """The runbook's configuration for this sandbox (see runbook/settings.py for every key)."""
    home = directory / "bot"
    urls = state["urls"]
    q = _toml
    return "\n".join([
        "# Written by `runbook sandbox up`: the runbook configuration for this sandbox.",
        f"journal_url = {q('sqlite:///' + str(directory / 'journal.db'))}",
        f"reports_dir = {q(str(directory / 'reports'))}",
        "",
        "[slack]",
        f"token = {q(token)}",
        "# The local Slack signs button clicks with this and sends them to the intake's /slack/interactions.",
        f"signing_secret = {q(signing_secret)}",
        f"base_url = {q(urls['slack'])}",
        f"channel = {q(ALERT_CHANNEL)}",
        f"stakeholder_channel = {q(STATUS_CHANNEL)}",
        "",
        "[slack.escalation]",
        'L1 = "<@U0ONCALL1>"',
        'L2 = "<@U0SENIOR2>"',
        'L3 = "<@U0MANAGER3>"',
        'L4 = "<@U0EXEC4>"',
        "",
        "[policy]",
        'restart = "auto"',
        "",
        "[recovery]",
        "verify_timeout_seconds = 30",
        "",
        "[backup]",
        f"folder = {q(str(directory / 'backups'))}",
        "",
        "[watch]",
        "# The sandbox host has plenty of memory: watch the bot's own size, and a low balance.",
        "bot_memory_limit_mb = 300",
        "min_balance_usd = 100",
        "",
        "[infra]",
        "# ...and restart it (when it is the largest process) above this, not only above 90 % of the host.",
        "memory_restart_bot_mb = 350",
        "",
        "[intake]",
        f"port = {state['ports']['intake']}",
        f"token = {q(intake_token)}",
        "",
        "[bots.sandbox]",
        f"working_dir = {q(str(home))}",
        'pidfile = "trading_bot.pid"',
        f"process_match = {q(['sandbox.bot', '--home', str(home)])}",
        f"start_command = {q(_bot_command(home))}",
        f"health_url = {q(urls['health'])}",
        f"metrics_url = {q(urls['metrics'])}",
        'key_files = ["config/agent_key.json"]',
        "",
        "[bots.sandbox.hyperliquid]",
        f"api_url = {q(urls['exchange'])}",
        f"account_address = {q(state['account_address'])}",
        f"key_file = {q(str(home / 'config' / 'agent_key.json'))}",
        "",
    ])


def _toml(value: str | list[str]) -> str:
    """A TOML basic string or array of them (JSON string escapes are valid TOML)."""
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    return json.dumps(value)


def _bot_command(home: Path) -> list[str]:
    return [sys.executable, "-m", MODULES["bot"], "--home", str(home)]


def _check_config(path: Path) -> None:
    from runbook.settings import ConfigError, load_settings

    try:
        load_settings(path)
    except ConfigError as error:
        raise SandboxError(f"the generated {path} does not load: {error}") from None


def _launch(command: list[str], cwd: Path, output: Path) -> int:
    """Start a process in its own session (it outlives us and our terminal), output appended to a file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("ab") as sink:
        process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process.pid


def _wait_ready(name: str, pid: int, log_file: Path, ready: Callable[[], bool],
                timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Poll until `ready()`; fail fast, with the end of its log, if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (httpx.HTTPError, ValueError):
            pass
        if not _alive(pid):
            raise SandboxError(f"{name} (pid {pid}) exited during start-up; end of {log_file}:\n{_tail(log_file)}")
        time.sleep(0.1)
    raise SandboxError(f"{name} (pid {pid}) did not answer within {timeout:.0f} s; end of {log_file}:\n"
                       f"{_tail(log_file)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"


def _info(directory: Path, state: dict[str, Any], already_running: bool) -> SandboxInfo:
    urls = state["urls"]
    pids = {name: pid for name in MODULES if (pid := _component_pid(directory, state, name)) is not None}
    return SandboxInfo(
        directory=directory, config=directory / "runbook.toml", already_running=already_running,
        exchange_url=urls["exchange"], slack_url=urls["slack"], health_url=urls["health"],
        metrics_url=urls["metrics"], account_address=state["account_address"], pids=pids,
    )


# --- processes ------------------------------------------------------------------------------


def _candidate_pids(directory: Path, state: dict[str, Any], name: str) -> list[int]:
    """PIDs that may belong to a component: the bot's pidfile first (a runbook restart updates it)."""
    pids = [pid] if name == "bot" and (pid := _pidfile_pid(directory)) is not None else []
    recorded = state["pids"].get(name)
    return pids + ([recorded] if recorded is not None and recorded not in pids else [])


def _component_pid(directory: Path, state: dict[str, Any], name: str) -> int | None:
    """The live, verified PID of a component, or None."""
    for pid in _candidate_pids(directory, state, name):
        if _verified(pid, name, directory) is not None:
            return pid
    return None


def _verified(pid: int, name: str, directory: Path) -> psutil.Process | None:
    """The process if it is alive and its command line is this sandbox's `name` (guards against PID reuse)."""
    marker = str(directory / ("bot" if name == "bot" else name))
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    return proc if MODULES[name] in cmdline and marker in cmdline else None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proc: psutil.Process, signum: signal.Signals) -> None:
    try:
        proc.send_signal(signum)  # psutil refuses if the PID was reused since we verified it
    except psutil.Error:
        pass


def _probe(call: Callable[[], int]) -> int | None:
    try:
        return call()
    except httpx.HTTPError:
        return None


def _pidfile_pid(directory: Path) -> int | None:
    try:
        return int((directory / "bot" / "trading_bot.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _remove_stale_pidfile(directory: Path) -> None:
    pid = _pidfile_pid(directory)
    if pid is not None and _verified(pid, "bot", directory) is None:
        (directory / "bot" / "trading_bot.pid").unlink(missing_ok=True)


# --- files ----------------------------------------------------------------------------------


def _read_state(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "state.json").read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise SandboxError(f"{directory / 'state.json'} is corrupt: {error}") from None


def _require_state(directory: Path) -> dict[str, Any]:
    state = _read_state(directory)
    if state is None:
        raise SandboxError(f"no sandbox in {directory} (no state.json); start one with `runbook sandbox up`")
    return state


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    tmp = directory / ".state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, directory / "state.json")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (key material, tokens)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _token(directory: Path) -> str:
    import tomllib

    return tomllib.loads((directory / "runbook.toml").read_text())["slack"]["token"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- ports ----------------------------------------------------------------------------------


@contextmanager
def _port_claims() -> Iterator[dict[str, list[int]]]:
    """The machine-wide table {sandbox dir: ports}, locked while in use; dirs that are gone drop out."""
    lock_path = PORT_REGISTRY.with_suffix(".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            claims = json.loads(PORT_REGISTRY.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            claims = {}
        claims = {path: ports for path, ports in claims.items() if Path(path).is_dir()}
        yield claims
        tmp = PORT_REGISTRY.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(claims))
        os.replace(tmp, PORT_REGISTRY)


def _claim_ports(directory: Path, count: int) -> list[int]:
    """Free loopback ports (bind to 0, then release) that no other sandbox has claimed, never 4200."""
    with _port_claims() as claims:
        taken = {port for path, ports in claims.items() if path != str(directory) for port in ports}
        chosen: list[int] = []
        while len(chosen) < count:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port != PREFECT_PORT and port not in taken and port not in chosen:
                chosen.append(port)
        claims[str(directory)] = chosen
    return chosen


def _release_ports(directory: Path) -> None:
    with _port_claims() as claims:
        claims.pop(str(directory), None)
