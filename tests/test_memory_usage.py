"""Memory Usage end to end: the real sandbox bot growing its memory, real processes, a real Prefect server.

How this stays off the machine's real limits (24 GiB, no swap wanted): the host's memory is never pushed
anywhere near 80/90 %. Instead the thresholds are set by configuration to the bot's own size —
`watch.bot_memory_limit_mb` (the alert's condition: the bot alone above it) and
`infra.memory_restart_bot_mb` (the restart threshold) — while the host-percentage thresholds are set to
99.9 % so the host's state cannot decide anything. The sandbox bot's `memory` fault then grows it by a
few hundred MB (`max_mb`), so the flow's whole decision — condition, restart threshold, "the bot is the
largest process", the policy, the restart — runs on real processes with real RSS, at a cost of about
0.8 GB at most (bot and decoy together) for a few seconds. Decoy processes (one holding 450 MB, one whose
command line looks like the bot's) show that nothing but the bot's verified PID is ever touched.

One sandbox serves the module; each test clears the fault (the bot frees its ballast) afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.process import locate_bot
from tasks.system import RssTrend
from conftest import running_sandbox

ALERT_MB = 80  # watch.bot_memory_limit_mb: the alert's condition (the idle bot holds ~60 MB)
RESTART_MB = 300  # infra.memory_restart_bot_mb: the restart threshold


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def bot_settings(directory: Path):
    return load_settings(config_of(directory)).bots["sandbox"]


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def bot_rss(directory: Path) -> float:
    found = locate_bot(bot_settings(directory))
    return psutil.Process(found.pid).memory_info().rss / 2**20 if found else 0.0


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def run_flow(directory: Path):
    from flows.memory_usage import memory_usage

    return memory_usage(config=str(config_of(directory)))


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("memory") / "sandbox") as directory:
        yield directory


@pytest.fixture
def shared(module_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RUNBOOK_WATCH__MEMORY_PERCENT_THRESHOLD", "99.9")
    monkeypatch.setenv("RUNBOOK_WATCH__BOT_MEMORY_LIMIT_MB", str(ALERT_MB))
    monkeypatch.setenv("RUNBOOK_INFRA__MEMORY_RESTART_PERCENT", "99.9")
    monkeypatch.setenv("RUNBOOK_INFRA__MEMORY_RESTART_BOT_MB", str(RESTART_MB))
    monkeypatch.setenv("RUNBOOK_INFRA__MEMORY_SAMPLES", "3")
    monkeypatch.setenv("RUNBOOK_INFRA__MEMORY_SAMPLE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("RUNBOOK_RECOVERY__STOP_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS", "20")
    yield module_sandbox
    manager.fault(module_sandbox, "clear")
    wait_for(lambda: bot_rss(module_sandbox) < ALERT_MB, 15, "the bot to free its memory")
    journal = journal_of(module_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


@pytest.fixture
def decoys(tmp_path: Path) -> Iterator[Callable[[int, str], psutil.Process]]:
    """Processes that are not the bot; each must still be running after the flow."""
    started: list[subprocess.Popen] = []

    def start(hold_mb: int, label: str) -> psutil.Process:
        # The ballast is written, so it is resident (RSS), not just reserved.
        code = f"import sys, time; ballast = b'\\x01' * ({hold_mb} << 20); print('ready', flush=True); time.sleep(120)"
        proc = subprocess.Popen([sys.executable, "-c", code, "sandbox.bot", "--home", str(tmp_path / label)],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return psutil.Process(proc.pid)

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def test_small_bot_is_a_false_positive(shared: Path) -> None:
    pid = locate_bot(bot_settings(shared)).pid
    outcome = run_flow(shared)
    assert outcome.outcome == j.FALSE_POSITIVE and outcome.status == j.RESOLVED, outcome.summary
    assert journal_of(shared).get(outcome.incident_id).actions == []
    assert locate_bot(bot_settings(shared)).pid == pid
    report = Path(outcome.report_path).read_text()
    assert "Top processes by resident memory" in report and "← the bot" in report and "Memory and swap" in report


def test_growing_bot_below_the_restart_threshold_is_not_restarted(shared: Path) -> None:
    pid = locate_bot(bot_settings(shared)).pid
    manager.fault(shared, "memory", {"mb_per_second": 20, "max_mb": 200})  # ~60 -> ~260 MB over 10 s
    wait_for(lambda: bot_rss(shared) > ALERT_MB + 10, 15, "the bot to pass the alert limit")
    outcome = run_flow(shared)
    assert outcome.status == j.ESCALATED, outcome.summary
    assert f"below the restart thresholds (99.9% of host memory and the bot's {RESTART_MB} MB)" in outcome.summary
    assert "growing steadily: a leak" in outcome.summary  # still growing while sampled
    assert journal_of(shared).get(outcome.incident_id).actions == []
    assert locate_bot(bot_settings(shared)).pid == pid


def test_bot_above_the_threshold_but_not_the_largest_is_not_restarted(shared: Path, decoys) -> None:
    hog = decoys(RESTART_MB + 150, "hog")  # larger than the bot will be (~60 MB + its 300 MB of ballast)
    pid = locate_bot(bot_settings(shared)).pid
    manager.fault(shared, "memory", {"mb_per_second": RESTART_MB // 2, "max_mb": RESTART_MB})  # two steps
    wait_for(lambda: bot_rss(shared) > RESTART_MB + 10, 15, "the bot to pass the restart threshold")
    outcome = run_flow(shared)
    assert outcome.status == j.ESCALATED, outcome.summary
    assert f"the largest consumer is PID {hog.pid}" in outcome.summary and "not the bot" in outcome.summary
    assert journal_of(shared).get(outcome.incident_id).actions == []
    assert locate_bot(bot_settings(shared)).pid == pid
    assert hog.is_running() and hog.status() != psutil.STATUS_ZOMBIE


def test_largest_bot_above_the_threshold_is_restarted_and_nothing_else(shared: Path, decoys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lookalike = decoys(1, "other-bot")  # "sandbox.bot --home ..." in its command line, like the bot's
    before = locate_bot(bot_settings(shared))
    # Large enough to be the largest process on the machine (this test process and Prefect's server
    # hold ~150-250 MB each).
    manager.fault(shared, "memory", {"mb_per_second": 225, "max_mb": 450})  # two steps
    wait_for(lambda: bot_rss(shared) > 450, 15, "the bot to grow past every other process")

    monkeypatch.setenv("RUNBOOK_POLICY__RESTART", "dry-run")  # first: the policy says what it would do
    dry = run_flow(shared)
    assert dry.status == j.ESCALATED, dry.summary
    [action] = journal_of(shared).get(dry.incident_id).actions
    assert (action.step, action.ok, action.dry_run) == ("restart", False, True)
    assert f"dry-run: would restart the bot (verified PID {before.pid}" in action.description
    assert locate_bot(bot_settings(shared)).pid == before.pid

    journal_of(shared).resolve(dry.incident_id, j.RESOLVED_MANUALLY, "seen; let the runbook act")
    monkeypatch.setenv("RUNBOOK_POLICY__RESTART", "auto")
    outcome = run_flow(shared)
    assert outcome.outcome == j.AUTO_RESOLVED and outcome.status == j.RESOLVED, outcome.summary
    incident = journal_of(shared).get(outcome.incident_id)
    assert [a.step for a in incident.actions] == ["stop", "restart", "verify"]
    assert f"PID {before.pid}" in incident.actions[0].description
    after = locate_bot(bot_settings(shared))
    assert after is not None and after.pid != before.pid
    assert not psutil.pid_exists(before.pid) or psutil.Process(before.pid).status() == psutil.STATUS_ZOMBIE
    assert lookalike.is_running() and lookalike.status() != psutil.STATUS_ZOMBIE
    assert "the bot was the largest process, so it was restarted" in outcome.summary
    assert "the bot now holds" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert f"| {before.pid} |" in report and "← the bot" in report


def test_leak_and_spike_are_told_apart() -> None:
    growing = RssTrend(pid=1, samples=[(0.0, 100.0), (1.0, 101.0), (2.0, 102.0)], leak_mb_per_minute=10)
    flat = RssTrend(pid=1, samples=[(0.0, 500.0), (1.0, 500.5), (2.0, 499.0)], leak_mb_per_minute=10)
    falling = RssTrend(pid=1, samples=[(0.0, 500.0), (1.0, 450.0)], leak_mb_per_minute=10)
    assert growing.slope_mb_per_minute == pytest.approx(60.0) and growing.verdict == "leak"
    assert flat.verdict == "spike" and falling.verdict == "spike"
    assert RssTrend(pid=1, samples=[(0.0, 1.0)], leak_mb_per_minute=10).verdict == "unknown"
