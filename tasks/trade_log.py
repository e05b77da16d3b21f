"""The bot's `TRADE EXIT` log lines, parsed: what the bot says closed a position, and why (reason=stop_loss,
take_profit, ...). Streamed from the log file, constant memory; a line that does not parse is counted, not
fatal."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prefect import task

from tasks import NO_CACHE_POLICY
from tasks.logs import parse_line

_EXIT_RE = re.compile(
    r"TRADE EXIT (?P<coin>\S+) (?P<side>long|short) size=(?P<size>\S+) entry=(?P<entry>\S+) "
    r"exit=(?P<exit>\S+) pnl=(?P<pnl>\S+) reason=(?P<reason>\S+) (?P<result>WIN|LOSS)"
)


@dataclass
class LogExit:
    """One `TRADE EXIT` line of the bot's log."""

    at: datetime | None
    coin: str
    side: str
    size: float
    entry: float
    exit: float
    pnl: float
    reason: str
    result: str
    message: str


@dataclass
class LogExits:
    path: str
    exits: list[LogExit] = field(default_factory=list)
    unparsed: int = 0
    error: str | None = None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_exit(message: str, at: datetime | None) -> LogExit | None:
    match = _EXIT_RE.search(message)
    if match is None:
        return None
    try:
        return LogExit(at=at, coin=match["coin"], side=match["side"], size=float(match["size"]),
                       entry=float(match["entry"]), exit=float(match["exit"]), pnl=float(match["pnl"]),
                       reason=match["reason"], result=match["result"], message=message)
    except ValueError:
        return None


@task(name="read TRADE EXIT log lines", cache_policy=NO_CACHE_POLICY)
def read_trade_exits(path: Path, since: datetime) -> LogExits:
    """Runbook: `grep "TRADE EXIT" logs/trading_bot.log`, parsed, from `since` on (streamed, constant memory)."""
    result = LogExits(path=str(path))
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                if b"TRADE EXIT" not in raw:
                    continue
                line = parse_line(raw)
                at = _parse_time(line.timestamp)
                if at is not None and at < since:
                    continue
                parsed = parse_exit(line.message, at)
                if parsed is None:
                    result.unparsed += 1
                else:
                    result.exits.append(parsed)
    except FileNotFoundError:
        result.error = f"{path} does not exist"
    except OSError as error:
        result.error = f"cannot read {path}: {error.strerror}"
    return result
