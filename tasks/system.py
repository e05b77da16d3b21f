"""Host resources: the runbook's `htop`, `df -h`, `free -h` and `ps aux --sort=-%mem`, as numbers."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from prefect import task

from tasks import NO_CACHE_POLICY


@dataclass(frozen=True)
class SystemResources:
    cpu_percent: float
    load_average: tuple[float, float, float]
    memory_percent: float
    memory_available_mb: float
    swap_percent: float
    disk_path: str
    disk_percent: float
    disk_free_gb: float

    def summary(self) -> str:
        return (
            f"CPU {self.cpu_percent:.0f}%, load {self.load_average[0]:.2f}, memory {self.memory_percent:.0f}% "
            f"({self.memory_available_mb:.0f} MB available), swap {self.swap_percent:.0f}%, "
            f"disk {self.disk_percent:.0f}% used at {self.disk_path} ({self.disk_free_gb:.1f} GB free)"
        )


@task(name="check system resources", cache_policy=NO_CACHE_POLICY)
def check_system(disk_path: Path) -> SystemResources:
    memory = psutil.virtual_memory()
    path = disk_path if disk_path.exists() else Path("/")
    disk = psutil.disk_usage(str(path))
    return SystemResources(
        cpu_percent=psutil.cpu_percent(interval=0.2),
        load_average=os.getloadavg(),
        memory_percent=memory.percent,
        memory_available_mb=round(memory.available / 2**20, 1),
        swap_percent=psutil.swap_memory().percent,
        disk_path=str(path),
        disk_percent=disk.percent,
        disk_free_gb=round(disk.free / 2**30, 2),
    )


# ----------------------------------------------------------------------------------------------
# memory: the runbook's `free -h`, `ps aux --sort=-%mem | head -10`, and the bot's size over time


@dataclass(frozen=True)
class MemoryState:
    total_mb: float
    used_mb: float
    available_mb: float
    percent: float
    swap_total_mb: float
    swap_used_mb: float
    swap_percent: float

    def summary(self) -> str:
        swap = (f"swap {self.swap_used_mb:.0f} of {self.swap_total_mb:.0f} MB ({self.swap_percent:.0f}%)"
                if self.swap_total_mb else "no swap")
        return (f"memory {self.percent:.1f}% used ({self.used_mb:.0f} of {self.total_mb:.0f} MB, "
                f"{self.available_mb:.0f} MB available), {swap}")


@task(name="check memory and swap", cache_policy=NO_CACHE_POLICY)
def check_memory() -> MemoryState:
    """Runbook `free -h`."""
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    mb = 2**20
    return MemoryState(
        total_mb=round(memory.total / mb, 1), used_mb=round((memory.total - memory.available) / mb, 1),
        available_mb=round(memory.available / mb, 1), percent=memory.percent,
        swap_total_mb=round(swap.total / mb, 1), swap_used_mb=round(swap.used / mb, 1), swap_percent=swap.percent,
    )


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    name: str
    rss_mb: float
    percent: float
    command: str  # shortened; may be redacted further when reported


@task(name="list top processes by memory", cache_policy=NO_CACHE_POLICY)
def top_processes(count: int = 10) -> list[ProcessMemory]:
    """Runbook `ps aux --sort=-%mem | head -10`: the largest processes by resident memory. Read-only."""
    total = psutil.virtual_memory().total
    found = []
    for proc in psutil.process_iter(["pid", "name", "memory_info", "cmdline"]):
        info = proc.info
        memory = info.get("memory_info")
        if memory is None:  # access denied or gone
            continue
        command = " ".join(info.get("cmdline") or []) or (info.get("name") or "?")
        found.append(ProcessMemory(pid=info["pid"], name=info.get("name") or "?", rss_mb=round(memory.rss / 2**20, 1),
                                   percent=round(100 * memory.rss / total, 2),
                                   command=command if len(command) <= 120 else command[:117] + "..."))
    return sorted(found, key=lambda p: p.rss_mb, reverse=True)[:count]


@dataclass
class RssTrend:
    """The bot's resident memory sampled a few times: growing (a leak) or not (a spike, or a plateau)."""

    pid: int
    samples: list[tuple[float, float]]  # (seconds since the first sample, RSS MB)
    leak_mb_per_minute: float
    error: str | None = None

    @property
    def slope_mb_per_minute(self) -> float | None:
        if len(self.samples) < 2:
            return None
        times, sizes = zip(*self.samples)
        if times[-1] - times[0] <= 0:
            return None
        return round(statistics.linear_regression(times, sizes).slope * 60, 1)

    @property
    def verdict(self) -> str:
        """leak (growing at least leak_mb_per_minute), spike (not growing: levelled off or receding), unknown."""
        slope = self.slope_mb_per_minute
        if slope is None:
            return "unknown"
        return "leak" if slope >= self.leak_mb_per_minute else "spike"

    def summary(self) -> str:
        if self.error and not self.samples:
            return f"RSS of PID {self.pid}: {self.error}"
        sizes = ", ".join(f"{mb:.0f}" for _, mb in self.samples)
        slope = self.slope_mb_per_minute
        trend = "n/a" if slope is None else f"{slope:+.0f} MB/min"
        meaning = {"leak": "growing steadily: a leak",
                   "spike": "not growing: a spike that levelled off (or its usual size), not a leak",
                   "unknown": "too few samples"}[self.verdict]
        return f"RSS of PID {self.pid} (MB): {sizes}; trend {trend} — {meaning}"


@task(name="sample the bot's memory", cache_policy=NO_CACHE_POLICY)
def sample_rss(pid: int, create_time: float, samples: int, interval_seconds: float,
               leak_mb_per_minute: float) -> RssTrend:
    """The bot's RSS `samples` times, `interval_seconds` apart (only while it is still that same process)."""
    trend = RssTrend(pid=pid, samples=[], leak_mb_per_minute=leak_mb_per_minute)
    started = time.monotonic()
    try:
        proc = psutil.Process(pid)
        if proc.create_time() != create_time:
            trend.error = "the PID now belongs to another process"
            return trend
        for index in range(samples):
            if index:
                time.sleep(interval_seconds)
            trend.samples.append((round(time.monotonic() - started, 2), round(proc.memory_info().rss / 2**20, 1)))
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        trend.error = "the process exited while being sampled"
    except psutil.AccessDenied:
        trend.error = "access denied"
    return trend
