"""Host resources: the runbook's `htop` and `df -h`, as numbers."""

from __future__ import annotations

import os
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
