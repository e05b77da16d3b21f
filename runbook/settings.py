"""Typed configuration: a TOML file plus RUNBOOK_* environment overrides.

The file is `--config`, else `$RUNBOOK_CONFIG`, else `./runbook.toml`. Environment variables win over
the file and use `__` for nesting: `RUNBOOK_SLACK__TOKEN`, `RUNBOOK_POLICY__RESTART=dry-run`.
A bad file fails at load with one line per bad field (`ConfigError`).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

DEFAULT_CONFIG = Path("runbook.toml")


class ConfigError(Exception):
    """The configuration cannot be used; `str()` lists every bad field, one per line."""


class Policy(str, Enum):
    auto = "auto"
    approve = "approve"
    dry_run = "dry-run"


class Supervisor(str, Enum):
    """What keeps the bot running: nothing (we start it with start_command), a systemd unit, a supervisord program."""

    none = "none"
    systemd = "systemd"
    supervisord = "supervisord"


class Section(BaseModel):
    model_config = {"extra": "forbid"}


def _dotted_path(value: str) -> str:
    """A dotted path into JSON (`checks.api_auth.status`): non-empty parts, no spaces."""
    if not isinstance(value, str) or not value or any(not part or part != part.strip() for part in value.split(".")):
        raise ValueError(f"{value!r} is not a dotted path (parts separated by single dots, e.g. checks.api_auth.status)")
    return value


def _regex(value: str, required: tuple[str, ...] = ()) -> str:
    """A regular expression that compiles and has the named groups the code reads."""
    try:
        compiled = re.compile(value)
    except re.error as error:
        raise ValueError(f"not a regular expression: {error}") from None
    missing = [name for name in required if name not in compiled.groupindex]
    if missing:
        raise ValueError(f"the pattern lacks the named group(s) {', '.join(f'(?P<{m}>...)' for m in missing)}")
    return value


class HealthFields(Section):
    """Dotted paths into the bot's /health JSON, so a bot with other field names is adapted by config."""

    status: str = "status"
    websocket_connected: str = "checks.websocket_connectivity.connected"
    position_health: str = "checks.position_health"
    circuit_breaker: str = "checks.circuit_breaker.tripped"
    circuit_breaker_reason: str = "checks.circuit_breaker.reason"
    api_auth: str = "checks.api_auth.status"
    total_pnl: str = "metrics.total_pnl"
    daily_pnl: str = "metrics.daily_pnl"
    account_balance: str = "metrics.account_balance"
    withdrawable: str = "metrics.withdrawable"
    win_rate: str = "metrics.win_rate"
    total_trades: str = "metrics.total_trades"
    # Inside position_health: the list of open positions, the coins without a stop, and each position's fields.
    positions: str = "positions"
    positions_without_stop: str = "positions_without_stop"
    position_coin: str = "coin"
    position_size: str = "szi"
    position_entry: str = "entry_px"
    position_mark: str = "mark_px"
    position_stop: str = "stop_px"
    position_pnl: str = "unrealized_pnl"
    # /health "status" values meaning: trading normally, or deliberately halted (circuit breaker) by the bot
    # itself. A halted bot is alive and must not be restarted by crash recovery.
    healthy_values: list[str] = ["healthy", "ok", "degraded"]
    stopped_values: list[str] = ["stopped", "halted"]
    # Values of `api_auth` meaning the exchange refuses the bot's key.
    api_auth_failing: list[str] = ["fail"]
    # Checks in /health that report a cause outside the bot (dotted path -> the runbook that handles it).
    # A bot answering 503 while one of these fails is not sick in itself: crash recovery hands it over to
    # that runbook instead of restarting it. Any other failing check (or none) means the bot itself is sick.
    outside_checks: dict[str, str] = {
        "checks.websocket_connectivity.status": "websocket-disconnected",
        "checks.api_connectivity.status": "api-latency",
        "checks.api_auth.status": "api-auth-failed",
    }
    failing_values: list[str] = ["fail", "failing", "error"]

    @field_validator("status", "websocket_connected", "position_health", "circuit_breaker", "circuit_breaker_reason",
                     "api_auth", "total_pnl", "daily_pnl", "account_balance", "withdrawable", "win_rate",
                     "total_trades", "positions", "positions_without_stop", "position_coin", "position_size",
                     "position_entry", "position_mark", "position_stop", "position_pnl")
    @classmethod
    def _path(cls, value: str) -> str:
        return _dotted_path(value)

    @property
    def paths(self) -> dict[str, str]:
        """Every configured /health path by setting name; position fields relative to position_health."""
        return {name: getattr(self, name) for name in type(self).model_fields
                if name not in ("healthy_values", "stopped_values", "api_auth_failing", "outside_checks", "failing_values")}


