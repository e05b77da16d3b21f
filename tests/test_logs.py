"""Log reading: tail from the end, pattern scan in one pass, bad lines kept and counted."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.logs import MAX_LINE_CHARS, log_ends, scan_log, tail_bytes, tail_log


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


def test_scan_in_blocks_finds_what_a_line_by_line_scan_finds(tmp_path: Path, monkeypatch) -> None:
    """The scan reads big blocks; lines cut by a block boundary, longer than a block, CRLF-ended or
    without a final newline must count exactly as when reading line by line (and as `grep -c -i`)."""
    import random
    import re
    import subprocess
    from collections import Counter

    import tasks.logs
    from tasks.logs import parse_line

    rng = random.Random(3)
    pieces = [record("API error 502", "ERROR"), record("ok"), b"plain Error text", b"eRRoR", b"err", b"or",
              b"x" * 700 + b" ERROR " + b"y" * 300, b"\xff\xfe error", b'{"message": "API error 0xabc"}\r', b""]
    data = b"\n".join(rng.choice(pieces) for _ in range(3000)) + b"\nlast line, no newline, error"
    path = tmp_path / "blocks.log"
    path.write_bytes(data)

    def line_by_line(pattern: str) -> tuple[int, int, int, list[tuple[str, int]], list[str]]:
        needle = re.compile(re.escape(pattern).encode(), re.IGNORECASE)
        groups: Counter[str] = Counter()
        last: list[str] = []
        lines = matches = malformed = 0
        with open(path, "rb") as handle:
            for raw in handle:
                lines += 1
                if needle.search(raw):
                    line = parse_line(raw)
                    matches += 1
                    malformed += line.record is None
                    groups[re.sub(r"0x[0-9a-fA-F]+|\d+(\.\d+)?", "#", line.message)[:200]] += 1
                    last = (last + [line.message])[-10:]
        return matches, lines, malformed, groups.most_common(5), last

    monkeypatch.setattr(tasks.logs, "_SCAN_BLOCK", 256)  # many boundaries, and lines longer than a block
    for pattern in ("error", "ERR", "0xabc", ""):
        scan = scan_log.fn(path, pattern)
        assert (scan.matches, scan.lines_read, scan.malformed, scan.top_messages, scan.last_matches) \
            == line_by_line(pattern), pattern
    grep = subprocess.run(["grep", "-a", "-c", "-i", "-F", "error", str(path)], capture_output=True, text=True,
                          env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    assert scan_log.fn(path, "error").matches == int(grep.stdout) > 0


def test_evidence_stops_at_the_marked_end_of_the_log(tmp_path: Path) -> None:
    # Marked at the failure; the restarted bot writes on; the evidence read later is still the failure's.
    path = write_log(tmp_path / "errors.log", [record(f"error {i} at failure", "ERROR") for i in range(50)])
    ends = log_ends([path, tmp_path / "absent.log"])
    assert ends == {str(path): path.stat().st_size, str(tmp_path / "absent.log"): 0}
    with open(path, "ab") as handle:
        handle.write(record("error after the restart", "ERROR") + b"\n")
    tail = tail_log.fn(path, 3, ends[str(path)])
    assert [line.message for line in tail.lines] == [f"error {i} at failure" for i in (47, 48, 49)]
    scan = scan_log.fn(path, "error", end=ends[str(path)])
    assert scan.matches == 50 and scan.last_matches[-1] == "error 49 at failure"
    assert scan_log.fn(path, "error").matches == 51
