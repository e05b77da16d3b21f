"""Log reading on a 1 GB JSON-lines log: the error-pattern scan against `grep -c`, the last 100 lines
against `tail -n 100`, and the scan's peak memory.

    .venv/bin/python -m bench.logscan [--size-mb 1024] [--rounds 3] [--log PATH] [--keep] [--json]

Generates (once, in a temporary folder) a log the way the sandbox bot writes it (sandbox/bot.py's
JsonFormatter: timestamp, level, logger, message, extra fields): mostly `API CALL` lines, trades,
strategy signals, websocket and rate-limit warnings, and a few per cent of errors (exchange unreachable
or rejecting, auth failures, insufficient balance, loop errors with a traceback). Then, page cache warm
for both sides, medians of N rounds:

- scan: `scan_log.fn(path, "error")` (what crash-recovery runs: `grep -i error`, messages grouped and
  counted) in a fresh Python process, timed around the call, against `grep -c -i -F error PATH` (spawn
  to exit). Both must count the same lines. Throughput = file size / time. Peak memory: the scanning
  process's peak resident set while it scans (Linux VmHWM, reset just before the call), which includes
  the ~90 MB Python + Prefect already resident before the first byte is read; grep's is its own peak.
- tail: `tail_log.fn(path, 100)` (read from the end and parse each line), in-process, against
  `tail -n 100 PATH` (spawn to exit); also the bytes the call read (from /proc/self/io), to show it
  reads the end of the file, not the file.

Targets (issue 9): scan throughput at least half of grep's (ratio ours/grep time <= 2) with under
100 MB resident; tail within 2x `tail -n 100`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.common import (
    REPO, BenchError, Progress, describe_machine, dump_json, machine, result_row, sigterm_as_interrupt, table,
    write_results,
)

PATTERN = "error"
TAIL_LINES = 100
MEMORY_TARGET_MB = 100.0


# --- the log ----------------------------------------------------------------------------------

COINS = ("BTC", "ETH", "SOL")
PRICES = {"BTC": 97000.0, "ETH": 3660.0, "SOL": 240.0}
READ_ENDPOINTS = ("allMids", "clearinghouseState", "frontendOpenOrders", "userRole")
AGENT = "0x5aC58A55619442EF0395AE7841A6fC66cC9bF275"
TRACEBACK = ("Traceback (most recent call last):\n  File \"/opt/bot/bot.py\", line 563, in _trading_loop\n"
             "    self._tick()\n  File \"/opt/bot/bot.py\", line 590, in _tick\n    self._sync()\n"
             "  File \"/opt/bot/bot.py\", line 604, in _sync\n    state = self.gateway.user_state()\n"
             "KeyError: 'marginSummary'")


def _entry(ts: str, level: str, logger: str, message: str, **extra: Any) -> str:
    # Same key order and separators as the bot's JsonFormatter (json.dumps defaults).
    return json.dumps({"timestamp": ts, "level": level, "logger": logger, "message": message, **extra})


def _records(rng: random.Random, ts: str) -> list[str]:
    """One event of the bot's loop: usually a few API calls, sometimes trades, warnings or errors."""
    def api(endpoint: str, outcome: str = "ok") -> str:
        # Nine lines in ten: written out directly (what json.dumps would give, at a third of the cost).
        latency = round(rng.lognormvariate(1.0, 0.6), 1)
        return (f'{{"timestamp": "{ts}", "level": "INFO", "logger": "trading_bot", "message": "API CALL {endpoint} '
                f'{latency:.0f}ms", "endpoint": "{endpoint}", "latency_ms": {latency!r}, "outcome": "{outcome}"}}')

    roll = rng.random()
    coin = rng.choice(COINS)
    px = round(PRICES[coin] * rng.uniform(0.97, 1.03), 1)
    size = round(rng.uniform(0.001, 0.5), 4)
    side = rng.choice(("long", "short"))
    if roll < 0.80:
        return [api(endpoint) for endpoint in READ_ENDPOINTS]
    if roll < 0.85:
        return [_entry(ts, "INFO", "trading_bot.strategy", f"strategy random-walk: entry signal {coin} {side}"),
                api("order"), api("order"),
                _entry(ts, "INFO", "trading_bot", f"TRADE ENTRY {coin} {side} size={size} px={px} "
                       f"stop={round(px * 1.02, 1)}", coin=coin, side=side, size=size, px=px, stop_px=round(px * 1.02, 1))]
    if roll < 0.90:
        pnl = round(rng.gauss(0.5, 6.0), 2)
        result = "WIN" if pnl > 0 else "LOSS"
        return [_entry(ts, "INFO", "trading_bot.strategy", f"strategy random-walk: exit signal {coin}"),
                api("cancel"), api("order"),
                _entry(ts, "INFO", "trading_bot", f"TRADE EXIT {coin} {side} size={size} entry={px} "
                       f"exit={round(px + pnl / max(size, 0.001), 1)} pnl={pnl:.2f} reason=signal {result}",
                       coin=coin, side=side, pnl=pnl, reason="signal", result=result)]
    if roll < 0.92:
        return [_entry(ts, "INFO", "trading_bot", f"position {coin} stop placed px={px}", coin=coin)]
    if roll < 0.94:
        endpoint = rng.choice(READ_ENDPOINTS)
        return [_entry(ts, "WARNING", "trading_bot", f"rate limit hit on {endpoint} (HTTP 429)", endpoint=endpoint),
                api(endpoint, "rate_limited")]
    if roll < 0.955:
        return [_entry(ts, "WARNING", "trading_bot.websocket", "websocket disconnected: connection closed"),
                _entry(ts, "WARNING", "trading_bot.websocket",
                       f"websocket reconnect attempt {rng.randint(1, 5)} in {rng.choice((1, 2, 4, 8))}s"),
                _entry(ts, "INFO", "trading_bot.websocket", "websocket connected")]
    if roll < 0.96:
        rss = rng.randint(300, 900)
        return [_entry(ts, "WARNING", "trading_bot", f"memory usage high: rss={rss}MB cache={rss - 120}MB growing",
                       rss_mb=float(rss))]
    # ~4 % of events carry an error (about 2 % of the lines).
    endpoint = rng.choice(READ_ENDPOINTS + ("order", "cancel"))
    kind = rng.random()
    if kind < 0.40:
        code = rng.choice((500, 502, 503, 504))
        return [_entry(ts, "ERROR", "trading_bot", f"exchange unreachable on {endpoint}: HTTP {code}", endpoint=endpoint),
                api(endpoint, "unreachable")]
    if kind < 0.60:
        return [_entry(ts, "ERROR", "trading_bot", f"exchange rejected order: Order has invalid size: {size}",
                       endpoint="order"), api("order", "rejected")]
    if kind < 0.70:
        return [_entry(ts, "ERROR", "trading_bot",
                       f"auth failed: User or API Wallet {AGENT} does not exist.", agent=AGENT),
                api(endpoint, "rejected")]
    if kind < 0.80:
        return [_entry(ts, "ERROR", "trading_bot.risk",
                       f"insufficient balance for {coin}: withdrawable {rng.uniform(0, 20):.2f}")]
    if kind < 0.90:
        return [_entry(ts, "ERROR", "trading_bot", f"exchange call {endpoint} failed: "
                       f"JSONDecodeError('Expecting value: line 1 column 1 (char 0)')", endpoint=endpoint),
                api(endpoint, "error")]
    if kind < 0.95:
        return [_entry(ts, "ERROR", "trading_bot", "trading loop error", exception=TRACEBACK)]
    return [_entry(ts, "ERROR", "trading_bot", f"position {coin} has no stop-loss: HTTP 503", coin=coin)]


