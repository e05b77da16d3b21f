"""Find, stop and start the monitored bot's process.

The bot is found by its pidfile and/or a command-line match, and every PID is verified (command line
still matches, same creation time) right before it is signalled: a recycled PID is never touched, and
nothing is ever killed by name pattern.
"""

from __future__ import annotations

import os
import select
import signal
import time
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from prefect import task

from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY

# Never hand our own credentials to the bot we start.
_SECRET_ENV_PREFIXES = ("RUNBOOK_", "PREFECT_API_KEY", "SLACK_")


class ProcessError(Exception):
    pass


@dataclass(frozen=True)
class BotProcess:
    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    status: str
    rss_mb: float
    cpu_percent: float
    found_by: str

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["cmdline"] = " ".join(self.cmdline)
        return data


def _matches(cmdline: list[str], needles: list[str]) -> bool:
    joined = " ".join(cmdline)
    return bool(cmdline) and all(needle in joined for needle in needles)


def _describe(proc: psutil.Process, found_by: str) -> BotProcess | None:
    try:
        with proc.oneshot():
            status = proc.status()
            if status == psutil.STATUS_ZOMBIE:
                _reap(proc.pid)
                return None
            return BotProcess(
                pid=proc.pid, create_time=proc.create_time(), cmdline=tuple(proc.cmdline()), status=status,
                rss_mb=round(proc.memory_info().rss / 2**20, 1), cpu_percent=proc.cpu_percent(interval=None),
                found_by=found_by,
            )
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _reap(pid: int) -> None:
    """A bot we started and that died is our zombie child until waited for."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError, OSError):
        return None


def locate_bot(bot: BotSettings) -> BotProcess | None:
    """The bot's live process, or None. Raises ProcessError if several processes match."""
    pidfile = bot.pidfile_path
    if pidfile is not None:
        pid = _read_pidfile(pidfile)
        if pid is not None:
            try:
                proc = psutil.Process(pid)
                if _matches(proc.cmdline(), bot.process_match):
                    found = _describe(proc, f"pidfile {pidfile}")
                    if found is not None:
                        return found
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
    matches = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and _matches(proc.info["cmdline"] or [], bot.process_match):
                found = _describe(proc, "command-line match")
                if found is not None:
                    matches.append(found)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    if len(matches) > 1:
        pids = ", ".join(str(m.pid) for m in matches)
        raise ProcessError(f"{len(matches)} processes match {bot.process_match} (PIDs {pids}); refusing to guess")
    return matches[0] if matches else None


@task(name="check process status", cache_policy=NO_CACHE_POLICY)
def check_process(bot: BotSettings) -> BotProcess | None:
    """Runbook: `ps aux | grep trading_bot`, done with psutil and a verified match."""
    return locate_bot(bot)


def _verified(process: BotProcess, bot: BotSettings) -> psutil.Process:
    """The psutil handle for `process`, only if it is still that very process."""
    try:
        proc = psutil.Process(process.pid)
        same = proc.create_time() == process.create_time and _matches(proc.cmdline(), bot.process_match)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        raise ProcessError(f"PID {process.pid} is gone") from None
    if not same:
        raise ProcessError(f"PID {process.pid} is no longer the bot (recycled PID); not touching it")
    return proc


@task(name="stop bot process", cache_policy=NO_CACHE_POLICY)
def stop_process(process: BotProcess, bot: BotSettings, timeout_seconds: float) -> str:
    """SIGTERM the verified PID, then SIGKILL if it has not exited within `timeout_seconds`."""
    try:
        proc = _verified(process, bot)
    except ProcessError as error:
        if "is gone" in str(error):
            return f"PID {process.pid} had already exited"
        raise
    proc.send_signal(signal.SIGTERM)
    if _exited(proc, timeout_seconds):
        return f"PID {process.pid} stopped by SIGTERM"
    proc.send_signal(signal.SIGKILL)
    if not _exited(proc, 5):
        raise ProcessError(f"PID {process.pid} survived SIGKILL")
    return f"PID {process.pid} ignored SIGTERM for {timeout_seconds:g}s; killed with SIGKILL"


def _exited(proc: psutil.Process, timeout_seconds: float) -> bool:
    """Whether the process ended within the timeout. A dead process whose parent has not reaped it yet
    (a zombie: the bot started by another program) has ended too, though its PID still shows."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        _reap(proc.pid)
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def wait_exit(process: BotProcess, timeout_seconds: float) -> bool:
    """Block until `process` (that very PID: same creation time) has exited, at most `timeout_seconds`.

    The kernel says when, through a pidfd (Linux 5.3+), so an exit is seen as it happens rather than on
    the next poll; elsewhere psutil's wait, which polls in short steps. True when it exited (or was
    already gone or recycled), False on timeout.
    """
    try:
        proc = psutil.Process(process.pid)
        if proc.create_time() != process.create_time or proc.status() == psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return True
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(process.pid)
        except ProcessLookupError:
            return True
        except OSError:  # an older kernel: no pidfd
            pass
        else:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                return bool(poller.poll(max(0.0, timeout_seconds) * 1000))
            finally:
                os.close(fd)
    try:
        proc.wait(timeout=timeout_seconds)
    except psutil.TimeoutExpired:
        return False
    return True


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SECRET_ENV_PREFIXES)}


@task(name="start bot", cache_policy=NO_CACHE_POLICY)
def start_bot(bot: BotSettings) -> str:
    """Runbook: `cd /path/to/bot && python trading_bot.py &` — the configured command, detached."""
    if bot.systemd_unit:
        result = subprocess.run(
            ["systemctl", "restart", bot.systemd_unit], capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise ProcessError(f"systemctl restart {bot.systemd_unit} failed: {result.stderr.strip()}")
        return f"systemctl restart {bot.systemd_unit}"
    if not bot.working_dir.is_dir():
        raise ProcessError(f"working dir {bot.working_dir} does not exist")
    stdout_path = bot.path(bot.stdout_log)
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    with open(stdout_path, "ab") as stdout:
        try:
            child = subprocess.Popen(
                bot.start_command, cwd=bot.working_dir, stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=_clean_env(),
            )
        except OSError as error:
            raise ProcessError(f"cannot run {bot.start_command[0]}: {error}") from error
    # Keep nothing but the PID: the bot outlives this flow run.
    return f"started `{' '.join(bot.start_command)}` as PID {child.pid}"

