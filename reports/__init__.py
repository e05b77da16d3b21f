"""Analytics (pandas) and PDF rendering (reportlab): trades.py, daily.py, weekly.py, pdf.py.

`ReportOutcome` is what the scheduled report flows end with (no incident: a report is not an alert that
someone answers); `runbook run` prints it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million small objects are built (parsing JSON, fetching rows).

    They are all alive until the frame is built, so every collection would scan them again for nothing: with
    the collector on, parsing 1 000 000 records takes several times 10x what 100 000 do; paused, it is linear.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class ReportOutcome:
    report: str
    summary: str
    pdfs: list[str] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    slack: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    flow_run_id: str | None = None
    ui_url: str | None = None

    @property
    def problem_remains(self) -> bool:
        return bool(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        lines = [f"{self.report}: {self.summary}"]
        lines += [f"  PDF: {path}" for path in self.pdfs]
        lines += [f"  Slack: {'posted to ' + s['channel'] if s.get('delivered') else 'not posted: ' + str(s.get('error'))}"
                  for s in self.slack]
        lines += [f"  FAILED: {failure}" for failure in self.failures]
        if self.ui_url:
            lines.append(f"  flow run: {self.ui_url}")
        return "\n".join(lines)
