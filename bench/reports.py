"""The scheduled reports at scale: the daily trading summary of 10 000 to 1 000 000 fills and the weekly alert
analysis of 10 000 to 1 000 000 incidents — time, peak memory, and how both grow.

    .venv/bin/python -m bench.reports [--quick] [--sizes 10000,100000,1000000] [--rounds 1] [--json] [--keep]

For each size N, in a temporary folder:

- **daily summary**: a JSON file of fills as the info API returns them — N fills on the reported day (round
  trips over 5 coins) plus N/10 over the 30 days before it — rendered as `runbook report daily --fills`
  does it: read the file, build the report (reports/daily.py: fills -> trades -> the day, previous day,
  7 and 30 days, exposure, recommendations), render the PDF. Measured in a fresh process per run, timed
  inside around each phase ("work" = read + build + render, imports excluded); its peak memory is the
  whole process's peak resident set (`os.wait4` rusage, imports included). At 100 000 the real command
  `runbook report daily --fills ... --json` is also timed from spawn to exit.
- **weekly analysis**: N incidents over 7 days (catalogue alerts, realistic outcomes and delays), from a
  JSON-lines file (`--from-file`) and from a real SQLite journal (`Journal.kpi_columns`), each read,
  analysed (reports/weekly.py) and rendered, the same way. At 100 000 `runbook report weekly
  --from-file ... --json` is timed end to end too.
- **references, same run, same rows**: `pandas.read_csv` of the same records as CSV (time of the read,
  peak memory of that process), and `wc -l` of the JSON file. The ratio column is ours / read_csv: how
  many times the cost of merely loading the data with pandas the whole report takes.

Growth: time and memory at each size divided by those at the previous size (10x the rows); linear growth
shows ~10x time (memory grows less: a fixed ~100-150 MB of interpreter and imports). Growth counts as
linear within 25 % of the row ratio, or when it is no worse than read_csv's own growth in the same run.
Peak memory is measured through a small launcher process, because Linux carries the spawning process's
peak into the spawned one's ru_maxrss, and this benchmark's own process holds the generated rows.
Targets (issue 6): 100 000 fills and 100 000 incidents each within 3 s and 500 MB peak; linear (not worse)
growth up to 1 000 000. Nothing here is a test: no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    REPO, RUNBOOK, BenchError, Progress, describe_machine, dump_json, machine, result_row, sigterm_as_interrupt,
    table, write_results,
)

DAY = date(2026, 3, 10)
START_BALANCE = 1_000_000
COINS = ("BTC", "ETH", "SOL", "HYPE", "ARB")
PRICES = {"BTC": 95_000.0, "ETH": 3_500.0, "SOL": 180.0, "HYPE": 30.0, "ARB": 0.8}
PERIOD_END = datetime(2026, 11, 23, tzinfo=UTC)
TARGET_SECONDS = 3.0
TARGET_MB = 500.0
TARGET_SIZE = 100_000
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000, 100_000)
WC = shutil.which("wc") or "/usr/bin/wc"


# --- data -------------------------------------------------------------------------------------


def write_fills(path: Path, csv_path: Path, n_day: int, seed: int = 7) -> int:
    """n_day fills on DAY and n_day/10 over the 30 days before, as round trips (an open, then its close) over
    five coins, written as the info API returns them (numbers as strings); returns how many. Vectorised."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    day_start = int(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp() * 1000)
    parts = []
    for lo, hi, count in ((day_start - 30 * 86_400_000, day_start, n_day // 10), (day_start, day_start + 86_400_000,
                                                                                  n_day)):
        trips = max(1, count // 2)
        step = (hi - lo) // (trips + 1)
        k = np.arange(trips)
        coin = np.array(COINS, dtype=object)[k % len(COINS)]
        price = np.array([PRICES[c] for c in COINS])[k % len(COINS)]
        px = price * rng.uniform(0.98, 1.02, trips)
        size = np.maximum(np.round(2_000 / price, 4), 0.0001)
        long = rng.random(trips) < 0.5
        exit_px = px * (1 + rng.normal(0.0005, 0.004, trips))
        pnl = np.where(long, exit_px - px, px - exit_px) * size
        opened = lo + k * step + 1
        parts.append(pd.DataFrame({"coin": coin, "px": px, "sz": size, "side": np.where(long, "B", "A"),
                                   "time": opened, "startPosition": 0.0,
                                   "dir": np.where(long, "Open Long", "Open Short"), "closedPnl": 0.0,
                                   "fee": px * size * 0.00035}))
        parts.append(pd.DataFrame({"coin": coin, "px": exit_px, "sz": size, "side": np.where(long, "A", "B"),
                                   "time": opened + np.maximum(1, step // 2), "startPosition": np.where(long, size, -size),
                                   "dir": np.where(long, "Close Long", "Close Short"), "closedPnl": pnl,
                                   "fee": exit_px * size * 0.00035}))
    frame = pd.concat(parts, ignore_index=True).sort_values("time", kind="stable", ignore_index=True)
    n = len(frame)
    frame["px"] = frame["px"].map("{:.2f}".format)
    frame["sz"] = frame["sz"].map("{:.4f}".format)
    frame["startPosition"] = frame["startPosition"].map("{:.4f}".format)
    frame["closedPnl"] = frame["closedPnl"].map("{:.6f}".format)
    frame["fee"] = frame["fee"].map("{:.6f}".format)
    frame["oid"] = np.arange(1, n + 1)
    frame["tid"] = np.arange(1, n + 1)
    frame["hash"] = ["0x%064x" % i for i in range(1, n + 1)]
    frame["crossed"] = True
    frame["feeToken"] = "USDC"
    frame.to_json(path, orient="records")
    frame.to_csv(csv_path, index=False)
    return n


def write_incidents(n: int, jsonl: Path, csv_path: Path, journal_db: Path, seed: int = 11) -> None:
    """n incidents over the 7 days before PERIOD_END (some fired up to an hour before it), with catalogue
    alerts, outcomes, response and resolution delays, as JSON lines, as CSV, and in a real SQLite journal
    (the schema made by runbook.journal, rows inserted in bulk the way SQLAlchemy stores them). Vectorised."""
    import numpy as np
    import pandas as pd

    from runbook.alerts import CATALOGUE
    from runbook.journal import Journal

    rng = np.random.default_rng(seed)
    alerts = list(CATALOGUE.values())
    weights = np.array([{"CRITICAL": 3, "WARNING": 6, "INFO": 2, "EMERGENCY": 0.2}[a.severity.value] for a in alerts])
    pick = rng.choice(len(alerts), n, p=weights / weights.sum())
    outcomes = np.array(["auto-resolved", "auto-resolved", "auto-resolved", "resolved-manually", "false-positive",
                         "escalated", "failed", "no-automation"], dtype=object)
    start = np.datetime64((PERIOD_END - timedelta(days=7)).replace(tzinfo=None), "us")
    span_us = 7 * 86_400 * 10**6
    fired = start + rng.uniform(-3600 * 10**6, span_us, n).astype("timedelta64[us]")
    response = fired + rng.exponential(120 * 10**6, n).astype("timedelta64[us]")
    response[rng.random(n) >= 0.92] = np.datetime64("NaT")
    base = np.where(np.isnat(response), fired, response)
    resolved = base + rng.exponential(400 * 10**6, n).astype("timedelta64[us]")
    resolved[rng.random(n) >= 0.9] = np.datetime64("NaT")

    def iso(values: np.ndarray) -> np.ndarray:
        text = np.char.add(np.datetime_as_string(values, unit="us"), "Z").astype(object)
        text[np.isnat(values)] = None
        return text

    frame = pd.DataFrame({
        "id": np.arange(1, n + 1), "alert": np.array([a.key for a in alerts], dtype=object)[pick],
        "bot": np.char.add("bot-", (np.arange(n) % 10).astype(str)).astype(object),
        "severity": np.array([a.severity.value for a in alerts], dtype=object)[pick],
        "status": np.where(np.isnat(resolved), "escalated", "resolved").astype(object),
        "outcome": outcomes[rng.integers(0, len(outcomes), n)],
        "fired_at": iso(fired), "response_started_at": iso(response), "resolved_at": iso(resolved),
        "repeat_count": rng.choice([0, 0, 0, 1, 2, 5], n),
    })
    frame.to_json(jsonl, orient="records", lines=True)
    frame.to_csv(csv_path, index=False)
    Journal(f"sqlite:///{journal_db}").ping()  # creates the schema

    def stored(values: np.ndarray) -> list[str | None]:
        text = np.char.replace(np.datetime_as_string(values, unit="us"), "T", " ").astype(object)
        text[np.isnat(values)] = None
        return text.tolist()

    with sqlite3.connect(journal_db) as db:
        db.executemany(
            "INSERT INTO incidents (id, alert, bot, severity, status, outcome, summary, fired_at, last_fired_at, "
            "response_started_at, resolved_at, repeat_count) VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?)",
            zip(frame["id"].tolist(), frame["alert"].tolist(), frame["bot"].tolist(), frame["severity"].tolist(),
                frame["status"].tolist(), frame["outcome"].tolist(), stored(fired), stored(fired), stored(response),
                stored(resolved), frame["repeat_count"].tolist()))


# --- measured children --------------------------------------------------------------------------


def child(argv: list[str]) -> None:
    """Run one measured piece of work in this (fresh) process and print its phase times as JSON."""
    kind = argv[0]
    phases: dict[str, float] = {}
    if kind in ("daily", "weekly-file", "weekly-journal"):
        import reports.pdf  # noqa: F401 - imports are the process's cost, not the work's (see "process")
    if kind == "daily":
        from reports.daily import build_daily_report
        from reports.pdf import write_daily
        from reports.trades import fills_frame, read_fill_list

        from reports import paused_gc

        t0 = time.perf_counter()
        with paused_gc():
            frame = fills_frame(read_fill_list(argv[1]))
        t1 = time.perf_counter()
        report = build_daily_report(frame, DAY, START_BALANCE, now=datetime(2026, 3, 12, tzinfo=UTC))
        t2 = time.perf_counter()
        write_daily(report, Path(argv[2]))
        t3 = time.perf_counter()
        phases = {"read": t1 - t0, "build": t2 - t1, "render": t3 - t2, "trades": report.metrics.trades}
    elif kind in ("weekly-file", "weekly-journal"):
        from flows import FLOWS
        from reports.pdf import write_weekly
        from reports.weekly import analyze, incidents_frame, read_incident_file
        from runbook.journal import Journal

        start = PERIOD_END - timedelta(days=7)
        t0 = time.perf_counter()
        if kind == "weekly-file":
            frame, warnings = incidents_frame(read_incident_file(argv[1]))
        else:
            frame, warnings = incidents_frame(Journal(f"sqlite:///{argv[1]}").kpi_columns(start, PERIOD_END),
                                              strict=False)
        t1 = time.perf_counter()
        report = analyze(frame, start, PERIOD_END, now=PERIOD_END, automated=set(FLOWS), warnings=warnings)
        t2 = time.perf_counter()
        write_weekly(report, Path(argv[2]))
        t3 = time.perf_counter()
        phases = {"read": t1 - t0, "build": t2 - t1, "render": t3 - t2, "incidents": report.incidents}
    elif kind == "read_csv":
        import pandas as pd

        t0 = time.perf_counter()
        rows = len(pd.read_csv(argv[1]))
        phases = {"read": time.perf_counter() - t0, "rows": rows}
    elif kind == "json":
        t0 = time.perf_counter()
        import gc

        gc.disable()  # the floor of parsing: json at its fastest
        with open(argv[1], "rb") as handle:
            data = handle.read()
        if data.lstrip()[:1] == b"[":
            rows = len(json.loads(data))
        else:  # JSON lines: one object a line
            rows = len([json.loads(line) for line in data.splitlines() if line.strip()])
        phases = {"read": time.perf_counter() - t0, "rows": rows}
    else:
        raise SystemExit(f"unknown child {kind}")
    print(json.dumps(phases), flush=True)


# Spawns the measured command and reports its wall time and peak RSS. It runs in a small process of its own
# because Linux carries the spawning process's peak RSS into the spawned one's (at exec, the old address
# space's high-water mark goes into ru_maxrss): spawned straight from this benchmark, which holds a million
# generated rows, every child would "peak" at this process's size.
LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"wall": time.perf_counter() - started, "maxrss_kb": usage.ru_maxrss,
                  "code": os.waitstatus_to_exitcode(status)}), file=sys.stderr, flush=True)
