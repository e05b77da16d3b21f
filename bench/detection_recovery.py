"""Crash to "bot verified healthy" under `runbook serve`: the crash path as a waterfall.

    .venv/bin/python -m bench.detection_recovery [--rounds 5] [--modes warm cold] [--poll-interval S] [--json]

Starts a local Prefect server, the sandbox and `runbook serve --no-intake` (the watcher plus the
crash-recovery deployment with its event trigger), measures the bot's own start-up time (the
reference), then kills the bot N times (SIGKILL, `sandbox fault crash`) and records, from the kill,
each milestone of the crash path: incident fired (journal), flow run created, Pending, Running (Prefect
API), first task (the earliest task-run start), response started, restart issued, /health 200 (polled
by this benchmark every 50 ms), verified, resolved (journal). The waterfall shows their median and
worst over the rounds and the step between each and the one before.

`--modes warm cold` runs the rounds twice in the same run, each under its own serve: `warm` is the
default (runs forked from serve's warm fork server, exits seen by a pidfd), `cold` is serve as it was
before issue 16 (a new Python per run, exits seen on the next poll) — the A/B in the same conditions.

Targets (issue 16): process exit -> incident fired, median <= 0.5 s; crash -> /health 200, median <=
bot start-up + 1.0 s and worst <= bot start-up + 2.5 s. Each round starts after a random pause in
[0, poll interval) so the crash lands at a random point of the watcher's poll cycle.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import (
    ALERT, STORM_MAX, BenchError, Progress, Stack, describe_machine, dump_json, health_code, machine, measure_bot_startup,
    parse_time, ratio, result_row, seconds, sigterm_as_interrupt, start_serve, stats, stop_process_group, table,
    wait_serve_ready, wait_until,
    write_results,
)



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.detection_recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="crashes to time (default 5)")
    parser.add_argument("--startup-rounds", type=int, default=None,
                        help="bot start-ups to time for the reference (default: same as --rounds)")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="watcher poll interval in seconds (default: the configuration's, 5 s)")
    parser.add_argument("--runner-poll", type=float, default=None,
                        help="how often serve's runner asks for triggered runs, seconds (default: the "
                             "configuration's watch.runner_poll_seconds)")
    parser.add_argument("--modes", nargs="+", choices=["warm", "cold"], default=["warm"],
                        help="how serve runs, one after the other in this run (default: warm; `warm cold` for an "
                             "A/B against serve as it was before issue 16)")
    parser.add_argument("--round-timeout", type=float, default=180.0, help="give up on a round after this (s)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the random pause before each crash")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, journal)")
    return parser.parse_args(argv)


# --- one crash --------------------------------------------------------------------------------


def settle(stack: Stack, journal: Any, bot: Any, timeout: float) -> None:
    """Before a crash: the bot answers 200 and no crash-recovery incident is open."""
    def quiet() -> bool:
        return health_code(bot.health_url) == 200 and not journal.incidents(open_only=True, alert=ALERT)
    wait_until(quiet, timeout, "the bot to be healthy with no open crash-recovery incident", 0.25)


def crash_round(index: int, rounds: int, stack: Stack, journal: Any, bot: Any, timeout: float,
                say: Progress, serve_log: Path | None = None) -> dict[str, Any]:
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
    figures["at"]["detected"] = exit_seen(serve_log, t0_wall) if serve_log else None
    ok = incident.status == j.RESOLVED and incident.outcome == j.AUTO_RESOLVED and health_at is not None
    figures.update(round=index, incident=incident.id, outcome=incident.outcome, ok=ok,
                   summary=incident.summary)
    if ok:
        say(f"round {index}/{rounds}: " + ", ".join(f"{label} {seconds(figures['at'][key])}"
                                                     for key, label, _ in WATERFALL) + " after the crash")
    else:
        say(f"round {index}/{rounds}: NOT auto-resolved — incident #{incident.id} {incident.status}/"
            f"{incident.outcome}: {incident.summary}")
    return figures


def flow_run_final(stack: Stack, flow_run_id: str) -> bool:
    state = stack.api_get(f"/flow_runs/{flow_run_id}").get("state") or {}
    return state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def round_figures(stack: Stack, incident: Any, t0_wall: float, t0: float, health_at: float | None) -> dict[str, Any]:
    """Every milestone as seconds after the crash (the waterfall), and the intervals the targets use."""
    def after(moment: datetime | None) -> float | None:
        return None if moment is None else moment.timestamp() - t0_wall

    actions = {}
    for action in incident.actions:  # the first of each step
        actions.setdefault(action.step, action)
    flow_run: dict[str, Any] = {}
    pending: datetime | None = None
    first_task: float | None = None
    if incident.flow_run_id:
        flow_run = stack.api_get(f"/flow_runs/{incident.flow_run_id}")
        states = stack.api_get(f"/flow_run_states/?flow_run_id={incident.flow_run_id}")
        pending = min((parse_time(state["timestamp"]) for state in states if state["type"] == "PENDING"),
                      default=None)
        first_task = first_task_start(stack, incident.flow_run_id)
    at = {
        "fired": after(incident.fired_at),
        "run_created": after(parse_time(flow_run.get("created"))),
        "run_pending": after(pending),
        "run_running": after(parse_time(flow_run.get("start_time"))),
        "first_task": None if first_task is None else first_task - t0_wall,
        "response_started": after(incident.response_started_at),
        "restart": after(actions["restart"].at) if "restart" in actions else None,
        "health_200": None if health_at is None else health_at - t0,
        "verified": after(actions["verify"].at) if "verify" in actions and actions["verify"].ok else None,
        "resolved": after(incident.resolved_at),
    }
    return {"at": at, "detection": at["fired"], "recovery": at["health_200"],
            "restart_to_health": None if at["restart"] is None or at["health_200"] is None
            else at["health_200"] - at["restart"], "flow_run_id": incident.flow_run_id}


EXIT_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| WARNING \| runbook\.watcher - bot \S+: PID \d+ exited")


def exit_seen(serve_log: Path, t0_wall: float) -> float | None:
    """When serve's watcher saw the exit (its log line, local time of day), in seconds after t0."""
    try:
        lines = serve_log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    day = datetime.fromtimestamp(t0_wall).date()
    for line in lines:
        match = EXIT_LINE.match(line)
        if match:
            moment = datetime.combine(day, datetime.strptime(match.group(1), "%H:%M:%S.%f").time()).timestamp()
            if moment >= t0_wall - 0.5:  # this crash's, not an earlier one's
                return moment - t0_wall
    return None


