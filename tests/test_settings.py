"""Configuration: TOML + RUNBOOK_* env, and one clear line per bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.settings import ConfigError, Policy, load_settings

GOOD = """
journal_url = "sqlite:///{tmp}/journal.db"

[slack]
token = "xoxb-secret-token-value"
channel = "#alerts"

[bots.alpha]
working_dir = "{tmp}/bot"
process_match = ["trading_bot.py"]
pidfile = "bot.pid"
start_command = ["python", "trading_bot.py"]

[bots.alpha.fields]
status = "state"

[bots.beta]
working_dir = "{tmp}/beta"
process_match = ["beta"]
systemd_unit = "trading-bot-beta"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runbook.toml"
    path.write_text(text.format(tmp=tmp_path))
    return path


def test_loads_bots_fields_and_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    assert set(settings.bots) == {"alpha", "beta"}
    alpha = settings.bots["alpha"]
    assert alpha.fields.status == "state"
    assert alpha.fields.websocket_connected == "checks.websocket_connectivity.connected"
    assert alpha.pidfile_path == tmp_path / "bot" / "bot.pid"
    assert alpha.path(alpha.log_file) == tmp_path / "bot" / "logs" / "trading_bot.log"
    assert settings.policy.liquidate is Policy.approve and settings.policy.restart is Policy.auto
    assert "xoxb" not in repr(settings.slack)  # SecretStr hides it


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_POLICY__RESTART", "dry-run")
    monkeypatch.setenv("RUNBOOK_SLACK__CHANNEL", "#other")
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.policy.restart is Policy.dry_run
    assert settings.slack.channel == "#other"
    assert settings.slack.token.get_secret_value() == "xoxb-secret-token-value"


def test_config_from_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_CONFIG", str(write(tmp_path, GOOD)))
    assert "alpha" in load_settings().bots


def test_bad_config_names_every_bad_field(tmp_path: Path) -> None:
    bad = """
[policy]
restart = "sometimes"

[bots.alpha]
working_dir = "/tmp/x"
process_match = []
health_url = 5
surprise = true

[bots.alpha.hyperliquid]
account_address = "not-an-address"
"""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, bad))
    message = str(caught.value)
    assert "policy.restart" in message
    assert "bots.alpha.process_match" in message
    assert "bots.alpha.health_url" in message
    assert "bots.alpha.surprise" in message
    assert "bots.alpha.hyperliquid.account_address" in message
    # one line per problem, after the heading
    assert len(message.strip().splitlines()) >= 6


def test_bot_without_a_way_to_start_is_rejected(tmp_path: Path) -> None:
    text = '[bots.a]\nworking_dir = "/tmp"\nprocess_match = ["x"]\n'
    with pytest.raises(ConfigError, match="start_command or a supervisor"):
        load_settings(write(tmp_path, text))


def test_supervisor_settings(tmp_path: Path) -> None:
    """systemd_unit alone means systemd; a supervisor needs its unit/program name; commands are argument lists."""
    settings = load_settings(write(tmp_path, GOOD))
    beta = settings.bots["beta"]
    assert beta.supervisor.value == "systemd" and beta.supervisor_name == "trading-bot-beta"
    assert beta.supervisor_command("stop") == ["systemctl", "stop", "trading-bot-beta"]
    assert settings.bots["alpha"].supervised is False
    text = ('[bots.a]\nworking_dir = "/tmp"\nprocess_match = ["x"]\nsupervisor = "supervisord"\n'
            'supervisor_name = "bot"\nsupervisorctl = ["supervisorctl", "-c", "/etc/sv.conf"]\n')
    bot = load_settings(write(tmp_path, text)).bots["a"]
    assert bot.supervisor_command("restart") == ["supervisorctl", "-c", "/etc/sv.conf", "restart", "bot"]
    with pytest.raises(ConfigError, match="needs supervisor_name"):
        load_settings(write(tmp_path, text.replace('supervisor_name = "bot"\n', "")))
    with pytest.raises(ConfigError, match="supervisor"):
        load_settings(write(tmp_path, text.replace('"supervisord"', '"runit"')))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, "[bots.a\nworking_dir = "))


def test_choosing_a_bot(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="several bots"):
        settings.bot(None)
    with pytest.raises(ConfigError, match="no bot named 'gamma'"):
        settings.bot("gamma")
    assert settings.bot("beta")[0] == "beta"