def generate_log(path: Path, size_bytes: int, seed: int = 7) -> dict[str, Any]:
    """Write about `size_bytes` of log to `path` (whole lines); returns its size and line count."""
    rng = random.Random(seed)
    moment = datetime(2026, 11, 1, tzinfo=timezone.utc)
    written = lines = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < size_bytes:
            batch: list[str] = []
            for _ in range(2000):
                moment += timedelta(milliseconds=rng.randint(200, 3000))
                batch.extend(_records(rng, moment.isoformat(timespec="milliseconds")))
            text = "\n".join(batch) + "\n"
            handle.write(text)
            written += len(text.encode())
            lines += len(batch)
    return {"path": str(path), "bytes": path.stat().st_size, "lines": lines}


# --- timing -----------------------------------------------------------------------------------

# The scan runs in its own process, so its memory is its own: Python + Prefect + the scan.
SCAN_CHILD = r"""
import json, sys, time
from pathlib import Path
from tasks.logs import scan_log

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None

before = status("VmRSS")
try:  # reset the peak (VmHWM) to the current resident set, so it measures the scan from here
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    reset = True
except OSError:
    reset = False
started, cpu = time.perf_counter(), time.process_time()
result = scan_log.fn(Path(sys.argv[1]), sys.argv[2])
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"seconds": elapsed, "cpu": cpu, "rss_before": before, "peak_rss": status("VmHWM"), "peak_reset": reset,
                  "matches": result.matches, "lines_read": result.lines_read, "malformed": result.malformed,
                  "top": result.top_messages[:3], "error": result.error}))
"""