def first_task_start(stack: Stack, run_id: str, timeout: float = 15.0) -> float | None:
    """When the run's first task started (epoch s); the server records task runs from events: wait a little."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.api_post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        starts = [parse_time(row["start_time"]).timestamp() for row in rows if row.get("start_time")]
        if starts or time.monotonic() > deadline:
            return min(starts, default=None)
        time.sleep(0.25)


# --- report -----------------------------------------------------------------------------------

# The crash path, milestone by milestone: (key, label, what happens between the previous one and it).
WATERFALL = [
    ("detected", "exit seen", "the watcher's pidfd wakes (warm; none in cold: the next poll)"),
    ("fired", "incident fired", "grace, observe, journal"),
    ("run_created", "flow run created", "event -> automation -> run of the deployment"),
    ("run_pending", "run Pending", "runner poll (watch.runner_poll_seconds)"),
    ("run_running", "run Running", "process start: fork (warm) or new Python + imports (cold)"),
    ("first_task", "first task", "engine start, config, journal, Slack OPEN"),
    ("response_started", "response started", "bot lock, journal"),
    ("restart", "restart issued", "diagnose, evidence marked, Slack, storm guard, policy"),
    ("health_200", "/health 200", "the bot's own start-up"),
    ("verified", "verified", "health + websocket + the bot's own metrics moving"),
    ("resolved", "resolved", "journal, Slack RESOLVED"),
]


def step(at: dict[str, float | None], key: str) -> float | None:
    """From the milestone before `key` that the round has (the crash itself for the first) to `key`."""
    keys = [k for k, _, _ in WATERFALL]
    if at.get(key) is None:
        return None
    earlier = [at[k] for k in keys[:keys.index(key)] if at.get(k) is not None]
    return at[key] - (earlier[-1] if earlier else 0.0)


def verdict(worst: float | None, median: float | None, worst_target: float | None, median_target: float) -> str:
    if median is None:
        return "-"
    if median > median_target:
        return "NO"
    if worst_target is not None and worst is not None and worst > worst_target:
        return "median only"
    return "yes"


def summarise(rounds: list[dict[str, Any]], startup: list[float], poll: float) -> dict[str, Any]:
    good = [r for r in rounds if r["ok"]]
    summary: dict[str, Any] = {key: stats(r["at"][key] for r in good) for key, _, _ in WATERFALL}
    for key in ("detection", "recovery", "restart_to_health"):
        summary[key] = stats(r[key] for r in good)
    summary["steps"] = {key: stats(step(r["at"], key) for r in good) for key, _, _ in WATERFALL}
    summary["bot_startup"] = stats(startup)
    summary["poll_interval"] = poll
    ref = summary["bot_startup"]["median"] or 0.0
    summary["targets"] = {"detection_median": DETECTION_MEDIAN, "recovery_median": ref + RECOVERY_MEDIAN_OVER,
                          "recovery_worst": ref + RECOVERY_WORST_OVER}
    summary["rounds_ok"] = len(good)
    summary["rounds_failed"] = len(rounds) - len(good)
    return summary


DETECTION_MEDIAN = 0.5  # process exit -> incident fired, median (issue 16)
RECOVERY_MEDIAN_OVER, RECOVERY_WORST_OVER = 1.0, 2.5  # crash -> /health 200 over the bot's own start-up


def per_round(rounds: list[dict[str, Any]]) -> str:
    rows = [[str(r["round"]), f"#{r['incident']}", *[seconds(r["at"][key]) for key, _, _ in WATERFALL],
             r["outcome"] or "-"] for r in rounds]
    return table(["round", "incident", *[label for _, label, _ in WATERFALL], "outcome"], rows)


def targets_table(s: dict[str, Any]) -> list[list[str]]:
    ref, t = s["bot_startup"]["median"], s["targets"]
    d, r = s["detection"], s["recovery"]
    return [
        ["process exit -> incident fired", seconds(d["median"]), seconds(d["worst"]), "-", "-",
         f"median <= {DETECTION_MEDIAN:g} s", verdict(d["worst"], d["median"], None, DETECTION_MEDIAN)],
        ["crash -> /health 200 again (recovery)", seconds(r["median"]), seconds(r["worst"]),
         f"bot start-up {seconds(ref)}", ratio(r["median"], ref),
         f"median <= {seconds(t['recovery_median'])}, worst <= {seconds(t['recovery_worst'])}",
         verdict(r["worst"], r["median"], t["recovery_worst"], t["recovery_median"])],
        ["bot start-up (reference: start command -> /health 200)", seconds(ref), seconds(s["bot_startup"]["worst"]),
         "-", "1.00x", "-", "-"],
    ]


def render(results: dict[str, dict[str, Any]], info: dict[str, Any], runner_poll: str) -> str:
    parts = ["## runbook serve: crash -> bot healthy again", "", describe_machine(info)]
    for mode, s in results.items():
        poll = s["poll_interval"]
        parts += [
            "", f"### {mode}: {MODES[mode]['what']}", "",
            f"{s['rounds_ok']} of {s['rounds_ok'] + s['rounds_failed']} crashes auto-resolved; reference from "
            f"{s['bot_startup']['n']} bot start-ups; watcher poll interval {poll:g} s; runner poll {runner_poll} s; "
            f"RUNBOOK_RECOVERY__RESTART_STORM_MAX={STORM_MAX} so repeated crashes are restarted, not escalated.",
            "",
            table(["measure", "median", "worst", "reference", "ratio (median/ref)", "target", "met"], targets_table(s)),
            "",
            "The crash path as a waterfall: each milestone in seconds after the kill (median and worst of the "
            "rounds), and the step from the milestone above it:",
            "",
            table(["milestone", "at (median)", "at (worst)", "step (median)", "step (worst)", "the step is"],
                  [[label, seconds(s[key]["median"]), seconds(s[key]["worst"]), seconds(s["steps"][key]["median"]),
                    seconds(s["steps"][key]["worst"]), note] for key, label, note in WATERFALL]),
        ]
    return "\n".join(parts)


def result_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, for `make bench`'s table (bench/run_all.py); a cold mode's rows are labelled as such."""
    rows = []
    for mode, s in results.items():
        tag = "" if mode == "warm" else f" [{mode}: {MODES[mode]['short']}]"
        for measure, median, worst, reference, ratio_text, target, met in targets_table(s)[:2]:
            value = None if ratio_text == "-" else float(ratio_text.rstrip("x"))
            rows.append(result_row(measure + tag, f"{median} (worst {worst})", reference, value, target,
                                   met if met != "-" else None))
    return rows


