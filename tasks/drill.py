"""Drill steps: inject a scenario into a bot, wait for the production path to answer it, read what it did.

Each step touches one system: the bot (its configured inject / clear commands, its /health, its process),
the journal (the incidents the watcher opened), or the Prefect server (the deployments, the triggered flow
run and its logs). Every command, wait and request has its own deadline. Nothing here fixes the bot for the
runbook: the drill only injects, observes and, between scenarios, puts things back (`restore`).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prefect import task

from runbook import journal as j
from runbook.drills import DOWN, ESCALATED, HEALTHY, Scenario
from runbook.journal import Incident, Journal, utcnow
from runbook.locks import bot_lock
from runbook.settings import BotSettings, Settings
from tasks import NO_CACHE_POLICY
from tasks.probes import HealthReport, probe_health_once
from tasks.process import ProcessError, locate_bot, start_bot, stop_process

PREFECT_TIMEOUT_SECONDS = 10.0
OUTPUT_LIMIT = 2000


class DrillRefused(Exception):
    """The drill must not (or cannot) start on this bot; nothing was injected. The message says why."""


class DrillAborted(Exception):
    """The drill cannot go on (the bot did not come back between scenarios); the message says where."""


# -- before anything is injected ------------------------------------------------------------------


@task(name="check the bot allows drills", cache_policy=NO_CACHE_POLICY)
def check_allowed(bot_name: str, bot: BotSettings, wanted: list[str], explicit: bool) -> dict[str, str]:
    """Refuse unless the bot has `drill_allowed = true`; scenarios without an inject command are not covered
    (or refused, when asked for by name). Returns {scenario: why not covered}."""
    if not bot.drill_allowed:
        raise DrillRefused(f"bot {bot_name!r} does not allow drills (set drill_allowed = true in [bots.{bot_name}] "
                           "of a staging bot); nothing was injected")
    missing = [key for key in wanted if key not in bot.drill.inject]
    if explicit and missing:
        raise DrillRefused(f"bot {bot_name!r} has no inject command for {', '.join(missing)} "
                           f"([bots.{bot_name}.drill.inject]); nothing was injected")
    if len(missing) == len(wanted):
        raise DrillRefused(f"bot {bot_name!r} has no inject command for any scenario asked for "
                           f"([bots.{bot_name}.drill.inject]); nothing was injected")
    return {key: f"no inject command configured for bot {bot_name}" for key in missing}


@task(name="check the production path is served", cache_policy=NO_CACHE_POLICY)
def check_served(alerts: list[str]) -> None:
    """Each scenario's remediation must be a served deployment with its trigger (`runbook serve`), or the
    drill would measure nothing but its own timeouts."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    problems = []
    with get_client(sync_client=True, httpx_settings={"timeout": PREFECT_TIMEOUT_SECONDS}) as client:
        for alert in sorted(set(alerts)):
            try:
                deployment = client.read_deployment_by_name(f"{alert}/{alert}")
            except ObjectNotFound:
                problems.append(f"{alert} (no deployment)")
                continue
            if deployment.paused:
                problems.append(f"{alert} (deployment paused: its `runbook serve` is not running)")
    if problems:
        raise DrillRefused("the production path is not served for " + ", ".join(problems)
                           + "; start `runbook serve` with this configuration first; nothing was injected")


@task(name="check no real incident is open", cache_policy=NO_CACHE_POLICY)
def check_no_real_incident(journal_url: str, bot_name: str) -> None:
    real = [i for i in Journal(journal_url).incidents(open_only=True, bot=bot_name) if i.drill_id is None]
    if real:
        listed = ", ".join(f"#{i.id} {i.alert}" for i in real)
        raise DrillRefused(f"bot {bot_name!r} has open incidents ({listed}); a drill would tangle with them. "
                           "Resolve them first; nothing was injected")


# -- one scenario ---------------------------------------------------------------------------------


