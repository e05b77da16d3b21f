"""Read the bot's JSON-lines logs the way the runbook does, without trusting them to be well formed.

`tail` reads from the end of the file (never the whole file); `scan` reads it in 1 MB blocks, finds
the pattern in a whole block at a time and parses only the lines that contain it (constant memory;
about three times `grep -c`'s time, bench/logscan.py). A line that is not JSON, not UTF-8 or absurdly
long is kept as raw text and counted, never an exception.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import stringzilla as sz
from prefect import task

from tasks import NO_CACHE_POLICY

try:  # Prefect's JSON library; the standard one if it is ever gone
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = json.loads

MAX_LINE_CHARS = 2000  # what we keep of one line in a report
_BLOCK = 64 * 1024


@dataclass
class LogLine:
    raw: str
    record: dict[str, Any] | None

    @property
    def message(self) -> str:
        if self.record is not None and isinstance(self.record.get("message"), str):
            return _clip(self.record["message"])  # a 10 MB message must not reach a report either
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
    return LogLine(raw=_clip(text), record=record)


def _clip(text: str) -> str:
    if len(text) > MAX_LINE_CHARS:
        return text[:MAX_LINE_CHARS] + f"… [{len(text) - MAX_LINE_CHARS} more chars]"
    return text


def tail_bytes(path: Path, lines: int, end: int | None = None) -> list[bytes]:
    """The last `lines` lines of a file (of its first `end` bytes), read backwards in blocks from there."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell() if end is None else min(end, handle.tell())
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


def unreadable(path: Path, error: OSError) -> str:
    """What to tell a person about a log that cannot be read (a finding, not an exception)."""
    if isinstance(error, FileNotFoundError):
        return f"{path} does not exist"
    return f"cannot read {path}: {error.strerror}"


@dataclass
class LogTail:
    path: str
    lines: list[LogLine] = field(default_factory=list)
    malformed: int = 0
    error: str | None = None

    def messages(self) -> list[str]:
        return [line.message for line in self.lines]


@task(name="read recent log lines", cache_policy=NO_CACHE_POLICY)
def tail_log(path: Path, lines: int = 100, end: int | None = None) -> LogTail:
    """Runbook: `tail -100 logs/trading_bot.log | jq '.message'` (up to byte `end`: the log as it was
    then, when a restarted bot is already writing after it)."""
    result = LogTail(path=str(path))
    try:
        raw = tail_bytes(path, lines, end)
    except OSError as error:
        result.error = unreadable(path, error)
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
def scan_log(path: Path, pattern: str = "error", keep_last: int = 10, top: int = 5,
             end: int | None = None) -> PatternScan:
    """Runbook: `grep -i error logs/trading_bot_errors.log`, with the messages grouped and counted
    (its first `end` bytes only, given `end`).

    Case-insensitive (ASCII, like `grep -i` in the C locale) literal match, line by line. Fast on big
    logs: the file is read in large blocks, the pattern is found in a whole block at once, and only the
    lines that contain it are decoded and parsed.
    """
    result = PatternScan(path=str(path), pattern=pattern)
    needle = pattern.encode().lower()
    exact: Counter[str] = Counter()  # messages as they are; folded into `groups` in batches
    groups: Counter[str] = Counter()
    last: deque[str] = deque(maxlen=max(keep_last, 0))

    def fold() -> None:
        # Same result as folding each match as it comes: first occurrences keep the same order.
        for message, count in exact.items():
            groups[_VARYING.sub("#", message)[:200]] += count
        exact.clear()

    try:
        with open(path, "rb", buffering=0 if end is not None else -1) as handle:
            reader = handle if end is None else io.BufferedReader(_UpTo(handle, end))
            for raw in _matching_lines(reader, needle, result):
                message, is_record = _message_of(raw)
                result.matches += 1
                if not is_record:
                    result.malformed += 1
                exact[message] += 1
                last.append(message)
                if len(exact) >= _FOLD_BATCH:
                    fold()
    except OSError as error:
        result.error = unreadable(path, error)
    fold()
    result.top_messages = groups.most_common(top)
    result.last_matches = list(last)
    return result


class _UpTo(io.RawIOBase):
    """A file read only up to byte `end`."""

    def __init__(self, handle: Any, end: int) -> None:
        self.handle, self.left = handle, max(0, end)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[:self.left]
        count = self.handle.readinto(view) if len(view) else 0
        self.left -= count
        return count


def log_ends(paths: list[Path]) -> dict[str, int]:
    """How long each log is now (absent: 0): evidence read later stops there, so it shows the failure
    even when a restarted bot has written since."""
    ends = {}
    for path in paths:
        try:
            ends[str(path)] = path.stat().st_size
        except OSError:
            ends[str(path)] = 0
    return ends


