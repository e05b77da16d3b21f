"""Typed configuration: a TOML file plus RUNBOOK_* environment overrides.

The file is `--config`, else `$RUNBOOK_CONFIG`, else `./runbook.toml`. Environment variables win over
the file and use `__` for nesting: `RUNBOOK_SLACK__TOKEN`, `RUNBOOK_POLICY__RESTART=dry-run`.
A bad file fails at load with one line per bad field (`ConfigError`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

DEFAULT_CONFIG = Path("runbook.toml")


class ConfigError(Exception):
    """The configuration cannot be used; `str()` lists every bad field, one per line."""


class Policy(str, Enum):
    auto = "auto"
    approve = "approve"
    dry_run = "dry-run"


class Section(BaseModel):
    model_config = {"extra": "forbid"}


class HealthFields(Section):
    """Dotted paths into the bot's /health JSON, so a bot with other field names is adapted by config."""

    status: str = "status"
    websocket_connected: str = "checks.websocket_connectivity.connected"
    position_health: str = "checks.position_health"
    circuit_breaker: str = "checks.circuit_breaker.tripped"
    api_auth: str = "checks.api_auth.status"
    total_pnl: str = "metrics.total_pnl"
    account_balance: str = "metrics.account_balance"
    win_rate: str = "metrics.win_rate"
    total_trades: str = "metrics.total_trades"
    # /health "status" values meaning: trading normally, or deliberately halted (circuit breaker) by the bot
    # itself. A halted bot is alive and must not be restarted by crash recovery.
    healthy_values: list[str] = ["healthy", "ok", "degraded"]
    stopped_values: list[str] = ["stopped", "halted"]


