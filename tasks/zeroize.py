"""Secure the keys: the runbook's `SecureKeyStorage().emergency_zeroize()`, for the key files a bot uses.

Only the configured key files (`key_files` and the Hyperliquid `key_file`) are touched, and only inside
the bot's folder: a path that resolves elsewhere, or is a symlink, is refused and left for a person.
Each file is overwritten in place (random bytes, then zeros, each pass fsynced), truncated and unlinked.
What was removed is recorded without the key: the path, the size, a fingerprint (the first 16 hex digits
of the SHA-256 of the old content, to match it against a copy elsewhere) and the public address the key
signed for — which is what must be revoked on the exchange.

Overwriting is best effort: on SSDs, copy-on-write filesystems and snapshots old blocks may survive. The
real protection is the rotation checklist: revoke the key where it is trusted.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import task

from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY
from tasks.evidence import key_file_paths
from tasks.keys import wallet_from_text

_CHUNK = 1 << 16


@dataclass
class ZeroizeRecord:
    path: str
    removed: bool
    detail: str
    size: int | None = None
    fingerprint: str | None = None
    address: str | None = None
    links: int | None = None

    def describe(self) -> str:
        who = f", key of {self.address}" if self.address else ""
        what = f"{self.size} bytes, fingerprint {self.fingerprint}{who}" if self.size is not None else ""
        return f"{self.path}: {self.detail}" + (f" ({what})" if what else "")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def key_targets(bot: BotSettings) -> list[tuple[Path, str | None]]:
    """Each configured key file, de-duplicated, with the reason it may not be touched (None: it may)."""
    root = os.path.realpath(bot.working_dir)
    seen: set[str] = set()
    targets: list[tuple[Path, str | None]] = []
    for path in key_file_paths(bot):
        absolute = os.path.abspath(path)
        if absolute in seen:
            continue
        seen.add(absolute)
        parent = os.path.realpath(os.path.dirname(absolute))
        if not (parent == root or parent.startswith(root + os.sep)):
            targets.append((Path(absolute), f"outside the bot's folder {bot.working_dir}: not touched"))
        else:
            targets.append((Path(absolute), None))
    return targets


def zeroize_file(path: Path) -> ZeroizeRecord:
    """Overwrite, truncate and unlink one key file; never follows a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ZeroizeRecord(str(path), False, "not present (nothing to remove)")
    if stat.S_ISLNK(st.st_mode):
        return ZeroizeRecord(str(path), False, "is a symlink: not followed; remove the key it points to by hand")
    if not stat.S_ISREG(st.st_mode):
        return ZeroizeRecord(str(path), False, "not a regular file: not touched")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        return ZeroizeRecord(str(path), False, f"cannot open it: {error.strerror}")
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            return ZeroizeRecord(str(path), False, "replaced while being opened: not touched")
        size = opened.st_size
        content = b"".join(iter(lambda: os.read(fd, _CHUNK), b""))
        fingerprint = hashlib.sha256(content).hexdigest()[:16]
        wallet = wallet_from_text(content.decode("utf-8", "replace"))
        address = wallet.address.lower() if wallet is not None else None
        del content
        for pattern in (None, b"\0"):  # random, then zeros
            os.lseek(fd, 0, os.SEEK_SET)
            left = size
            while left > 0:
                n = min(left, _CHUNK)
                os.write(fd, os.urandom(n) if pattern is None else pattern * n)
                left -= n
            os.fsync(fd)
        os.ftruncate(fd, 0)
        os.fsync(fd)
    except OSError as error:
        return ZeroizeRecord(str(path), False, f"overwriting failed: {error.strerror}")
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except OSError as error:
        return ZeroizeRecord(str(path), False, f"overwritten but not removed: {error.strerror}", size, fingerprint,
                             address, opened.st_nlink)
    _fsync_parent(path)
    detail = "overwritten and removed"
    if opened.st_nlink > 1:
        detail += f" (it had {opened.st_nlink - 1} other hard link(s): their content is overwritten too)"
    return ZeroizeRecord(str(path), True, detail, size, fingerprint, address, opened.st_nlink)


def _fsync_parent(path: Path) -> None:
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@task(name="zeroize keys", cache_policy=NO_CACHE_POLICY)
def zeroize_keys(bot: BotSettings) -> list[ZeroizeRecord]:
    """Runbook "Secure Keys": overwrite and remove every configured key file inside the bot's folder."""
    records = []
    for path, refused in key_targets(bot):
        records.append(ZeroizeRecord(str(path), False, refused) if refused else zeroize_file(path))
    if bot.hyperliquid.key_env:
        records.append(ZeroizeRecord(f"${bot.hyperliquid.key_env}", False,
                                     "a key in an environment variable cannot be removed from here: remove it "
                                     "from the bot's environment / secret store"))
    return records
