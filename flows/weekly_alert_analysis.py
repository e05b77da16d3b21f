"""Weekly Review Process, step 1 "Analyze Alert Patterns" and step 2 "Review Response Times" (RUNBOOK.md),
as a scheduled flow (`reports.weekly_day` at `reports.weekly_time` in `reports.timezone`; Monday 08:00 UTC
by default) — the runbook's `python alert_analysis.py --period 7d`.

From the incident journal: alert volume per alert and severity, MTTR per alert and per severity against
the runbook's targets, false-positive rate, uptime, MTBF, recovery time against the RTO, auto-resolution,
the noisiest alerts and the slowest responses, fatigue signals and recommendations (reports/weekly.py;
the definitions are DESIGN.md's "KPI definitions", printed in the PDF and in docs/kpis.md). The PDF goes
under `reports_dir/weekly/`, into Slack with a short summary, and into a Prefect artifact.

The period ends at the run's *scheduled* time (a late run analyses the week it was meant for). Steps 3-4
of the review (update the runbook, training) are people's work: the recommendations say where to start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows import FLOWS
from reports import ReportOutcome
from reports.weekly import WeeklyReport, analyze, incidents_frame, parse_end
from runbook.journal import Journal
from runbook.markdown import table
from runbook.settings import load_settings, parse_period
from tasks import NO_CACHE_POLICY
from tasks.notify import Upload, post_report

ALERT = "weekly-alert-analysis"


def scheduled_time() -> datetime:
    """When this run was scheduled (now for a run started by hand)."""
    from prefect.runtime import flow_run

    moment = flow_run.scheduled_start_time  # a datetime; now outside a flow run
    return moment.astimezone(UTC) if moment is not None else datetime.now(UTC)


@task(name="read the incident journal", cache_policy=NO_CACHE_POLICY, retries=2, retry_delay_seconds=[2, 5])
def read_journal(journal_url: str, start: datetime, end: datetime, bot: str | None) -> dict[str, list[Any]]:
    """Every incident the period's KPIs need (fired in it, or still down at its start)."""
    return Journal(journal_url).kpi_columns(start, end, bot)


@task(name="compute the alert KPIs", cache_policy=NO_CACHE_POLICY)
def compute(columns: dict[str, list[Any]], start: datetime, end: datetime, flap_minutes: float,
            bot: str | None) -> WeeklyReport:
    """Runbook: "Analyze Alert Patterns" and "Review Response Times"."""
    from datetime import timedelta

    frame, warnings = incidents_frame(columns, strict=False, where="journal incident")
    return analyze(frame, start, end, flap_window=timedelta(minutes=flap_minutes), automated=set(FLOWS),
                   source="journal", bot=bot, warnings=warnings)


@task(name="render the weekly analysis PDF", cache_policy=NO_CACHE_POLICY)
def render(report: WeeklyReport, folder: Path) -> str:
    from reports.pdf import write_weekly  # reportlab: imported by the run that renders

    return str(write_weekly(report, folder))


def artifact(report: WeeklyReport, upload: Upload) -> None:
    slack = (f"posted to {upload.channel}" + (f" ([open]({upload.permalink}))" if upload.permalink else "")
             if upload.delivered else f"not posted to Slack: {upload.error}")
    rows = [list(row) for row in report.headline()]
    alerts = table(["Alert", "Severity", "Incidents", "MTTR mean (s)", "Target (s)", "Met"],
                   [[alert, b["severity"], b["count"], "n/a" if b["mttr_mean_seconds"] is None
                     else f"{b['mttr_mean_seconds']:.0f}", "n/a" if b["target_seconds"] is None
                     else f"{b['target_seconds']:.0f}", {True: "yes", False: "NO", None: "n/a"}[b["met"]]]
                    for alert, b in report.by_alert.items()])
    markdown = (f"# {report.title}\n\n" + table(["KPI", "Value"], rows) + f"\n\n**PDF:** `{report.pdf_path}` — {slack}"
                + "\n\n## By alert\n\n" + alerts + "\n\n## Recommendations\n\n"
                + "\n".join(f"- {line}" for line in report.recommendations) + "\n")
    try:
        create_markdown_artifact(markdown=markdown, key="weekly-alert-analysis", description=report.title)
    except Exception as error:  # the PDF and Slack still carry the report
        get_run_logger().warning("could not create the weekly analysis artifact: %s", error)


@flow(name="weekly-alert-analysis",
      description="Runbook: Weekly Review — alert volume, MTTR per alert and severity against the targets, "
                  "false-positive rate, uptime, MTBF, RTO, noisiest alerts, fatigue and recommendations from the "
                  "incident journal; a PDF posted to Slack and linked as an artifact. Scheduled weekly.")
def weekly_alert_analysis(bot: str | None = None, config: str | None = None, period: str | None = None,
                          end: str | None = None) -> ReportOutcome:
    """Analyse the alert patterns of a period from the incident journal.

    Args:
        bot: only this bot's incidents (default: every bot)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        period: the window, e.g. 7d, 24h, 30d (default: reports.weekly_period)
        end: where the window ends, YYYY-MM-DD (00:00 UTC) or an ISO 8601 time (default: the run's
            scheduled time)
    """
    settings = load_settings(config)
    if bot:
        settings.bot(bot)
    span = parse_period(period or settings.reports.weekly_period)
    end_at = parse_end(end) or scheduled_time()
    start_at = end_at - span
    columns = read_journal(settings.journal_url, start_at, end_at, bot)
    report = compute(columns, start_at, end_at, settings.reports.flap_window_minutes, bot)
    render(report, settings.reports_dir / "weekly")
    upload = post_report(settings.slack, report.pdf_path, report.message(), report.title,
                         settings.reports.slack_channel)
    artifact(report, upload)
    from prefect.runtime import flow_run

    return ReportOutcome(
        report=ALERT, summary=f"{report.incidents} incidents from {start_at:%Y-%m-%d %H:%M} to {end_at:%Y-%m-%d %H:%M}"
        f" UTC; {len(report.recommendations)} recommendation(s)", pdfs=[str(report.pdf_path)],
        figures=[report.to_dict()], slack=[upload.__dict__], flow_run_id=flow_run.id, ui_url=flow_run.ui_url)