LOG_LINE_GROUPS = ("timestamp", "level", "message")


class LogFormat(Section):
    """How the bot's log lines are read: JSON objects with these fields, or plain text and a regular expression."""

    format: Literal["json", "text"] = "json"
    # json: the (dotted) field names of a line's time, level and message.
    timestamp_field: str = "timestamp"
    level_field: str = "level"
    message_field: str = "message"
    # text: a regular expression over the whole line with the named groups timestamp, level and message.
    line_pattern: str | None = None
    # How the timestamp is written: None for ISO 8601, else a strptime format. A time without a zone is UTC.
    timestamp_format: str | None = None

    @field_validator("timestamp_field", "level_field", "message_field")
    @classmethod
    def _field(cls, value: str) -> str:
        return _dotted_path(value)

    @field_validator("line_pattern")
    @classmethod
    def _line(cls, value: str | None) -> str | None:
        return None if value is None else _regex(value, LOG_LINE_GROUPS)

    @model_validator(mode="after")
    def _text_needs_pattern(self) -> "LogFormat":
        if self.format == "text" and self.line_pattern is None:
            raise ValueError("format = \"text\" needs line_pattern, a regular expression with the named groups "
                             "timestamp, level and message")
        return self


TRADE_EXIT_GROUPS = ("coin", "side", "size", "entry", "exit", "pnl", "reason", "result")