def _message_of(raw: bytes) -> tuple[str, bool]:
    """parse_line(raw).message and whether the line is a JSON object, faster: orjson (Prefect's own JSON
    library) parses, and the standard parser decides whatever orjson refuses (NaN, lone surrogates), so
    the answer is the same."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    if text.startswith("{"):
        try:
            value = _fast_loads(text)
        except ValueError:
            try:
                value = json.loads(text)
            except ValueError:
                value = None
        if isinstance(value, dict):
            message = value.get("message")
            return _clip(message if isinstance(message, str) else text), True
    return _clip(text), False


_LOWER = bytes(range(256)).lower()  # ASCII case folding, like grep -i in the C locale
_SCAN_BLOCK = 1 << 20  # big enough that the per-block work vanishes, small enough to keep memory flat
_FOLD_BATCH = 4096


def _matching_lines(handle: BinaryIO, needle: bytes, counts: PatternScan) -> Iterator[bytes]:
    """The lines containing `needle` (lower case) in any ASCII case, each with its newline; counts every
    line read into `counts.lines_read` as it goes."""
    if b"\n" in needle:  # a pattern spanning a line break: only the slow, plain line-by-line way is exact
        for raw in handle:
            counts.lines_read += 1
            if needle in raw.lower():
                yield raw
        return
    caseless = needle != needle.upper()  # no letters in the pattern: no case to fold
    folded = bytearray(_SCAN_BLOCK)
    for data, begin, end in _whole_lines(handle):
        # stringzilla's SIMD count, fold and find: one vectorised pass each, as grep makes (CPython's
        # own are byte-at-a-time loops, 3-4x slower over a big log).
        counts.lines_read += sz.count(data, b"\n", begin, end)
        if not data.endswith(b"\n", begin, end):
            counts.lines_read += 1  # the last line of the file, without its newline
        if caseless:
            if len(folded) < end - begin:
                folded = bytearray(end - begin)
            sz.translate(data, _LOWER, start=begin, end=end, out=memoryview(folded)[:end - begin])
            text, shift = folded, begin  # text[i] is data[i + shift]
        else:
            text, shift = data, 0
        at = sz.find(text, needle, begin - shift, end - shift) + shift
        while begin <= at < end:
            start = data.rfind(b"\n", begin, at) + 1 or begin
            stop = data.find(b"\n", at, end)
            stop = end if stop == -1 else stop + 1
            yield bytes(data[start:stop])
            if stop >= end:
                break
            found = sz.find(text, needle, stop - shift, end - shift)
            at = -1 if found < 0 else found + shift


def _whole_lines(handle: BinaryIO) -> Iterator[tuple[bytes | bytearray, int, int]]:
    """The file as (data, begin, end): data[begin:end] is whole lines (the last one may lack its newline
    at the end of the file). `data` is reused: use it before asking for the next. A line longer than a
    block arrives whole, joined from its pieces."""
    buffer = bytearray(_SCAN_BLOCK)  # one buffer for the whole file: no allocation per block
    pending: list[bytes | bytearray] = []  # the start of a line that continues in the next block
    while size := handle.readinto(buffer):
        block = buffer if size == len(buffer) else buffer[:size]
        first = block.find(b"\n") + 1
        if not first:
            pending.append(bytes(block))
            continue
        if pending:
            pending.append(block[:first])  # (a slice is a copy)
            line = b"".join(pending)
            pending = []
            yield line, 0, len(line)
        else:
            first = 0
        last = block.rfind(b"\n") + 1
        if first < last:
            yield block, first, last
        if last < size:
            pending.append(block[last:])
    if pending:
        tail = b"".join(pending)
        yield tail, 0, len(tail)


# ----------------------------------------------------------------------------------------------
# recent lines: what the log says about the last few minutes (websocket, rate limits, API calls, auth)

RECENT_MAX_LINES = 20000  # how far back from the end a "recent" read goes at most


def _when(line: LogLine) -> datetime | None:
    stamp = line.timestamp
    if stamp is None:
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def recent_lines(path: Path, since: datetime,
                 max_lines: int = RECENT_MAX_LINES) -> tuple[list[LogLine], datetime | None]:
    """Lines stamped at or after `since` among the last `max_lines`, and the oldest stamp read.

    Undated lines are skipped (they cannot be placed in the window). Raises OSError like `open`.
    """
    lines = [parse_line(chunk) for chunk in tail_bytes(path, max_lines)]
    dated = [(moment, line) for line in lines if (moment := _when(line)) is not None]
    oldest = dated[0][0] if dated else None
    return [line for moment, line in dated if moment >= since], oldest


@dataclass
class RecentMatches:
    """Lines matching a pattern within a recent window: how many, how often, which, when."""

    path: str
    pattern: str
    since: datetime
    matches: int = 0
    per_minute: float = 0.0
    # The named group `endpoint` (or the first group) of the pattern, counted: what the lines are about.
    groups: list[tuple[str, int]] = field(default_factory=list)
    last: list[tuple[str, str]] = field(default_factory=list)  # (timestamp, message), oldest first
    first_at: datetime | None = None
    last_at: datetime | None = None
    error: str | None = None


@task(name="count recent log lines", cache_policy=NO_CACHE_POLICY)
def recent_matches(path: Path, pattern: str, since: datetime, keep_last: int = 10) -> RecentMatches:
    """Runbook `grep "rate limit" logs/trading_bot.log`, `grep "API CALL" ... | tail -20`, `grep "auth"
    logs/trading_bot_errors.log | tail -10` — restricted to the lines stamped since `since`, with a rate."""
    result = RecentMatches(path=str(path), pattern=pattern, since=since)
    needle = re.compile(pattern, re.IGNORECASE)
    try:
        lines, oldest = recent_lines(path, since)
    except OSError as error:
        result.error = unreadable(path, error)
        return result
    groups: Counter[str] = Counter()
    hits: list[tuple[datetime, str]] = []
    for line in lines:
        found = needle.search(line.message)
        if found is None:
            continue
        named = found.groupdict().get("endpoint") or (found.group(1) if found.re.groups else None)
        if named:
            groups[named] += 1
        hits.append((_when(line) or since, line.message))
    result.matches = len(hits)
    # The rate is over the window the log covers: a log younger than the window covers less of it.
    start = max(since, oldest) if oldest else since
    minutes = max((datetime.now(UTC) - start).total_seconds() / 60, 1 / 60)
    result.per_minute = round(result.matches / minutes, 1)
    result.groups = groups.most_common(10)
    result.last = [(moment.isoformat(timespec="seconds"), message) for moment, message in hits[-keep_last:]]
    if hits:
        result.first_at, result.last_at = hits[0][0], hits[-1][0]
    return result


@dataclass
class ReconnectHistory:
    """The websocket lines of the log: reconnect attempts, their spacing, and whether they back off."""

    path: str
    lines: list[tuple[str, str]] = field(default_factory=list)  # the last websocket lines (timestamp, message)
    # The attempts of the latest outage (since the last disconnect line): (when, attempt number, delay s).
    attempts: list[tuple[datetime, int | None, float | None]] = field(default_factory=list)
    outages: int = 0  # disconnect lines in the window
    last_disconnect: datetime | None = None
    last_connect: datetime | None = None
    error: str | None = None

    @property
    def spacing(self) -> list[float]:
        """Seconds between consecutive reconnect attempts."""
        times = [when for when, _, _ in self.attempts]
        return [round((b - a).total_seconds(), 2) for a, b in zip(times, times[1:])]

    @property
    def backoff(self) -> bool | None:
        """True when the waits grow (the delays the lines announce, else their spacing); None when too few."""
        delays = [delay for _, _, delay in self.attempts if delay is not None]
        waits = delays if delays and len(delays) == len(self.attempts) else self.spacing
        if len(waits) < 2:
            return None
        return all(b >= a * 0.9 for a, b in zip(waits, waits[1:])) and waits[-1] > waits[0]

    @property
    def reconnecting(self) -> bool:
        """Attempts after the last disconnect and no connect since: the bot is still trying."""
        if not self.attempts or self.last_disconnect is None:
            return False
        after = self.attempts[-1][0] >= self.last_disconnect
        return after and (self.last_connect is None or self.last_connect < self.last_disconnect)

    def summary(self) -> str:
        if self.error:
            return self.error
        outages = f"{self.outages} disconnects in the window; " if self.outages > 1 else ""
        if not self.attempts:
            return f"{outages}no reconnect attempts in the log since the last disconnect"
        backoff = {True: "backing off (waits grow)", False: "NOT backing off (waits do not grow)",
                   None: "too few attempts to judge backoff"}[self.backoff]
        spacing = ", ".join(f"{s:g}" for s in self.spacing[-8:])
        return f"{outages}{len(self.attempts)} reconnect attempts; spacing (s): {spacing or '-'}; {backoff}"


@task(name="read websocket log lines", cache_policy=NO_CACHE_POLICY)
def reconnect_history(path: Path, since: datetime, websocket_pattern: str, reconnect_pattern: str,
                      keep_last: int = 20) -> ReconnectHistory:
    """Runbook `grep websocket logs/trading_bot.log | tail -20`: the lines, plus the reconnect attempts
    since `since` (the pattern's `attempt` and `delay` groups when it has them) and their spacing."""
    result = ReconnectHistory(path=str(path))
    websocket = re.compile(websocket_pattern, re.IGNORECASE)
    attempt = re.compile(reconnect_pattern, re.IGNORECASE)
    try:
        lines, _ = recent_lines(path, since)
    except OSError as error:
        result.error = unreadable(path, error)
        return result
    for line in lines:
        message = line.message
        if not websocket.search(message):
            continue
        when = _when(line)
        assert when is not None  # recent_lines keeps dated lines only
        result.lines.append((when.isoformat(timespec="seconds"), message))
        found = attempt.search(message)
        lowered = message.lower()
        if found is not None:
            groups = found.groupdict()
            number = int(groups["attempt"]) if groups.get("attempt") else None
            delay = float(groups["delay"]) if groups.get("delay") else None
            result.attempts.append((when, number, delay))
        elif "disconnect" in lowered or "lost" in lowered or "closed" in lowered:
            result.last_disconnect, result.attempts = when, []
            result.outages += 1
        elif "connected" in lowered or "reconnected" in lowered:
            result.last_connect = when
    result.lines = result.lines[-keep_last:]
    return result
