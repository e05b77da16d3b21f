"""Reading the result of a submitted read: a failed read is a finding for the report, not a crash."""

from __future__ import annotations

from typing import Any

from prefect.futures import PrefectFuture

from tasks.botconfig import BotConfigError
from tasks.hyperliquid import HyperliquidError
from tasks.process import ProcessError


def settle(future: PrefectFuture[Any]) -> tuple[Any, str | None]:
    """A submitted task's result, or None and a one-line reason."""
    try:
        return future.result(), None
    except (HyperliquidError, BotConfigError, ProcessError) as error:  # their messages are already clear
        return None, str(error)
    except Exception as error:  # noqa: BLE001 - any other failure is reported, not raised
        return None, f"{type(error).__name__}: {error}"
