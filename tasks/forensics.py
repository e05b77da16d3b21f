"""Forensic snapshot for a suspected breach: what was running, talking and logged in, before anything changes.

Taken before the bot is stopped (its open network connections exist only while it runs): the host's
process list, the bot's connections and open files, recent logins, the network interfaces (for the
isolation step a person takes), the hashes of the bot's program files, metadata of its key files (never
their content) and the most recently modified files of its folder. `timeline()` orders what has a time.
The snapshot goes into the evidence archive as FORENSICS.json; command lines are redacted there too.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
import stat
import struct
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from prefect import task

from runbook.markdown import table
from runbook.redact import redact
from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY
from tasks.evidence import key_file_paths
from tasks.process import locate_bot

WTMP = Path("/var/log/wtmp")
# struct utmp of glibc on Linux (utmp(5)): type, pid, line, id, user, host, exit, session, tv, addr, unused.
_UTMP = struct.Struct("<h2xi32s4s32s256shhiii16s20s")
_USER_PROCESS, _DEAD_PROCESS, _BOOT_TIME = 7, 8, 2
LOGINS_KEPT = 50
RECENT_FILES = 20
HASH_LIMIT_BYTES = 256 << 20
CMDLINE_CHARS = 300


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


@dataclass
class ForensicSnapshot:
    taken_at: str
    host: str
    boot_time: str | None
    bot_pid: int | None
    bot_started: str | None
    processes: list[dict[str, Any]] = field(default_factory=list)
    bot_connections: list[dict[str, Any]] = field(default_factory=list)
    bot_open_files: list[str] = field(default_factory=list)
    logins: list[dict[str, Any]] = field(default_factory=list)
    login_sources: list[str] = field(default_factory=list)
    interfaces: list[dict[str, Any]] = field(default_factory=list)
    program_hashes: list[dict[str, Any]] = field(default_factory=list)
    key_files: list[dict[str, Any]] = field(default_factory=list)
    recent_files: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def timeline(self) -> list[tuple[str, str, str]]:
        """(UTC time, source, event), oldest first."""
        events: list[tuple[str, str, str]] = []
        if self.boot_time:
            events.append((self.boot_time, "host", "system booted"))
        if self.bot_started:
            events.append((self.bot_started, "process", f"bot process {self.bot_pid} started"))
        for login in self.logins:
            if login.get("at"):
                where = f" from {login['host']}" if login.get("host") else ""
                events.append((login["at"], login.get("source", "logins"),
                               f"{login.get('event', 'login')}: {login.get('user') or '?'} on {login.get('terminal') or '?'}{where}"))
        for key in self.key_files:
            if key.get("ctime"):
                events.append((key["ctime"], "key file", f"{key['path']} last changed (inode change time)"))
        for item in self.recent_files:
            events.append((item["mtime"], "bot folder", f"{item['path']} modified ({item['size']} bytes)"))
        events.append((self.taken_at, "runbook", "forensic snapshot taken"))
        return sorted(events)

    def markdown(self) -> str:
        def short(value: str | None) -> str:
            return (value[:16] + "…") if value else "-"
        conns = table(["local", "remote", "status", "type"], [
            [c["local"], c["remote"] or "-", c["status"], c["type"]] for c in self.bot_connections]) \
            if self.bot_connections else "_none (or the bot was not running)_"
        logins = table(["time (UTC)", "user", "terminal", "from", "source"], [
            [x.get("at") or "-", x.get("user") or "-", x.get("terminal") or "-", x.get("host") or "-", x.get("source")]
            for x in self.logins[-15:]]) if self.logins else f"_none found ({'; '.join(self.login_sources) or 'no source'})_"
        hashes = table(["file", "bytes", "SHA-256 (first 16 hex)"], [
            [h["path"], h["size"], short(h.get("sha256"))] for h in self.program_hashes]) if self.program_hashes else "_none_"
        keys = table(["key file", "bytes", "mode", "owner", "modified (UTC)", "changed (UTC)"], [
            [k["path"], k.get("size", "-"), k.get("mode", "-"), k.get("owner", "-"), k.get("mtime", "-"), k.get("ctime", "-")]
            for k in self.key_files]) if self.key_files else "_none configured_"
        timeline = table(["time (UTC)", "source", "event"], [list(e) for e in self.timeline()[-40:]])
        others = sorted(self.processes, key=lambda p: p.get("started") or "", reverse=True)[:15]
        procs = table(["PID", "user", "started (UTC)", "command"], [
            [p["pid"], p.get("user") or "-", p.get("started") or "-", (p.get("cmdline") or p.get("name") or "")[:120]]
            for p in others])
        return (
            f"Taken {self.taken_at} on {self.host}; bot PID {self.bot_pid or 'not running'}; "
            f"{len(self.processes)} processes. The full snapshot is FORENSICS.json in the evidence archive.\n\n"
            f"**Timeline**\n\n{timeline}\n\n**Bot network connections**\n\n{conns}\n\n"
            f"**Recent logins**\n\n{logins}\n\n**Key files (metadata only)**\n\n{keys}\n\n"
            f"**Bot program files**\n\n{hashes}\n\n**Newest processes**\n\n{procs}"
            + (f"\n\n**Could not read:** {'; '.join(self.errors)}" if self.errors else "")
        )

    def to_json(self) -> bytes:
        data = asdict(self)
        data["timeline"] = [{"at": at, "source": source, "event": event} for at, source, event in self.timeline()]
        return json.dumps(data, indent=1, default=str).encode() + b"\n"


def _processes(secrets: list[str | None]) -> list[dict[str, Any]]:
    rows = []
    for proc in psutil.process_iter(["pid", "ppid", "username", "name", "cmdline", "create_time", "status"]):
        info = proc.info
        cmdline = " ".join(info.get("cmdline") or [])
        rows.append({
            "pid": info["pid"], "ppid": info.get("ppid"), "user": info.get("username"), "name": info.get("name"),
            "cmdline": redact(cmdline, secrets)[:CMDLINE_CHARS], "started": _iso(info.get("create_time")),
            "status": info.get("status"),
        })
    return rows


def _address(addr: Any) -> str | None:
    if not addr:
        return None
    return f"[{addr.ip}]:{addr.port}" if ":" in str(addr.ip) else f"{addr.ip}:{addr.port}"


def _connections(proc: psutil.Process) -> list[dict[str, Any]]:
    rows = []
    for conn in proc.net_connections(kind="inet"):
        rows.append({"fd": conn.fd, "family": "IPv6" if conn.family == socket.AF_INET6 else "IPv4",
                     "type": "TCP" if conn.type == socket.SOCK_STREAM else "UDP",
                     "local": _address(conn.laddr), "remote": _address(conn.raddr), "status": conn.status})
    return rows


def _program_files(proc: psutil.Process) -> list[dict[str, Any]]:
    """The bot's executable and the files named on its command line (scripts), hashed."""
    candidates: list[Path] = []
    try:
        candidates.append(Path(proc.exe()))
        cwd = Path(proc.cwd())
        for arg in proc.cmdline()[1:]:
            if arg.startswith("-"):
                continue
            path = Path(arg) if os.path.isabs(arg) else cwd / arg
            if path.is_file():
                candidates.append(path)
    except (psutil.Error, OSError):
        pass
    rows = []
    for path in dict.fromkeys(candidates):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        rows.append({"path": str(path), "size": size,
                     "sha256": _sha256(path) if size <= HASH_LIMIT_BYTES else None})
    return rows


