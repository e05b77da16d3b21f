"""Read the bot's `config/config.json` and change it safely: proposed, shown, then written atomically.

A change is made in three steps so that a person can approve exactly what will be written:

1. `read_config(path)` reads the file and remembers its SHA-256;
2. `propose_change(config, ...)` is a pure function: the new JSON and a human diff of the changed keys;
3. `apply_change(path, change)` refuses if the file changed since step 1 (hash compare), copies the
   old file to a timestamped backup (`config.json.bak-YYYYmmdd_HHMMSS`, never overwriting one), then
   writes the new file atomically (temp file in the same folder, fsync, `os.replace`, fsync the folder).

The runbook's recovery steps for "Daily Loss Limit Reached" map onto keys as follows:

* "reduce position sizes" multiplies `position_sizing.base_size_usd` and
  `risk_management.max_position_usd` (the size of a normal entry and the cap of any one position)
  by the chosen factor;
* "reset daily loss counter" writes `risk_limits.daily_loss_reset_at` (ISO 8601 UTC). A bot that
  reads this key counts its daily loss from that moment. The sandbox bot (and the contract in
  docs/bot-contract.md) counts daily P&L from its own process start instead, so there the reset takes
  effect when a person restarts the bot to resume trading; the key records when and by whom (the
  journal) the reset was decided. Nothing here restarts the bot.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task

from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY
from tasks.probes import dig

# (section, key) of every size the "reduce position sizes" step scales; absent keys are skipped.
SIZE_KEYS: tuple[tuple[str, str], ...] = (
    ("position_sizing", "base_size_usd"),
    ("risk_management", "max_position_usd"),
)
RESET_KEY: tuple[str, str] = ("risk_limits", "daily_loss_reset_at")
# The sections the runbook reads ("Check risk parameters"), in the order people expect them.
RISK_SECTIONS: tuple[str, ...] = ("risk_limits", "risk_management", "position_sizing", "strategy")
BACKUP_STAMP = "%Y%m%d_%H%M%S"


class BotConfigError(Exception):
    """The bot's config cannot be read, or the change cannot be made; the message says why."""


class ConfigChangedError(BotConfigError):
    """The file on disk is not the one the change was proposed against."""


