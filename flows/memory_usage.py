"""🧠 Memory Usage >80% (RUNBOOK.md), as a flow.

Actions: "Check Memory Usage" (memory and swap, `free -h`), "Identify Memory Leaks" (the top processes by
resident memory, `ps aux --sort=-%mem`, and the bot's RSS sampled a few times: growing steadily is a leak,
not growing a spike), "Restart if Necessary" (above 90 % — `infra.memory_restart_percent` — with the bot
as the largest consumer, or the bot alone above `infra.memory_restart_bot_mb`: restart it through the
restart step every flow shares, under the restart policy and the storm guard).

Nothing else on the host is ever touched: when another process is the largest consumer the flow names it
and escalates; it only ever stops the bot's own verified PID.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from runbook import journal as j
from runbook.incident import IncidentRun, Outcome
from runbook.markdown import table
from tasks.futures import settle
from tasks.process import BotProcess, check_process, locate_bot
from tasks.restart import guarded_restart
from tasks.system import MemoryState, ProcessMemory, RssTrend, check_memory, sample_rss, top_processes

ALERT = "memory-usage"

# The runbook's Investigation and Prevention, as next steps for a person.
INVESTIGATE = ["check the bot for memory leaks (growth that never levels off)", "review data retention settings",
               "assess cache sizes"]


@dataclass
class Findings:
    memory: MemoryState
    top: list[ProcessMemory]
    process: BotProcess | None
    process_error: str | None
    trend: RssTrend | None

    @property
    def bot_mb(self) -> float | None:
        if self.trend is not None and self.trend.samples:
            return self.trend.samples[-1][1]
        return self.process.rss_mb if self.process else None

    @property
    def bot_is_largest(self) -> bool:
        return self.process is not None and bool(self.top) and self.top[0].pid == self.process.pid

    def largest(self) -> str:
        if not self.top:
            return "unknown"
        first = self.top[0]
        return f"PID {first.pid} ({first.name}, {first.rss_mb:.0f} MB)"


def look(run: IncidentRun) -> Findings:
    """Memory and swap, the largest processes and the bot's process, then the bot's RSS over a few samples."""
    infra = run.settings.infra
    memory = check_memory.submit()
    top = top_processes.submit(infra.memory_top_processes)
    process, error = settle(check_process.submit(run.bot))
    trend = None
    if process is not None:
        trend = sample_rss(process.pid, process.create_time, infra.memory_samples,
                           infra.memory_sample_interval_seconds, infra.memory_leak_mb_per_minute)
    return Findings(memory.result(), top.result(), process, error, trend)


def record(run: IncidentRun, seen: Findings) -> None:
    run.add_evidence("Memory and swap", seen.memory.summary())
    bot_pid = seen.process.pid if seen.process else None
    rows = [[p.pid, f"{p.rss_mb:,.0f}", f"{p.percent:.1f}", p.command, "← the bot" if p.pid == bot_pid else ""]
            for p in seen.top]
    if seen.process is not None and all(p.pid != bot_pid for p in seen.top):
        rows.append([bot_pid, f"{seen.bot_mb:,.0f}", f"{100 * seen.bot_mb / seen.memory.total_mb:.1f}",
                     " ".join(seen.process.cmdline)[:120], f"← the bot (not in the top {len(seen.top)})"])
    run.add_evidence("Top processes by resident memory", table(["PID", "RSS (MB)", "% of RAM", "command", ""], rows))
    run.add_evidence("The bot's memory over time", seen.trend.summary() if seen.trend else "the bot is not running")


def condition(run: IncidentRun, seen: Findings) -> tuple[bool, str]:
    """The alert's condition now: host memory above the threshold, or the bot above its own limit."""
    watch = run.settings.watch
    if seen.memory.percent > watch.memory_percent_threshold:
        return True, f"host memory at {seen.memory.percent:.1f}% (threshold {watch.memory_percent_threshold:g}%)"
    if watch.bot_memory_limit_mb and seen.bot_mb is not None and seen.bot_mb > watch.bot_memory_limit_mb:
        return True, f"the bot holds {seen.bot_mb:.0f} MB (limit {watch.bot_memory_limit_mb:g} MB)"
    bot = f", the bot {seen.bot_mb:.0f} MB" if seen.bot_mb is not None else ""
    return False, f"host memory at {seen.memory.percent:.1f}%{bot}"


