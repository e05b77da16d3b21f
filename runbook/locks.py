"""One remediation acts on a bot at a time: a Prefect global concurrency limit per bot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency


def lock_name(bot: str) -> str:
    return f"remediate-{bot}"


@contextmanager
def bot_lock(bot: str, timeout_seconds: float, lease_seconds: float = 60.0) -> Iterator[None]:
    """Hold the bot's slot; raises TimeoutError if another remediation keeps it past the timeout.

    The limit is created on first use (strict mode refuses a limit that does not exist, which would
    otherwise silently mean "no limit").
    """
    name = lock_name(bot)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, lease_duration=lease_seconds, strict=True):
        yield
