"""Emergency procedures, measured: the evidence backup against `tar -czf`, and "system failure" to "trading stopped".

Part 1 — evidence backup of a 1 GB bot folder (`--size-mb`) against the runbook's own command,
`tar -czf OUT logs/ data/ config/` run in the same folder, in the same run, alternating which goes first.
The folder is generated: ~60 % JSON-lines log text (compresses ~8x), ~40 % data that compresses little —
float64 price series (random walks, ~1.1x) and opaque blobs (random bytes: already-compressed snapshots).
The page cache is warm for both (the folder was just written and synced). Ours includes what tar does
not do: SHA-256 of every file, the manifest, fsync; the read-back verification is timed apart.

Part 2 — a Prefect server and the sandbox; each round the bot runs with an open position and a resting
order of its own account, then `system_failure(..., assume_yes=True)` is called in this (warm) process.
t0 is the call. A monitor thread polls every 10 ms: is the bot's PID gone, how many open orders the
exchange lists, is the account flat. "Trading stopped" = from then on the PID is gone and no order is
open. The first round is the process's first flow run (cold) and is shown apart. One more round runs
`runbook run system-failure --yes` as a person would from a shell (a fresh process: imports included).

    .venv/bin/python -m bench.backup [--size-mb 1024] [--rounds 1] [--failure-rounds 4] [--no-shell] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.common import (
    RUNBOOK, Progress, Stack, describe_machine, dump_json, machine, sigterm_as_interrupt, table,
)

try:  # `make bench` collects each benchmark's headline rows (bench/common.py, when present)
    from bench.common import result_row, write_results
except ImportError:  # pragma: no cover
    result_row = write_results = None  # type: ignore[assignment]

TARGET_STOP_SECONDS = 2.0
POLL_SECONDS = 0.01


# --- part 1: the evidence backup ------------------------------------------------------------------


def _log_text(rng: random.Random, size: int) -> bytes:
    levels = ["INFO"] * 6 + ["WARNING", "ERROR", "DEBUG"]
    coins = ["BTC", "ETH", "SOL"]
    kinds = [
        lambda: f"API CALL POST /info type={rng.choice(['clearinghouseState', 'allMids', 'frontendOpenOrders'])} "
                f"status=200 duration_ms={rng.uniform(5, 400):.1f}",
        lambda: f"TRADE EXIT {rng.choice(coins)} {rng.choice(['long', 'short'])} reason="
                f"{rng.choice(['take_profit', 'signal', 'stop_loss'])} pnl={rng.uniform(-40, 60):.2f}",
        lambda: f"TRADE ENTRY {rng.choice(coins)} size={rng.uniform(0.001, 2):.4f} px={rng.uniform(100, 99000):.1f}",
        lambda: "websocket message received",
        lambda: f"order placed oid={rng.randrange(10**10, 10**11)} cloid=0x{rng.getrandbits(128):032x}",
        lambda: f"strategy random-walk: entry signal {rng.choice(coins)} {rng.choice(['long', 'short'])}",
    ]
    lines, n, t = [], 0, 1_764_000_000.0
    while n < size:
        t += rng.expovariate(20)
        line = json.dumps({"ts": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.{int(t % 1 * 1e6):06d}Z",
                           "level": rng.choice(levels), "logger": "trading_bot", "message": rng.choice(kinds)(),
                           "thread": rng.choice(["trading", "websocket", "health"])}) + "\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()


def make_bot_folder(root: Path, size_mb: int, say: Progress) -> dict[str, int]:
    """logs/ (text), data/ (price series + opaque blobs), config/ (and a key file the backup must leave out)."""
    rng = random.Random(7)
    total = size_mb << 20
    text_total, series_total = int(total * 0.60), int(total * 0.13)
    blob_total = total - text_total - series_total
    for folder in ("logs/archive", "data/series", "data/snapshots", "config"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    block = _log_text(rng, 8 << 20)  # 8 MB of distinct lines, written again and again (deflate sees 32 KB)
    files = [root / "logs" / "trading_bot.log"] + [root / "logs" / "archive" / f"trading_bot.log.{i}" for i in range(1, 5)]
    per_file = text_total // len(files)
    for path in files:
        with path.open("wb") as handle:
            left = per_file
            while left > 0:
                handle.write(block[:left])
                left -= len(block)
    (root / "logs" / "trading_bot_errors.log").write_bytes(block[: 4 << 20])
    generator = np.random.default_rng(7)
    chunk = 16 << 20
    written = 0
    for i in range((series_total + chunk - 1) // chunk):
        n = min(chunk, series_total - written) // 8
        walk = 95_000 * np.exp(np.cumsum(generator.normal(0, 5e-4, n)))
        (root / "data" / "series" / f"btc_{i:03d}.f64").write_bytes(np.round(walk, 1).astype("<f8").tobytes())
        written += n * 8
    written = 0
    for i in range((blob_total + (64 << 20) - 1) // (64 << 20)):
        n = min(64 << 20, blob_total - written)
        (root / "data" / "snapshots" / f"book_{i:03d}.bin.gz").write_bytes(os.urandom(n))
        written += n
    (root / "config" / "config.json").write_text(json.dumps({"risk_limits": {"daily_loss_limit_usd": 100}}) + "\n")
    (root / "config" / "agent_key.json").write_text(json.dumps({"private_key": "0x" + os.urandom(32).hex()}))
    os.sync()
    sizes = {"logs": 0, "data": 0, "config": 0}
    for path in root.rglob("*"):
        if path.is_file():
            sizes[path.relative_to(root).parts[0]] += path.stat().st_size
    say(f"bot folder: logs {sizes['logs'] / 2**20:.0f} MB, data {sizes['data'] / 2**20:.0f} MB, config "
        f"{sizes['config']} bytes")
    return sizes


def run_tar(bot: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["tar", "-czf", str(out), "logs/", "data/", "config/"], cwd=bot, check=True)
    return time.perf_counter() - started


def measure_backup(size_mb: int, rounds: int, say: Progress, keep: bool) -> dict[str, Any]:
    from tasks.evidence import create_backup, verify_archive

    work = Path(tempfile.mkdtemp(prefix="runbook-bench-backup-"))
    try:
        bot, out = work / "bot", work / "out"
        out.mkdir()
        say(f"generating a {size_mb} MB bot folder in {bot}")
        sizes = make_bot_folder(bot, size_mb, say)
        results: list[dict[str, Any]] = []
        for i in range(1, rounds + 1):
            row: dict[str, Any] = {"round": i}
            order = ["tar", "ours"] if i % 2 else ["ours", "tar"]
            for which in order:
                if which == "tar":
                    ref = out / "reference.tar.gz"
                    row["tar_s"] = run_tar(bot, ref)
                    row["tar_bytes"] = ref.stat().st_size
                    ref.unlink()
                    say(f"round {i}: tar -czf {row['tar_s']:.2f} s ({row['tar_bytes'] / 2**20:.0f} MB)")
                else:
                    result = create_backup(bot, out, exclude=[bot / "config" / "agent_key.json"], verify=False)
                    started = time.perf_counter()
                    verify_archive(result.path)
                    row["verify_s"] = time.perf_counter() - started
                    row["ours_s"], row["ours_bytes"] = result.write_seconds, result.archive_bytes
                    row["files"] = result.files
                    result.path.unlink()
                    say(f"round {i}: evidence backup {row['ours_s']:.2f} s ({row['ours_bytes'] / 2**20:.0f} MB), "
                        f"verification {row['verify_s']:.2f} s")
            results.append(row)
        return {"size_mb": size_mb, "sizes": sizes, "rounds": results}
    finally:
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- part 2: system failure -> trading stopped ------------------------------------------------------


class Monitor(threading.Thread):
    """Samples (t, bot PID gone, open non-protective orders, positions) until stopped."""

    def __init__(self, pid: int | None, exchange: str, account: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.exchange, self.account, self.t0 = pid, exchange, account, t0
        self.samples: list[tuple[float, bool, int, int]] = []
        self.done = threading.Event()

    def _gone(self) -> bool:
        if self.pid is None:
            return True
        try:
            if psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return True
        # The bench started this bot, so its exit leaves a zombie only we can reap (a real bot's parent is
        # its supervisor); reaping it lets a `runbook run` in another process see it gone, as it would.
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return True

    def run(self) -> None:
        with httpx.Client(base_url=self.exchange, timeout=5) as client:
            while not self.done.is_set():
                gone = self._gone()
                # Orders that could still trade: stop-losses / take-profits (reduce-only triggers) are kept on
                # purpose until their position is flat ([emergency] keep_protective_orders).
                orders = sum(1 for o in client.post("/info", json={"type": "frontendOpenOrders", "user": self.account})
                             .json() if not (o.get("reduceOnly") and o.get("isTrigger")))
                state = client.post("/info", json={"type": "clearinghouseState", "user": self.account}).json()
                self.samples.append((time.monotonic() - self.t0, gone, orders, len(state["assetPositions"])))
                time.sleep(POLL_SECONDS)

    def first_from_which(self, condition: Any) -> float | None:
        """The first sample time from which `condition` holds in every later sample."""
        found = None
        for sample in self.samples:
            if condition(sample):
                found = sample[0] if found is None else found
            else:
                found = None
        return found


def _prepare_round(stack: Stack, say: Progress) -> int:
    """Bot running and trading, plus a position and a resting order of the account; returns the bot's PID."""
    import eth_account
    from hyperliquid.exchange import Exchange

    from runbook import journal as j
    from runbook.journal import Journal
    from runbook.settings import load_settings
    from sandbox import manager
    from tasks.process import locate_bot

    settings = load_settings(stack.config)
    bot = settings.bots["sandbox"]
    journal = Journal(settings.journal_url)
    for incident in journal.incidents(open_only=True):  # each round is its own incident
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "benchmark round done")
    if locate_bot(bot) is None:
        manager.start_bot(stack.sandbox_dir)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(bot.health_url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the bot did not come up")
        time.sleep(0.1)
    time.sleep(1.0)  # let it connect to the exchange and trade a tick
    key = json.loads((stack.sandbox_dir / "bot" / "config" / "agent_key.json").read_text())["private_key"]
    account = bot.hyperliquid
    exchange = Exchange(eth_account.Account.from_key(key), account.api_url, account_address=account.account_address,
                        timeout=10)
    exchange.market_open("ETH", True, 0.01)
    exchange.order("SOL", True, 0.5, 90.0, {"limit": {"tif": "Gtc"}})
    found = locate_bot(bot)
    assert found is not None
    return found.pid


def measure_failure(stack: Stack, rounds: int, shell: bool, say: Progress) -> list[dict[str, Any]]:
    from flows.system_failure import system_failure
    from runbook.settings import load_settings

    account = load_settings(stack.config).bots["sandbox"].hyperliquid
    results = []
    for i in range(1, rounds + 1 + (1 if shell else 0)):
        how = "shell" if i > rounds else ("cold" if i == 1 else "warm")
        pid = _prepare_round(stack, say)
        t0 = time.monotonic()
        monitor = Monitor(pid, account.api_url, account.account_address, t0)
        monitor.start()
        if how == "shell":
            run = subprocess.run([RUNBOOK, "run", "system-failure", "--yes", "--config", str(stack.config)],
                                 capture_output=True, text=True, timeout=180)
            status = f"exit {run.returncode}"
        else:
            outcome = system_failure(config=str(stack.config), assume_yes=True)
            status = outcome.outcome
        total = time.monotonic() - t0
        time.sleep(0.3)
        monitor.done.set()
        monitor.join()
        row = {
            "round": i, "how": how, "status": status, "flow_s": total,
            "bot_gone_s": monitor.first_from_which(lambda s: s[1]),
            "orders_cleared_s": monitor.first_from_which(lambda s: s[2] == 0),
            "trading_stopped_s": monitor.first_from_which(lambda s: s[1] and s[2] == 0),
            "flat_s": monitor.first_from_which(lambda s: s[3] == 0),
            "samples": len(monitor.samples),
        }
        results.append(row)
        say(f"failure round {i} ({how}): trading stopped at {row['trading_stopped_s']} s "
            f"(bot gone {row['bot_gone_s']}, orders cleared {row['orders_cleared_s']}), flat at {row['flat_s']}, "
            f"flow {total:.2f} s, {status}")
    return results


# --- output -------------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def render(backup: dict[str, Any] | None, failure: list[dict[str, Any]] | None, info: dict[str, Any]) -> str:
    parts = [f"Machine: {describe_machine(info)}", ""]
    rows_out: list[dict[str, Any]] = []
    if backup:
        rounds = backup["rounds"]
        tar = statistics.median(r["tar_s"] for r in rounds)
        ours = statistics.median(r["ours_s"] for r in rounds)
        verify = statistics.median(r["verify_s"] for r in rounds)
        mb = sum(backup["sizes"].values()) / 2**20
        parts.append(f"Evidence backup of a {mb:.0f} MB bot folder ({backup['sizes']['logs'] / 2**20:.0f} MB log text, "
                     f"{backup['sizes']['data'] / 2**20:.0f} MB data: float series + opaque blobs), "
                     f"{len(rounds)} round(s), medians:")
        parts.append(table(["measure", "time", "throughput", "archive", "ratio vs tar -czf", "target"], [
            ["tar -czf logs/ data/ config/ (reference)", _s(tar), f"{mb / tar:.0f} MB/s",
             f"{statistics.median(r['tar_bytes'] for r in rounds) / 2**20:.0f} MB", "1.00x", "-"],
            ["evidence backup (hash + manifest + fsync)", _s(ours), f"{mb / ours:.0f} MB/s",
             f"{statistics.median(r['ours_bytes'] for r in rounds) / 2**20:.0f} MB", f"{ours / tar:.2f}x",
             "<= 1.00x: " + ("yes" if ours <= tar else "NO")],
            ["verification (read back vs manifest), apart", _s(verify), f"{mb / verify:.0f} MB/s", "-", f"{verify / tar:.2f}x", "-"],
            ["evidence backup + verification", _s(ours + verify), f"{mb / (ours + verify):.0f} MB/s", "-",
             f"{(ours + verify) / tar:.2f}x", "<= 1.00x: " + ("yes" if ours + verify <= tar else "NO")],
        ]))
        parts.append("")
        parts.append(table(["round", "tar -czf", "backup", "verify", "backup/tar", "(backup+verify)/tar"], [
            [r["round"], _s(r["tar_s"]), _s(r["ours_s"]), _s(r["verify_s"]), f"{r['ours_s'] / r['tar_s']:.2f}x",
             f"{(r['ours_s'] + r['verify_s']) / r['tar_s']:.2f}x"] for r in rounds]))
        parts.append("")
        if result_row is not None:
            rows_out += [result_row("evidence backup vs tar -czf (1 GB)", _s(ours), _s(tar), ours / tar, "<= 1.0x",
                                    ours <= tar),
                         result_row("evidence backup + verification vs tar -czf", _s(ours + verify), _s(tar),
                                    (ours + verify) / tar, "<= 1.0x", ours + verify <= tar)]
    if failure:
        warm = [r for r in failure if r["how"] == "warm"]
        stopped = [r["trading_stopped_s"] for r in warm if r["trading_stopped_s"] is not None]
        if stopped:
            median, worst = statistics.median(stopped), max(stopped)
            parts.append(f"System failure -> trading stopped (bot PID gone and no open order), target "
                         f"{TARGET_STOP_SECONDS:g} s; {len(warm)} warm round(s): median {median:.2f} s, worst {worst:.2f} s "
                         f"-> {'met' if worst <= TARGET_STOP_SECONDS else 'median only' if median <= TARGET_STOP_SECONDS else 'NOT met'}")
            if result_row is not None:
                met = True if worst <= TARGET_STOP_SECONDS else ("median only" if median <= TARGET_STOP_SECONDS else False)
                rows_out.append(result_row("system failure -> trading stopped (warm process)", _s(median),
                                           f"target {TARGET_STOP_SECONDS:g} s", None, f"<= {TARGET_STOP_SECONDS:g} s", met))
        parts.append(table(["round", "how", "bot PID gone", "orders cleared", "trading stopped", "account flat",
                            "flow returned", "outcome"], [
            [r["round"], r["how"], _s(r["bot_gone_s"]), _s(r["orders_cleared_s"]), _s(r["trading_stopped_s"]),
             _s(r["flat_s"]), _s(r["flow_s"]), r["status"]] for r in failure]))
        parts.append("")
        parts.append("Times from t0 = the flow called (warm: this process already ran a flow; cold: its first flow "
                     "run; shell: `runbook run system-failure --yes` spawned, imports included).")
    if write_results is not None and rows_out:
        write_results("backup", rows_out)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1, help="backup rounds (tar and ours each; order alternates)")
    parser.add_argument("--failure-rounds", type=int, default=4, help="system-failure rounds in this process")
    parser.add_argument("--no-shell", action="store_true", help="skip the `runbook run` round")
    parser.add_argument("--skip-backup", action="store_true")
    parser.add_argument("--skip-failure", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    sigterm_as_interrupt()
    say = Progress()
    info = machine()
    backup = failure = None
    # The stack first: Prefect reads PREFECT_API_URL when it is imported, and part 1 imports it.
    stack = None if args.skip_failure else Stack(say, keep=args.keep)
    try:
        if stack is not None:
            stack.start(startup_seconds=0.5)
        if not args.skip_backup:
            backup = measure_backup(args.size_mb, args.rounds, say, args.keep)
        if stack is not None:
            failure = measure_failure(stack, args.failure_rounds, not args.no_shell, say)
    finally:
        if stack is not None:
            stack.close()
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(dump_json({"machine": info, "backup": backup, "failure": failure}))
    else:
        print(render(backup, failure, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