def read_wtmp(path: Path = WTMP, keep: int = LOGINS_KEPT) -> list[dict[str, Any]]:
    """The last `keep` login/logout/boot records of a wtmp file (glibc's struct utmp)."""
    size = path.stat().st_size
    count = min(size // _UTMP.size, keep * 4)
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        handle.seek(size - count * _UTMP.size)
        data = handle.read(count * _UTMP.size)
    for offset in range(0, len(data) - _UTMP.size + 1, _UTMP.size):
        kind, pid, line, _id, user, host, _t, _e, _session, sec, _usec, _addr, _ = _UTMP.unpack_from(data, offset)
        event = {_USER_PROCESS: "login", _DEAD_PROCESS: "logout", _BOOT_TIME: "boot"}.get(kind)
        if event is None:
            continue
        rows.append({"at": _iso(sec), "event": event, "user": user.rstrip(b"\0").decode(errors="replace"),
                     "terminal": line.rstrip(b"\0").decode(errors="replace"),
                     "host": host.rstrip(b"\0").decode(errors="replace"), "pid": pid, "source": str(path)})
    return rows[-keep:]


def _stat_row(path: Path) -> dict[str, Any]:
    try:
        st = os.lstat(path)
    except OSError as error:
        return {"path": str(path), "present": False, "error": error.strerror}
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return {"path": str(path), "present": True, "size": st.st_size, "mode": oct(stat.S_IMODE(st.st_mode)),
            "owner": owner, "symlink": stat.S_ISLNK(st.st_mode), "mtime": _iso(st.st_mtime), "ctime": _iso(st.st_ctime)}


def _recent_files(root: Path, keys: set[str], limit: int = RECENT_FILES) -> list[dict[str, Any]]:
    found: list[tuple[float, str, int]] = []
    for folder, dirs, files in os.walk(root):  # does not follow symlinked folders
        for name in files:
            path = os.path.join(folder, name)
            if path in keys:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            found.append((st.st_mtime, os.path.relpath(path, root), st.st_size))
    found.sort(reverse=True)
    return [{"path": rel, "mtime": _iso(mtime), "size": size} for mtime, rel, size in found[:limit]]


def _interfaces() -> list[dict[str, Any]]:
    stats = psutil.net_if_stats()
    rows = []
    for name, addrs in psutil.net_if_addrs().items():
        ips = [a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        rows.append({"name": name, "up": bool(stats.get(name) and stats[name].isup), "addresses": ips,
                     "loopback": name == "lo" or all(ip.startswith(("127.", "::1")) for ip in ips if ip)})
    return rows


def take_snapshot(bot: BotSettings, known_secrets: list[str | None] | None = None) -> ForensicSnapshot:
    secrets = list(known_secrets or [])
    errors: list[str] = []
    try:
        found = locate_bot(bot)
    except Exception as error:  # several matches: the snapshot still lists every process
        errors.append(f"bot process: {error}")
        found = None
    snapshot = ForensicSnapshot(
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"), host=socket.gethostname(),
        boot_time=_iso(psutil.boot_time()), bot_pid=found.pid if found else None,
        bot_started=_iso(found.create_time) if found else None,
    )
    snapshot.processes = _processes(secrets)
    if found is not None:
        try:
            proc = psutil.Process(found.pid)
            snapshot.bot_connections = _connections(proc)
            snapshot.bot_open_files = [f.path for f in proc.open_files()]
            snapshot.program_hashes = _program_files(proc)
        except psutil.Error as error:
            errors.append(f"bot process {found.pid}: {error}")
    snapshot.login_sources.append("current sessions (psutil.users, from utmp)")
    for user in psutil.users():
        snapshot.logins.append({"at": _iso(user.started), "event": "session", "user": user.name,
                                "terminal": user.terminal, "host": user.host, "pid": user.pid, "source": "utmp"})
    if WTMP.exists():
        try:
            snapshot.logins = read_wtmp() + snapshot.logins
            snapshot.login_sources.append(str(WTMP))
        except OSError as error:
            errors.append(f"{WTMP}: {error.strerror}")
    else:
        errors.append(f"{WTMP}: not present")
    snapshot.logins.sort(key=lambda x: x.get("at") or "")
    snapshot.interfaces = _interfaces()
    keys = key_file_paths(bot)
    snapshot.key_files = [_stat_row(path) for path in keys]
    snapshot.recent_files = _recent_files(bot.working_dir, {str(p) for p in keys})
    snapshot.errors = errors
    return snapshot


@task(name="forensic snapshot", cache_policy=NO_CACHE_POLICY)
def forensic_snapshot(bot: BotSettings) -> ForensicSnapshot:
    """Runbook "Forensic Analysis": preserve the live state and document the timeline (command lines are
    redacted by shape here; the flow redacts the values of its known secrets before archiving)."""
    return take_snapshot(bot)