class HyperliquidAccount(Section):
    api_url: str = "https://api.hyperliquid.xyz"
    account_address: str = ""
    # The bot's signing key: a file (JSON with "private_key", or a bare hex key) or an env variable name.
    key_file: Path | None = None
    key_env: str | None = None
    timeout_seconds: float = 10.0

    @field_validator("account_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value and not (value.startswith("0x") and len(value) == 42):
            raise ValueError("must be a 0x-prefixed 20-byte hex address")
        return value.lower()


class BotSettings(Section):
    """How to find, start, probe and read one monitored bot (see docs/bot-contract.md)."""

    working_dir: Path
    # Substrings that must all appear in the process command line; checked on every PID we touch.
    process_match: list[str] = Field(min_length=1)
    pidfile: Path | None = None
    start_command: list[str] = []
    systemd_unit: str | None = None
    health_url: str = "http://localhost:8001/health"
    metrics_url: str = "http://localhost:8000/metrics"
    probe_timeout_seconds: float = 3.0
    fields: HealthFields = HealthFields()
    log_file: Path = Path("logs/trading_bot.log")
    error_log_file: Path = Path("logs/trading_bot_errors.log")
    config_file: Path = Path("config/config.json")
    data_dir: Path = Path("data")
    # Files holding key material: never copied into evidence, never printed.
    key_files: list[Path] = []
    # Where the bot's own stdout/stderr go when we start it.
    stdout_log: Path = Path("logs/stdout.log")
    # Recovery is verified by metrics changing as well as health; turn off for a bot without metrics.
    verify_metrics: bool = True
    # The bot's own metric families whose change shows it works (e.g. api_requests_total, trades_total);
    # empty: every family except the Prometheus client's process_* and python_* collectors.
    activity_metrics: list[str] = []
    hyperliquid: HyperliquidAccount = HyperliquidAccount()

    @model_validator(mode="after")
    def _startable(self) -> "BotSettings":
        if not self.start_command and not self.systemd_unit:
            raise ValueError("give start_command or systemd_unit, or the bot cannot be restarted")
        return self

    def path(self, relative: Path) -> Path:
        """A bot path from config, resolved against the bot's working dir."""
        return relative if relative.is_absolute() else self.working_dir / relative

    def confined_path(self, relative: Path) -> Path:
        """A bot path for writing or removing: it must stay inside the bot's folder once every link and
        `..` is resolved, or a config value (or a planted symlink) could aim a write anywhere."""
        root = self.working_dir.resolve()
        target = self.path(relative).resolve()
        if not target.is_relative_to(root):
            raise ConfigError(f"{self.path(relative)} resolves to {target}, outside the bot's folder {root}; "
                              "refusing to write or remove it")
        return target

    @property
    def pidfile_path(self) -> Path | None:
        return self.path(self.pidfile) if self.pidfile else None


class SlackSettings(Section):
    token: SecretStr | None = None
    # Name of a Prefect Secret block holding the token, used when `token` is not set.
    token_block: str | None = None
    base_url: str = "https://slack.com/api/"
    channel: str = "#trading-alerts"
    stakeholder_channel: str = "#trading-status"
    timeout_seconds: float = 10.0
    # Who each escalation level pages: Slack mentions such as "<@U123>" or "@oncall".
    escalation: dict[str, str] = {
        "L1": "@oncall-primary",
        "L2": "@senior-engineer",
        "L3": "@engineering-manager",
        "L4": "@exec-team",
    }

    @field_validator("escalation")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - {"L1", "L2", "L3", "L4"}
        if unknown:
            raise ValueError(f"levels must be L1..L4, not {sorted(unknown)}")
        return value


class PolicySettings(Section):
    """What each destructive action may do by itself (DESIGN.md, safety policy)."""

    restart: Policy = Policy.auto
    kill: Policy = Policy.auto
    liquidate: Policy = Policy.approve
    zeroize: Policy = Policy.approve
    config_change: Policy = Policy.approve
    approval_timeout_seconds: int = 900


class RecoverySettings(Section):
    """Crash recovery knobs."""

    restart_storm_max: int = Field(3, ge=1)
    restart_storm_window_seconds: int = Field(3600, ge=60)
    stop_timeout_seconds: float = Field(10.0, gt=0)
    verify_timeout_seconds: float = Field(60.0, gt=0)
    # How often verification looks again (health, websocket, metrics) until the bot is back.
    verify_poll_seconds: float = Field(0.2, gt=0, le=10)
    lock_timeout_seconds: float = Field(180.0, gt=0)
    # The bot lock is a lease the holder renews; if the holder dies (worker killed), the server frees
    # it after this long (+ up to 15 s), so the next remediation is not locked out. Prefect's minimum is 60.
    lock_lease_seconds: float = Field(60.0, ge=60)
    evidence_log_lines: int = Field(100, ge=1)


class WatchSettings(Section):
    """The watcher: how often it looks and when each catalogue condition counts as firing."""

    poll_interval_seconds: float = Field(5.0, gt=0)
    websocket_down_seconds: float = Field(120.0, ge=0)
    latency_threshold_seconds: float = Field(5.0, gt=0)
    memory_percent_threshold: float = Field(80.0, gt=0, le=100)
    # Also fire memory-usage when the bot alone holds more than this (None: system memory only).
    bot_memory_limit_mb: float | None = None
    win_rate_threshold: float = Field(0.40, ge=0, le=1)
    win_rate_min_trades: int = Field(20, ge=1)
    # Balance below this fires insufficient-balance (None: only the bot's own log line does).
    min_balance_usd: float | None = None
    # A balance above the previous high by at least this much is a new high.
    balance_high_min_increase_usd: float = Field(1.0, ge=0)
    # Regular expressions over the bot's log messages that fire an alert (alert key -> pattern).
    log_patterns: dict[str, str] = {
        "stop-loss-review": r"TRADE EXIT .*reason=stop_loss",
        "daily-loss-limit": r"circuit breaker tripped: daily loss",
        "api-auth-failed": r"auth failed",
        "insufficient-balance": r"insufficient balance",
    }
    escalate: bool = True
    # Watch each bot's PID (a pidfd) so an exit is fired as it happens, not on the next poll; the poll
    # then waits this long first, so a remediation stopping the bot on purpose has recorded its stop.
    exit_watch: bool = True
    exit_grace_seconds: float = Field(0.2, ge=0, le=5)
    # How often `runbook serve` asks the server for triggered runs (Prefect's default is 10 s,
    # which would add up to 10 s to every remediation's start).
    runner_poll_seconds: float = Field(1.0, gt=0)
    # Start each triggered run by forking a warm process that has Prefect and the flows imported
    # (runbook/warmstart.py) instead of a fresh Python that imports them again (~4 s).
    warm_start: bool = True


class IntakeSettings(Section):
    """The webhook intake for Prometheus Alertmanager and Grafana; it does not start without a token."""

    host: str = "127.0.0.1"
    port: int = Field(9095, ge=0, le=65535)
    token: SecretStr | None = None
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    # External alert names -> catalogue keys (catalogue keys themselves are always accepted).
    alert_names: dict[str, str] = {
        "TradingBotDown": "crash-recovery",
        "BotCrashed": "crash-recovery",
        "WebSocketDisconnected": "websocket-disconnected",
        "HighAPILatency": "api-latency",
        "HighMemoryUsage": "memory-usage",
        "LowWinRate": "win-rate-review",
        "DailyLossLimitReached": "daily-loss-limit",
        "InsufficientBalance": "insufficient-balance",
        "APIAuthenticationFailed": "api-auth-failed",
    }
    # The label naming the bot; alerts without it go to the only bot, if there is one.
    bot_label: str = "bot"


class InfraSettings(Section):
    """The infrastructure runbooks: WebSocket disconnected, API auth failed, API latency, memory usage."""

    # Network checks to the API host (DNS, TCP connect, HTTPS request): samples taken one after another.
    network_samples: int = Field(5, ge=1, le=50)
    network_timeout_seconds: float = Field(5.0, gt=0)
    # A TCP connect slower than this (median) puts the blame on the network, not the exchange.
    slow_connect_ms: float = Field(1000.0, gt=0)
    # How long the websocket flow waits for the bot's own reconnect before it restarts the bot.
    websocket_reconnect_wait_seconds: float = Field(60.0, ge=0)
    # Log lines younger than this count as "recent" (reconnect attempts, rate-limit mentions, API calls).
    recent_log_minutes: float = Field(10.0, gt=0)
    # The latency flow reads the bot's request-duration histogram twice, this far apart.
    latency_window_seconds: float = Field(30.0, gt=0)
    latency_metric: str = "api_request_duration"
    # The bot's own request volume counts as the cause above this many API calls a minute (the IP limit
    # is 1200 weight/min; most info requests weigh 2-20), or above this share of its address budget.
    api_calls_per_minute_budget: float = Field(600.0, gt=0)
    rate_limit_usage_high: float = Field(0.9, gt=0, le=1)
    # Memory: restart the bot (restart policy) when host memory is above this and the bot is the largest
    # process, or when the bot alone is above memory_restart_bot_mb (None: host memory only).
    memory_restart_percent: float = Field(90.0, gt=0, le=100)
    memory_restart_bot_mb: float | None = Field(None, gt=0)
    memory_samples: int = Field(5, ge=2, le=120)
    memory_sample_interval_seconds: float = Field(2.0, gt=0)
    # RSS growing faster than this across the samples is a leak; otherwise a spike (or a plateau).
    memory_leak_mb_per_minute: float = Field(10.0, gt=0)
    memory_top_processes: int = Field(10, ge=1)
    # Regular expressions over the bot's log messages (the bot contract; adapt them for another bot).
    reconnect_pattern: str = r"websocket reconnect attempt (?P<attempt>\d+)(?: in (?P<delay>[\d.]+)s)?"
    websocket_pattern: str = r"websocket"
    rate_limit_pattern: str = r"rate limit|HTTP 429"
    api_call_pattern: str = r"^API CALL (?P<endpoint>\S+)"
    auth_pattern: str = r"auth"

    @field_validator("reconnect_pattern", "websocket_pattern", "rate_limit_pattern", "api_call_pattern",
                     "auth_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return value


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PERIOD_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_period(text: str) -> timedelta:
    """`7d`, `24h`, `90m`, `2w` (a positive number and a unit) as a timedelta; ValueError otherwise."""
    value = str(text).strip().lower()
    try:
        amount = float(value[:-1])
    except ValueError:
        amount = float("nan")
    if value[-1:] not in _PERIOD_UNITS or not 0 < amount < 10**6:
        raise ValueError(f"a period is a positive number and a unit (m, h, d or w), e.g. 7d or 24h; not {text!r}")
    return timedelta(seconds=amount * _PERIOD_UNITS[value[-1:]])


def _hh_mm(value: str) -> tuple[int, int]:
    hours, sep, minutes = value.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"must be HH:MM (24-hour clock), not {value!r}")
    return int(hours), int(minutes)


class ReportSettings(Section):
    """The scheduled reports (daily trading summary, weekly alert analysis): when, and over what window."""

    # The daily summary runs at this local time and covers the last complete day before it.
    daily_time: str = "00:05"
    weekly_day: str = "mon"
    weekly_time: str = "08:00"
    # IANA time zone of both schedules and of the summary's day boundaries.
    timezone: str = "UTC"
    # The weekly analysis covers [end - period, end).
    weekly_period: str = "7d"
    # An alert firing again on the same bot this soon after its previous incident resolved is flapping.
    flap_window_minutes: float = Field(60.0, gt=0)
    # Where the PDFs are posted (None: slack.channel).
    slack_channel: str | None = None

    @field_validator("daily_time", "weekly_time")
    @classmethod
    def _time(cls, value: str) -> str:
        _hh_mm(value)
        return value

    @field_validator("weekly_day")
    @classmethod
    def _day(cls, value: str) -> str:
        day = value.strip().lower()[:3]
        if day not in WEEKDAYS:
            raise ValueError(f"must be a weekday ({', '.join(WEEKDAYS)}), not {value!r}")
        return day

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError; a malformed name a ValueError
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as UTC or Europe/Zurich)") from None
        return value

    @field_validator("weekly_period")
    @classmethod
    def _period(cls, value: str) -> str:
        parse_period(value)
        return value

    @property
    def daily_cron(self) -> str:
        hours, minutes = _hh_mm(self.daily_time)
        return f"{minutes} {hours} * * *"

    @property
    def weekly_cron(self) -> str:
        hours, minutes = _hh_mm(self.weekly_time)
        return f"{minutes} {hours} * * {self.weekly_day}"


