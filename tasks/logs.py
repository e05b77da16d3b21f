"""Read the bot's JSON-lines logs the way the runbook does, without trusting them to be well formed.

`tail` reads from the end of the file (never the whole file); `scan` streams it line by line in
constant memory. A line that is not JSON, not UTF-8 or absurdly long is kept as raw text and counted,
never an exception.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task

from tasks import NO_CACHE_POLICY

MAX_LINE_CHARS = 2000  # what we keep of one line in a report
_BLOCK = 64 * 1024


@dataclass
class LogLine:
    raw: str
    record: dict[str, Any] | None

    @property
    def message(self) -> str:
        if self.record is not None and isinstance(self.record.get("message"), str):
            return self.record["message"]
        return self.raw

    @property
    def level(self) -> str | None:
        value = self.record.get("level") if self.record else None
        return value if isinstance(value, str) else None

    @property
    def timestamp(self) -> str | None:
        value = self.record.get("timestamp") if self.record else None
        return value if isinstance(value, str) else None


def parse_line(raw_bytes: bytes) -> LogLine:
    text = raw_bytes.decode("utf-8", errors="replace").rstrip("\r\n")
    record: dict[str, Any] | None = None
    if text.startswith("{"):
        try:
            value = json.loads(text)
            record = value if isinstance(value, dict) else None
        except ValueError:
            record = None
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + f"… [{len(text) - MAX_LINE_CHARS} more chars]"
    return LogLine(raw=text, record=record)


def tail_bytes(path: Path, lines: int) -> list[bytes]:
    """The last `lines` lines of a file, read backwards in blocks from its end."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        buffer = b""
        while position > 0 and buffer.count(b"\n") <= lines:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            buffer = handle.read(step) + buffer
    chunks = buffer.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    return chunks[-lines:] if lines else []


@dataclass
class LogTail:
    path: str
    lines: list[LogLine] = field(default_factory=list)
    malformed: int = 0
    error: str | None = None

    def messages(self) -> list[str]:
        return [line.message for line in self.lines]


@task(name="read recent log lines", cache_policy=NO_CACHE_POLICY)
def tail_log(path: Path, lines: int = 100) -> LogTail:
    """Runbook: `tail -100 logs/trading_bot.log | jq '.message'`."""
    result = LogTail(path=str(path))
    try:
        raw = tail_bytes(path, lines)
    except FileNotFoundError:
        result.error = f"{path} does not exist"
        return result
    except OSError as error:
        result.error = f"cannot read {path}: {error.strerror}"
        return result
    result.lines = [parse_line(chunk) for chunk in raw]
    result.malformed = sum(1 for line in result.lines if line.record is None)
    return result


@dataclass
class PatternScan:
    path: str
    pattern: str
    matches: int = 0
    lines_read: int = 0
    malformed: int = 0
    top_messages: list[tuple[str, int]] = field(default_factory=list)
    last_matches: list[str] = field(default_factory=list)
    error: str | None = None


# Numbers, hex ids and addresses vary between otherwise identical errors: fold them to group.
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+(\.\d+)?")


@task(name="scan log for error patterns", cache_policy=NO_CACHE_POLICY)
def scan_log(path: Path, pattern: str = "error", keep_last: int = 10, top: int = 5) -> PatternScan:
    """Runbook: `grep -i error logs/trading_bot_errors.log`, with the messages grouped and counted."""
    result = PatternScan(path=str(path), pattern=pattern)
    needle = re.compile(re.escape(pattern).encode(), re.IGNORECASE)
    groups: Counter[str] = Counter()
    last: list[str] = []
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                result.lines_read += 1
                if not needle.search(raw):
                    continue
                line = parse_line(raw)
                result.matches += 1
                if line.record is None:
                    result.malformed += 1
                groups[_VARYING.sub("#", line.message)[:200]] += 1
                last.append(line.message)
                if len(last) > keep_last:
                    last.pop(0)
    except FileNotFoundError:
        result.error = f"{path} does not exist"
    except OSError as error:
        result.error = f"cannot read {path}: {error.strerror}"
    result.top_messages = groups.most_common(top)
    result.last_matches = last
    return result