# --- main -------------------------------------------------------------------------------------

# How serve runs in each mode: warm is this project's default; cold is serve as it was before issue 16
# (a new Python per run, exits seen on the next poll), for an A/B in the same run.
MODES: dict[str, dict[str, Any]] = {
    "warm": {"env": {}, "what": "runs forked from serve's warm fork server, exits seen by pidfd (the default)",
             "short": "default"},
    "cold": {"env": {"RUNBOOK_WATCH__WARM_START": "false", "RUNBOOK_WATCH__EXIT_WATCH": "false"},
             "what": "a new Python per run, exits seen on the next poll (before issue 16)", "short": "before"},
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    say = Progress()
    sigterm_as_interrupt()
    info = machine()
    stack = Stack(say, keep=args.keep)
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    startup: list[float] = []
    failure: str | None = None
    poll: float = args.poll_interval or 5.0
    runner_poll = "?"
    try:
        stack.start()
        runner_poll = (f"{args.runner_poll:g}" if args.runner_poll is not None
                       else os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "the configuration's"))
        from runbook.journal import Journal
        from runbook.settings import load_settings

        settings = load_settings(stack.config)
        _, bot = settings.bot(None)
        poll = args.poll_interval or settings.watch.poll_interval_seconds
        runner_poll = f"{settings.watch.runner_poll_seconds:g}"
        journal = Journal(settings.journal_url)

        n_startup = args.startup_rounds or args.rounds
        say(f"reference: timing the bot's own start-up {n_startup} times (before serve starts, so nothing reacts)")
        startup = measure_bot_startup(bot, n_startup, say)

        rng = random.Random(args.seed)
        for mode in args.modes:
            serve = start_serve(stack, args.poll_interval, args.runner_poll, MODES[mode]["env"], mode, say)
            wait_serve_ready(stack, serve, mode)
            say(f"[{mode}] serve ready: deployment {ALERT} polled by its runner, trigger registered; "
                f"watcher every {poll:g} s")
            for index in range(1, args.rounds + 1):
                settle(stack, journal, bot, args.round_timeout)
                pause = rng.uniform(0, poll)
                say(f"[{mode}] round {index}/{args.rounds}: crashing the bot in {pause:.2f} s "
                    "(random phase of the poll cycle)")
                time.sleep(pause)
                result = crash_round(index, args.rounds, stack, journal, bot, args.round_timeout, say,
                                     stack.root / f"serve-{mode}.log")
                rounds[mode].append(result)
                if not result["ok"]:
                    raise BenchError(f"[{mode}] round {index} was not auto-resolved ({result['outcome']}): "
                                     f"{result['summary']}")
            stop_process_group(serve)
    except KeyboardInterrupt:
        failure = "interrupted"
        say("interrupted: cleaning up")
    except BenchError as error:
        failure = str(error)
        say(f"error: {error}")
    finally:
        stack.close()

    measured = {mode: r for mode, r in rounds.items() if r}
    if not measured or not startup:
        write_results("detection_recovery", [], failure or "nothing measured")
        print(f"no figures: {failure or 'nothing measured'}", file=sys.stderr)
        return 1
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results = {mode: summarise(r, startup, poll) for mode, r in measured.items()}
    write_results("detection_recovery", result_rows(results), failure)
    if args.json:
        print(dump_json({"machine": info, "poll_interval_seconds": poll, "runner_poll_seconds": runner_poll,
                         "restart_storm_max": int(STORM_MAX), "bot_startup_seconds": startup,
                         "rounds": measured, "summary": results, "failure": failure}))
    else:
        print(render(results, info, runner_poll))
        for mode, r in measured.items():
            print(f"\n[{mode}] each crash (seconds after the kill):\n")
            print(per_round(r))
        if failure:
            print(f"\nstopped early: {failure}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