class BackupSettings(Section):
    """Evidence backups: `emergency-backup`, and the evidence step of system-failure and security-breach."""

    # Archives go to FOLDER/<bot>/emergency_backup_YYYYmmdd_HHMMSS.tar.gz (UTC); relative to the cwd.
    folder: Path = Path("runbook-backups")
    # What is archived: folders of the bot's working_dir (the runbook's `logs/ data/ config/`).
    include: list[Path] = [Path("logs"), Path("data"), Path("config")]
    # Retention, per bot: keep this many newest archives (0: all) and none older than max_age_days.
    keep: int = Field(30, ge=0)
    max_age_days: float | None = Field(None, gt=0)
    # gzip level (gzip's and `tar -czf`'s default is 6) and compression threads (None: one per CPU).
    compress_level: int = Field(6, ge=0, le=9)
    workers: int | None = Field(None, ge=1)
    # Read the archive back against its manifest before publishing it.
    verify: bool = True


class EmergencySettings(Section):
    """Complete system failure and security breach: stopping all trading and liquidating."""

    # SIGTERM grace before SIGKILL when all trading must stop (crash recovery uses recovery.stop_timeout_seconds).
    stop_timeout_seconds: float = Field(3.0, gt=0)
    # Cancelling all open orders also removes the bot's stop-losses; keep reduce-only trigger orders
    # (they can only shrink a position) with true.
    keep_protective_orders: bool = False
    # Each close is a reduce-only IOC priced at mid x (1 +/- slippage); what did not fill is retried
    # (fresh mid each time) up to `liquidation_attempts` times, `liquidation_retry_delay_seconds` apart.
    liquidation_slippage: float = Field(0.03, gt=0, le=0.2)
    liquidation_attempts: int = Field(5, ge=1, le=50)
    liquidation_retry_delay_seconds: float = Field(0.5, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RUNBOOK_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    journal_url: str = "sqlite:///runbook-journal.db"
    reports_dir: Path = Path("runbook-reports")
    bots: dict[str, BotSettings] = {}
    slack: SlackSettings = SlackSettings()
    policy: PolicySettings = PolicySettings()
    recovery: RecoverySettings = RecoverySettings()
    watch: WatchSettings = WatchSettings()
    intake: IntakeSettings = IntakeSettings()
    infra: InfraSettings = InfraSettings()
    reports: ReportSettings = ReportSettings()
    backup: BackupSettings = BackupSettings()
    emergency: EmergencySettings = EmergencySettings()

    @field_validator("bots")
    @classmethod
    def _some_bot(cls, value: dict[str, BotSettings]) -> dict[str, BotSettings]:
        if not value:
            raise ValueError("configure at least one bot as [bots.<name>]")
        return value

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _CONFIG_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def bot(self, name: str | None) -> tuple[str, BotSettings]:
        """The named bot, or the only one when no name is given."""
        if name is None:
            if len(self.bots) != 1:
                raise ConfigError(f"several bots are configured ({', '.join(self.bots)}): choose one with --bot")
            name = next(iter(self.bots))
        if name not in self.bots:
            raise ConfigError(f"no bot named {name!r}; configured: {', '.join(self.bots)}")
        return name, self.bots[name]


# The TOML path travels to settings_customise_sources through here (pydantic-settings reads it at init).
_CONFIG_FILE: dict[str, Path | None] = {}


def config_path(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("RUNBOOK_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load and validate the configuration, or raise ConfigError naming every bad field."""
    toml_path = config_path(path)
    if not toml_path.is_file():
        raise ConfigError(f"{toml_path}: configuration file not found (give --config or set RUNBOOK_CONFIG)")
    _CONFIG_FILE["path"] = toml_path
    try:
        settings = Settings()
    except ValidationError as error:
        raise ConfigError(_describe(toml_path, error)) from None
    except ValueError as error:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"{toml_path}: {error}") from None
    finally:
        _CONFIG_FILE.pop("path", None)
    return settings


def _describe(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: {error.error_count()} bad field(s)"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def resolve_secret(secret: SecretStr | None, block_name: str | None) -> str | None:
    """A secret's value from config/env, else from a Prefect Secret block. Never log the result."""
    if secret is not None:
        return secret.get_secret_value()
    if block_name:
        from prefect.blocks.system import Secret

        return Secret.load(block_name).get()
    return None


def dump_redacted(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret shown as '**********' (for check-config --json)."""
    return settings.model_dump(mode="json")