class Markers(Section):
    """Regular expressions (case-insensitive) over the bot's log messages: what a line means."""

    # A closed trade, with the named groups coin, side (long/short), size, entry, exit, pnl, reason, result.
    trade_exit: str = (r"TRADE EXIT (?P<coin>\S+) (?P<side>long|short) size=(?P<size>\S+) entry=(?P<entry>\S+) "
                       r"exit=(?P<exit>\S+) pnl=(?P<pnl>\S+) reason=(?P<reason>\S+) (?P<result>WIN|LOSS)")
    # A literal every trade-exit line contains (the fast pre-filter of a big log), the `result` of a losing
    # trade, and the `reason` of an exit by stop-loss.
    trade_exit_literal: str = "TRADE EXIT"
    trade_loss: str = "LOSS"
    stop_loss_reason: str = "stop_loss"
    # The websocket lines; among them a reconnect attempt (optional groups attempt and delay), a disconnect
    # and a (re)connect.
    websocket: str = r"websocket"
    reconnect: str = r"websocket reconnect attempt (?P<attempt>\d+)(?: in (?P<delay>[\d.]+)s)?"
    disconnect: str = r"disconnect|lost|closed"
    connected: str = r"connected"
    rate_limit: str = r"rate limit|HTTP 429"
    # An API call (the group endpoint, when present, counts them per endpoint).
    api_call: str = r"^API CALL (?P<endpoint>\S+)"
    # Authentication lines of the error log.
    auth: str = r"auth"

    @field_validator("websocket", "reconnect", "disconnect", "connected", "rate_limit", "api_call", "auth")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _regex(value)

    @field_validator("trade_exit")
    @classmethod
    def _exit(cls, value: str) -> str:
        return _regex(value, TRADE_EXIT_GROUPS)

    @field_validator("trade_exit_literal", "trade_loss", "stop_loss_reason")
    @classmethod
    def _word(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def patterns(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in
                ("trade_exit", "websocket", "reconnect", "disconnect", "connected", "rate_limit", "api_call", "auth")}


class MetricNames(Section):
    """The bot's Prometheus series the runbook reads."""

    # The request-duration histogram (or summary) family, and the unit it counts in.
    latency: str = "api_request_duration_seconds"
    latency_unit: Literal["seconds", "milliseconds"] = "seconds"

    @field_validator("latency")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", value):
            raise ValueError(f"{value!r} is not a Prometheus metric name")
        return value

    @property
    def latency_scale(self) -> float:
        """Multiply a reading by this for seconds."""
        return 0.001 if self.latency_unit == "milliseconds" else 1.0


class BotConfigKeys(Section):
    """Dotted paths into the bot's own config file (config/config.json) for the settings the runbook reads."""

    # The sections shown as the bot's risk parameters.
    risk: str = "risk_management"
    limits: str = "risk_limits"
    sizing: str = "position_sizing"
    strategy: str = "strategy"
    stop_loss_pct: str = "risk_management.stop_loss_pct"
    trailing_stop: str = "risk_management.trailing_stop"
    take_profit_pct: str = "risk_management.take_profit_pct"
    max_position_usd: str = "risk_management.max_position_usd"
    leverage: str = "risk_management.leverage"
    daily_loss_limit_usd: str = "risk_limits.daily_loss_limit_usd"
    daily_loss_reset_at: str = "risk_limits.daily_loss_reset_at"
    max_drawdown_pct: str = "risk_limits.max_drawdown_pct"
    min_balance_usd: str = "risk_limits.min_balance_usd"
    base_size_usd: str = "position_sizing.base_size_usd"
    max_positions: str = "position_sizing.max_positions"
    strategy_name: str = "strategy.name"
    max_hold_seconds: str = "strategy.max_hold_seconds"

    @field_validator("*")
    @classmethod
    def _path(cls, value: str) -> str:
        return _dotted_path(value)

    @property
    def sections(self) -> tuple[str, ...]:
        """The risk sections in the order people expect them (limits first, as the runbook reads them)."""
        return (self.limits, self.risk, self.sizing, self.strategy)

    @property
    def paths(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in type(self).model_fields}


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


class DrillTarget(Section):
    """How a drill injects each scenario into this bot and clears it again: commands, run without a shell."""

    # scenario key (runbook/drills.py) -> argv, e.g. crash = ["systemctl", "kill", "-s", "KILL", "bot.service"]
    inject: dict[str, list[str]] = {}
    # Undoes every injected fault (run after each scenario); none: the faults are one-off.
    clear: list[str] = []
    command_timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("inject")
    @classmethod
    def _known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from runbook.drills import SCENARIOS

        unknown = sorted(set(value) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"unknown drill scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
        empty = sorted(key for key, argv in value.items() if not argv)
        if empty:
            raise ValueError(f"empty command for {empty}")
        return value


class BotSettings(Section):
    """How to find, start, probe and read one monitored bot (see docs/bot-contract.md)."""

    working_dir: Path
    # Substrings that must all appear in the process command line; checked on every PID we touch.
    process_match: list[str] = Field(min_length=1)
    pidfile: Path | None = None
    start_command: list[str] = []
    # A supervised bot is stopped, started and restarted through its supervisor (`systemctl stop|start|restart
    # UNIT`, `supervisorctl stop|start|restart NAME`), so a deliberate stop stays stopped. `supervisor_name` is
    # the unit or program name; `systemd_unit = "X"` alone means supervisor = "systemd", supervisor_name = "X".
    supervisor: Supervisor = Supervisor.none
    supervisor_name: str | None = None
    systemd_unit: str | None = None
    # The control commands (argument lists, no shell): e.g. ["systemctl", "--user"] or
    # ["supervisorctl", "-c", "/etc/supervisor/supervisord.conf"].
    systemctl: list[str] = Field(["systemctl"], min_length=1)
    supervisorctl: list[str] = Field(["supervisorctl"], min_length=1)
    supervisor_timeout_seconds: float = Field(60.0, gt=0)
    health_url: str = "http://localhost:8001/health"
    metrics_url: str = "http://localhost:8000/metrics"
    probe_timeout_seconds: float = 3.0
    fields: HealthFields = HealthFields()
    logs: LogFormat = LogFormat()
    markers: Markers = Markers()
    metrics: MetricNames = MetricNames()
    config_keys: BotConfigKeys = BotConfigKeys()
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
    hyperliquid: HyperliquidAccount = HyperliquidAccount()
    # `runbook drill` injects faults only into a bot that allows it, and only with its `drill` commands.
    drill_allowed: bool = False
    drill: DrillTarget = DrillTarget()

    @model_validator(mode="after")
    def _startable(self) -> "BotSettings":
        if self.systemd_unit and self.supervisor is Supervisor.none:
            self.supervisor, self.supervisor_name = Supervisor.systemd, self.supervisor_name or self.systemd_unit
        if self.supervisor is not Supervisor.none and not self.supervisor_name:
            raise ValueError(f"supervisor = {self.supervisor.value!r} needs supervisor_name (the unit or program name)")
        if not self.start_command and self.supervisor is Supervisor.none:
            raise ValueError("give start_command or a supervisor (systemd_unit, or supervisor = \"systemd\" | "
                             "\"supervisord\" with supervisor_name), or the bot cannot be restarted")
        return self

    @property
    def supervised(self) -> bool:
        return self.supervisor is not Supervisor.none

    def supervisor_command(self, verb: str) -> list[str]:
        """The argument list that makes the supervisor `verb` (stop, start, restart, status) the bot."""
        control = self.systemctl if self.supervisor is Supervisor.systemd else self.supervisorctl
        return [*control, verb, str(self.supervisor_name)]

    @property
    def start_description(self) -> str:
        if self.supervised:
            return "`" + " ".join(self.supervisor_command("start")) + "`"
        return "`" + " ".join(self.start_command) + "`"

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


LEVELS = ("L1", "L2", "L3", "L4")
# The people channels a contact can have (each an Apprise URL) and the severities routing knows.
PEOPLE_CHANNELS = ("pager", "sms", "email")
SEVERITIES = ("CRITICAL", "EMERGENCY", "WARNING", "INFO")


class Contact(Section):
    """One person (or rota) of an escalation level. Channel URLs are Apprise URLs and secrets: they hold
    passwords and API keys (`mailto://user:pass@host`, `twilio://sid:token@from/to`, `pagerduty://key@...`)."""

    name: str
    slack_id: str | None = None
    # Plain facts for the runbook's contact table; sending uses the URLs below.
    email: str | None = None
    phone: str | None = None
    email_url: SecretStr | None = None
    sms_url: SecretStr | None = None
    pager_url: SecretStr | None = None

    def url(self, channel: str) -> SecretStr | None:
        return getattr(self, f"{channel}_url")


class Level(Section):
    """An escalation level: who, and how fast the runbook wants them to answer."""

    contacts: list[Contact] = []
    # The runbook's response window for this level (its "Response: 5 minutes" ...), shown in pages.
    response_minutes: float = Field(15.0, gt=0)


class OncallSettings(Section):
    """Who is paged, how, for what: contacts per escalation level and routing per severity.

    Sending goes through Apprise, one URL per channel. Every message on every channel is journaled with
    its delivery; an undelivered one is retried by the watcher with backoff until it is delivered or its
    incident is resolved."""

    levels: dict[str, Level] = {
        "L1": Level(response_minutes=5), "L2": Level(response_minutes=15),
        "L3": Level(response_minutes=60), "L4": Level(response_minutes=240),
    }
    # severity -> the people channels used (Slack is always used as well, except for INFO, which goes into
    # the digest). "sms" is skipped for contacts without an sms_url.
    routes: dict[str, list[str]] = {
        "CRITICAL": ["pager", "sms"],
        "EMERGENCY": ["pager", "sms"],
        "WARNING": ["email", "sms"],
        "INFO": ["digest"],
    }
    # Every blocking send carries this deadline (SMTP connect/read, HTTP to a pager or SMS gateway).
    send_timeout_seconds: float = Field(10.0, gt=0)
    # Retry of undelivered messages by the watcher: first after `retry_initial_seconds`, doubling up to
    # `retry_max_seconds` between attempts, for as long as the incident is unresolved.
    retry_initial_seconds: float = Field(30.0, gt=0)
    retry_max_seconds: float = Field(900.0, gt=0)

    @field_validator("levels", "routes", mode="before")
    @classmethod
    def _upper_keys(cls, value: Any) -> Any:
        """`l1` from an environment variable (RUNBOOK_ONCALL__LEVELS__L1__...) is L1."""
        return {str(k).upper(): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: dict[str, Level]) -> dict[str, Level]:
        unknown = set(value) - set(LEVELS)
        if unknown:
            raise ValueError(f"levels must be L1..L4, not {sorted(unknown)}")
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for severity, channels in value.items():
            if severity not in SEVERITIES:
                raise ValueError(f"routes: unknown severity {severity!r} (one of {', '.join(SEVERITIES)})")
            bad = [c for c in channels if c not in (*PEOPLE_CHANNELS, "digest")]
            if bad:
                raise ValueError(f"routes.{severity}: unknown channel(s) {bad} (pager, sms, email, digest)")
        return value

    def contacts(self, level: str) -> list[Contact]:
        found = self.levels.get(level)
        return list(found.contacts) if found else []

    def secrets(self) -> list[str]:
        """Every channel URL, for redaction."""
        return [url.get_secret_value() for level in self.levels.values() for contact in level.contacts
                for url in (contact.email_url, contact.sms_url, contact.pager_url) if url is not None]


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
    lock_timeout_seconds: float = Field(180.0, gt=0)
    # The bot lock is a lease the holder renews; if the holder dies (worker killed), the server frees
    # it after this long (+ up to 15 s), so the next remediation is not locked out. Prefect's minimum is 60.
    lock_lease_seconds: float = Field(60.0, ge=60)
    evidence_log_lines: int = Field(100, ge=1)
    # A bot that answers healthy is still stalled when watch.liveness_metric does not change within this window.
    liveness_window_seconds: float = Field(10.0, gt=0)


class WatchSettings(Section):
    """The watcher: how often it looks and when each catalogue condition counts as firing."""

    poll_interval_seconds: float = Field(5.0, gt=0)
    websocket_down_seconds: float = Field(120.0, ge=0)
    # RUNBOOK.md's crash symptoms besides a missing process: /health answering 503 for this long, and the
    # bot's own liveness metric (summed over its labels) not changing for this long. None turns either off.
    unhealthy_seconds: float | None = Field(60.0, ge=0)
    metrics_stale_seconds: float | None = Field(120.0, ge=0)
    liveness_metric: str = "api_requests_total"
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
    # Alerts the watcher never fires (catalogue keys): a condition someone turned off.
    disabled: list[str] = []
    # How often `runbook serve` asks the server for triggered runs (Prefect's default is 10 s,
    # which would add up to 10 s to every remediation's start).
    runner_poll_seconds: float = Field(1.0, gt=0)

    @field_validator("log_patterns")
    @classmethod
    def _patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for key, pattern in value.items():
            try:
                _regex(pattern)
            except ValueError as error:
                raise ValueError(f"{key}: {error}") from None
        return value


    @field_validator("disabled")
    @classmethod
    def _alerts(cls, value: list[str]) -> list[str]:
        from runbook.alerts import CATALOGUE

        unknown = sorted(set(value) - set(CATALOGUE))
        if unknown:
            raise ValueError(f"unknown alert(s) {unknown}; known: {', '.join(CATALOGUE)}")
        return value


class DrillSettings(Section):
    """Drills (`runbook drill`, the `drill` deployment): which bot, which scenarios, how long to wait."""

    # The deployment's schedule (cron, in reports.timezone); off until schedule_active = true.
    cron: str = "0 6 1 * *"
    schedule_active: bool = False
    bot: str | None = None
    scenarios: str = "all"
    # Per scenario: the alert must fire within this long of the injection (plus watch.websocket_down_seconds
    # for websocket scenarios), and its flow must conclude within conclude_timeout_seconds of the injection.
    detect_timeout_seconds: float = Field(120.0, gt=0)
    conclude_timeout_seconds: float = Field(900.0, gt=0)
    # Between scenarios: the bot must be healthy again (faults cleared) within this long.
    healthy_timeout_seconds: float = Field(120.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)


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
    # Stop-losses and take-profits (reduce-only trigger orders: they can only shrink a position) stay on the book
    # while trading is stopped and a liquidation waits; a position's are cancelled once it is verified flat.
    # false cancels them with every other order at once (positions left open are then unprotected).
    keep_protective_orders: bool = True
    # Hyperliquid's dead man's switch (scheduleCancel), armed when trading is stopped: the exchange cancels every
    # open order this many seconds later if nothing else did (0: never armed). Disarmed again once every bot
    # process is verified stopped while protective orders are kept (it would cancel them too). The exchange
    # refuses it below a traded-volume minimum; the report says so.
    dead_mans_switch_seconds: float = Field(300.0, ge=0)
    # security-breach: how long the flow re-checks (every key_recheck_interval_seconds) whether the bot's key is
    # still an approved agent at the exchange, and records when it was revoked.
    key_revocation_watch_seconds: float = Field(300.0, ge=0)
    key_recheck_interval_seconds: float = Field(10.0, gt=0)

    @field_validator("dead_mans_switch_seconds")
    @classmethod
    def _switch(cls, value: float) -> float:
        if 0 < value < 5:
            raise ValueError("the exchange needs at least 5 seconds (or 0: never arm it)")
        return value
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
    oncall: OncallSettings = OncallSettings()
    policy: PolicySettings = PolicySettings()
    recovery: RecoverySettings = RecoverySettings()
    watch: WatchSettings = WatchSettings()
    intake: IntakeSettings = IntakeSettings()
    infra: InfraSettings = InfraSettings()
    reports: ReportSettings = ReportSettings()
    backup: BackupSettings = BackupSettings()
    emergency: EmergencySettings = EmergencySettings()
    drill: DrillSettings = DrillSettings()

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
        # Earlier sources win: RUNBOOK_<SECTION>__<KEY>, then the short names of ENV_ALIASES, then the file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _AliasEnvSource(settings_cls)]
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


# Short environment names for a few settings, each the same as its RUNBOOK_<SECTION>__<KEY>, with one
# precedence: RUNBOOK_<SECTION>__<KEY>, then the short name, then the file (docs/configuration.md).
ENV_ALIASES: dict[str, tuple[str, str]] = {"RUNBOOK_INTAKE_TOKEN": ("intake", "token")}


class _AliasEnvSource(PydanticBaseSettingsSource):
    """The settings named by ENV_ALIASES' variables that are set (and not blank)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for variable, (section, key) in ENV_ALIASES.items():
            value = os.environ.get(variable, "").strip()
            if value:
                values.setdefault(section, {})[key] = value
        return values


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