def run_child(command: list[str], env: dict[str, str] | None = None,
              watch_memory: bool = False) -> dict[str, Any]:
    """Spawn -> exit wall time, stdout, and with `watch_memory` the child's peak resident set (its VmHWM,
    polled until it exits: wait4's ru_maxrss would also count the memory of the Python process it was
    forked from)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    peak = None
    if watch_memory:
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.002)
    out, err = process.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # one child at a time: the difference is its own
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    if process.returncode not in (0, 1):  # grep -c exits 1 when nothing matched
        raise BenchError(f"{command[0]} exited with {process.returncode}: {err.decode(errors='replace')[-2000:]}")
    return {"wall": wall, "cpu": cpu, "out": out.decode(), "peak_rss": peak}


def grep_command(path: Path) -> list[str]:
    return ["grep", "-c", "-i", "-F", PATTERN, str(path)]


def time_grep(path: Path, watch_memory: bool = False) -> dict[str, Any]:
    run = run_child(grep_command(path), watch_memory=watch_memory)
    return {"seconds": run["wall"], "cpu": run["cpu"], "count": int(run["out"].strip() or 0), "peak_rss": run["peak_rss"]}


def time_scan(path: Path) -> dict[str, Any]:
    run = run_child([sys.executable, "-c", SCAN_CHILD, str(path), PATTERN],
                    env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"})
    data = json.loads(run["out"].strip().splitlines()[-1])
    if data["error"]:
        raise BenchError(f"scan_log: {data['error']}")
    data["wall"] = run["wall"]
    return data


def read_bytes_so_far() -> int | None:
    """Bytes this process has read through read() so far (Linux /proc/self/io `rchar`)."""
    try:
        for line in open("/proc/self/io"):
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def time_tail_ours(path: Path) -> dict[str, Any]:
    from tasks.logs import tail_log

    before = read_bytes_so_far()
    started = time.perf_counter()
    result = tail_log.fn(path, TAIL_LINES)
    seconds = time.perf_counter() - started
    after = read_bytes_so_far()
    if result.error:
        raise BenchError(f"tail_log: {result.error}")
    return {"seconds": seconds, "lines": [line.raw for line in result.lines],
            "bytes_read": None if before is None or after is None else after - before}


def time_tail_reference(path: Path) -> dict[str, Any]:
    run = run_child(["tail", "-n", str(TAIL_LINES), str(path)])
    return {"seconds": run["wall"], "lines": run["out"].splitlines()}


# --- report -----------------------------------------------------------------------------------


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} MB"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def summarise(log: dict[str, Any], scans: list[dict[str, Any]], greps: list[dict[str, Any]],
              tails: list[dict[str, Any]], tail_refs: list[dict[str, Any]], grep_rss: int | None) -> dict[str, Any]:
    size = log["bytes"]
    scan_s = statistics.median(s["seconds"] for s in scans)
    grep_s = statistics.median(g["seconds"] for g in greps)
    tail_s = statistics.median(t["seconds"] for t in tails)
    tail_ref_s = statistics.median(t["seconds"] for t in tail_refs)
    bytes_read = [t["bytes_read"] for t in tails]
    return {
        "log": log,
        "scan": {"seconds_median": scan_s, "seconds_all": [s["seconds"] for s in scans],
                 "cpu_median": statistics.median(s["cpu"] for s in scans),
                 "throughput_mb_s": size / scan_s / 1e6, "peak_rss": max(s["peak_rss"] for s in scans),
                 "rss_before": statistics.median(s["rss_before"] for s in scans),
                 "peak_reset": all(s["peak_reset"] for s in scans),
                 "matches": scans[0]["matches"], "lines_read": scans[0]["lines_read"],
                 "malformed": scans[0]["malformed"], "top": scans[0]["top"],
                 "process_wall_median": statistics.median(s["wall"] for s in scans)},
        "grep": {"seconds_median": grep_s, "seconds_all": [g["seconds"] for g in greps],
                 "cpu_median": statistics.median(g["cpu"] for g in greps),
                 "throughput_mb_s": size / grep_s / 1e6, "count": greps[0]["count"], "peak_rss": grep_rss},
        "tail": {"seconds_median": tail_s, "seconds_all": [t["seconds"] for t in tails],
                 "bytes_read": None if None in bytes_read else max(bytes_read)},
        "tail_reference": {"seconds_median": tail_ref_s, "seconds_all": [t["seconds"] for t in tail_refs]},
        "scan_ratio": scan_s / grep_s,
        "tail_ratio": tail_s / tail_ref_s,
    }


def rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline figures in the shared result format (bench/common.py)."""
    scan, grep = s["scan"], s["grep"]
    return [
        result_row(f"log scan for 'error', {s['log']['bytes'] / 1e9:.2f} GB JSON lines (time)",
                   f"{scan['seconds_median']:.2f} s ({scan['throughput_mb_s']:.0f} MB/s)",
                   f"grep -c -i: {grep['seconds_median']:.2f} s ({grep['throughput_mb_s']:.0f} MB/s)",
                   s["scan_ratio"], "<= 2x (half grep's throughput)", s["scan_ratio"] <= 2.0),
        result_row("log scan, peak resident memory (whole process)",
                   mb(scan["peak_rss"]), f"grep: {mb(grep['peak_rss'])}", None,
                   f"< {MEMORY_TARGET_MB:g} MB", scan["peak_rss"] < MEMORY_TARGET_MB * 1e6),
        result_row(f"last {TAIL_LINES} lines of the log",
                   ms(s["tail"]["seconds_median"]), f"tail -n {TAIL_LINES}: {ms(s['tail_reference']['seconds_median'])}",
                   s["tail_ratio"], "<= 2x", s["tail_ratio"] <= 2.0),
    ]


