"""`make bench`: every benchmark of the project, one after the other, then one table of their headline
figures — measure, this project, the reference measured in the same run, the ratio, the target, met.

    .venv/bin/python -m bench.run_all [--only NAME ...] [--skip NAME ...] [--save PATH] [--timeout S]

Each benchmark runs in its own process (`python -m bench.NAME`, with the arguments below), prints its
own tables and progress as it goes, and writes its headline rows as JSON to the file named by
$BENCH_RESULTS (bench/common.py: `result_row`, `write_results`). A benchmark that is not there yet is
skipped; one that fails or writes no rows shows as a failed row, and the others still run. Nothing is
asserted: the table says which targets are met on this machine today.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS_ENV, describe_machine, machine, table

# (module, arguments for `make bench`, what it measures). The arguments keep the whole run under
# 15 minutes on a 2-core machine; run a module alone for more rounds or bigger sizes.
BENCHMARKS: list[tuple[str, list[str], str]] = [
    ("bench.logscan", [], "log scan vs grep -c, tail vs tail -n, on a 1 GB log"),
    ("bench.overhead", ["--rounds", "10", "--database", "sqlite-ab"],
     "orchestration overhead per Prefect task; an empty flow run, SQLite as Prefect ships it vs as configured here"),
    ("bench.run_latency", ["--rounds", "3"], "`runbook run` -> the flow's first task, with and without serve"),
    ("bench.detection_recovery", ["--rounds", "3", "--modes", "warm", "cold"],
     "crash -> bot healthy under `runbook serve`, as a waterfall; warm vs cold (before issue 16)"),
    ("bench.reports", ["--quick"], "daily summary / weekly analysis at 1k-100k rows"),
    ("bench.backup", ["--no-shell"], "evidence backup vs tar -czf; system failure -> trading stopped"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. logscan overhead)")
    parser.add_argument("--skip", nargs="+", metavar="NAME", default=[], help="do not run these")
    parser.add_argument("--save", type=Path, help="also write the table (Markdown) and the rows (JSON, PATH.json)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on one benchmark after S seconds")
    return parser.parse_args(argv)


def short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_one(module: str, args: list[str], results: Path, timeout: float) -> dict[str, Any]:
    """Run one benchmark, its output straight to ours; returns its rows, failure and duration."""
    env = {**os.environ, RESULTS_ENV: str(results)}
    command = [sys.executable, "-m", module, *args]
    print(f"\n{'=' * 100}\n$ {' '.join(['python', '-m', module, *args])}\n{'=' * 100}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
        failure = None if code == 0 else f"exited with {code}"
    except subprocess.TimeoutExpired:
        from bench.common import stop_process_group

        stop_process_group(process)  # SIGTERM: the benchmark cleans up what it started
        failure = f"stopped after {timeout:g} s"
    except KeyboardInterrupt:
        from bench.common import stop_process_group

        stop_process_group(process)
        raise
    seconds = time.monotonic() - started
    rows: list[dict[str, Any]] = []
    if results.exists():
        data = json.loads(results.read_text())
        rows = data.get("rows") or []
        failure = data.get("failure") or failure
    elif failure is None:
        failure = f"wrote no results ({RESULTS_ENV})"
    return {"module": module, "rows": rows, "failure": failure, "seconds": seconds}


def render(runs: list[dict[str, Any]], info: dict[str, Any], skipped: list[str], total: float) -> str:
    lines: list[list[str]] = []
    for run in runs:
        name = short(run["module"])
        for row in run["rows"]:
            lines.append([name, row["measure"], row["project"], row["reference"], row.get("ratio_text") or "-",
                          row["target"], row.get("met_text") or "-"])
        if run["failure"]:
            failure = run["failure"] if len(run["failure"]) <= 100 else run["failure"][:100] + "... (see above)"
            lines.append([name, f"FAILED: {failure}", "-", "-", "-", "-", "-"])
    durations = ", ".join(f"{short(r['module'])} {r['seconds'] / 60:.1f} min" for r in runs)
    met = [row.get("met") for run in runs for row in run["rows"]]
    targets = [m for m in met if m is not None]
    count = sum(1 for m in targets if m is True)
    return "\n".join([
        "# make bench: every benchmark",
        "",
        describe_machine(info),
        f"{len(runs)} benchmarks in {total / 60:.1f} min ({durations})"
        + (f"; not present: {', '.join(skipped)}" if skipped else "") + ".",
        "ratio = this project / the reference measured in the same run (lower is faster); "
        "met: yes / NO / '-' where no target is set. See docs/benchmarks.md for how to read each line.",
        "",
        table(["benchmark", "measure", "this project", "reference", "ratio", "target", "met"], lines),
        "",
        f"Targets met: {count} of {len(targets)}.",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = [b for b in BENCHMARKS if (not args.only or short(b[0]) in args.only) and short(b[0]) not in args.skip]
    missing = [short(module) for module, _, _ in wanted if not available(module)]
    info = machine()
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runbook-bench-all-") as folder:
        try:
            for module, extra, _ in wanted:
                if short(module) in missing:
                    continue
                runs.append(run_one(module, extra, Path(folder) / f"{short(module)}.json", args.timeout))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = render(runs, info, missing, time.monotonic() - started)
    print("\n" + report)
    if args.save:
        args.save.write_text(report + "\n")
        args.save.with_suffix(args.save.suffix + ".json").write_text(
            json.dumps({"machine": info, "runs": runs}, indent=2, default=str))
    return 0 if runs and all(run["failure"] is None for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