@task(name="run a drill command", cache_policy=NO_CACHE_POLICY)
def run_command(argv: list[str], timeout_seconds: float) -> str:
    """A configured inject or clear command, without a shell; a failure raises with its output."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_seconds,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{' '.join(argv)}` did not finish within {timeout_seconds:g}s") from None
    except OSError as error:
        raise RuntimeError(f"cannot run `{argv[0]}`: {error}") from None
    output = (done.stdout + done.stderr).strip()[-OUTPUT_LIMIT:]
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {done.returncode}: {output}")
    return output


@task(name="wait for the alert", cache_policy=NO_CACHE_POLICY)
def wait_for_alert(journal_url: str, bot_name: str, since: datetime, expected: str, timeout_seconds: float,
                   poll_seconds: float) -> list[Incident]:
    """Incidents the watcher opened on the bot since the injection: until the expected alert fires, or the
    deadline (then whatever fired, maybe nothing)."""
    journal = Journal(journal_url)
    deadline = time.monotonic() + timeout_seconds
    while True:
        fired = sorted(journal.incidents(bot=bot_name, since=since), key=lambda i: (i.fired_at, i.id))
        if any(i.alert == expected for i in fired) or time.monotonic() >= deadline:
            return fired
        time.sleep(poll_seconds)


@task(name="wait for the flow to conclude", cache_policy=NO_CACHE_POLICY)
def wait_for_conclusion(journal_url: str, incident_id: int, timeout_seconds: float,
                        poll_seconds: float) -> tuple[Incident, dict[str, Any] | None]:
    """The incident once its flow has concluded it (resolved or escalated) and the run has ended; at the
    deadline, as it is then. Returns the incident and the flow run ({id, state, end}) if one started."""
    journal = Journal(journal_url)
    deadline = time.monotonic() + timeout_seconds
    while True:
        incident = journal.get(incident_id)
        run = flow_run_state(incident.flow_run_id) if incident.flow_run_id else None
        if (incident.status != j.OPEN and run is not None and run["final"]) or time.monotonic() >= deadline:
            return incident, run
        time.sleep(poll_seconds)


def flow_run_state(flow_run_id: str) -> dict[str, Any] | None:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True, httpx_settings={"timeout": PREFECT_TIMEOUT_SECONDS}) as client:
            run = client.read_flow_run(flow_run_id)
    except Exception:  # noqa: BLE001 - the server is asked again on the next poll
        return None
    state = run.state
    return {"id": str(run.id), "state": state.name if state else None,
            "final": bool(state and state.is_final()), "end": run.end_time}


@dataclass
class Cause:
    text: str
    at: datetime
    source: str  # "log" (the flow's classification line) or "summary" (its conclusion)


@task(name="read the flow's classified cause", cache_policy=NO_CACHE_POLICY)
def read_cause(flow_run_id: str, line_pattern: str, fallback: str, fallback_at: datetime | None,
               wait_seconds: float = 10.0) -> Cause | None:
    """The first log line of the run that states its classification (`diagnosis: ...`, `cause: ...`), with
    its time; a run that states none is judged on its conclusion (summary, at the run's end). Logs reach the
    server in batches, so a run that has ended is read again for a few seconds before falling back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    pattern = re.compile(line_pattern)
    deadline = time.monotonic() + wait_seconds
    while True:
        with get_client(sync_client=True, httpx_settings={"timeout": PREFECT_TIMEOUT_SECONDS}) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    sort=LogSort.TIMESTAMP_ASC)
        line = next((log for log in logs if pattern.search(log.message)), None)
        if line is not None:
            return Cause(line.message[:300], line.timestamp, "log")
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    return Cause(fallback[:300], fallback_at, "summary") if fallback and fallback_at else None


@task(name="check how the bot ended", cache_policy=NO_CACHE_POLICY)
def check_end(bot_name: str, bot: BotSettings, journal_url: str, expected: str, incident: Incident | None,
              grace_seconds: float, poll_seconds: float) -> tuple[bool, str]:
    """Is the bot as the scenario says it should end, before the drill clears the fault? (ok, what was seen)"""
    deadline = time.monotonic() + grace_seconds
    while True:
        health = probe_health_once(bot)
        if expected == HEALTHY:
            ok = health.healthy and health.websocket_connected is not False
            seen = health.summary()
        elif expected == DOWN:
            process = _process(bot)
            held = Journal(journal_url).deliberate_stop(bot_name)
            ok = health.halted or (process is None and held is not None)
            seen = (f"halted: {health.summary()}" if health.halted else
                    f"stopped and held by incident #{held.id}" if process is None and held is not None else
                    f"still trading: {health.summary()}")
        else:
            ok = incident is not None and incident.status == j.ESCALATED
            seen = (f"incident #{incident.id} {incident.status} ({incident.outcome})" if incident is not None
                    else "no incident")
        if ok or time.monotonic() >= deadline or expected == ESCALATED:
            return ok, seen
        time.sleep(poll_seconds)


def _process(bot: BotSettings) -> Any:
    try:
        return locate_bot(bot)
    except ProcessError:
        return None


# -- between scenarios ----------------------------------------------------------------------------