def render(s: dict[str, Any], info: dict[str, Any], rounds: int) -> str:
    scan, grep, log = s["scan"], s["grep"], s["log"]
    headline = [[r["measure"], r["project"], r["reference"], r["ratio_text"], r["target"], r["met_text"]]
                for r in rows(s)]
    top = "; ".join(f"{message!r} x{count}" for message, count in scan["top"])
    lines = [
        "## log scanning: scan vs grep -c, tail vs tail -n",
        "",
        describe_machine(info),
        f"Log: {log['bytes'] / 1e6:.0f} MB, {log['lines']:,} lines as the sandbox bot writes them; page cache warm; "
        f"medians of {rounds} rounds. Scan = scan_log.fn(path, {PATTERN!r}) in a fresh Python process, timed around "
        f"the call; grep = `{' '.join(grep_command(Path('LOG')))}` spawn to exit. Tail = tail_log.fn(path, "
        f"{TAIL_LINES}) in-process (read + parse); reference `tail -n {TAIL_LINES} LOG` spawn to exit.",
        "",
        table(["measure", "this project", "reference", "ratio", "target", "met"], headline),
        "",
        f"Both counted the same lines: {scan['matches']:,} of {scan['lines_read']:,} (grep: {grep['count']:,}). "
        f"Top messages: {top}.",
        f"CPU time (user + system), medians: scan {scan['cpu_median']:.2f} s, grep {grep['cpu_median']:.2f} s "
        f"(ratio {scan['cpu_median'] / grep['cpu_median']:.2f}x; wall times above include waiting for a CPU).",
        f"Scanning process: {mb(scan['rss_before'])} resident before the scan (Python + Prefect imports), "
        f"peak {mb(scan['peak_rss'])} while scanning"
        + ("" if scan["peak_reset"] else " (peak since the process started: /proc/self/clear_refs unavailable)")
        + f"; whole process {scan['process_wall_median']:.2f} s spawn to exit.",
    ]
    if s["tail"]["bytes_read"] is not None:
        lines.append(f"tail_log read {s['tail']['bytes_read']:,} bytes of the {log['bytes']:,}-byte file.")
    lines += [
        "",
        "Each round: scan " + ", ".join(f"{x:.2f} s" for x in scan["seconds_all"])
        + "; grep " + ", ".join(f"{x:.2f} s" for x in grep["seconds_all"])
        + "; tail_log " + ", ".join(f"{x * 1000:.2f}" for x in s["tail"]["seconds_all"])
        + " ms; tail -n " + ", ".join(f"{x * 1000:.2f}" for x in s["tail_reference"]["seconds_all"]) + " ms",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.logscan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="log size to generate in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default 3)")
    parser.add_argument("--log", type=Path, default=None, help="use this log instead of generating one")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--keep", action="store_true", help="keep the generated log (its path is printed)")
    return parser.parse_args(argv)


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def measure(log_path: Path, rounds: int, say: Progress) -> tuple[list[dict[str, Any]], ...]:
    scans: list[dict[str, Any]] = []
    greps: list[dict[str, Any]] = []
    for i in range(1, rounds + 1):
        # Alternate which goes first, so neither always runs right after the other.
        order = [lambda: greps.append(time_grep(log_path)), lambda: scans.append(time_scan(log_path))]
        for action in order if i % 2 else reversed(order):
            action()
        say(f"round {i}/{rounds}: scan {scans[-1]['seconds']:.2f} s (cpu {scans[-1]['cpu']:.2f} s, peak "
            f"{mb(scans[-1]['peak_rss'])}, {scans[-1]['matches']:,} matches), grep -c {greps[-1]['seconds']:.2f} s "
            f"(cpu {greps[-1]['cpu']:.2f} s, {greps[-1]['count']:,})")
        if scans[-1]["matches"] != greps[-1]["count"]:
            raise BenchError(f"scan_log counted {scans[-1]['matches']} matching lines, grep {greps[-1]['count']}")
    tails: list[dict[str, Any]] = []
    tail_refs: list[dict[str, Any]] = []
    time_tail_ours(log_path)  # imports and the first call out of the figures
    for _ in range(rounds * 3):
        tails.append(time_tail_ours(log_path))
        tail_refs.append(time_tail_reference(log_path))
        if tails[-1]["lines"] != tail_refs[-1]["lines"]:
            raise BenchError("tail_log and tail -n returned different lines")
    say(f"tail: tail_log {ms(statistics.median(t['seconds'] for t in tails))}, tail -n "
        f"{ms(statistics.median(t['seconds'] for t in tail_refs))} (medians of {len(tails)})")
    return scans, greps, tails, tail_refs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    say = Progress()
    sigterm_as_interrupt()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="runbook-bench-logscan-"))
    failure: str | None = None
    summary: dict[str, Any] | None = None
    try:
        if args.log is not None:
            log_path = args.log.resolve()
            log = {"path": str(log_path), "bytes": log_path.stat().st_size, "lines": count_lines(log_path)}
        else:
            log_path = root / "trading_bot.log"
            say(f"generating a {args.size_mb} MiB log in {log_path} (30-70 s)")
            log = generate_log(log_path, args.size_mb * 2**20)
        say(f"log: {log['bytes'] / 1e6:.0f} MB, {log['lines']:,} lines; warming the page cache (one unmeasured grep)")
        grep_rss = time_grep(log_path, watch_memory=True)["peak_rss"]
        summary = summarise(log, *measure(log_path, args.rounds, say), grep_rss)
    except KeyboardInterrupt:
        failure = "interrupted"
        say("interrupted: cleaning up")
    except (BenchError, OSError) as error:
        failure = str(error)
        say(f"error: {error}")
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    write_results("logscan", rows(summary) if summary else [], failure)
    if summary is None:
        print(f"no figures: {failure or 'nothing measured'}", file=sys.stderr)
        return 1
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(dump_json({"machine": info, "summary": summary, "failure": failure}))
    else:
        print(render(summary, info, args.rounds))
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
