"""The watcher: looks at every configured bot every few seconds and fires what the catalogue says.

Each poll observes a bot once (process, /health, metrics, new log lines, host memory) and evaluates
every condition on that observation. Conditions with a duration (WebSocket down > 2 min) or a rate
(latency since the last poll) keep state per bot between polls. Firing goes through `fire_alert`,
which deduplicates: a condition that stays true is a repeat on the open incident, not a new one.
The same loop escalates incidents left open past their response target along L1..L4.

A process exit does not wait for the next poll: one thread per bot holds a pidfd on the bot's PID and
wakes the loop the moment the kernel reports the exit (after `exit_grace_seconds`, so a remediation
that stops the bot on purpose has recorded its stop), and that poll fires crash recovery.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psutil

from runbook.alerts import CATALOGUE, ESCALATION_LEVELS, get_alert
from runbook.firing import Firing, fire_alert
from runbook.journal import Journal, utcnow
from runbook.settings import BotSettings, Settings
from tasks.logs import parse_line
from tasks.notify import AlertNotice, post_notice
from tasks.probes import HealthReport, MetricsSnapshot, dig, number, probe_health_once, read_metrics_once
from tasks.process import BotProcess, ProcessError, locate_bot, wait_exit

log = logging.getLogger("runbook.watcher")
_LEVEL_RANK = {name: rank for rank, (name, _, _) in enumerate(ESCALATION_LEVELS)}
MAX_NEW_LOG_BYTES = 4 * 2**20  # per poll: a burst larger than this is skipped to its end, not read


@dataclass
class Observation:
    process: BotProcess | None
    process_error: str | None
    health: HealthReport
    metrics: MetricsSnapshot
    messages: list[str]
    memory_percent: float


@dataclass
class LogCursor:
    """Where we stopped reading a log; a file that shrank was rotated or truncated: start over."""

    path: Path
    offset: int | None = None
    inode: int | None = None

    def new_messages(self) -> list[str]:
        try:
            stat = self.path.stat()
        except OSError:
            return []
        if self.offset is None:  # first look: start at the end, do not replay history
            self.offset, self.inode = stat.st_size, stat.st_ino
            return []
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.offset, self.inode = 0, stat.st_ino
        if stat.st_size - self.offset > MAX_NEW_LOG_BYTES:
            self.offset = stat.st_size - MAX_NEW_LOG_BYTES
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(stat.st_size - self.offset)
        complete = chunk.rfind(b"\n") + 1  # a half-written last line waits for the next poll
        self.offset += complete
        return [parse_line(raw).message for raw in chunk[:complete].splitlines() if raw.strip()]


@dataclass
class BotState:
    name: str
    bot: BotSettings
    logs: list[LogCursor]
    websocket_down_since: float | None = None
    latency_totals: tuple[float, float] | None = None
    balance_high: float | None = None
    patterns: dict[str, re.Pattern[str]] = field(default_factory=dict)
    process: BotProcess | None = None  # as the last poll saw it: the PID the exit watch waits on


class Watcher:
    def __init__(self, settings: Settings, journal: Journal, automated: set[str]) -> None:
        self.settings = settings
        self.journal = journal
        self.automated = automated
        patterns = {key: re.compile(pattern) for key, pattern in settings.watch.log_patterns.items()}
        for key in patterns:
            get_alert(key)  # a typo in config fails at start, not silently
        self.bots = [
            BotState(name, bot, [LogCursor(bot.path(bot.log_file)), LogCursor(bot.path(bot.error_log_file))],
                     patterns=patterns)
            for name, bot in settings.bots.items()
        ]
        for state in self.bots:  # a restarted watcher starts from the recorded all-time high, not from zero
            try:
                high = journal.balance_high(state.name)
            except Exception as error:  # noqa: BLE001 - the journal is checked again on every firing
                log.warning("balance high of %s not read from the journal: %s", state.name, error)
                high = None
            state.balance_high = float(high.amount) if high is not None else None
        # Alerts the journal could not take (locked, disk full...), retried first on every poll: a log
        # line is read once, so an alert seen in it must not be dropped with the failed write.
        self.pending: dict[tuple[str, str], str] = {}
        self.wake = threading.Event()  # set by an exit watch: poll now

    # -- observing -----------------------------------------------------------------------------

    def observe(self, state: BotState) -> Observation:
        try:
            process, process_error = locate_bot(state.bot), None
        except ProcessError as error:
            process, process_error = None, str(error)
        messages: list[str] = []
        for cursor in state.logs:
            messages.extend(cursor.new_messages())
        return Observation(process, process_error, probe_health_once(state.bot), read_metrics_once(state.bot),
                           messages, psutil.virtual_memory().percent)

    # -- conditions: (alert key, summary) for every condition true now -------------------------

    def evaluate(self, state: BotState, seen: Observation, now: float) -> list[tuple[str, str]]:
        watch, fields, firing = self.settings.watch, state.bot.fields, []
        health = seen.health

        held = self.journal.deliberate_stop(state.name) if seen.process is None else None
        down = seen.process is None or health.condition in ("hung", "unreachable")
        recovery = self.settings.recovery
        underway = self.journal.restart_underway(
            state.name, timedelta(seconds=recovery.stop_timeout_seconds + recovery.verify_timeout_seconds),
        ) if down and not seen.process_error and held is None else None
        if seen.process_error:
            firing.append(("crash-recovery", f"cannot tell which process is the bot: {seen.process_error}"))
        elif held is not None:
            pass  # stopped on purpose by incident `held` (e.g. daily loss limit): down is the right state
        elif underway is not None:
            pass  # incident `underway` is restarting the bot (stopped or starting, not yet verified)
        elif seen.process is None:
            firing.append(("crash-recovery", f"bot process not running; {health.summary()}"))
        elif health.condition in ("hung", "unreachable"):
            firing.append(("crash-recovery", f"bot PID {seen.process.pid} not responding: {health.summary()}"))

        if health.reachable and health.websocket_connected is False:
            state.websocket_down_since = state.websocket_down_since or now
            down_for = now - state.websocket_down_since
            if down_for >= watch.websocket_down_seconds:
                firing.append(("websocket-disconnected", f"WebSocket disconnected for {down_for:.0f}s"))
        elif health.websocket_connected is True:
            state.websocket_down_since = None

        body = health.body or {}
        if dig(body, fields.api_auth) == "fail":
            firing.append(("api-auth-failed", "health check api_auth is failing"))
        balance = number(dig(body, fields.account_balance))
        if balance is not None:
            if watch.min_balance_usd is not None and balance < watch.min_balance_usd:
                firing.append(("insufficient-balance", f"balance {balance:,.2f} below {watch.min_balance_usd:,.2f}"))
            if state.balance_high is not None and balance >= state.balance_high + watch.balance_high_min_increase_usd:
                firing.append(("new-balance-high", f"balance {balance:,.2f} above the previous high {state.balance_high:,.2f}"))
            state.balance_high = max(balance, state.balance_high or balance)
        win_rate, trades = number(dig(body, fields.win_rate)), number(dig(body, fields.total_trades))
        if win_rate is not None and trades is not None and trades >= watch.win_rate_min_trades \
                and win_rate < watch.win_rate_threshold:
            firing.append(("win-rate-review", f"win rate {win_rate:.0%} over {trades:.0f} trades"))

        latency = self._mean_latency(state, seen.metrics)
        if latency is not None and latency > watch.latency_threshold_seconds:
            firing.append(("api-latency", f"mean API latency {latency:.1f}s since the last poll"))

        if seen.memory_percent > watch.memory_percent_threshold:
            firing.append(("memory-usage", f"system memory at {seen.memory_percent:.0f}%"))
        elif seen.process and watch.bot_memory_limit_mb and seen.process.rss_mb > watch.bot_memory_limit_mb:
            firing.append(("memory-usage", f"bot RSS {seen.process.rss_mb:.0f} MB above {watch.bot_memory_limit_mb:.0f} MB"))

        for key, pattern in state.patterns.items():
            hit = next((m for m in seen.messages if pattern.search(m)), None)
            if hit is not None:
                firing.append((key, f"log: {hit[:300]}"))
        return firing

    @staticmethod
    def _mean_latency(state: BotState, metrics: MetricsSnapshot) -> float | None:
        """Mean request duration over the requests made since the last poll (histogram or summary)."""
        if metrics.error:
            return None
        total = sum(v for k, v in metrics.samples.items() if k.split("{")[0] == "api_request_duration_seconds_sum")
        count = sum(v for k, v in metrics.samples.items() if k.split("{")[0] == "api_request_duration_seconds_count")
        previous, state.latency_totals = state.latency_totals, (total, count)
        if previous is None or count <= previous[1]:
            return None
        return (total - previous[0]) / (count - previous[1])

    # -- the loop --------------------------------------------------------------------------------

    def poll_once(self) -> list[Firing]:
        fired: list[Firing] = []
        for (key, bot), summary in list(self.pending.items()):
            firing = self._fire(key, bot, summary)
            if firing is not None:
                fired.append(firing)
        for state in self.bots:
            seen = self.observe(state)
            state.process = seen.process
            for key, summary in self.evaluate(state, seen, time.monotonic()):
                firing = self._fire(key, state.name, summary)
                if firing is not None:
                    fired.append(firing)
        return fired

    def _fire(self, key: str, bot: str, summary: str) -> Firing | None:
        try:
            firing = fire_alert(self.journal, key, bot, summary, source="watcher", automated=self.automated,
                                slack=self.settings.slack, journal_url=self.settings.journal_url)
        except Exception as error:  # one failure must not blind the watcher to the rest
            self.pending[(key, bot)] = summary
            log.error("could not record %s for %s (kept, retried on the next poll): %s", key, bot, error)
            return None
        self.pending.pop((key, bot), None)
        if firing.created:
            log.warning(firing.describe())
        return firing

    def escalate_once(self) -> list[str]:
        """Page the next level for every incident still open past its response target; once per level."""
        done = []
        now = utcnow()
        for incident in self.journal.incidents(open_only=True):
            alert = CATALOGUE.get(incident.alert)
            if alert is None or alert.response_target is None:
                continue
            open_for = now - incident.fired_at
            if open_for < alert.response_target:
                continue
            level = max((name for name, _, after in ESCALATION_LEVELS if open_for >= after), key=_LEVEL_RANK.get)
            if incident.escalation_level and _LEVEL_RANK[incident.escalation_level] >= _LEVEL_RANK[level]:
                continue
            role = dict((name, role) for name, role, _ in ESCALATION_LEVELS)[level]
            minutes = open_for.total_seconds() / 60
            text = f"still open after {minutes:.0f} min (target {alert.response_target.total_seconds() / 60:.0f} min): escalated to {level} ({role})"
            self.journal.update(incident.id, escalation_level=level)
            self.journal.record_action(incident.id, incident.bot, "escalate", text)
            notice = AlertNotice(
                alert_type=alert.title, severity=alert.severity.value, timestamp=incident.fired_at,
                description=f"{incident.summary} (bot {incident.bot}, incident #{incident.id}) — {text}",
                impact=alert.impact, status="ESCALATED", next_steps=[f"{role}: take over incident #{incident.id}"],
                mention=self.settings.slack.escalation.get(level),
            )
            post_notice(self.settings.slack, self.settings.journal_url, incident.id, notice)
            done.append(f"incident #{incident.id} ({incident.alert} on {incident.bot}) {text}")
        return done

    def watch_exit(self, state: BotState, stop: threading.Event) -> None:
        """Wake the poll the moment the bot's process exits, instead of on the next poll."""
        grace = self.settings.watch.exit_grace_seconds
        while not stop.is_set():
            process = state.process
            if process is None:
                stop.wait(0.2)
                continue
            try:
                exited = wait_exit(process, 1.0)
            except Exception as error:  # noqa: BLE001 - the regular poll still sees the exit
                log.warning("cannot watch PID %s of %s: %s", process.pid, state.name, error)
                stop.wait(1.0)
                continue
            if not exited or state.process is not process:
                continue
            log.warning("bot %s: PID %s exited; polling now", state.name, process.pid)
            stop.wait(grace)
            self.wake.set()
            while state.process is process and not stop.is_set():  # one wake per exit: until the poll looked
                stop.wait(0.05)

    def run(self, stop: threading.Event) -> None:
        interval = self.settings.watch.poll_interval_seconds
        log.info("watching %s every %gs", ", ".join(s.name for s in self.bots), interval)
        if self.settings.watch.exit_watch:
            for state in self.bots:
                threading.Thread(target=self.watch_exit, args=(state, stop), name=f"runbook-exit-{state.name}",
                                 daemon=True).start()
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
                if self.settings.watch.escalate:
                    for line in self.escalate_once():
                        log.warning(line)
            except Exception:  # the watcher must outlive any single bad poll
                log.exception("watcher poll failed")
            next_poll = started + interval
            while not stop.is_set() and not self.wake.wait(min(0.5, max(0.0, next_poll - time.monotonic()))):
                if time.monotonic() >= next_poll:
                    break
            self.wake.clear()

