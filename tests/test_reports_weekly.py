"""Weekly alert-pattern analysis: every KPI against values worked out by hand on a small journal, the same
from a real SQLite journal and from files (JSON lines, JSON list), the PDF read back, and the flow on the
real Prefect server. No sandbox: the journal is the input; Slack is left unconfigured (the flow must not
mind), its delivery is tested with the daily summary (tests/test_reports_daily.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from reports.weekly import IncidentsError, analyze, fmt_duration, incidents_frame, read_incident_file, write_weekly
from runbook.cli import app
from runbook.journal import Journal

RUNBOOK = str(Path(sys.executable).with_name("runbook"))
START = datetime(2026, 11, 16, tzinfo=UTC)
END = datetime(2026, 11, 23, tzinfo=UTC)
AUTOMATED = {"crash-recovery", "api-latency", "stop-loss-review", "new-balance-high"}


def incident(id: int, alert: str, severity: str, fired: str, response: str | None, resolved: str | None,
             outcome: str | None, repeats: int = 0) -> dict:
    return {"id": id, "alert": alert, "bot": "alpha", "severity": severity, "fired_at": fired,
            "response_started_at": response, "resolved_at": resolved, "outcome": outcome, "repeat_count": repeats,
            "status": "resolved" if resolved else "open"}


# The period is 2026-11-16 00:00 .. 2026-11-23 00:00 UTC (604 800 s). Figures by hand in the test below.
INCIDENTS = [
    # before the period, resolved 10 min into it: 600 s of downtime, no other figure
    incident(1, "crash-recovery", "CRITICAL", "2026-11-15T23:50:00Z", "2026-11-15T23:51:00Z", "2026-11-16T00:10:00Z",
             "auto-resolved"),
    # two overlapping outages: [10:00, 10:08] and [10:05, 10:20] -> 1 200 s together
    incident(2, "crash-recovery", "CRITICAL", "2026-11-17T10:00:00Z", "2026-11-17T10:01:00Z", "2026-11-17T10:08:00Z",
             "auto-resolved"),
    incident(3, "system-failure", "EMERGENCY", "2026-11-17T10:05:00Z", "2026-11-17T10:07:00Z",
             "2026-11-17T10:20:00Z", "resolved-manually"),
    # api-latency fired, a false positive; fired again 30 min after it was resolved (flapping), 3 repeats
    incident(5, "api-latency", "WARNING", "2026-11-18T12:00:00Z", "2026-11-18T12:10:00Z", "2026-11-18T12:30:00Z",
             "false-positive"),
    incident(6, "api-latency", "WARNING", "2026-11-18T13:00:00Z", "2026-11-18T13:40:00Z", "2026-11-18T14:00:00Z",
             "auto-resolved", repeats=3),
    incident(7, "memory-usage", "WARNING", "2026-11-19T08:00:00Z", None, None, "no-automation"),
    incident(8, "stop-loss-review", "CRITICAL", "2026-11-20T09:00:00Z", "2026-11-20T09:02:00Z",
             "2026-11-20T09:06:00Z", "false-positive"),
    incident(9, "new-balance-high", "INFO", "2026-11-21T00:00:00Z", "2026-11-21T00:00:30Z", "2026-11-21T00:01:00Z",
             "auto-resolved"),
    # a crash 5 min before the end, unresolved: 300 s of downtime to the end, not yet past the RTO
    incident(4, "crash-recovery", "CRITICAL", "2026-11-22T23:55:00Z", None, None, None),
    # at the end: outside [start, end)
    incident(10, "api-latency", "WARNING", "2026-11-23T00:00:00Z", None, None, None),
]


def check_hand_figures(d: dict) -> None:
    """The KPIs of INCIDENTS, each worked out by hand."""
    assert d["incidents"] == 8  # ids 2..9
    assert d["false_positives"] == 2 and d["false_positive_rate"] == pytest.approx(2 / 7)  # INFO #9 left out
    assert d["auto_resolution_rate"] == pytest.approx(2 / 7)  # #2 and #6
    assert d["downtime_seconds"] == pytest.approx(600 + 1200 + 300)
    assert d["uptime"] == pytest.approx(1 - 2100 / 604800)
    assert d["downtime_incidents"] == 3 and d["mtbf_seconds"] == pytest.approx((604800 - 2100) / 3)
    assert d["recovery_time_worst_seconds"] == 900 and d["recovery_time_median_seconds"] == 690  # #2 480, #3 900
    assert d["rto_met"] is False and d["recovery_unresolved"] == 1
    assert d["repeats"] == 3 and d["flapping"] == 1

    critical = d["by_severity"]["CRITICAL"]  # #2 60 s, #4 no response, #8 120 s
    assert critical["count"] == 3 and critical["mttr_mean_seconds"] == 90 and critical["mttr_median_seconds"] == 90
    assert critical["mttr_p90_seconds"] == pytest.approx(60 + 0.9 * 60)  # linear interpolation
    assert critical["resolve_mean_seconds"] == 420 and critical["target_seconds"] == 300 and critical["met"] is True
    warning = d["by_severity"]["WARNING"]  # #5 600 s, #6 2 400 s, #7 none
    assert warning["count"] == 3 and warning["mttr_mean_seconds"] == 1500 and warning["mttr_median_seconds"] == 1500
    assert warning["mttr_p90_seconds"] == pytest.approx(600 + 0.9 * 1800)
    assert warning["resolve_mean_seconds"] == 2700 and warning["target_seconds"] == 1800 and warning["met"] is True
    emergency = d["by_severity"]["EMERGENCY"]
    assert (emergency["count"], emergency["mttr_mean_seconds"], emergency["target_seconds"]) == (1, 120, 300)
    assert d["by_severity"]["INFO"]["target_seconds"] is None and d["by_severity"]["INFO"]["met"] is None

    latency = d["by_alert"]["api-latency"]
    assert (latency["count"], latency["mttr_mean_seconds"], latency["mttr_p90_seconds"]) == (2, 1500, 2220)
    assert (latency["false_positives"], latency["repeats"], latency["flaps"], latency["met"]) == (1, 3, 1, True)
    crash = d["by_alert"]["crash-recovery"]
    assert (crash["count"], crash["mttr_mean_seconds"], crash["resolve_mean_seconds"]) == (2, 60, 480)
    assert d["by_alert"]["memory-usage"]["mttr_mean_seconds"] is None and d["by_alert"]["memory-usage"]["met"] is None
    assert [n["alert"] for n in d["noisiest"]][:2] == ["api-latency", "crash-recovery"]
    assert [s["response_seconds"] for s in d["slowest"]] == [2400, 600, 120, 120, 60]
    per_day = {row["date"]: row for row in d["per_day"]}
    assert len(per_day) == 7 and per_day["2026-11-17"]["CRITICAL"] == 1 and per_day["2026-11-17"]["EMERGENCY"] == 1
    assert per_day["2026-11-18"]["WARNING"] == 2 and sum(v for k, v in per_day["2026-11-16"].items() if k != "date") == 0


def test_kpis_match_hand_computation() -> None:
    frame, warnings = incidents_frame(INCIDENTS)
    report = analyze(frame, START, END, now=END + timedelta(days=1), automated=AUTOMATED)
    assert not warnings
    check_hand_figures(report.to_dict())
    recommendations = " ".join(report.recommendations)
    assert "missed the 10 min RTO" in recommendations and "below the 99.9 % target" in recommendations
    assert "Add automation for memory-usage" in recommendations and "False-positive rate 28.57 %" in recommendations


def test_kpis_from_a_real_journal(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path}/journal.db")
    fill_journal(journal, INCIDENTS)
    frame, warnings = incidents_frame(journal.kpi_columns(START, END), strict=False)
    assert not warnings
    # the journal holds the crash fired before the period (still down at its start) but not the one at END
    assert sorted(frame["alert"]) == sorted(i["alert"] for i in INCIDENTS[:-1])
    check_hand_figures(analyze(frame, START, END, now=END + timedelta(days=1), automated=AUTOMATED).to_dict())


def fill_journal(journal: Journal, incidents: list[dict]) -> None:
    """Open each incident at its own time, then set its response, resolution and outcome as the flows do."""
    def when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    for item in sorted(incidents, key=lambda i: i["fired_at"]):
        opened, created = journal.open_incident(item["alert"], item["bot"], item["severity"],
                                                fired_at=when(item["fired_at"]))
        assert created
        fields = {"response_started_at": when(item["response_started_at"]), "outcome": item["outcome"],
                  "repeat_count": item["repeat_count"]}
        if item["resolved_at"]:
            fields.update(resolved_at=when(item["resolved_at"]), status="resolved", open_key=None)
        journal.update(opened.id, **fields)


def test_an_unresolved_crash_past_the_rto_fails_it_and_an_empty_period_renders(tmp_path: Path) -> None:
    late = [incident(1, "crash-recovery", "CRITICAL", "2026-11-22T23:40:00Z", None, None, None)]
    report = analyze(incidents_frame(late)[0], START, END, now=END, automated=AUTOMATED)
    assert report.rto_met is False and report.recovery_time_worst_seconds is None
    assert report.downtime_seconds == 1200 and report.mtbf_seconds == pytest.approx(604800 - 1200)

    empty = analyze(incidents_frame([])[0], START, END, now=END, automated=AUTOMATED)
    d = empty.to_dict()
    assert d["incidents"] == 0 and d["uptime"] == 1.0 and d["mtbf_seconds"] is None and d["rto_met"] is None
    assert d["false_positive_rate"] is None and d["by_severity"]["CRITICAL"]["count"] == 0
    assert d["by_severity"]["CRITICAL"]["met"] is None and len(d["per_day"]) == 7
    text = pdf_text(write_weekly(empty, tmp_path))
    for expected in ("Incidents 0", "Uptime (target > 99.9 %) 100.000 %", "MTBF n/a", "no incidents",
                     "No incidents in the period: run an incident-response drill"):
        assert expected in text, expected


def pdf_text(path: Path) -> str:
    return " ".join(" ".join(page.extract_text() for page in PdfReader(str(path)).pages).split())


def test_pdf_prints_the_computed_figures(tmp_path: Path) -> None:
    report = analyze(incidents_frame(INCIDENTS)[0], START, END, now=END + timedelta(days=1), automated=AUTOMATED)
    path = write_weekly(report, tmp_path)
    assert path.name == "weekly-alert-analysis-2026-11-23T0000.pdf"
    text = pdf_text(path)
    for expected in (
        "Weekly alert-pattern analysis — 2026-11-16 00:00 to 2026-11-23 00:00 UTC (7 days)",
        "Incidents 8", "MTTR critical (target 5 min) 1 min 30 s", "MTTR warning (target 30 min) 25 min",
        "False-positive rate (target < 5 %) 28.57 %", "Uptime (target > 99.9 %) 99.653 %", "MTBF 2 d 7 h",
        "Recovery worst / median (RTO 10 min) 15 min / 11 min 30 s", "Auto-resolution rate 28.57 %",
        # by severity: count, MTTR mean, median, p90, target, met, ack median, p90, met, resolve mean
        "CRITICAL 3 1 min 30 s 1 min 30 s 1 min 54 s 5 min yes n/a n/a n/a 7 min",
        "WARNING 3 25 min 25 min 37 min 30 min yes n/a n/a n/a 45 min",
        "Recovery time, worst 15 min ≤ 10 min (RTO) NO", "Uptime 99.653 % > 99.9 % NO",
        "Alerts per day by severity", "Mean time to response per alert against its target",
        "MTBF (period - downtime) / number of crash-recovery",
    ):
        assert expected in text, expected
    for alert, block in report.by_alert.items():
        assert f"{alert} {block['severity']} {block['count']} {fmt_duration(block['mttr_mean_seconds'])}" in text
    for line in report.recommendations:
        assert " ".join(line.split()) in text


def test_cli_from_a_file_of_json_lines_and_a_json_list(tmp_path: Path) -> None:
    lines = tmp_path / "history.jsonl"
    lines.write_text("\n".join(json.dumps(i) for i in INCIDENTS) + "\n\n")
    listed = tmp_path / "history.json"
    listed.write_text(json.dumps(INCIDENTS, indent=2))
    done = subprocess.run([RUNBOOK, "report", "weekly", "--from-file", str(lines), "--end", "2026-11-23",
                           "--period", "7d", "--out", str(tmp_path / "a"), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from_lines = json.loads(done.stdout)
    assert Path(from_lines["pdf"]).is_file() and from_lines["source"] == f"file {lines}"
    check_hand_figures(from_lines)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "weekly", "--from-file", str(listed), "--end", "2026-11-23T00:00:00Z",
                                 "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    from_list = json.loads(result.stdout)
    check_hand_figures(from_list)
    assert {k: v for k, v in from_list.items() if k not in ("pdf", "source", "generated_at")} == \
        {k: v for k, v in from_lines.items() if k not in ("pdf", "source", "generated_at")}
    # a shorter window of the same history: only 2026-11-22 (the unresolved crash)
    day = runner.invoke(app, ["report", "weekly", "--from-file", str(listed), "--end", "2026-11-23", "--period", "24h",
                              "--out", str(tmp_path / "c"), "--json"])
    assert day.exit_code == 0 and json.loads(day.stdout)["incidents"] == 1


@pytest.mark.parametrize("content, message", [
    ('{"alert": "crash-recovery", "fired_at": "2026-11-17T10:00:00Z"}\nnot json\n', "line 2"),
    ('[{"alert": "crash-recovery", "fired_at": "yesterday"}]', "incident 0: 'fired_at' is not an ISO 8601 time"),
    ('[{"alert": "x", "severity": "LOUD", "fired_at": "2026-11-17T10:00:00Z"}]', "severity must be one of"),
    ('[{"alert": "custom", "fired_at": "2026-11-17T10:00:00Z"}]', "missing 'severity'"),
    ('[{"fired_at": "2026-11-17T10:00:00Z"}]', "missing 'alert'"),
    ('[{"alert": "api-latency", "fired_at": "2026-11-17T10:00:00Z", "response_started_at": "2026-11-17T09:00:00Z"}]',
     "'response_started_at' is before 'fired_at'"),
    ('[1, 2]', "incident 0: expected an object"),
])
def test_bad_history_files_get_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "history.json"
    path.write_text(content)
    with pytest.raises(IncidentsError, match=message):
        incidents_frame(read_incident_file(str(path)))
    result = CliRunner().invoke(app, ["report", "weekly", "--from-file", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and message.split(":")[0] in result.output
    assert not list(tmp_path.glob("*.pdf"))  # nothing half-written


def test_catalogue_severity_fills_in_and_unknown_alerts_use_their_severity_target() -> None:
    frame, _ = incidents_frame([
        {"alert": "api-latency", "fired_at": "2026-11-17T10:00:00", "response_started_at": "2026-11-17T10:45:00"},
        {"alert": "custom-probe", "severity": "critical", "fired_at": "2026-11-17T11:00:00+01:00",
         "response_started_at": "2026-11-17T10:03:00Z"},
    ])
    d = analyze(frame, START, END, now=END, automated=AUTOMATED).to_dict()
    assert d["by_alert"]["api-latency"]["severity"] == "WARNING" and d["by_alert"]["api-latency"]["met"] is False
    custom = d["by_alert"]["custom-probe"]  # naive times are UTC; offsets are honoured
    assert custom["mttr_mean_seconds"] == 180 and custom["target_seconds"] == 300 and custom["met"] is True
    recommendations = analyze(frame, START, END, now=END, automated=AUTOMATED).recommendations
    assert "Automated yet slower than their target: api-latency (45 min against 30 min)" in " ".join(recommendations)


# ------------------------------------------------------------------------------------------------------
# the flow on the real Prefect server


def test_flow_analyses_the_journal_on_the_prefect_server(tmp_path: Path, prefect_server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.weekly_alert_analysis import weekly_alert_analysis

    config = tmp_path / "runbook.toml"
    config.write_text(f"""
