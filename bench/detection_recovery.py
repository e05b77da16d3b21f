"""Crash to "bot verified healthy" under `runbook serve`: detection latency and recovery time.

    .venv/bin/python -m bench.detection_recovery [--rounds 5] [--poll-interval S] [--json]

Starts a local Prefect server, the sandbox and `runbook serve --no-intake` (the watcher plus the
crash-recovery deployment with its event trigger), measures the bot's own start-up time (the
reference), then kills the bot N times (SIGKILL, `sandbox fault crash`) and times, from the kill:

- detection latency: until the watcher opened the incident (journal `fired_at`);
- recovery time: until the bot's /health answers 200 again (polled by this benchmark every 50 ms);
- and where the time went: the trigger (event -> automation -> flow run), the runner starting the
  flow run, the flow's own steps, the bot's start-up, and the flow's verification.

Targets (docs): detection within the poll interval + 1 s; recovery within the bot's own start-up
time + 3 s. Each round starts after a random pause in [0, poll interval) so the crash lands at a
random point of the watcher's poll cycle.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from bench.common import (
    RUNBOOK, BenchError, Progress, Stack, describe_machine, dump_json, health_code, machine, measure_bot_startup,
    parse_time, ratio, result_row, seconds, sigterm_as_interrupt, stats, stop_process_group, table, tail, wait_until,
    write_results,
)

ALERT = "crash-recovery"
STORM_MAX = "1000"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.detection_recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="crashes to time (default 5)")
    parser.add_argument("--startup-rounds", type=int, default=None,
                        help="bot start-ups to time for the reference (default: same as --rounds)")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="watcher poll interval in seconds (default: the configuration's, 5 s)")
    parser.add_argument("--runner-poll", type=int, default=None,
                        help="PREFECT_RUNNER_POLL_FREQUENCY for serve's runner in seconds (default: the local "
                             "server's environment, 1 s; Prefect's own default is 10 s)")
    parser.add_argument("--round-timeout", type=float, default=180.0, help="give up on a round after this (s)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the random pause before each crash")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, journal)")
    return parser.parse_args(argv)


# --- serve ------------------------------------------------------------------------------------


def start_serve(stack: Stack, poll_interval: float | None, runner_poll: int | None,
                say: Progress) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RUNBOOK_RECOVERY__RESTART_STORM_MAX": STORM_MAX}
    if poll_interval is not None:
        env["RUNBOOK_WATCH__POLL_INTERVAL_SECONDS"] = f"{poll_interval:g}"
    if runner_poll is not None:
        env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(runner_poll)
    log_path = stack.root / "serve.log"
    say(f"starting `runbook serve --config {stack.config} --no-intake` "
        f"(RUNBOOK_RECOVERY__RESTART_STORM_MAX={STORM_MAX}; log {log_path})")
    with open(log_path, "ab") as log:
        process = subprocess.Popen([RUNBOOK, "serve", "--config", str(stack.config), "--no-intake"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    stack.on_close("runbook serve (SIGTERM)", lambda: stop_process_group(process))
    return process


def wait_serve_ready(stack: Stack, process: subprocess.Popen[bytes], timeout: float = 120.0) -> dict[str, Any]:
    """The crash-recovery deployment exists, is not paused, its runner is polling, and its trigger exists."""
    log_path = stack.root / "serve.log"
    found: dict[str, Any] = {}

    def ready() -> bool:
        if process.poll() is not None:
            raise BenchError(f"runbook serve exited with {process.returncode}; end of {log_path}:\n{tail(log_path)}")
        deployments = stack.api_post("/deployments/filter", {"deployments": {"name": {"any_": [ALERT]}}})
        if not deployments:
            return False
        deployment = deployments[0]
        if deployment.get("paused") or deployment.get("status") != "READY":
            return False
        automations = stack.api_post("/automations/filter", {})
        trigger = [a for a in automations if a.get("enabled") and any(
            action.get("deployment_id") == deployment["id"] for action in a.get("actions", []))]
        if not trigger or "serving" not in log_path.read_text(errors="replace"):
            return False
        found.update(deployment=deployment, automation=trigger[0])
        return True

    wait_until(ready, timeout, "runbook serve to register the crash-recovery deployment and its trigger", 0.5)
    return found


# --- one crash --------------------------------------------------------------------------------


def settle(stack: Stack, journal: Any, bot: Any, timeout: float) -> None:
    """Before a crash: the bot answers 200 and no crash-recovery incident is open."""
    def quiet() -> bool:
        return health_code(bot.health_url) == 200 and not journal.incidents(open_only=True, alert=ALERT)
    wait_until(quiet, timeout, "the bot to be healthy with no open crash-recovery incident", 0.25)


def crash_round(index: int, rounds: int, stack: Stack, journal: Any, bot: Any, timeout: float,
                say: Progress) -> dict[str, Any]:
    from runbook import journal as j
    from sandbox import manager

    known = {incident.id for incident in journal.incidents(alert=ALERT)}
    t0_wall = time.time()
    t0 = time.monotonic()
    manager.fault(stack.sandbox_dir, "crash")
    since = datetime.fromtimestamp(t0_wall - 1, timezone.utc)
    health_at: float | None = None
    incident = None
    seen: set[str] = set()
    next_journal_look = 0.0
    while True:
        now = time.monotonic()
        if now - t0 > timeout:
            raise BenchError(f"round {index}: not recovered after {timeout:g}s "
                             f"(incident: {incident.as_dict() if incident else 'none fired'})")
        if health_at is None and health_code(bot.health_url, 0.5) == 200:
            health_at = time.monotonic()
            say(f"  round {index}: /health 200 again at +{health_at - t0:.2f} s")
        if now >= next_journal_look:
            next_journal_look = now + 0.2
            new = [i for i in journal.incidents(alert=ALERT, since=since) if i.id not in known]
            if new:
                incident = min(new, key=lambda i: i.id)
                if "fired" not in seen:
                    seen.add("fired")
                    say(f"  round {index}: incident #{incident.id} fired at "
                        f"+{incident.fired_at.timestamp() - t0_wall:.2f} s")
                if incident.response_started_at and "response" not in seen:
                    seen.add("response")
                    say(f"  round {index}: flow run started responding at "
                        f"+{incident.response_started_at.timestamp() - t0_wall:.2f} s")
                if incident.status != j.OPEN and health_at is not None:
                    break
                if incident.status != j.OPEN and incident.outcome != j.AUTO_RESOLVED:
                    break  # escalated or failed: the bot may never come back; report it
        time.sleep(0.05)

    incident = journal.get(incident.id)
    run_id = incident.flow_run_id
    if run_id:  # let the run finish (report, artifact) before the next crash or the clean-up
        wait_until(lambda: flow_run_final(stack, run_id), 60, f"flow run {run_id} to end", 0.25)
    figures = round_figures(stack, incident, t0_wall, t0, health_at)
    ok = incident.status == j.RESOLVED and incident.outcome == j.AUTO_RESOLVED and health_at is not None
    figures.update(round=index, incident=incident.id, outcome=incident.outcome, ok=ok,
                   summary=incident.summary)
    if ok:
        say(f"round {index}/{rounds}: detected {seconds(figures['detection'])}, healthy {seconds(figures['recovery'])}, "
            f"verified {seconds(figures['verified'])}, resolved {seconds(figures['resolved'])} after the crash")
    else:
        say(f"round {index}/{rounds}: NOT auto-resolved — incident #{incident.id} {incident.status}/"
            f"{incident.outcome}: {incident.summary}")
    return figures


def flow_run_final(stack: Stack, flow_run_id: str) -> bool:
    state = stack.api_get(f"/flow_runs/{flow_run_id}").get("state") or {}
    return state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def round_figures(stack: Stack, incident: Any, t0_wall: float, t0: float, health_at: float | None) -> dict[str, Any]:
    """Every instant as seconds after the crash, and the intervals between them."""
    def after(moment: datetime | None) -> float | None:
        return None if moment is None else moment.timestamp() - t0_wall

    actions = {}
    for action in incident.actions:  # the first of each step
        actions.setdefault(action.step, action)
    flow_run: dict[str, Any] = {}
    pending: datetime | None = None
    if incident.flow_run_id:
        flow_run = stack.api_get(f"/flow_runs/{incident.flow_run_id}")
        states = stack.api_get(f"/flow_run_states/?flow_run_id={incident.flow_run_id}")
        pending = min((parse_time(state["timestamp"]) for state in states if state["type"] == "PENDING"),
                      default=None)
    at = {
        "fired": after(incident.fired_at),
        "run_created": after(parse_time(flow_run.get("created"))),
        "run_pending": after(pending),
        "run_running": after(parse_time(flow_run.get("start_time"))),
        "response_started": after(incident.response_started_at),
        "restart": after(actions["restart"].at) if "restart" in actions else None,
        "health_200": None if health_at is None else health_at - t0,
        "verified": after(actions["verify"].at) if "verify" in actions and actions["verify"].ok else None,
        "resolved": after(incident.resolved_at),
    }

    def gap(start: str, end: str) -> float | None:
        return None if at[start] is None or at[end] is None else at[end] - at[start]

    return {
        "at": at,
        "detection": at["fired"],
        "recovery": at["health_200"],
        "verified": at["verified"],
        "resolved": at["resolved"],
        "trigger_to_run_start": gap("fired", "response_started"),
        "fired_to_run_created": gap("fired", "run_created"),
        "run_created_to_running": gap("run_created", "run_running"),
        "run_created_to_pending": gap("run_created", "run_pending"),
        "run_pending_to_running": gap("run_pending", "run_running"),
        "running_to_response": gap("run_running", "response_started"),
        "response_to_restart": gap("response_started", "restart"),
        "restart_to_health": gap("restart", "health_200"),
        "health_to_verified": gap("health_200", "verified"),
        "restart_plus_verify": gap("response_started", "verified"),
        "flow_run_id": incident.flow_run_id,
    }


# --- report -----------------------------------------------------------------------------------


def verdict(worst: float | None, median: float | None, target: float) -> str:
    if worst is None:
        return "-"
    if worst <= target:
        return "yes"
    return "median only" if median is not None and median <= target else "NO"


def summarise(rounds: list[dict[str, Any]], startup: list[float], poll: float) -> dict[str, Any]:
    good = [r for r in rounds if r["ok"]]
    keys = ["detection", "recovery", "verified", "resolved", "trigger_to_run_start", "fired_to_run_created",
            "run_created_to_running", "run_created_to_pending", "run_pending_to_running", "running_to_response", "response_to_restart", "restart_to_health",
            "health_to_verified", "restart_plus_verify"]
    summary = {key: stats(r[key] for r in good) for key in keys}
    summary["bot_startup"] = stats(startup)
    summary["poll_interval"] = poll
    ref = summary["bot_startup"]["median"]
    summary["targets"] = {"detection": poll + 1.0, "recovery": (ref or 0) + 3.0}
    summary["rounds_ok"] = len(good)
    summary["rounds_failed"] = len(rounds) - len(good)
    return summary


def per_round(rounds: list[dict[str, Any]]) -> str:
    rows = [[str(r["round"]), f"#{r['incident']}", seconds(r["detection"]), seconds(r["trigger_to_run_start"]),
             seconds(r["restart_to_health"]), seconds(r["recovery"]), seconds(r["verified"]), r["outcome"] or "-"]
            for r in rounds]
    return table(["round", "incident", "detect", "trigger -> run start", "restart -> /health 200", "recovery",
                  "verified", "outcome"], rows)


def render(summary: dict[str, Any], info: dict[str, Any], args: argparse.Namespace, runner_poll: str) -> str:
    poll, ref = summary["poll_interval"], summary["bot_startup"]["median"]
    s = summary
    headline = [
        ["detection latency (crash -> incident fired)", seconds(s["detection"]["median"]),
         seconds(s["detection"]["worst"]), f"poll interval {poll:g} s", ratio(s["detection"]["median"], poll),
         f"<= {poll + 1:g} s", verdict(s["detection"]["worst"], s["detection"]["median"], poll + 1)],
        ["recovery time (crash -> /health 200 again)", seconds(s["recovery"]["median"]), seconds(s["recovery"]["worst"]),
         f"bot start-up {seconds(ref)}", ratio(s["recovery"]["median"], ref), f"<= {seconds((ref or 0) + 3)}",
         verdict(s["recovery"]["worst"], s["recovery"]["median"], (ref or 0) + 3)],
        ["verified healthy (crash -> verify step passed)", seconds(s["verified"]["median"]),
         seconds(s["verified"]["worst"]), f"bot start-up {seconds(ref)}", ratio(s["verified"]["median"], ref),
         "(not a target)", "-"],
        ["incident resolved (crash -> resolved_at)", seconds(s["resolved"]["median"]), seconds(s["resolved"]["worst"]),
         f"bot start-up {seconds(ref)}", ratio(s["resolved"]["median"], ref), "(not a target)", "-"],
        ["bot start-up (reference: start command -> /health 200)", seconds(ref), seconds(s["bot_startup"]["worst"]),
         "-", "1.00x", "-", "-"],
    ]
    parts = [
        "## runbook serve: crash -> bot healthy again",
        "",
        describe_machine(info),
        f"{s['rounds_ok']} of {s['rounds_ok'] + s['rounds_failed']} crashes auto-resolved; reference from "
        f"{s['bot_startup']['n']} bot start-ups; watcher poll interval {poll:g} s; Prefect runner poll "
        f"frequency {runner_poll} s (PREFECT_RUNNER_POLL_FREQUENCY); serve ran with "
        f"RUNBOOK_RECOVERY__RESTART_STORM_MAX={STORM_MAX} so repeated crashes are restarted, not escalated "
        f"as a restart storm.",
        "",
        table(["measure", "median", "worst", "reference", "ratio (median/ref)", "target", "worst within target"],
              headline),
        "",
        "Where the time goes (median and worst of each interval; within a round the indented intervals add up "
        "to the line above them, medians need not):",
        "",
    ]
    chain = [
        ("detect: crash -> watcher fires the incident", "detection", "watcher poll + observe"),
        ("trigger -> run start: fired -> flow run responding", "trigger_to_run_start", "orchestration's share"),
        ("  fired -> flow run created", "fired_to_run_created", "event -> automation -> run"),
        ("  flow run created -> Running", "run_created_to_running", "runner picks it up, starts the flow process"),
        ("    created -> Pending", "run_created_to_pending", "runner poll (PREFECT_RUNNER_POLL_FREQUENCY)"),
        ("    Pending -> Running", "run_pending_to_running", "new Python process: imports, engine start"),
        ("  Running -> response started", "running_to_response", "config, journal, Slack OPEN, lock"),
        ("restart + verify: response started -> verified", "restart_plus_verify", ""),
        ("  response started -> restart issued", "response_to_restart", "diagnose, evidence, Slack"),
        ("  restart issued -> /health 200", "restart_to_health", f"vs bot start-up {seconds(ref)}"),
        ("  /health 200 -> verify step passed", "health_to_verified", "health + websocket + metrics moving"),
    ]
    parts.append(table(["interval", "median", "worst", "what it is"],
                       [[label, seconds(s[key]["median"]), seconds(s[key]["worst"]), note] for label, key, note in chain]))
    return "\n".join(parts)


def result_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The two targets, for `make bench`'s table (bench/run_all.py)."""
    poll, ref = s["poll_interval"], s["bot_startup"]["median"]
    detect, recover = s["detection"], s["recovery"]
    return [
        result_row("crash -> incident fired (detection)", f"{seconds(detect['median'])} (worst {seconds(detect['worst'])})",
                   f"poll interval {poll:g} s", detect["median"] / poll if detect["median"] is not None else None,
                   f"worst <= {poll + 1:g} s", verdict(detect["worst"], detect["median"], poll + 1)),
        result_row("crash -> /health 200 again (recovery)",
                   f"{seconds(recover['median'])} (worst {seconds(recover['worst'])})", f"bot start-up {seconds(ref)}",
                   recover["median"] / ref if recover["median"] is not None and ref else None,
                   f"worst <= {seconds((ref or 0) + 3)}", verdict(recover["worst"], recover["median"], (ref or 0) + 3)),
    ]


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    say = Progress()
    sigterm_as_interrupt()
    info = machine()
    stack = Stack(say, keep=args.keep)
    rounds: list[dict[str, Any]] = []
    startup: list[float] = []
    failure: str | None = None
    poll: float = args.poll_interval or 5.0
    runner_poll = "?"
    try:
        stack.start()
        runner_poll = (f"{args.runner_poll:g}" if args.runner_poll is not None
                       else os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "10 (Prefect default)"))
        from runbook.journal import Journal
        from runbook.settings import load_settings

        settings = load_settings(stack.config)
        _, bot = settings.bot(None)
        poll = args.poll_interval or settings.watch.poll_interval_seconds
        journal = Journal(settings.journal_url)

        n_startup = args.startup_rounds or args.rounds
        say(f"reference: timing the bot's own start-up {n_startup} times (before serve starts, so nothing reacts)")
        startup = measure_bot_startup(bot, n_startup, say)

        serve = start_serve(stack, args.poll_interval, args.runner_poll, say)
        wait_serve_ready(stack, serve)
        say(f"serve ready: deployment {ALERT} polled by its runner, trigger registered; watcher every {poll:g} s")

        rng = random.Random(args.seed)
        for index in range(1, args.rounds + 1):
            settle(stack, journal, bot, args.round_timeout)
            pause = rng.uniform(0, poll)
            say(f"round {index}/{args.rounds}: crashing the bot in {pause:.2f} s (random phase of the poll cycle)")
            time.sleep(pause)
            result = crash_round(index, args.rounds, stack, journal, bot, args.round_timeout, say)
            rounds.append(result)
            if not result["ok"]:
                failure = f"round {index} was not auto-resolved ({result['outcome']}): {result['summary']}"
                break
    except KeyboardInterrupt:
        failure = "interrupted"
        say("interrupted: cleaning up")
    except BenchError as error:
        failure = str(error)
        say(f"error: {error}")
    finally:
        stack.close()

    if not rounds or not startup:
        write_results("detection_recovery", [], failure or "nothing measured")
        print(f"no figures: {failure or 'nothing measured'}", file=sys.stderr)
        return 1
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(rounds, startup, poll)
    write_results("detection_recovery", result_rows(summary), failure)
    if args.json:
        print(dump_json({"machine": info, "poll_interval_seconds": poll, "runner_poll_frequency": runner_poll,
                         "restart_storm_max": int(STORM_MAX), "bot_startup_seconds": startup,
                         "rounds": rounds, "summary": summary, "failure": failure}))
    else:
        print(render(summary, info, args, runner_poll))
        print("\nEach crash (seconds after the kill):\n")
        print(per_round(rounds))
        if failure:
            print(f"\nstopped early: {failure}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
