"""`runbook run NAME` to the flow's first task, against calling the same steps directly.

    .venv/bin/python -m bench.run_latency [--rounds 5] [--json]

With a running local Prefect server and a sandbox whose bot is HEALTHY (so crash-recovery ends as a
false positive that touches nothing), alternately, N times each:

A  `runbook run crash-recovery --config ... --json` in a fresh process: from spawning it to the flow
   run's first task run starting (the earliest task-run start_time the Prefect API records for the
   flow run named by `flow_run_id` in the output), and to the command's exit.
B  the reference: a fresh `python -c` process that imports the same flow module (so the same
   Prefect and project imports) and calls the plain first steps directly — `load_settings`,
   `locate_bot`, `probe_health_once` — with no orchestration: from spawning it to that first step
   starting (a timestamp printed from inside just before the call), and to its exit.

C  the floor under both: a fresh `python -c "import prefect"`, spawn to exit.

The gap A - B is what the orchestration costs a person waiting at a shell. Target: A within 2 s.
One unmeasured warm-up of each comes first (page cache, the flow's first registration on the server,
the concurrency limit created on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    REPO, RUNBOOK, BenchError, Progress, Stack, describe_machine, dump_json, machine, parse_time, ratio, result_row,
    seconds, sigterm_as_interrupt, start_serve, stats, table, wait_serve_ready, write_results,
)

TARGET_SECONDS = 2.0
SERVED_TARGET_SECONDS = 1.5  # with `runbook serve` running: median (issue 16)
FIRST_STEP_TASK = "check process status"

# B: the same modules as the flow, then the first step's work called plainly.
DIRECT = """
import sys, time
import flows.crash_recovery  # the same module `runbook run crash-recovery` loads (Prefect, tasks, runbook)
from runbook.settings import load_settings
from tasks.process import locate_bot
from tasks.probes import probe_health_once
print("IMPORTED", repr(time.time()), flush=True)
settings = load_settings(sys.argv[1])
_, bot = settings.bot(None)
print("FIRST_STEP", repr(time.time()), flush=True)
process = locate_bot(bot)
health = probe_health_once(bot)
print("DONE", repr(time.time()), process is not None, health.healthy, flush=True)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured runs of each of A and B (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each first (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, journal)")
    return parser.parse_args(argv)


def run_a(stack: Stack, served: bool = False) -> dict[str, Any]:
    """`runbook run crash-recovery` as a person types it; instants in seconds after the spawn. `served`:
    with `runbook serve` running, so the run goes through serve's warm runner; else `--local` (in the
    command's own process, as with no serve)."""
    command = [RUNBOOK, "run", "crash-recovery", "--config", str(stack.config), "--json"] + ([] if served else ["--local"])
    spawned = time.time()
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=300)
    total = time.monotonic() - started
    try:
        data = json.loads(result.stdout[result.stdout.index("{"):])
    except ValueError:
        raise BenchError(f"`runbook run` printed no JSON (exit {result.returncode}):\n{result.stdout}\n"
                         f"{result.stderr[-3000:]}") from None
    if result.returncode != 0 or data.get("outcome") != "false-positive":
        raise BenchError(f"`runbook run` on a healthy bot should end as a false positive with exit 0; got exit "
                         f"{result.returncode}, outcome {data.get('outcome')!r}: {data.get('summary')}")
    run_id = data["flow_run_id"]
    flow_run = stack.api_get(f"/flow_runs/{run_id}")
    tasks = task_runs(stack, run_id)
    first = min(tasks, key=lambda t: t["start"])
    diagnose = min((t for t in tasks if t["name"].startswith(FIRST_STEP_TASK)), key=lambda t: t["start"], default=None)
    return {
        "flow_run_id": run_id,
        "incident": data.get("incident_id"),
        "first_task_name": first["name"].rsplit("-", 1)[0],
        "flow_run_created": parse_time(flow_run["created"]).timestamp() - spawned,
        "flow_run_running": parse_time(flow_run["start_time"]).timestamp() - spawned,
        "first_task": first["start"] - spawned,
        "first_step_task": diagnose["start"] - spawned if diagnose else None,
        "exit": total,
    }


