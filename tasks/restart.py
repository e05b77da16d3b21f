"""Restart the bot the one way every flow does it: storm guard, restart policy, stop + start, verify.

Crash recovery, the WebSocket runbook and the memory runbook all restart through `guarded_restart`, so a
restart means the same thing whoever asks for it: the storm guard counts every restart of the bot (from
any flow, in the journal), the `restart` policy decides (auto / approve / dry-run), only the verified PID
is stopped, and the bot counts as back only once health, websocket and metrics say so.
"""

from __future__ import annotations

import time
from datetime import timedelta

from prefect import task

from runbook.incident import IncidentRun, Outcome
from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY
from tasks.probes import probe_health_once, read_metrics_once
from tasks.process import BotProcess, ProcessError, locate_bot, start_bot, stop_process


def restart_storm(run: IncidentRun) -> int | None:
    """Restarts in the storm window if they reached the limit, else None."""
    recovery = run.settings.recovery
    recent = run.journal.count_actions(run.bot_name, "restart", timedelta(seconds=recovery.restart_storm_window_seconds))
    return recent if recent >= recovery.restart_storm_max else None


@task(name="verify recovery", cache_policy=NO_CACHE_POLICY)
def verify_recovery(bot: BotSettings, timeout_seconds: float) -> tuple[bool, str]:
    """Runbook "Verify Recovery": health 200, websocket connected, metrics moving; polled with backoff."""
    deadline = time.monotonic() + timeout_seconds
    delay, last = 0.25, "not checked"
    while True:
        process = locate_bot(bot)
        health = probe_health_once(bot)
        if process is None:
            last = "no bot process"
        elif not health.healthy:
            last = health.summary()
        elif health.websocket_connected is False:
            last = "health is 200 but the websocket is not connected"
        elif bot.verify_metrics and not _metrics_moving(bot):
            last = "health is 200 but the metrics are not changing"
        else:
            return True, f"PID {process.pid}: {health.summary()}" + ("; metrics changing" if bot.verify_metrics else "")
        if time.monotonic() + delay > deadline:
            return False, f"not recovered after {timeout_seconds:g}s: {last}"
        time.sleep(delay)
        delay = min(delay * 2, 3.0)


def _metrics_moving(bot: BotSettings, window_seconds: float = 4.0) -> bool:
    first = read_metrics_once(bot)
    if first.error:
        return False
    deadline = time.monotonic() + window_seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        second = read_metrics_once(bot)
        if not second.error and second.samples != first.samples:
            return True
    return False


def restart(run: IncidentRun, process: BotProcess | None) -> None:
    """Runbook "Restart Bot": stop the running process (verified PID only), then run the start command."""
    if process is not None:
        stopped = stop_process(process, run.bot, run.settings.recovery.stop_timeout_seconds)
        run.act("stop", stopped, detail={"pid": process.pid})
    started = start_bot(run.bot)
    run.act("restart", started)


def restart_description(run: IncidentRun, process: BotProcess | None) -> str:
    how = f"`{' '.join(run.bot.start_command) or run.bot.systemd_unit}`"
    if process is None:
        return f"start the bot with {how}"
    return f"stop the bot (verified PID {process.pid}) and start it again with {how}"


def guarded_restart(run: IncidentRun, process: BotProcess | None, condition: str,
                    what: str | None = None) -> Outcome | str:
    """Restart the bot if the storm guard and the restart policy allow it, then verify it recovered.

    `condition` says what is wrong ("bot crashed", "websocket not reconnecting"); `what` describes the
    action for the approval form and the journal (default: stop the verified PID, start again).
    Returns the verification detail when the bot is back, else the run's escalation Outcome.
    """
    storm = restart_storm(run)
    if storm is not None:
        window = run.settings.recovery.restart_storm_window_seconds // 60
        return run.escalate("L2", f"restart storm: {storm} restarts in the last {window} min; not restarting again.",
                            ["find the root cause in the error log before restarting", "restart by hand when safe"])

    what = what or restart_description(run, process)
    decision = run.authorize("restart", what)
    run.note(decision.how)
    if not decision.allowed:
        run.act("restart", f"not restarted: {decision.how}", ok=False, dry_run=decision.dry_run)
        return run.escalate("L1", f"{condition} and not restarted ({decision.how}).",
                            [f"restart by hand: {what}", "then verify: curl the health endpoint"])

    try:
        restart(run, process)
    except ProcessError as error:
        run.act("restart", f"restart failed: {error}", ok=False)
        return run.escalate("L2", f"the bot could not be restarted: {error}", ["restart by hand", "read the error log"])

    recovered, detail = verify_recovery(run.bot, run.settings.recovery.verify_timeout_seconds)
    run.act("verify", detail, ok=recovered)
    if recovered:
        return detail
    return run.escalate("L2", f"bot restarted but did not recover: {detail}",
                        ["read the bot's stdout log and error log", "fix the cause, then restart by hand"])
