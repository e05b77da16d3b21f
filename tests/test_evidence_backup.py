"""Evidence backup: real files, real archives read back with tarfile and GNU tar, a real full disk.

Most tests build a bot folder in tmp_path and call `create_backup` directly (no orchestration to test).
The last runs `runbook run emergency-backup` against a sandbox. Two cases need a kernel-level condition:

- an unreadable file: `chmod 000` stops a normal user; root reads it anyway (CAP_DAC_OVERRIDE), so as
  root the backup runs in a forked child that has dropped to the `nobody` user first;
- a full disk: as root, a 1 MB tmpfs mounted for the test gives a real ENOSPC; without root the child
  runs under RLIMIT_FSIZE, which gives EFBIG on the same write path (the test says which it used).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app

from tasks.evidence import (
    MANIFEST_NAME, BackupError, apply_retention, create_backup, list_archives, read_manifest, verify_archive,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bot(root: Path) -> Path:
    """A bot folder: nested logs, data, config, a key file, links in and out, a FIFO."""
    bot = root / "bot"
    (bot / "logs" / "archive" / "2026").mkdir(parents=True)
    (bot / "data" / "trades").mkdir(parents=True)
    (bot / "config").mkdir()
    (bot / "logs" / "trading_bot.log").write_text("".join(f'{{"message": "API CALL info {i}"}}\n' for i in range(5000)))
    (bot / "logs" / "archive" / "2026" / "old.log").write_text("older\n" * 1000)
    (bot / "data" / "trades" / "fills.bin").write_bytes(os.urandom(300_000))
    (bot / "data" / "empty.dat").write_bytes(b"")
    (bot / "config" / "config.json").write_text('{"risk_limits": {"daily_loss_limit_usd": 100}}\n')
    (bot / "config" / "agent_key.json").write_text(json.dumps({"private_key": "0x" + "ab" * 32}))
    (bot / "logs" / "latest.log").symlink_to("trading_bot.log")  # inside: kept as a link
    outside = root / "outside-secret.txt"
    outside.write_text("not the bot's\n")
    (bot / "logs" / "escape.log").symlink_to(outside)  # outside: never followed
    (bot / "data" / "etc").symlink_to("/etc")
    os.link(bot / "config" / "agent_key.json", bot / "data" / "key-copy")  # a second name for the key
    os.mkfifo(bot / "data" / "pipe")
    (root / "not-included.txt").write_text("x")
    return bot


def extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="tar")


def test_nested_tree_links_keys_and_restore(tmp_path: Path) -> None:
    bot = make_bot(tmp_path)
    folder = tmp_path / "backups"
    key = bot / "config" / "agent_key.json"
    result = create_backup(bot, folder, exclude=[key], now=NOW)

    assert result.path == folder / "emergency_backup_20260301_120000.tar.gz"
    assert result.verified and result.path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in folder.iterdir()] == [result.path.name]  # no temporary file left
    manifest = read_manifest(result.path)
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {"logs/trading_bot.log", "logs/archive/2026/old.log", "data/trades/fills.bin",
                           "data/empty.dat", "config/config.json"}
    for rel, entry in listed.items():  # the manifest describes the source exactly
        assert entry["size"] == (bot / rel).stat().st_size and entry["sha256"] == sha256(bot / rel), rel
    assert manifest["links"] == [{"path": "logs/latest.log", "target": "trading_bot.log"}]
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert "outside the bot's folder" in reasons["logs/escape.log"] and "outside" in reasons["data/etc"]
    assert reasons["config/agent_key.json"].startswith("configured key file")
    assert reasons["data/key-copy"].startswith("configured key file")  # same inode, other name
    assert reasons["data/pipe"].startswith("FIFO")

    # Restored, the archive equals the source by its manifest; nothing from outside, no key.
    restored = tmp_path / "restored"
    extract(result.path, restored)
    for rel, entry in listed.items():
        assert sha256(restored / rel) == entry["sha256"]
    assert os.readlink(restored / "logs" / "latest.log") == "trading_bot.log"
    names = {str(p.relative_to(restored)) for p in restored.rglob("*")}
    assert not {"logs/escape.log", "data/etc", "config/agent_key.json", "data/key-copy"} & names
    with tarfile.open(result.path, "r:gz") as tar:
        assert b"ab" * 32 not in b"".join(tar.extractfile(m).read() for m in tar if m.isfile())  # type: ignore[union-attr]
    # GNU tar reads it (consecutive gzip members are plain gzip).
    listing = subprocess.run(["tar", "-tzf", str(result.path)], capture_output=True, text=True, check=True).stdout
    assert "logs/archive/2026/old.log" in listing and MANIFEST_NAME in listing

    # Never overwrite: a second backup in the same second gets its own name, the first is untouched.
    before = sha256(result.path)
    again = create_backup(bot, folder, exclude=[key], now=NOW)
    assert again.path.name == "emergency_backup_20260301_120000_2.tar.gz"
    assert sha256(result.path) == before and verify_archive(again.path)["files"]


def test_files_changing_while_read_are_recorded(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    (bot / "logs").mkdir(parents=True)
    grow, shrink = bot / "logs" / "grow.log", bot / "logs" / "shrink.log"
    original = os.urandom(3 << 20)
    grow.write_bytes(original)
    shrink.write_bytes(os.urandom(3 << 20))
    done: set[str] = set()

    def writer(rel: str, _read: int) -> None:  # the bot writing while the backup reads, after the first chunk
        if rel in done:
            return
        done.add(rel)
        if rel == "logs/grow.log":
            with grow.open("ab") as handle:
                handle.write(b"appended while read\n")
        elif rel == "logs/shrink.log":
            os.truncate(shrink, 100)

    result = create_backup(bot, tmp_path / "out", include=[Path("logs")], progress=writer, now=NOW)
    changed = {c["path"]: c["note"] for c in result.changed}
    assert set(changed) == {"logs/grow.log", "logs/shrink.log"}
    assert "bytes appended" in changed["logs/grow.log"] and "padded with zeros" in changed["logs/shrink.log"]
    manifest = verify_archive(result.path)  # the archive still matches its manifest
    entries = {f["path"]: f for f in manifest["files"]}
    assert entries["logs/grow.log"]["changed"] is True
    assert entries["logs/grow.log"]["sha256"] == hashlib.sha256(original).hexdigest()  # as read, once
    restored = tmp_path / "restored"
    extract(result.path, restored)
    assert (restored / "logs" / "grow.log").read_bytes() == original


def _in_child(action: Callable[[], None], before: Callable[[], None]) -> str:
    """Run `action` in a forked child after `before()` (drop privileges, set limits); its BackupError text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read)
            before()
            try:
                action()
                message = "no error"
            except BackupError as error:
                message = "BackupError: " + str(error)
            except BaseException as error:  # noqa: BLE001
                message = f"{type(error).__name__}: {error}"
            os.write(write, message.encode())
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed before reporting"
    return b"".join(chunks).decode()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder other users can traverse (pytest's tmp_path is 0700 to root)."""
    path = Path(tempfile.mkdtemp(prefix="runbook-evidence-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_unreadable_file_fails_clearly_and_leaves_nothing(shared_tmp: Path) -> None:
    bot = make_bot(shared_tmp)
    secret = bot / "logs" / "archive" / "2026" / "old.log"
    secret.chmod(0o000)
    out = shared_tmp / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    for path in [bot, *bot.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
        elif path.is_file() and not path.is_symlink() and path != secret:
            path.chmod(0o644)

    def backup() -> None:
        create_backup(bot, out, exclude=[bot / "config" / "agent_key.json"], now=NOW)

    if os.geteuid() == 0:
        # root reads mode-000 files anyway: prove it, then back up as `nobody`, who cannot.
        assert secret.read_bytes()
        nobody = pwd.getpwnam("nobody")

        def drop() -> None:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
        message = _in_child(backup, drop)
    else:
        message = _in_child(backup, lambda: None)
    assert message.startswith("BackupError: cannot read logs/archive/2026/old.log in "), message
    assert "no archive was written" in message
    assert list(out.iterdir()) == []


def test_full_disk_fails_clearly_and_leaves_no_half_archive(shared_tmp: Path) -> None:
    bot = shared_tmp / "bot"
    (bot / "data").mkdir(parents=True)
    (bot / "data" / "blob.bin").write_bytes(os.urandom(3 << 20))  # does not compress: 3 MB of archive
    small = shared_tmp / "small-disk"
    small.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                                 capture_output=True).returncode == 0
    try:
        def backup() -> None:
            create_backup(bot, small, include=[Path("data")], now=NOW)

        if mounted:  # a real full disk: ENOSPC
            with pytest.raises(BackupError) as raised:
                backup()
            message = str(raised.value)
            assert "No space left on device" in message
        else:  # no root or no tmpfs: a 1 MB file-size limit in a child gives EFBIG on the same write path
            def limit() -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
            message = _in_child(backup, limit)
            assert "File too large" in message, message
        assert f"the backup folder {small} is full" in message, message
        assert "no archive was kept" in message
        assert [p for p in small.iterdir() if p.name != "lost+found"] == []
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=False)


def test_a_backup_folder_inside_the_bot_folder_is_not_archived(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    (bot / "data").mkdir(parents=True)
    (bot / "data" / "fills.json").write_text("[]")
    first = create_backup(bot, bot / "data" / "backups", now=NOW)
    second = create_backup(bot, bot / "data" / "backups", now=NOW + timedelta(seconds=1))
    files = {f["path"] for f in verify_archive(second.path)["files"]}
    assert files == {"data/fills.json"} and first.path.exists()
    assert {"path": "data/backups", "reason": "the backup folder itself"} in read_manifest(second.path)["skipped"]


def test_retention_keeps_newest_and_drops_old(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    (bot / "logs").mkdir(parents=True)
    (bot / "logs" / "a.log").write_text("a\n")
    folder = tmp_path / "out"
    stamps = [NOW - timedelta(days=d) for d in (40, 20, 3, 2, 1)]
    for stamp in stamps:
        create_backup(bot, folder, include=[Path("logs")], now=stamp)
    assert len(list_archives(folder)) == 5
    (folder / ".emergency_backup_20260101_000000.tar.gz.partial-1-ab").write_bytes(b"half")
    os.utime(folder / ".emergency_backup_20260101_000000.tar.gz.partial-1-ab", (0, 0))
    newest = create_backup(bot, folder, include=[Path("logs")], now=NOW, keep=4, max_age_days=30)
    names = [p.name for p in list_archives(folder)]
    # keep 4 newest, and none older than 30 days: the 40-day-old one and the 20-day-old (5th newest) go.
    assert names == [newest.path.name, "emergency_backup_20260228_120000.tar.gz", "emergency_backup_20260227_120000.tar.gz",
                     "emergency_backup_20260226_120000.tar.gz"]
    assert sorted(Path(p).name for p in newest.removed) == ["emergency_backup_20260120_120000.tar.gz",
                                                            "emergency_backup_20260209_120000.tar.gz"]
    assert not list(folder.glob(".*partial*"))
    assert apply_retention(folder, 1, None, protect=newest.path) and list_archives(folder) == [newest.path]


def test_emergency_backup_from_the_shell_prints_the_archive(sandbox: Path) -> None:
    key_text = (sandbox / "bot" / "config" / "agent_key.json").read_text()
    key = json.loads(key_text)["private_key"]
    # The real command, in-process (typer's runner): a subprocess would spend seconds importing Prefect.
    result = CliRunner().invoke(app, ["run", "emergency-backup", "--config", str(sandbox / "runbook.toml")])
    assert result.exit_code == 0, result.output
    archive_lines = [line for line in result.stdout.splitlines() if line.strip().startswith("archive: ")]
    assert len(archive_lines) == 1, result.stdout
    archive = Path(archive_lines[0].split("archive: ", 1)[1])
    assert archive.parent == sandbox / "backups" / "sandbox" and archive.name.startswith("emergency_backup_")
    manifest = verify_archive(archive)
    paths = {f["path"] for f in manifest["files"]}
    assert {"logs/trading_bot.log", "config/config.json"} <= paths and "config/agent_key.json" not in paths
    with tarfile.open(archive, "r:gz") as tar:
        blob = b"".join(tar.extractfile(m).read() for m in tar if m.isfile())  # type: ignore[union-attr]
    assert key[2:].encode() not in blob
    assert key[2:] not in result.output