def task_runs(stack: Stack, run_id: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The flow run's task runs with a start time; the server records them from events, so wait a little."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.api_post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        started = [{"name": row["name"], "start": parse_time(row["start_time"]).timestamp()}
                   for row in rows if row.get("start_time")]
        if any(row["name"].startswith(FIRST_STEP_TASK) for row in started) or time.monotonic() > deadline:
            if not started:
                raise BenchError(f"flow run {run_id} has no started task runs on the server")
            return started
        time.sleep(0.25)


def run_b(stack: Stack) -> dict[str, Any]:
    """The reference: the same imports and the first step's plain calls, no orchestration."""
    spawned = time.time()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", DIRECT, str(stack.config)], cwd=REPO, env=os.environ,
                            capture_output=True, text=True, timeout=120)
    total = time.monotonic() - started
    marks = {}
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in {"IMPORTED", "FIRST_STEP", "DONE"}:
            marks[word] = rest.split()
    if result.returncode != 0 or "DONE" not in marks:
        raise BenchError(f"the direct call failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    if marks["DONE"][1:] != ["True", "True"]:
        raise BenchError(f"the direct call did not find a healthy bot: {marks['DONE']}")
    return {
        "imported": float(marks["IMPORTED"][0]) - spawned,
        "first_step": float(marks["FIRST_STEP"][0]) - spawned,
        "exit": total,
    }


def run_c(stack: Stack) -> dict[str, Any]:
    """The floor under both: a fresh Python process that only imports prefect."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", "import prefect"], cwd=REPO, env=os.environ,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise BenchError(f"`python -c 'import prefect'` failed:\n{result.stderr[-3000:]}")
    return {"exit": time.monotonic() - started}


def summarise(a: list[dict[str, Any]], b: list[dict[str, Any]], c: list[dict[str, Any]],
              served: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {f"{prefix}_{key}": stats(r[key] for r in rows)
               for prefix, rows in (("a", a), ("s", served))
               for key in ("flow_run_created", "flow_run_running", "first_task", "first_step_task", "exit")}
    summary.update({f"b_{key}": stats(r[key] for r in b) for key in ("imported", "first_step", "exit")})
    def chain(start: str, end: str) -> dict[str, Any]:
        return stats(r[end] - r[start] for r in a if r[start] is not None and r[end] is not None)
    summary["a_spawn_to_created"] = summary["a_flow_run_created"]
    summary["a_created_to_running"] = chain("flow_run_created", "flow_run_running")
    summary["a_running_to_first_task"] = chain("flow_run_running", "first_task")
    summary["a_first_task_to_first_step"] = chain("first_task", "first_step_task")
    summary["s_created_to_running"] = stats(r["flow_run_running"] - r["flow_run_created"] for r in served
                                            if r["flow_run_running"] is not None)
    summary["s_running_to_first_task"] = stats(r["first_task"] - r["flow_run_running"] for r in served
                                               if r["flow_run_running"] is not None)
    summary["b_imported_to_first_step"] = stats(r["first_step"] - r["imported"] for r in b)
    summary["c_exit"] = stats(r["exit"] for r in c)
    summary["target_seconds"] = TARGET_SECONDS
    summary["served_target_seconds"] = SERVED_TARGET_SECONDS
    return summary


def render(s: dict[str, Any], info: dict[str, Any], rounds: int, first_task_name: str) -> str:
    def row(label: str, a: str, b: str, target: str = "-") -> list[str]:
        am, bm = s[a]["median"], s[b]["median"]
        gap = None if am is None or bm is None else am - bm
        met = "-" if target == "-" else ("yes" if s[a]["worst"] <= TARGET_SECONDS else
                                         "median only" if am <= TARGET_SECONDS else "NO")
        return [label, seconds(am), seconds(s[a]["worst"]), seconds(bm), seconds(gap), ratio(am, bm), target, met]

    sm = s["s_first_task"]["median"]
    headline = [
        [f"S (serve running): spawn -> first task running ({first_task_name})", seconds(sm),
         seconds(s["s_first_task"]["worst"]), seconds(s["b_first_step"]["median"]),
         seconds(None if sm is None else sm - s["b_first_step"]["median"]), ratio(sm, s["b_first_step"]["median"]),
         f"median <= {SERVED_TARGET_SECONDS:g} s", "-" if sm is None else "yes" if sm <= SERVED_TARGET_SECONDS else "NO"],
        row(f"S (serve running): spawn -> first runbook step running ({FIRST_STEP_TASK})", "s_first_step_task",
            "b_first_step"),
        row("S (serve running): spawn -> process exit", "s_exit", "b_exit"),
        row(f"A (--local): spawn -> first task running ({first_task_name})", "a_first_task", "b_first_step",
            f"<= {TARGET_SECONDS:g} s"),
        row(f"A (--local): spawn -> first runbook step running ({FIRST_STEP_TASK})", "a_first_step_task", "b_first_step"),
        row("A (--local): spawn -> process exit", "a_exit", "b_exit"),
    ]
    chain = [
        ["S: spawn -> flow run created on the server", "s_flow_run_created", "CLI start (no Prefect import), API call"],
        ["S: created -> flow run Running", "s_created_to_running", "serve's runner poll, fork from the warm server"],
        ["S: Running -> first task running", "s_running_to_first_task", "engine start, IncidentRun.open"],
        ["A: spawn -> flow run created on the server", "a_spawn_to_created", "CLI start, imports, config, flow run created"],
        ["A: created -> flow run Running", "a_created_to_running", "engine: Pending/Running transitions"],
        ["A: Running -> first task running", "a_running_to_first_task", "IncidentRun.open: config, journal, task submit"],
        ["A: first task -> first runbook step", "a_first_task_to_first_step", "Slack OPEN notice, bot lock, submit"],
        ["B: spawn -> imports done", "b_imported", "Python + Prefect + project imports"],
        ["B: imports done -> first step", "b_imported_to_first_step", "load_settings"],
        ["C: `python -c 'import prefect'`, spawn -> exit", "c_exit", "the floor: Prefect's own import"],
    ]
    return "\n".join([
        "## runbook run: shell -> the flow's first task",
        "",
        describe_machine(info),
        f"{rounds} runs each of S = `runbook run crash-recovery --config ... --json` with `runbook serve "
        "--no-watch --no-intake` running (the run goes through serve's warm runner), A = the same with `--local` "
        "(the flow in the command's own process, as with no serve), both against a healthy sandbox "
        "bot (ends as a false positive), and B = a fresh `python -c` that imports flows.crash_recovery and calls "
        "load_settings, locate_bot, probe_health_once directly; alternating S/A/B/C then C/B/A/S, after one "
        "unmeasured warm-up of each. "
        "Times are from spawning the process. A's task start is the task run's start_time on the Prefect server; "
        "B's first step is a timestamp printed just before the call.",
        "",
        table(["measure", "A median", "A worst", "B median (reference)", "gap A-B", "ratio A/B", "target",
               "worst within target"], headline),
        "",
        "Where A's time goes, and B's; C is a third process run alongside, importing only prefect "
        "(median and worst):",
        "",
        table(["interval", "median", "worst", "what it is"],
              [[label, seconds(s[key]["median"]), seconds(s[key]["worst"]), what] for label, key, what in chain]),
    ])


def result_rows(s: dict[str, Any], first_task_name: str) -> list[dict[str, Any]]:
    """The target, for `make bench`'s table (bench/run_all.py)."""
    a, b, served = s["a_first_task"], s["b_first_step"], s["s_first_task"]
    met = "yes" if a["worst"] <= TARGET_SECONDS else "median only" if a["median"] <= TARGET_SECONDS else False
    return [result_row(f"`runbook run` with serve running: spawn -> first task running ({first_task_name})",
                       f"{seconds(served['median'])} (worst {seconds(served['worst'])})",
                       f"direct import + call: {seconds(b['median'])}",
                       served["median"] / b["median"] if b["median"] and served["median"] else None,
                       f"median <= {SERVED_TARGET_SECONDS:g} s",
                       None if served["median"] is None else served["median"] <= SERVED_TARGET_SECONDS),
            result_row(f"`runbook run --local` (no serve) spawn -> first task running ({first_task_name})",
                       f"{seconds(a['median'])} (worst {seconds(a['worst'])})",
                       f"direct import + call: {seconds(b['median'])}",
                       a["median"] / b["median"] if b["median"] else None, f"worst <= {TARGET_SECONDS:g} s", met)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    say = Progress()
    sigterm_as_interrupt()
    info = machine()
    stack = Stack(say, keep=args.keep)
    a: list[dict[str, Any]] = []
    b: list[dict[str, Any]] = []
    c: list[dict[str, Any]] = []
    s_runs: list[dict[str, Any]] = []
    warm_a: list[dict[str, Any]] = []
    warm_b: list[dict[str, Any]] = []
    failure: str | None = None
    try:
        stack.start()
        serve = start_serve(stack, None, None, {}, "run-latency", say, ["--no-watch", "--no-intake"])
        wait_serve_ready(stack, serve, "run-latency")
        for i in range(1, args.warmup + 1):
            say(f"warm-up {i}/{args.warmup} (not in the table): S, A then B")
            warm_s = run_a(stack, served=True)
            say(f"warm-up {i}: S first task +{warm_s['first_task']:.2f} s")
            warm_a.append(run_a(stack))
            warm_b.append(run_b(stack))
            say(f"warm-up {i}: A first task +{warm_a[-1]['first_task']:.2f} s, exit +{warm_a[-1]['exit']:.2f} s; "
                f"B first step +{warm_b[-1]['first_step']:.2f} s, exit +{warm_b[-1]['exit']:.2f} s")
        for i in range(1, args.rounds + 1):
            # Alternate which goes first, so neither always runs right after the other.
            order = [("S", lambda st: run_a(st, served=True), s_runs), ("A", run_a, a), ("B", run_b, b),
                     ("C", run_c, c)]
            for name, runner, into in order if i % 2 else reversed(order):
                into.append(runner(stack))
                r = into[-1]
                if name == "C":
                    say(f"round {i}/{args.rounds} C import prefect: exit +{r['exit']:.2f} s")
                elif name in ("A", "S"):
                    say(f"round {i}/{args.rounds} {name} `runbook run`: first task ({r['first_task_name']}) at "
                        f"+{r['first_task']:.2f} s, {FIRST_STEP_TASK} at +{(r['first_step_task'] or 0):.2f} s, "
                        f"exit at +{r['exit']:.2f} s")
                else:
                    say(f"round {i}/{args.rounds} B direct: imports done +{r['imported']:.2f} s, first step "
                        f"+{r['first_step']:.2f} s, exit +{r['exit']:.2f} s")
    except KeyboardInterrupt:
        failure = "interrupted"
        say("interrupted: cleaning up")
    except BenchError as error:
        failure = str(error)
        say(f"error: {error}")
    finally:
        stack.close()

    if not a or not b or not c or not s_runs:
        write_results("run_latency", [], failure or "nothing measured")
        print(f"no figures: {failure or 'nothing measured'}", file=sys.stderr)
        return 1
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(a, b, c, s_runs)
    write_results("run_latency", result_rows(summary, a[0]["first_task_name"]), failure)
    if args.json:
        print(dump_json({"machine": info, "s_runbook_run_served": s_runs, "a_runbook_run": a, "b_direct": b, "c_import_prefect": c, "warmup_a": warm_a, "warmup_b": warm_b,
                         "summary": summary, "failure": failure}))
    else:
        print(render(summary, info, min(len(a), len(b)), a[0]["first_task_name"]))
        for wa, wb in zip(warm_a, warm_b):
            print(f"\nWarm-up (the first runs on a fresh server, not in the tables): A first task "
                  f"+{wa['first_task']:.2f} s (flow run created +{wa['flow_run_created']:.2f} s), exit "
                  f"+{wa['exit']:.2f} s; B first step +{wb['first_step']:.2f} s, exit +{wb['exit']:.2f} s.")
        if failure:
            print(f"\nstopped early: {failure}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