def restart_warranted(run: IncidentRun, seen: Findings) -> tuple[bool, str]:
    """The runbook's "if memory usage >90%, consider restart", and the bot's own restart limit."""
    infra = run.settings.infra
    if seen.memory.percent >= infra.memory_restart_percent:
        return True, f"host memory {seen.memory.percent:.1f}% is at or above {infra.memory_restart_percent:g}%"
    if infra.memory_restart_bot_mb and seen.bot_mb is not None and seen.bot_mb >= infra.memory_restart_bot_mb:
        return True, f"the bot's {seen.bot_mb:.0f} MB is at or above {infra.memory_restart_bot_mb:g} MB"
    limit = f" and the bot's {infra.memory_restart_bot_mb:g} MB" if infra.memory_restart_bot_mb else ""
    return False, f"below the restart thresholds ({infra.memory_restart_percent:g}% of host memory{limit})"


@flow(name="memory-usage",
      description="Runbook: Memory Usage >80% — memory and swap, top processes, the bot's RSS trend (leak or "
                  "spike); above 90% with the bot as the largest consumer, restart it under the action policy.")
def memory_usage(bot: str | None = None, config: str | None = None, incident_id: int | None = None) -> Outcome:
    """Find what holds the memory and, when the runbook says so, restart the bot (never anything else).

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
    """
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "System memory usage exceeds 80%", ["check memory usage", "identify memory leaks"])
    return run.under_bot_lock(lambda: _respond(run))


def _respond(run: IncidentRun) -> Outcome:
    run.start_response()
    seen = look(run)
    record(run, seen)
    high, how = condition(run, seen)
    if not high:
        return run.resolve(j.FALSE_POSITIVE, f"memory is below the alert thresholds now ({how}); nothing touched.")
    trend = f"; the bot's RSS {seen.trend.summary().split(' — ')[-1]}" if seen.trend else ""
    run.note(f"{how}; largest process {seen.largest()}{trend}")
    warranted, why = restart_warranted(run, seen)
    if not warranted:
        return run.escalate("L1", f"Memory high: {how}; {why}, so nothing is restarted. Largest process "
                            f"{seen.largest()}{trend}.", INVESTIGATE)
    if seen.process is None or not seen.bot_is_largest:
        whose = f"the bot's process is not found ({seen.process_error or 'not running'})" if seen.process is None else \
            f"the largest consumer is {seen.largest()}, not the bot (PID {seen.process.pid}, {seen.bot_mb:.0f} MB)"
        return run.escalate("L1", f"Memory high: {how}; {why}, but {whose}. The runbook restarts only the bot and "
                            "never touches another process.",
                            [f"look at {seen.largest()}: whose is it, does it leak?"] + INVESTIGATE)

    run.tell("INVESTIGATING", f"{how}; the bot is the largest process{trend}", ["restart the bot"])
    before = seen.bot_mb
    result = guarded_restart(run, seen.process, f"memory high ({how})",
                             f"restart the bot (verified PID {seen.process.pid}, {before:.0f} MB, the largest "
                             f"process) to free its memory")
    if isinstance(result, Outcome):
        return result
    after = locate_bot(run.bot)
    memory = check_memory()
    freed = f"the bot now holds {after.rss_mb:.0f} MB (was {before:.0f} MB)" if after else "the bot restarted"
    leak = (" Its RSS was growing steadily before the restart: a leak, which will grow back — "
            "investigate it." if seen.trend and seen.trend.verdict == "leak" else "")
    return run.resolve(j.AUTO_RESOLVED, f"{how}; {why} and the bot was the largest process, so it was restarted "
                       f"({result}); {freed}, host memory {memory.percent:.1f}%.{leak}")
