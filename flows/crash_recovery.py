"""🚨 Bot Crashed/Stopped (RUNBOOK.md), as a flow.

Immediate actions: check process status, restart the bot, verify recovery.
Investigation: recent logs, error patterns, system resources (marked before the restart changes them,
read while the bot restarts).
Escalation: if the bot cannot be restarted, escalate to the senior engineer (L2).
Prevention: a restart storm (N restarts within an hour) escalates instead of restarting again.
The restart itself (storm guard, policy, stop + start, verify) is tasks/restart.py's, shared with the
WebSocket and memory runbooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from prefect import flow

from runbook import journal as j
from runbook.incident import IncidentRun, Outcome
from runbook.locks import bot_lock
from runbook.settings import BotSettings
from tasks.logs import LogTail, PatternScan, log_ends, scan_log, tail_log
from tasks.probes import HealthReport, check_health
from tasks.process import BotProcess, check_process
from tasks.restart import guarded_restart
from tasks.system import SystemResources, check_system

ALERT = "crash-recovery"


@dataclass
class Diagnosis:
    process: BotProcess | None
    health: HealthReport

    @property
    def verdict(self) -> str:
        """crashed (no process), hung (alive, silent), unhealthy (alive, failing), halted or healthy."""
        if self.process is None:
            return "crashed"
        if self.health.condition in ("hung", "unreachable", "invalid"):
            return "hung"
        return self.health.condition  # healthy, halted or unhealthy

    def describe(self) -> str:
        where = f"PID {self.process.pid} ({self.process.status}, {self.process.rss_mb} MB)" if self.process else "no process"
        return f"{where}; {self.health.summary()}"


def diagnose(bot: BotSettings) -> Diagnosis:
    """Step 1, "Check Process Status": the process and the health endpoint, looked at together."""
    process = check_process.submit(bot)
    health = check_health.submit(bot)
    return Diagnosis(process.result(), health.result())


def capture_evidence(run: IncidentRun) -> None:
    """Investigation: the logs' ends are marked and the reads start before the restart, so the evidence
    is of the failure, not the recovery; the restart does not wait for them (recorded before the report)."""
    bot, lines = run.bot, run.settings.recovery.evidence_log_lines
    log, error_log = bot.path(bot.log_file), bot.path(bot.error_log_file)
    ends = log_ends([log, error_log])
    recent = tail_log.submit(log, lines, ends[str(log)])
    errors = scan_log.submit(error_log, "error", end=ends[str(error_log)])
    system = check_system.submit(bot.working_dir)
    run.add_evidence_later(lambda: _record_evidence(run, lines, recent.result(), errors.result(), system.result()))


def _record_evidence(run: IncidentRun, lines: int, tail: LogTail, scan: PatternScan, resources: SystemResources) -> None:
    body = tail.error or "```\n" + "\n".join(tail.messages()) + "\n```"
    run.add_evidence(f"Last {lines} log messages ({tail.path})", body)
    if scan.error:
        run.add_evidence("Error patterns", scan.error)
    else:
        top = "\n".join(f"| {count} | {message.replace('|', '/')} |" for message, count in scan.top_messages)
        run.add_evidence("Error patterns", f"{scan.matches} error lines in {scan.path}\n\n| count | message |\n|---|---|\n{top}")
    run.add_evidence("System resources", resources.summary())
    run.note(f"evidence captured: {len(tail.lines)} log lines, {scan.matches} error lines; {resources.summary()}")


@flow(name="crash-recovery", description="Runbook: Bot Crashed/Stopped — diagnose, restart, verify, escalate.")
def crash_recovery(bot: str | None = None, config: str | None = None, incident_id: int | None = None) -> Outcome:
    """Bring a crashed or hung bot back.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
    """
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "Trading bot process is not responding or has crashed", ["check process status and health"],
             mention_level="L1")
    recovery = run.settings.recovery
    try:
        with bot_lock(run.bot_name, recovery.lock_timeout_seconds, recovery.lock_lease_seconds):
            return _respond(run)
    except TimeoutError:
        return run.escalate("L1", f"another remediation held bot {run.bot_name} for over "
                            f"{recovery.lock_timeout_seconds:g}s; this run did nothing.",
                            ["check the other remediation's run in the Prefect UI"], outcome=j.FAILED)


def _respond(run: IncidentRun) -> Outcome:
    run.start_response()
    diagnosis = diagnose(run.bot)
    run.note(f"diagnosis: {diagnosis.verdict} — {diagnosis.describe()}")
    if diagnosis.verdict == "healthy":
        if run.joined_existing and run.journal.count_actions(run.bot_name, "restart", _since_fired(run)):
            return run.resolve(j.AUTO_RESOLVED, f"bot already recovered by a concurrent remediation: {diagnosis.describe()}")
        return run.resolve(j.FALSE_POSITIVE, f"bot is running and healthy, nothing touched: {diagnosis.describe()}")
    held = run.journal.deliberate_stop(run.bot_name) if diagnosis.verdict == "crashed" else None
    if held is not None:
        return run.resolve(j.FALSE_POSITIVE, f"the bot was stopped on purpose in incident #{held.id} ({held.alert}) "
                           "and stays down until a person resolves that incident; not restarted.")
    if diagnosis.verdict == "halted":
        return run.resolve(j.FALSE_POSITIVE, "bot is alive and has halted trading itself (circuit breaker); "
                           f"not restarted — see the daily-loss-limit / insufficient-balance runbooks. {diagnosis.describe()}")

    run.tell("INVESTIGATING", f"bot {diagnosis.verdict}: {diagnosis.describe()}", ["capture evidence", "restart the bot"])
    capture_evidence(run)

    what = ("kill the hung bot (verified PID) and start it again" if diagnosis.process else "start the bot") + \
        f" with `{' '.join(run.bot.start_command) or run.bot.systemd_unit}`"
    result = guarded_restart(run, diagnosis.process, f"bot {diagnosis.verdict}", what)
    if isinstance(result, Outcome):
        return result
    return run.resolve(j.AUTO_RESOLVED, f"bot was {diagnosis.verdict}; restarted and verified healthy ({result}).")


def _since_fired(run: IncidentRun) -> timedelta:
    return j.utcnow() - run.journal.get(run.incident_id).fired_at
