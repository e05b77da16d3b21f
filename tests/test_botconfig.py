"""The bot config change: proposed as a pure function, written atomically with a backup, refused if stale."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandbox.manager import BOT_SECTIONS
from tasks.botconfig import (
    BotConfigError, ConfigChangedError, apply_change, propose_change, read_config,
)

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"bot": {"name": "x", "health_port": 1}, **BOT_SECTIONS}, indent=4) + "\n")
    path.chmod(0o640)
    return path


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.bak-*"))


def test_propose_halves_sizes_and_sets_reset_marker(config_file: Path) -> None:
    config = read_config(config_file)
    before = json.loads(config_file.read_text())
    change = propose_change(config, 0.5, True, now=NOW)

    assert change.data["position_sizing"]["base_size_usd"] == 25.0
    assert change.data["risk_management"]["max_position_usd"] == 500.0
    assert change.data["risk_limits"]["daily_loss_reset_at"] == "2025-03-04T05:06:07Z"
    assert change.diff().splitlines() == [
        "position_sizing.base_size_usd: 50.0 -> 25.0",
        "risk_management.max_position_usd: 1000.0 -> 500.0",
        'risk_limits.daily_loss_reset_at: (unset) -> "2025-03-04T05:06:07Z"',
    ]
    # Everything else is kept, and the proposal is pure: neither the input nor the file changed.
    assert change.data["bot"] == before["bot"] and change.data["strategy"] == before["strategy"]
    assert change.data["risk_limits"]["daily_loss_limit_usd"] == 100.0
    assert config.data == before and json.loads(config_file.read_text()) == before
    assert change.base_sha256 == config.sha256


def test_propose_options(config_file: Path) -> None:
    config = read_config(config_file)
    assert propose_change(config, None, False).empty
    assert propose_change(config, 1.0, False).empty
    only_reset = propose_change(config, None, True, now=NOW)
    assert [c.path for c in only_reset.changes] == ["risk_limits.daily_loss_reset_at"]
    assert propose_change(config, 0.333, False).data["position_sizing"]["base_size_usd"] == 16.65
    for bad in (0, -0.5, 1.5, True):
        with pytest.raises(ValueError, match="reduce_size_factor"):
            propose_change(config, bad, False)
    with pytest.raises(ValueError, match="rounds to 0"):
        propose_change(config, 0.00001, False)


def test_apply_writes_atomically_with_a_backup(config_file: Path) -> None:
    old_text = config_file.read_text()
    change = propose_change(read_config(config_file), 0.5, True, now=NOW)

    backup = apply_change(config_file, change, now=NOW)

    assert backup == config_file.with_name("config.json.bak-20250304_050607")
    assert backup.read_text() == old_text
    assert json.loads(config_file.read_text()) == change.data
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o640  # permissions kept
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640
    # no temp files left behind
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["config.json", backup.name]


def test_backup_is_never_overwritten(config_file: Path) -> None:
    first_text = config_file.read_text()
    first = apply_change(config_file, propose_change(read_config(config_file), 0.5, False), now=NOW)
    second_text = config_file.read_text()
    second = apply_change(config_file, propose_change(read_config(config_file), 0.5, False), now=NOW)
    assert first != second and second.name == first.name + "-1"
    assert first.read_text() == first_text and second.read_text() == second_text
    assert json.loads(config_file.read_text())["position_sizing"]["base_size_usd"] == 12.5


def test_refuses_when_the_file_changed_since_it_was_read(config_file: Path) -> None:
    change = propose_change(read_config(config_file), 0.5, True)
    edited = config_file.read_text().replace("100.0", "150.0")
    config_file.write_text(edited)

    with pytest.raises(ConfigChangedError, match="changed since it was read"):
        apply_change(config_file, change)

    assert config_file.read_text() == edited
    assert backups(config_file) == []


def test_empty_change_and_unreadable_files(config_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BotConfigError, match="empty"):
        apply_change(config_file, propose_change(read_config(config_file), None, False))
    assert backups(config_file) == []
    with pytest.raises(BotConfigError, match="does not exist"):
        read_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BotConfigError, match="not valid JSON"):
        read_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(BotConfigError, match="expected an object"):
        read_config(bad)


def test_risk_parameters_table(config_file: Path) -> None:
    rows = read_config(config_file).risk_parameters()
    assert ("risk_limits", "daily_loss_limit_usd", 100.0) in rows
    assert ("position_sizing", "max_positions", 2) in rows
    assert ("risk_management", "leverage", 3) in rows
    assert all(section != "bot" for section, _, _ in rows)
