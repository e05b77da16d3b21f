"""Drill results: the runbook's monitoring-coverage KPIs from one drill (RUNBOOK.md "Metrics and KPIs").

A drill (flows/drill.py) injects each failure scenario of runbook/drills.py into a bot and records, per
scenario, what the production path did. This module turns those rows into the drill's figures — alert
coverage, detection accuracy, cause accuracy, investigation time — and renders them: a PDF beside the
daily and weekly ones, a Prefect table, JSON. The definitions (DRILL_DEFINITIONS) are printed in the PDF
and in docs/kpis.md.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runbook.drills import NOT_COVERED, SCENARIOS

# Per scenario, in this order (the JSON and the table); `scenario` first.
ROW_FIELDS = ("scenario", "alert", "detected", "detect_seconds", "response_seconds", "cause_seconds", "cause_found",
              "cause_correct", "recovered", "outcome")

DRILL_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("Scenario", "One failure of the runbook injected into the bot (runbook/drills.py), with the alert that should "
                 "fire, the cause its flow should name and how the bot should end. A failure no injection can "
                 "produce is listed as not covered."),
    ("Detected", "An alert fired on the bot within the detection deadline of the injection (any alert)."),
    ("Times", "From the injection: to the first alert (detect), to its flow's first remediation step (response), "
              "to the flow's classified cause (cause: its `diagnosis:` / `cause:` / `key:` log line, else its "
              "conclusion)."),
    ("Cause correct", "The scenario's own alert answered and the flow's classification matches the fault."),
    ("Recovered", "The bot ended as the scenario says, before the drill cleared the fault: healthy again, "
                  "deliberately down (halted or held), or left to a person (escalated)."),
    ("Alert coverage", "Scenarios drilled in which the scenario's own alert fired / scenarios drilled."),
    ("Detection accuracy", "Scenarios drilled in which any alert fired / scenarios drilled (real issues detected)."),
    ("Cause accuracy", "Scenarios whose cause was correct / scenarios whose flow stated a cause."),
    ("Investigation time", "Median time from injection to the classified cause (Investigation Efficiency)."),
)


def _share(hits: int, total: int) -> float | None:
    return None if total == 0 else hits / total


def verdict(row: dict[str, Any]) -> str:
    """One phrase per scenario: passed, or what went wrong."""
    if not row.get("covered", True):
        return "not covered: " + row.get("note", "")
    if not row["detected"]:
        return "NOT DETECTED"
    problems = []
    expected = row.get("expected_alert")
    if expected and row["alert"] != expected:
        problems.append(f"wrong alert ({row['alert']}, expected {expected})")
    if row["cause_found"] is None:
        problems.append("no cause stated")
    elif not row["cause_correct"]:
        problems.append("cause misread")
    if row["recovered"] is False:
        problems.append(f"did not end {row.get('end_expected', 'as expected')}")
    return "passed" if not problems else "; ".join(problems)


@dataclass
class DrillReport:
    bot: str
    drill_id: int | None
    started_at: datetime
    finished_at: datetime
    rows: list[dict[str, Any]]
    status: str = "finished"
    problems: list[str] = field(default_factory=list)
    pdf_path: str | None = None

    @property
    def drilled(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row.get("covered", True) and row.get("injected", True)]

    @property
    def not_covered(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if not row.get("covered", True)]

    @property
    def alert_coverage(self) -> float | None:
        rows = self.drilled
        return _share(sum(1 for r in rows if r["detected"] and r["alert"] == r.get("expected_alert")), len(rows))

    @property
    def detection_accuracy(self) -> float | None:
        rows = self.drilled
        return _share(sum(1 for r in rows if r["detected"]), len(rows))

    @property
    def cause_accuracy(self) -> float | None:
        stated = [r for r in self.drilled if r["cause_found"] is not None]
        return _share(sum(1 for r in stated if r["cause_correct"]), len(stated))

    @property
    def investigation_median_seconds(self) -> float | None:
        times = [r["cause_seconds"] for r in self.drilled if r["cause_seconds"] is not None]
        return statistics.median(times) if times else None

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def title(self) -> str:
        return f"Drill #{self.drill_id} of bot {self.bot} — {self.started_at:%Y-%m-%d %H:%M} UTC"

    def headline(self) -> list[tuple[str, str]]:
        return [
            ("Scenarios drilled", f"{len(self.drilled)} (+{len(self.not_covered)} not covered)"),
            ("Alert coverage", _pct(self.alert_coverage)),
            ("Detection accuracy", _pct(self.detection_accuracy)),
            ("Cause accuracy", _pct(self.cause_accuracy)),
            ("Investigation time (median)", _secs(self.investigation_median_seconds)),
            ("Duration", _secs(self.duration_seconds)),
        ]

    def table(self) -> list[dict[str, Any]]:
        """One row per scenario, for the Prefect table artifact and the PDF."""
        return [{**{name: row.get(name) for name in ROW_FIELDS}, "verdict": verdict(row)} for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": "drill", "drill_id": self.drill_id, "bot": self.bot, "status": self.status,
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
            "duration_seconds": round(self.duration_seconds, 3),
            "scenarios": [{**{name: row.get(name) for name in ROW_FIELDS},
                           "covered": row.get("covered", True), "expected_alert": row.get("expected_alert"),
                           "end_expected": row.get("end_expected"), "end_seen": row.get("end_seen"),
                           "incident_id": row.get("incident_id"), "flow_run_id": row.get("flow_run_id"),
                           "verdict": verdict(row)} for row in self.rows],
            "scenarios_drilled": len(self.drilled), "scenarios_not_covered": len(self.not_covered),
            "alert_coverage": self.alert_coverage, "detection_accuracy": self.detection_accuracy,
            "cause_accuracy": self.cause_accuracy, "investigation_median_seconds": self.investigation_median_seconds,
            "problems": list(self.problems), "pdf": self.pdf_path,
        }

    def summary(self) -> str:
        return (f"drill of {self.bot}: {len(self.drilled)} scenario(s); alert coverage {_pct(self.alert_coverage)}, "
                f"detection {_pct(self.detection_accuracy)}, cause {_pct(self.cause_accuracy)}, investigation "
                f"median {_secs(self.investigation_median_seconds)}")


def not_covered_rows(skipped: dict[str, str]) -> list[dict[str, Any]]:
    """Rows for scenarios this bot cannot inject and runbook failures no scenario produces."""
    rows = [{"scenario": key, "covered": False, "alert": None, "expected_alert": SCENARIOS[key].alert,
             "detected": None, "detect_seconds": None, "response_seconds": None, "cause_seconds": None,
             "cause_found": None, "cause_correct": None, "recovered": None, "outcome": "not covered", "note": why}
            for key, why in skipped.items()]
    rows += [{"scenario": alert, "covered": False, "alert": None, "expected_alert": alert, "detected": None,
              "detect_seconds": None, "response_seconds": None, "cause_seconds": None, "cause_found": None,
              "cause_correct": None, "recovered": None, "outcome": "not covered", "note": why}
             for alert, why in NOT_COVERED.items()]
    return rows


def drill_section(summary: dict[str, Any]) -> dict[str, Any]:
    """The weekly report's drill section from the journal's `drill_summary`: the latest drill's figures and
    the drill incidents of the period."""
    result = summary.get("result") or {}
    started_at, incidents = summary.get("started_at"), summary.get("incidents", 0)
    return {
        "latest_drill_id": result.get("drill_id"), "latest_drill_at": _iso(started_at) if started_at else None,
        "alert_coverage": result.get("alert_coverage"), "detection_accuracy": result.get("detection_accuracy"),
        "cause_accuracy": result.get("cause_accuracy"),
        "investigation_median_seconds": result.get("investigation_median_seconds"),
        "scenarios_drilled": result.get("scenarios_drilled"), "drill_incidents": incidents,
    }


def report_file_name(report: DrillReport) -> str:
    return f"drill-{report.bot}-{report.started_at:%Y-%m-%dT%H%M%S}.pdf"


def text_summary(report: DrillReport) -> str:
    rows = report.headline()
    width = max(len(label) for label, _ in rows)
    lines = [report.title, ""] + [f"  {label:<{width}}  {value}" for label, value in rows] + [""]
    for row in report.rows:
        lines.append(f"  {row['scenario']:<22} {row.get('alert') or '-':<24} detect {_secs(row.get('detect_seconds')):>7}"
                     f"  cause {_secs(row.get('cause_seconds')):>7}  {verdict(row)}")
    lines += [f"problem: {p}" for p in report.problems]
    if report.pdf_path:
        lines += ["", f"PDF: {report.pdf_path}"]
    return "\n".join(lines)


def to_json(report: DrillReport) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False, default=str)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f} %"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
