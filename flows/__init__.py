"""One module per runbook section; `FLOWS` maps each alert key to the flow that answers it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def registry() -> dict[str, Callable[..., Any]]:
    """Imported lazily: loading every flow costs Prefect import time a CLI call should not pay twice."""
    from flows.crash_recovery import crash_recovery

    return {"crash-recovery": crash_recovery}