def active_runs(bot_name: str, flows: list[str]) -> list[str]:
    """Remediation runs for this bot not finished yet (scheduled, pending, running, paused), as "name (state)"."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
    with get_client(sync_client=True, httpx_settings={"timeout": PREFECT_TIMEOUT_SECONDS}) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=flows)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished))))
    return [f"{run.name} ({run.state.name if run.state else '?'})" for run in runs
            if (run.parameters or {}).get("bot") in (bot_name, None)]


@task(name="wait for the remediations to end", cache_policy=NO_CACHE_POLICY)
def wait_runs_done(bot_name: str, flows: list[str], timeout_seconds: float, poll_seconds: float) -> list[str]:
    """Every remediation of the bot still going (a second alert's run, a re-triggered one) is let finish, so
    the next step starts from a quiet bot; returns what was still going at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        running = active_runs(bot_name, flows)
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(poll_seconds)


@task(name="restore the bot", cache_policy=NO_CACHE_POLICY)
def restore(settings: Settings, bot_name: str, bot: BotSettings, drill_id: int, since: datetime,
            flows: list[str]) -> list[str]:
    """Put the bot back as the scenario found it: clear the faults, restart the bot (its verified PID, under
    the bot lock) if it does not come back healthy by itself, let the remediations its recovery set off
    finish, and close the drill's incidents left open (releasing a deliberate stop). Raises DrillAborted if
    the bot is not healthy in the end."""
    drill = settings.drill
    journal = Journal(settings.journal_url)
    done = []
    if bot.drill.clear:
        done.append(run_command.fn(bot.drill.clear, bot.drill.command_timeout_seconds))
    journal.claim_for_drill(drill_id, bot_name, since)
    done += close_drill_incidents(journal, bot_name, drill_id)  # a held bot may be restarted now
    if not _healthy_within(bot, min(15.0, drill.healthy_timeout_seconds), drill.poll_seconds):
        recovery = settings.recovery
        with bot_lock(bot_name, recovery.lock_timeout_seconds, recovery.lock_lease_seconds):
            process = _process(bot)
            if process is not None:
                done.append(stop_process.fn(process, bot, recovery.stop_timeout_seconds))
            done.append(start_bot.fn(bot))
    # Alerts the outage and the restart raised (a restart seen as a crash) start runs: let them end.
    still = wait_runs_done.fn(bot_name, flows, drill.conclude_timeout_seconds, drill.poll_seconds)
    if still:
        done.append(f"still running after {drill.conclude_timeout_seconds:g}s: {', '.join(still)}")
    journal.claim_for_drill(drill_id, bot_name, since)
    done += close_drill_incidents(journal, bot_name, drill_id)
    if not _healthy_within(bot, drill.healthy_timeout_seconds, drill.poll_seconds):
        raise DrillAborted(f"bot {bot_name} is not healthy {drill.healthy_timeout_seconds:g}s after the drill "
                           f"restored it: {probe_health_once(bot).summary()}")
    return done


def close_drill_incidents(journal: Journal, bot_name: str, drill_id: int) -> list[str]:
    closed = []
    for incident in journal.incidents(open_only=True, bot=bot_name):
        if incident.drill_id == drill_id:
            journal.resolve(incident.id, incident.outcome if incident.outcome in (j.OUTCOME_ESCALATED, j.FAILED)
                            else j.RESOLVED_MANUALLY,
                            f"{incident.summary} — closed by drill #{drill_id} once its fault was cleared")
            closed.append(f"closed drill incident #{incident.id} ({incident.alert})")
    return closed


def _healthy_within(bot: BotSettings, seconds: float, poll_seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        health = probe_health_once(bot)
        if health.healthy and health.websocket_connected is not False:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_seconds)


@task(name="wait until the bot is healthy", cache_policy=NO_CACHE_POLICY)
def wait_healthy(bot_name: str, bot: BotSettings, timeout_seconds: float, poll_seconds: float) -> HealthReport:
    if not _healthy_within(bot, timeout_seconds, poll_seconds):
        raise DrillRefused(f"bot {bot_name} is not healthy ({probe_health_once(bot).summary()}); a drill starts "
                           "from a healthy bot; nothing was injected")
    return probe_health_once(bot)


def lease(settings: Settings) -> timedelta:
    """How long one scenario may take at most: the drill's hold on incidents is renewed per scenario."""
    drill = settings.drill
    return timedelta(seconds=drill.detect_timeout_seconds + settings.watch.websocket_down_seconds
                     + 2 * drill.conclude_timeout_seconds + 2 * drill.healthy_timeout_seconds + 120)


def seconds_between(start: datetime, end: datetime | None) -> float | None:
    """Seconds from start to end; 0 for an end a hair before the start (seen while the inject command exited)."""
    return None if end is None else round(max((end - start).total_seconds(), 0.0), 3)


def detect_deadline(settings: Settings, scenario: Scenario) -> float:
    extra = settings.watch.websocket_down_seconds if scenario.alert == "websocket-disconnected" else 0.0
    return settings.drill.detect_timeout_seconds + extra


def now() -> datetime:
    return utcnow()