journal_url = "sqlite:///{tmp_path}/journal.db"
reports_dir = "{tmp_path}/reports"

[bots.alpha]
working_dir = "{tmp_path}"
process_match = ["trading_bot"]
start_command = ["true"]
""")
    fill_journal(Journal(f"sqlite:///{tmp_path}/journal.db"), INCIDENTS)
    outcome = weekly_alert_analysis(config=str(config), period="7d", end="2026-11-23")
    figures = outcome.figures[0]
    assert figures["incidents"] == 8 and figures["mtbf_seconds"] == pytest.approx((604800 - 2100) / 3)
    assert figures["by_severity"]["WARNING"]["mttr_p90_seconds"] == pytest.approx(2220)
    pdf = Path(outcome.pdfs[0])
    assert pdf.parent == tmp_path / "reports" / "weekly" and "Incidents 8" in pdf_text(pdf)
    # Slack is not configured here: the report is made all the same, and says so
    assert outcome.slack[0]["delivered"] is False and "not configured" in outcome.slack[0]["error"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["weekly-alert-analysis"])),
                                          sort=ArtifactSort.CREATED_DESC, limit=1)
    assert artifacts and str(pdf) in artifacts[0].data and "| False-positive rate (target < 5 %) | 28.57 % |" in \
        artifacts[0].data


def test_time_to_acknowledge_per_severity_beside_the_response_time(tmp_path: Path) -> None:
    """People's acknowledgements (runbook ack, the Slack button, a pager) from a real journal: median and p90
    per severity against the same targets as MTTR; incidents nobody acknowledged are left out."""
    acknowledged = {2: "2026-11-17T10:03:00Z", 8: "2026-11-20T09:09:00Z", 4: "2026-11-22T23:56:00Z",  # 180, 540, 60 s
                    5: "2026-11-18T12:20:00Z", 6: "2026-11-18T13:50:00Z"}  # 1 200, 3 000 s
    journal = Journal(f"sqlite:///{tmp_path}/journal.db")
    fill_journal(journal, INCIDENTS)
    for row in journal.incidents():
        at = next((when for i, when in acknowledged.items() if INCIDENTS[[x["id"] for x in INCIDENTS].index(i)]
                   ["fired_at"] == row.as_dict()["fired_at"]), None)
        if at:
            journal.update(row.id, acknowledged_at=datetime.fromisoformat(at.replace("Z", "+00:00")),
                           acknowledged_by="alice")
    frame, warnings = incidents_frame(journal.kpi_columns(START, END), strict=False)
    assert not warnings
    report = analyze(frame, START, END, now=END + timedelta(days=1), automated=AUTOMATED)
    d = report.to_dict()
    critical, warning = d["by_severity"]["CRITICAL"], d["by_severity"]["WARNING"]
    assert (critical["acknowledged"], critical["tta_median_seconds"]) == (3, 180)
    assert critical["tta_p90_seconds"] == pytest.approx(180 + 0.8 * 360) and critical["tta_met"] is True
    assert (warning["acknowledged"], warning["tta_median_seconds"]) == (2, 2100) and warning["tta_met"] is False
    assert warning["tta_p90_seconds"] == pytest.approx(1200 + 0.9 * 1800)
    assert d["by_severity"]["EMERGENCY"]["tta_median_seconds"] is None  # nobody acknowledged #3
    check_hand_figures(d)  # the other figures are unchanged
    assert ("Time to acknowledge critical median / p90", "3 min / 7 min 48 s") in report.headline()
    text = pdf_text(write_weekly(report, tmp_path / "out"))
    # by severity: ... target, met, ack median, ack p90, ack met, resolve mean
    assert "Ack median" in text and "30 min yes 35 min 47 min NO 45 min" in text  # WARNING: 2 100 s, 2 820 s
