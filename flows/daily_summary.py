"""📈 Daily Trading Summary (RUNBOOK.md), as a scheduled flow (INFO; `reports.daily_time` in
`reports.timezone`, 00:05 UTC by default).

The section's content — total trades, win rate and profit factor, total P&L, best/worst trades, risk
metrics — and its three daily actions:

1. Review performance: the figures of the last complete day (or `date`) from the exchange's fills, against
   the previous day and the trailing 7 and 30 days, and recommendations drawn from them (reports/daily.py);
2. Update strategies: left to people, from those recommendations;
3. Generate reports: the PDF (reports/pdf.py) under `reports_dir/daily/`, posted into the Slack channel with
   a short summary, and a Prefect artifact with the headline numbers and where the PDF is.

A run scheduled for 00:05 reports the day before its *scheduled* time, so a run the server starts late
(or several missed ones started at once) still reports the day it was meant for, and writes the same file.
No incident is opened: a report is not an alert anyone answers. A failed Slack post never fails the run.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from reports import ReportOutcome
from reports.daily import (
    DailyReport, build_daily_report, day_bounds, fetch_window, parse_day, previous_day, start_balance_at,
)
from runbook.markdown import table
from runbook.settings import BotSettings, Settings, load_settings
from tasks import NO_CACHE_POLICY
from tasks.futures import settle
from tasks.hyperliquid import get_account_value_history, get_fills, get_funding
from tasks.notify import Upload, post_report

ALERT = "daily-summary"


def scheduled_time() -> datetime:
    """When this run was scheduled (now for a run started by hand)."""
    from prefect.runtime import flow_run

    moment = flow_run.scheduled_start_time  # a datetime; now outside a flow run
    return moment.astimezone(UTC) if moment is not None else datetime.now(UTC)


def _flow_run() -> tuple[str | None, str | None]:
    from prefect.runtime import flow_run

    return flow_run.id, flow_run.ui_url


# --- tasks -----------------------------------------------------------------------------------


@task(name="compute the daily summary", cache_policy=NO_CACHE_POLICY)
def summarise(fills: list[dict[str, Any]], day: date, history: list[tuple[datetime, Any]],
              funding: list[dict[str, Any]] | None, tz: str, bot: str, win_rate_threshold: float,
              read_at: datetime) -> DailyReport:
    """Runbook: "Review Performance" — the day's figures, the comparisons, the recommendations."""
    day_start, _ = day_bounds(day, tz)
    balance = start_balance_at(history, day_start)
    if balance is None or balance <= 0:
        raise ValueError(f"the account has no value history at {day_start.isoformat()} (portfolio allTime): the day's "
                         "start balance is unknown")
    return build_daily_report(fills, day, balance, tz=tz, funding=funding, bot=bot, source="exchange",
                              win_rate_threshold=win_rate_threshold, now=read_at)


@task(name="render the daily summary PDF", cache_policy=NO_CACHE_POLICY)
def render(report: DailyReport, folder: Path) -> str:
    """Runbook: "Generate Reports" — the PDF."""
    from reports.pdf import write_daily  # reportlab: imported by the run that renders

    return str(write_daily(report, folder))


def artifact(report: DailyReport, upload: Upload) -> None:
    where = f"`{report.pdf_path}`"
    slack = (f"posted to {upload.channel}" + (f" ([open]({upload.permalink}))" if upload.permalink else "")
             if upload.delivered else f"not posted to Slack: {upload.error}")
    markdown = (f"# {report.title}\n\n" + table(["Figure", "Value"], [list(row) for row in report.headline()])
                + f"\n\n**PDF:** {where} — {slack}\n\n## Recommendations\n\n"
                + "\n".join(f"- {line}" for line in report.recommendations) + "\n")
    slug = "".join(ch if ch.isalnum() else "-" for ch in report.bot.lower()).strip("-") or "bot"
    try:
        create_markdown_artifact(markdown=markdown, key=f"daily-summary-{slug}", description=report.title)
    except Exception as error:  # the PDF and Slack still carry the report
        get_run_logger().warning("could not create the daily summary artifact: %s", error)


def summarise_bot(settings: Settings, name: str, bot: BotSettings, day: date) -> tuple[DailyReport, Upload]:
    account = bot.hyperliquid
    tz = settings.reports.timezone
    start, end = fetch_window(day, tz)
    read_at = datetime.now(UTC)  # a day not over yet is reported up to here, exactly what was fetched
    until = min(end, read_at) - timedelta(milliseconds=1)  # userFillsByTime bounds are inclusive
    fills = get_fills.submit(account, start, until)
    history = get_account_value_history.submit(account)
    funding = get_funding.submit(account, start, until)
    funding_result, funding_error = settle(funding)
    if funding_error:  # funding is shown apart; without it the summary still stands
        get_run_logger().warning("funding not read (%s): shown as n/a", funding_error)
    report = summarise(fills.result(), day, history.result(), funding_result, tz, name,
                       settings.watch.win_rate_threshold, read_at)
    render(report, settings.reports_dir / "daily")
    upload = post_report(settings.slack, report.pdf_path, report.message(), report.title,
                         settings.reports.slack_channel)
    artifact(report, upload)
    return report, upload


@flow(name="daily-summary",
      description="Runbook: Daily Trading Summary — the day's trades, win rate, profit factor, P&L, best and worst "
                  "trades, risk metrics and recommendations against the previous day and the trailing 7 and 30 "
                  "days; a PDF posted to Slack and linked as an artifact. Scheduled daily.")
def daily_summary(bot: str | None = None, config: str | None = None, date: str | None = None) -> ReportOutcome:
    """Summarise one day of trading for every configured bot (or one).

    Args:
        bot: which configured bot (default: every bot)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        date: the day to summarise, YYYY-MM-DD in `reports.timezone` (default: the last complete day
            before the run's scheduled time)
    """
    settings = load_settings(config)
    day = parse_day(date) if date else previous_day(scheduled_time(), settings.reports.timezone)
    names = [settings.bot(bot)[0]] if bot else list(settings.bots)
    logger = get_run_logger()
    outcome = ReportOutcome(report=ALERT, summary="")
    lines = []
    for name in names:
        try:
            report, upload = summarise_bot(settings, name, settings.bots[name], day)
        except Exception as error:  # one bot's exchange being down must not cost the other bots their summary
            logger.error("daily summary of %s for %s failed: %s", name, day, error)
            outcome.failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        outcome.pdfs.append(str(report.pdf_path))
        outcome.figures.append(report.to_dict())
        outcome.slack.append(upload.__dict__)
        m = report.metrics
        lines.append(f"{name} {day}: {m.trades} trades, net P&L {float(m.total_pnl):+,.2f} USD")
        logger.info("daily summary of %s for %s: %s", name, day, report.pdf_path)
    outcome.summary = "; ".join(lines) or f"no summary for {day}"
    outcome.flow_run_id, outcome.ui_url = _flow_run()
    if outcome.failures and not outcome.pdfs:
        raise RuntimeError("daily summary failed for every bot: " + "; ".join(outcome.failures))
    return outcome