@dataclass(frozen=True)
class BotConfig:
    """The bot's config as read: its path, parsed JSON and the SHA-256 of the exact bytes."""

    path: Path
    data: dict[str, Any]
    sha256: str

    def get(self, section: str, key: str, default: Any = None) -> Any:
        part = self.data.get(section)
        return part.get(key, default) if isinstance(part, dict) else default

    def number(self, section: str, key: str) -> float | None:
        """A numeric setting, or None when it is absent or not a number."""
        value = self.get(section, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    def risk_parameters(self) -> list[tuple[str, str, Any]]:
        """(section, key, value) of every scalar in the risk sections, for the report's table."""
        rows: list[tuple[str, str, Any]] = []
        for section in RISK_SECTIONS:
            part = self.data.get(section)
            if isinstance(part, dict):
                rows.extend((section, key, value) for key, value in part.items())
        return rows


@dataclass(frozen=True)
class KeyChange:
    section: str
    key: str
    old: Any
    new: Any

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    def describe(self) -> str:
        old = "(unset)" if self.old is None else json.dumps(self.old)
        return f"{self.path}: {old} -> {json.dumps(self.new)}"


@dataclass(frozen=True)
class ConfigChange:
    """A proposed new config: the JSON to write, what differs, and the hash of the file it replaces."""

    base_sha256: str
    data: dict[str, Any]
    changes: list[KeyChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def text(self) -> str:
        return json.dumps(self.data, indent=2) + "\n"

    def diff(self) -> str:
        """One line per changed key: `section.key: old -> new`."""
        return "\n".join(change.describe() for change in self.changes) or "(no change)"

    def summary(self) -> str:
        """The diff on one line (for approval forms and journal entries)."""
        return "; ".join(change.describe() for change in self.changes) or "no change"

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"key": c.path, "old": c.old, "new": c.new} for c in self.changes]


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def read_config(path: Path) -> BotConfig:
    """Read and parse the bot's config.json (BotConfigError when missing or not a JSON object)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise BotConfigError(f"{path} does not exist") from None
    except OSError as error:
        raise BotConfigError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BotConfigError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BotConfigError(f"{path} holds JSON {type(data).__name__}, expected an object")
    return BotConfig(Path(path), data, _sha256(raw))


@task(name="read bot config", cache_policy=NO_CACHE_POLICY)
def read_bot_config(path: Path) -> BotConfig:
    """Runbook: `cat config/config.json | jq '.risk_limits'`."""
    return read_config(path)


def propose_change(config: BotConfig, reduce_size_factor: float | None, reset_daily_counter: bool,
                   now: datetime | None = None) -> ConfigChange:
    """The runbook's recovery steps as a new config (pure: nothing is written).

    `reduce_size_factor` (0 < f <= 1) scales every size in SIZE_KEYS, rounded to cents; None or 1 leaves
    sizes alone. `reset_daily_counter` sets `risk_limits.daily_loss_reset_at` to `now` (UTC).
    """
    data = copy.deepcopy(config.data)
    changes: list[KeyChange] = []
    if reduce_size_factor is not None:
        if isinstance(reduce_size_factor, bool) or not 0 < reduce_size_factor <= 1:
            raise ValueError(f"reduce_size_factor must be > 0 and <= 1 (a reduction), not {reduce_size_factor!r}")
        if reduce_size_factor < 1:
            for section, key in SIZE_KEYS:
                old = config.number(section, key)
                if old is None:
                    continue
                new = round(old * reduce_size_factor, 2)
                if new <= 0:
                    raise ValueError(f"{section}.{key} = {old:g} times {reduce_size_factor:g} rounds to 0")
                data[section][key] = new
                changes.append(KeyChange(section, key, config.get(section, key), new))
    if reset_daily_counter:
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        stamp = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
        section, key = RESET_KEY
        if not isinstance(data.get(section), dict):
            data[section] = {}
        old = data[section].get(key)
        data[section][key] = stamp
        changes.append(KeyChange(section, key, old, stamp))
    return ConfigChange(config.sha256, data, changes)


def _backup_path(path: Path, now: datetime) -> Path:
    return path.with_name(f"{path.name}.bak-{now.astimezone(UTC).strftime(BACKUP_STAMP)}")


def _write_exclusive(target: Path, raw: bytes, mode: int) -> Path:
    """Create `target` (or `target-1`, `-2`, ... if taken) with `raw`, fsynced; never overwrites."""
    candidate, n = target, 0
    while True:
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            n += 1
            candidate = target.with_name(f"{target.name}-{n}")
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        return candidate


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_unchanged(path: Path, expected: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BotConfigError(f"cannot read {path}: {error.strerror or error}") from None
    actual = _sha256(raw)
    if actual != expected:
        raise ConfigChangedError(
            f"{path} changed since it was read (sha256 {expected[:12]}… then, {actual[:12]}… now); "
            "nothing written — propose the change again against the current file")
    return raw


def apply_change(path: Path, change: ConfigChange, now: datetime | None = None) -> Path:
    """Back up the current file, then write `change` atomically; returns the backup's path.

    Refuses (ConfigChangedError) if the file is not the one the change was proposed against.
    """
    path = Path(path)
    if change.empty:
        raise BotConfigError("the change is empty: nothing to write")
    raw = _check_unchanged(path, change.base_sha256)
    mode = stat.S_IMODE(path.stat().st_mode)
    backup = _write_exclusive(_backup_path(path, now or datetime.now(UTC)), raw, mode)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(change.text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        _check_unchanged(path, change.base_sha256)  # last look: nobody wrote it while we backed it up
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)  # nothing was changed: a backup of it would only mislead
        raise
    _fsync_dir(path.parent)
    return backup


def backup_config(path: Path, now: datetime | None = None) -> Path:
    """Copy the config as it is now to `config.json.bak-YYYYmmdd_HHMMSS` beside it (never overwriting one)."""
    path = Path(path)
    try:
        raw, mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
    except OSError as error:
        raise BotConfigError(f"cannot read {path}: {error.strerror or error}") from None
    backup = _write_exclusive(_backup_path(path, now or datetime.now(UTC)), raw, mode)
    _fsync_dir(path.parent)
    return backup


@task(name="back up bot config", cache_policy=NO_CACHE_POLICY)
def backup_bot_config(path: Path) -> Path:
    """Runbook: "Backup configuration" — a timestamped copy of the bot's config beside it."""
    return backup_config(path)


@task(name="write bot config change", cache_policy=NO_CACHE_POLICY)
def apply_config_change(path: Path, change: ConfigChange) -> Path:
    """Write the approved change atomically, keeping a timestamped backup of the old file."""
    return apply_change(path, change)


# ----------------------------------------------------------------------------------------------
# read for a review (stop-loss, win rate): whatever is there, or why not


@dataclass
class BotConfigRead:
    """The bot's config.json as read for a review: its data, or why it could not be read (never raises)."""

    path: str
    data: dict[str, Any] | None = None
    error: str | None = None

    def get(self, dotted: str) -> Any:
        return dig(self.data, dotted) if self.data is not None else None


@task(name="read bot config", cache_policy=NO_CACHE_POLICY)
def inspect_bot_config(bot: BotSettings) -> BotConfigRead:
    """Runbook: `cat config/config.json | jq '.risk_management'` (and `.strategy`). Never raises."""
    path = bot.path(bot.config_file)
    result = BotConfigRead(path=str(path))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        result.error = f"{path} does not exist"
    except OSError as error:
        result.error = f"cannot read {path}: {error.strerror}"
    except ValueError as error:
        result.error = f"{path} is not valid JSON: {error}"
    else:
        if isinstance(data, dict):
            result.data = data
        else:
            result.error = f"{path} holds JSON {type(data).__name__}, not an object"
    return result
