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
from runbook.policy import authorize
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
def verify_recovery(bot: BotSettings, timeout_seconds: float, poll_seconds: float = 0.2,
                    restarted_at: float | None = None) -> tuple[bool, str]:
    """Runbook "Verify Recovery": health 200, websocket connected, the bot's own metrics moving.

    Polled every `poll_seconds` until `timeout_seconds`, so the bot counts as back as soon as it is. A
    process started at or after `restarted_at` (epoch seconds) whose own counters are already above
    zero has moved them since it started; otherwise two reads must differ.
    """
    deadline = time.monotonic() + timeout_seconds
    last, baseline = "not checked", None
    while True:
        process = locate_bot(bot)
        health = probe_health_once(bot) if process is not None else None
        if process is None or health is None:
            last = "no bot process"
        elif not health.healthy:
            last = health.summary()
        elif health.websocket_connected is False:
            last = "health is 200 but the websocket is not connected"
        else:
            moving, baseline = (True, baseline) if not bot.verify_metrics else _metrics_moving(
                bot, baseline, fresh=restarted_at is not None and process.create_time >= restarted_at - 1)
            if moving:
                return True, f"PID {process.pid}: {health.summary()}" + ("; metrics moving" if bot.verify_metrics else "")
            last = "health is 200 but the bot's metrics are not moving"
        if time.monotonic() + poll_seconds > deadline:
            return False, f"not recovered after {timeout_seconds:g}s: {last}"
        time.sleep(poll_seconds)


def _own_samples(bot: BotSettings) -> dict[str, float] | None:
    """The samples of the bot's activity metrics (`activity_metrics`, or every family but the client
    library's own process_/python_ collectors, whose CPU and GC counters move by themselves)."""
    snapshot = read_metrics_once(bot)
    if snapshot.error:
        return None
    wanted = bot.activity_metrics

    def own(key: str) -> bool:
        name = key.split("{")[0]
        if wanted:
            return any(name == family or name.startswith(family + "_") for family in wanted)
        return not name.startswith(("process_", "python_"))
    return {key: value for key, value in snapshot.samples.items() if own(key)}


def _metrics_moving(bot: BotSettings, baseline: dict[str, float] | None,
                    fresh: bool) -> tuple[bool, dict[str, float] | None]:
    """(moving, the samples to compare the next read with)."""
    samples = _own_samples(bot)
    if samples is None:
        return False, baseline
    if fresh and any(value > 0 for key, value in samples.items() if key.split("{")[0].endswith("_total")):
        return True, samples  # counters start at zero in a new process: above zero, it has worked since
    return baseline is not None and samples != baseline, samples


def restart(run: IncidentRun, process: BotProcess | None) -> float:
    """Runbook "Restart Bot": stop the running process (verified PID only), then run the start command."""
    if process is not None:
        stopped = stop_process(process, run.bot, run.settings.recovery.stop_timeout_seconds)
        run.act("stop", stopped, detail={"pid": process.pid})
    started_at = time.time()
    started = start_bot(run.bot)
    run.act("restart", started)
    return started_at


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
    decision = authorize(run.settings.policy.restart, what, run.settings.policy.approval_timeout_seconds)
    run.note(decision.how)
    if not decision.allowed:
        run.act("restart", f"not restarted: {decision.how}", ok=False, dry_run=decision.dry_run)
        return run.escalate("L1", f"{condition} and not restarted ({decision.how}).",
                            [f"restart by hand: {what}", "then verify: curl the health endpoint"])

    try:
        restarted_at = restart(run, process)
    except ProcessError as error:
        run.act("restart", f"restart failed: {error}", ok=False)
        return run.escalate("L2", f"the bot could not be restarted: {error}", ["restart by hand", "read the error log"])

    recovery = run.settings.recovery
    recovered, detail = verify_recovery(run.bot, recovery.verify_timeout_seconds, recovery.verify_poll_seconds,
                                        restarted_at)
    run.act("verify", detail, ok=recovered)
    if recovered:
        return detail
    return run.escalate("L2", f"bot restarted but did not recover: {detail}",
                        ["read the bot's stdout log and error log", "fix the cause, then restart by hand"])