"""


def measure(command: list[str], timeout: float = 600) -> dict[str, Any]:
    """Run `command` (absolute path first): wall time spawn->exit, its own peak RSS, its JSON output."""
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_ENABLED": "false"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *command], cwd=REPO, stdout=out, stderr=err,
                           env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out after {timeout:g}s: {' '.join(command)}") from None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = stderr.decode(errors="replace").strip().splitlines()
    try:
        launched = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"{' '.join(command[:4])} ...: no measurement: {stderr.decode(errors='replace')[-800:]}") \
            from None
    if launched["code"] != 0:
        raise BenchError(f"{' '.join(command[:4])} ... exited {launched['code']}: " + "\n".join(lines[-12:-1]))
    last = stdout.decode().strip().splitlines()[-1] if stdout.strip() else "{}"
    try:
        data = json.loads(last)
    except json.JSONDecodeError:
        data = {}
    return {"wall": launched["wall"], "rss_mb": launched["maxrss_kb"] / 1024, "data": data}


def run_child(kind: str, *args: str) -> dict[str, Any]:
    result = measure([sys.executable, "-m", "bench.reports", "--child", kind, *map(str, args)])
    phases = result["data"]
    result["work"] = sum(v for k, v in phases.items() if k in ("read", "build", "render"))
    return result


def median_run(rounds: int, kind: str, *args: str) -> dict[str, Any]:
    runs = [run_child(kind, *args) for _ in range(rounds)]
    runs.sort(key=lambda r: r["work"])
    return runs[len(runs) // 2]


# --- the benchmark ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="comma-separated sizes (default 10000,100000,1000000)")
    parser.add_argument("--quick", action="store_true", help="sizes 1000,10000,100000 (about a minute)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per measure and size; the median is shown")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data, PDFs)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def growth(values: list[float], i: int) -> str:
    return "-" if i == 0 or not values[i - 1] else f"{values[i] / values[i - 1]:.1f}x"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    sigterm_as_interrupt()
    say = Progress()
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    root = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    info = machine()
    results: dict[str, list[dict[str, Any]]] = {"daily": [], "weekly_file": [], "weekly_journal": []}
    cli: dict[str, dict[str, Any]] = {}
    failure = None
    try:
        for n in sizes:
            folder = root / str(n)
            folder.mkdir()
            say(f"{n:,}: writing fills ({n:,} on the day + {n // 10:,} before it)")
            fills, fills_csv = folder / "fills.json", folder / "fills.csv"
            count = write_fills(fills, fills_csv, n)
            say(f"{n:,}: daily summary ({count:,} fills, {fills.stat().st_size / 2**20:,.0f} MB of JSON)")
            daily = median_run(args.rounds, "daily", fills, folder / "out")
            csv_ref = median_run(args.rounds, "read_csv", fills_csv)
            json_ref = run_child("json", fills) if n <= TARGET_SIZE else {"data": {"read": None}}
            wc = measure([WC, "-l", str(fills)])
            results["daily"].append({"n": n, "rows": count, "file_mb": fills.stat().st_size / 2**20, **_row(daily),
                                     "trades": daily["data"].get("trades"), "csv_read": csv_ref["data"]["read"],
                                     "csv_rss_mb": csv_ref["rss_mb"], "json_read": json_ref["data"]["read"],
                                     "wc": wc["wall"]})
            if n == TARGET_SIZE:
                say(f"{n:,}: `runbook report daily --fills ...` end to end")
                run = measure([RUNBOOK, "report", "daily", "--fills", str(fills), "--start-balance", str(START_BALANCE),
                               "--date", DAY.isoformat(), "--out", str(folder / "cli"), "--json"])
                cli["daily"] = {"wall": run["wall"], "rss_mb": run["rss_mb"]}
            fills.unlink()
            fills_csv.unlink()

            say(f"{n:,}: writing incidents (JSON lines, CSV, a SQLite journal)")
            jsonl, inc_csv, db = folder / "incidents.jsonl", folder / "incidents.csv", folder / "journal.db"
            write_incidents(n, jsonl, inc_csv, db)
            say(f"{n:,}: weekly analysis from the file and from the journal")
            from_file = median_run(args.rounds, "weekly-file", jsonl, folder / "out")
            from_journal = median_run(args.rounds, "weekly-journal", db, folder / "out")
            csv_ref = median_run(args.rounds, "read_csv", inc_csv)
            json_ref = run_child("json", jsonl) if n <= TARGET_SIZE else {"data": {"read": None}}
            wc = measure([WC, "-l", str(jsonl)])
            for key, run in (("weekly_file", from_file), ("weekly_journal", from_journal)):
                results[key].append({"n": n, "rows": n, "file_mb": (jsonl if key == "weekly_file" else db).stat().st_size
                                     / 2**20, **_row(run), "incidents": run["data"].get("incidents"),
                                     "csv_read": csv_ref["data"]["read"], "csv_rss_mb": csv_ref["rss_mb"],
                                     "json_read": json_ref["data"]["read"], "wc": wc["wall"]})
            if n == TARGET_SIZE:
                say(f"{n:,}: `runbook report weekly --from-file ...` end to end")
                run = measure([RUNBOOK, "report", "weekly", "--from-file", str(jsonl), "--end", PERIOD_END.isoformat(),
                               "--out", str(folder / "cli"), "--json"])
                cli["weekly"] = {"wall": run["wall"], "rss_mb": run["rss_mb"]}
            for path in (jsonl, inc_csv, db):
                path.unlink()
            if not args.keep:
                shutil.rmtree(folder / "out", ignore_errors=True)
    except (BenchError, KeyboardInterrupt) as error:
        failure = str(error) or "interrupted"
        say(f"FAILED: {failure}")
    finally:
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    rows = headline_rows(results, cli)
    write_results("reports", rows, failure)
    if args.json:
        print(dump_json({"machine": info, "results": results, "cli": cli, "rows": rows, "failure": failure}))
    else:
        print(render(results, cli, info))
    return 1 if failure else 0


def _row(run: dict[str, Any]) -> dict[str, Any]:
    phases = run["data"]
    return {"read": phases.get("read"), "build": phases.get("build"), "render": phases.get("render"),
            "work": run["work"], "wall": run["wall"], "rss_mb": run["rss_mb"]}


def _k(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n >= 1000 else str(n)


def render(results: dict[str, list[dict[str, Any]]], cli: dict[str, dict[str, Any]], info: dict[str, Any]) -> str:
    out = [f"Machine: {describe_machine(info)}", ""]
    titles = {"daily": "Daily trading summary (fills: N on the day + N/10 over the 30 days before)",
              "weekly_file": "Weekly alert analysis from a JSON-lines file (--from-file)",
              "weekly_journal": "Weekly alert analysis from a SQLite journal"}
    for key, title in titles.items():
        runs = results[key]
        if not runs:
            continue
        works = [r["work"] for r in runs]
        rss = [r["rss_mb"] for r in runs]
        out += [title, "", table(
            ["N", "rows", "input", "read", "build", "render", "work (read+build+render)", "process (spawn->exit)",
             "peak RSS", "ref: read_csv", "ratio work/read_csv", "ref RSS", "json.loads", "wc -l",
             "growth: work", "growth: RSS"],
            [[f"{r['n']:,}", f"{r['rows']:,}", mb(r["file_mb"]), sec(r["read"]), sec(r["build"]), sec(r["render"]),
              sec(r["work"]), sec(r["wall"]), mb(r["rss_mb"]), sec(r["csv_read"]),
              f"{r['work'] / r['csv_read']:.1f}x" if r["csv_read"] else "-", mb(r["csv_rss_mb"]), sec(r["json_read"]),
              sec(r["wc"]), growth(works, i), growth(rss, i)] for i, r in enumerate(runs)]), ""]
    if cli:
        out += ["End to end at 100,000 (the CLI: Python start, imports, the work, the PDF)", "", table(
            ["command", "spawn -> exit", "peak RSS", "target"],
            [[f"runbook report {k} ...", sec(v["wall"]), mb(v["rss_mb"]), f"<= {TARGET_SECONDS:g} s, <= {TARGET_MB:g} MB"]
             for k, v in cli.items()]), ""]
    out.append("Headline (targets of issue 6)")
    out.append("")
    rows = headline_rows(results, cli)
    out.append(table(["measure", "ours", "reference", "ratio", "target", "met"],
                     [[r["measure"], r["project"], r["reference"], r["ratio_text"], r["target"], r["met_text"]]
                      for r in rows]))
    return "\n".join(out)


def headline_rows(results: dict[str, list[dict[str, Any]]], cli: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    labels = {"daily": "daily summary, 100k fills", "weekly_file": "weekly analysis, 100k incidents (file)",
              "weekly_journal": "weekly analysis, 100k incidents (journal)"}
    for key, label in labels.items():
        runs = {r["n"]: r for r in results[key]}
        at = runs.get(TARGET_SIZE)
        if at is None:
            continue
        rows.append(result_row(f"{label}: time", sec(at["work"]), f"read_csv {sec(at['csv_read'])}",
                               at["work"] / at["csv_read"] if at["csv_read"] else None, f"<= {TARGET_SECONDS:g} s",
                               at["work"] <= TARGET_SECONDS))
        rows.append(result_row(f"{label}: peak RSS", mb(at["rss_mb"]), f"read_csv process {mb(at['csv_rss_mb'])}",
                               at["rss_mb"] / at["csv_rss_mb"] if at["csv_rss_mb"] else None, f"<= {TARGET_MB:g} MB",
                               at["rss_mb"] <= TARGET_MB))
        sizes = sorted(runs)
        if len(sizes) >= 2:  # growth over the last tenfold measured (100k -> 1M, or 10k -> 100k with --quick)
            small, big = runs[sizes[-2]], runs[sizes[-1]]
            factor = big["work"] / small["work"] if small["work"] else None
            reference = big["csv_read"] / small["csv_read"] if small["csv_read"] else None
            tenfold = sizes[-1] / sizes[-2]
            # linear: within 25 % of the row ratio, or growing no faster than read_csv of the same rows did in
            # the same run (on a shared machine, memory and cache effects at 1M rows hit both alike)
            linear = None if factor is None else factor <= 1.25 * tenfold or (reference is not None
                                                                            and factor <= reference)
            rows.append(result_row(f"{label.split(',')[0]}: time {_k(sizes[-2])} -> {_k(sizes[-1])}",
                                   "-" if factor is None else f"{factor:.1f}x",
                                   "-" if reference is None else f"read_csv {reference:.1f}x",
                                   None if factor is None or not reference else factor / reference,
                                   f"linear (about {tenfold:g}x, or no worse than read_csv)", linear))
    for key, run in cli.items():
        rows.append(result_row(f"runbook report {key}, 100k, spawn -> exit", sec(run["wall"]), "-", None,
                               f"(imports included) {mb(run['rss_mb'])}", None))
    return rows


if __name__ == "__main__":
    sys.exit(main())
