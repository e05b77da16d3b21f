"""Log reading: tail from the end, pattern scan in one pass, bad lines kept and counted."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.logs import MAX_LINE_CHARS, scan_log, tail_bytes, tail_log


def write_log(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def record(message: str, level: str = "INFO") -> bytes:
    return json.dumps({"timestamp": "2026-11-25T00:00:00Z", "level": level, "message": message}).encode()


def test_tail_reads_last_lines_across_blocks(tmp_path: Path) -> None:
    lines = [record(f"line {i} " + "x" * 500) for i in range(1000)]
    path = write_log(tmp_path / "a.log", lines)
    got = tail_log.fn(path, 100)
    assert len(got.lines) == 100
    assert got.lines[0].message.startswith("line 900 ") and got.lines[-1].message.startswith("line 999 ")
    assert got.malformed == 0
    assert tail_bytes(path, 0) == []


def test_tail_keeps_bad_lines_as_text(tmp_path: Path) -> None:
    path = write_log(tmp_path / "b.log", [
        record("ok"), b"not json at all", b'{"message": "truncated', b"\xff\xfe binary \x00",
        record("x" * (MAX_LINE_CHARS * 3)), b"[1, 2]",
    ])
    got = tail_log.fn(path, 10)
    assert [line.record is not None for line in got.lines] == [True, False, False, False, True, False]
    assert got.malformed == 4
    assert got.lines[1].message == "not json at all"
    assert "\ufffd" in got.lines[3].message  # undecodable bytes replaced, not an exception
    assert len(got.lines[4].raw) < MAX_LINE_CHARS + 50


def test_missing_and_unreadable_files_are_findings(tmp_path: Path) -> None:
    assert "does not exist" in tail_log.fn(tmp_path / "nope.log", 10).error
    assert "does not exist" in scan_log.fn(tmp_path / "nope.log").error
    folder = tmp_path / "dir.log"
    folder.mkdir()
    assert tail_log.fn(folder, 10).error.startswith("cannot read")


def test_scan_groups_errors_ignoring_numbers(tmp_path: Path) -> None:
    path = write_log(tmp_path / "err.log", [
        record("API error: timeout after 5012ms", "ERROR"),
        record("API error: timeout after 6120ms", "ERROR"),
        record("auth failed: User or API Wallet 0xabc does not exist", "ERROR"),
        record("all good"),
        b"plain ERROR line",
    ])
    scan = scan_log.fn(path, "error")
    assert scan.matches == 4 and scan.lines_read == 5 and scan.malformed == 1
    assert scan.top_messages[0] == ("API error: timeout after #ms", 2)
    assert scan.last_matches[-1] == "plain ERROR line"
