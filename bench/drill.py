"""The whole drill on the sandbox: every scenario of runbook/drills.py through `runbook serve`, timed.

    .venv/bin/python -m bench.drill [--scenarios all] [--json] [--keep]

Starts a local Prefect server, the sandbox and `runbook serve --no-intake`, then runs `runbook drill
--json` (a real subprocess, as a person would) and reports its duration and figures. The reference,
measured in the same run, is the time the production path itself spent answering the faults: the sum
over the scenarios of injection -> the flow's conclusion (detection, trigger, diagnosis, remediation).
The ratio is therefore the drill's own overhead (clearing faults, waiting for a healthy bot between
scenarios) on top of the runbook's answers.

The sandbox runs with the drill-friendly thresholds a staging bot would use (`THRESHOLDS` below: the
watcher polls every second, a websocket counts as down after 10 s, the websocket flow waits 10 s for the
bot's own reconnect); with the production defaults (120 s, 60 s) the two websocket scenarios alone take
six minutes more.
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
    RUNBOOK, BenchError, Progress, Stack, describe_machine, machine, ratio, result_row, seconds, sigterm_as_interrupt,
    stop_process_group, table, tail, wait_until, write_results,
)

THRESHOLDS = {
    # The sandbox's random walk fires these by chance (not drilled: no injection makes them on demand).
    "RUNBOOK_WATCH__DISABLED": '["win-rate-review", "new-balance-high"]',
    "RUNBOOK_WATCH__POLL_INTERVAL_SECONDS": "1",
    "RUNBOOK_WATCH__WEBSOCKET_DOWN_SECONDS": "10",
    "RUNBOOK_INFRA__WEBSOCKET_RECONNECT_WAIT_SECONDS": "10",
    "RUNBOOK_INFRA__LATENCY_WINDOW_SECONDS": "10",
}
TARGET_SECONDS = 900.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="all", help="all, or a comma list (default all)")
    parser.add_argument("--timeout", type=float, default=1500.0, help="give up on the drill after S seconds")
    parser.add_argument("--json", action="store_true", help="print the drill's JSON instead of tables")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, journal, PDF)")
    return parser.parse_args(argv)


def start_serve(stack: Stack, say: Progress) -> subprocess.Popen[bytes]:
    env = {**os.environ, **THRESHOLDS}
    log_path = stack.root / "serve.log"
    say(f"starting `runbook serve --config {stack.config} --no-intake` (log {log_path})")
    with open(log_path, "ab") as log:
        process = subprocess.Popen([RUNBOOK, "serve", "--config", str(stack.config), "--no-intake"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    stack.on_close("runbook serve (SIGTERM)", lambda: stop_process_group(process))

    def ready() -> bool:
        if process.poll() is not None:
            raise BenchError(f"runbook serve exited with {process.returncode}; end of {log_path}:\n{tail(log_path)}")
        return "serving" in log_path.read_text(errors="replace") and not any(
            d.get("paused") for d in stack.api_post("/deployments/filter", {}))

    wait_until(ready, 240, "runbook serve to register every deployment", 0.5)
    return process


def production_seconds(result: dict[str, Any], stack: Stack) -> float:
    """Σ injection -> conclusion: detection + the flow's run (its end read from the server)."""
    total = 0.0
    for row in result["scenarios"]:
        if not row["covered"] or row["detected"] is None:
            continue
        if not row["detected"]:
            continue  # the drill's own detection deadline: no production time to compare with
        run = stack.api_get(f"/flow_runs/{row['flow_run_id']}") if row.get("flow_run_id") else None
        if run and run.get("end_time") and run.get("start_time") and row["response_seconds"] is not None:
            from bench.common import parse_time

            total += row["response_seconds"] + (parse_time(run["end_time"]) - parse_time(run["start_time"])).total_seconds()
        elif row["cause_seconds"] is not None:
            total += row["cause_seconds"]
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say = Progress()
    sigterm_as_interrupt()
    info = machine()
    stack = Stack(say, keep=args.keep)
    result: dict[str, Any] | None = None
    failure: str | None = None
    elapsed = reference = None
    try:
        stack.start(startup_seconds=0.5)
        start_serve(stack, say)
        say(f"running `runbook drill --scenarios {args.scenarios} --json` (progress below)")
        started = time.monotonic()
        done = subprocess.run([RUNBOOK, "drill", "--config", str(stack.config), "--scenarios", args.scenarios,
                               "--out", str(stack.root / "drills"), "--json"], stdout=subprocess.PIPE,
                              env={**os.environ, **THRESHOLDS}, timeout=args.timeout, text=True)
        elapsed = time.monotonic() - started
        if done.returncode not in (0, 1):
            raise BenchError(f"runbook drill exited with {done.returncode}")
        result = json.loads(done.stdout)
        reference = production_seconds(result, stack)
        if result["status"] != "finished":
            failure = "drill aborted: " + "; ".join(result["problems"])
    except subprocess.TimeoutExpired:
        failure = f"the drill did not finish within {args.timeout:g} s"
    except KeyboardInterrupt:
        failure = "interrupted"
    except BenchError as error:
        failure = str(error)
        say(f"error: {error}")
    finally:
        stack.close()
    if result is None or elapsed is None:
        write_results("drill", [], failure or "nothing measured")
        print(f"no figures: {failure or 'nothing measured'}", file=sys.stderr)
        return 1
    drilled = result["scenarios_drilled"]
    rows = [
        result_row(f"whole drill, {drilled} scenarios (wall time)", seconds(elapsed, 0),
                   f"{seconds(reference, 0)} production path", (elapsed / reference) if reference else None,
                   f"< {TARGET_SECONDS / 60:.0f} min", elapsed < TARGET_SECONDS),
        result_row("drill figures: alert coverage / detection / cause accuracy",
                   " / ".join("n/a" if result[k] is None else f"{result[k] * 100:.0f} %"
                              for k in ("alert_coverage", "detection_accuracy", "cause_accuracy")),
                   "-", None, "-", None),
    ]
    write_results("drill", rows, failure)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps({"machine": info, "seconds": elapsed, "production_seconds": reference, "drill": result},
                         indent=2, default=str))
    else:
        print("\n" + describe_machine(info))
        print(table(["measure", "this project", "reference", "ratio"],
                    [[r["measure"], r["project"], r["reference"], ratio(elapsed, reference) if i == 0 else "-"]
                     for i, r in enumerate(rows)]))
        print()
        print(table(["scenario", "alert", "detect", "response", "cause", "verdict"],
                    [[s["scenario"], s["alert"] or "-", seconds(s["detect_seconds"]), seconds(s["response_seconds"]),
                      seconds(s["cause_seconds"]), s["verdict"]] for s in result["scenarios"]]))
        if failure:
            print(f"\nproblem: {failure}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
