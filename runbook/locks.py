"""One remediation acts on a bot at a time: a Prefect global concurrency limit per bot.

A run that waits for the lock does not wait blind: between short attempts it reads the journal, and when
the holder is paused for a person's approval it stops waiting and says so ("awaiting approval of X in run
Y until Z"), since what happens to the bot next is that person's call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

if TYPE_CHECKING:
    from runbook.journal import Journal

# How long one attempt waits before the journal is read again.
ATTEMPT_SECONDS = 2.0


class BotBusy(TimeoutError):
    """Another remediation holds the bot; the message says what it is doing when the journal knows."""


def lock_name(bot: str) -> str:
    return f"remediate-{bot}"


def awaiting_approval(journal: "Journal", bot: str) -> str | None:
    """"awaiting approval of X in run Y (until Z)" when a run on this bot is paused for a person."""
    from runbook.journal import _iso

    try:
        waiting = journal.waiting_approvals(bot=bot)
    except Exception:  # noqa: BLE001 - an unreadable journal only means we keep waiting
        return None
    if not waiting:
        return None
    first = waiting[0]
    return (f"a person is deciding: awaiting approval of '{first.action}' in run {first.flow_run_id}"
            + (f" (incident #{first.incident_id})" if first.incident_id else "")
            + f" until {_iso(first.deadline)}" + (f", {first.ui_url}" if first.ui_url else ""))


@contextmanager
def bot_lock(bot: str, timeout_seconds: float, lease_seconds: float = 60.0,
             journal: "Journal | None" = None) -> Iterator[None]:
    """Hold the bot's slot; raises BotBusy (a TimeoutError) if another remediation keeps it past the
    timeout, or at once, naming the run, when the holder waits for a person's approval (needs `journal`).

    The limit is created on first use (strict mode refuses a limit that does not exist, which would
    otherwise silently mean "no limit").
    """
    name = lock_name(bot)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    deadline = time.monotonic() + timeout_seconds
    with ExitStack() as stack:
        while True:
            remaining = deadline - time.monotonic()
            wait = remaining if journal is None else max(0.0, min(ATTEMPT_SECONDS, remaining))
            try:
                stack.enter_context(concurrency(name, occupy=1, timeout_seconds=wait, lease_duration=lease_seconds,
                                                strict=True))
                break
            except TimeoutError:
                if journal is not None:
                    deciding = awaiting_approval(journal, bot)
                    if deciding is not None:
                        raise BotBusy(f"another remediation holds bot {bot}: {deciding}") from None
                if time.monotonic() >= deadline:
                    raise BotBusy(f"another remediation held bot {bot} for over {timeout_seconds:g}s") from None
        yield
