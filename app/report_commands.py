"""`runbook report daily|weekly` without the CLI plumbing: read the fills or the journal, build the report
(reports/daily.py, reports/weekly.py), have reports/pdf.py write its PDF, and say what happened as
(exit code, output); bad input is (2, 'error: ...')."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from flows import FLOWS
from reports import paused_gc
from reports.daily import (
    build_daily_report, day_bounds, fetch_window, previous_day, start_balance_at, text_summary as daily_text,
)
from reports.pdf import write_daily, write_weekly
from reports.trades import FillsError, fills_frame, read_fill_list
from reports.weekly import IncidentsError, analyze, incidents_frame, period_bounds, read_incident_file
from reports.weekly import text_summary as weekly_text


def daily_from_file(fills_path: str, day: date | None, start_balance: float | str, out: Path, *, tz: str = "UTC",
                    bot: str = "", as_json: bool = False, now: datetime | None = None) -> tuple[int, str]:
    """`runbook report daily --fills FILE --start-balance X`: (exit code, output). Bad input: (2, 'error: ...')."""
    try:
        balance = Decimal(str(start_balance))
        if not balance.is_finite() or balance <= 0:
            raise ValueError
    except (ArithmeticError, ValueError):
        return 2, f"error: --start-balance must be a positive amount, not {start_balance!r}"
    try:
        with paused_gc():
            frame = fills_frame(read_fill_list(fills_path))
    except FillsError as error:
        return 2, f"error: {error}"
    if day is None:  # a file: its last fill's day, the day a person exporting it looks at
        if not len(frame):
            return 2, "error: the file holds no fills; give --date for an empty day"
        last = datetime.fromtimestamp(int(frame["time"].max()) / 1000, tz=UTC)
        day = last.astimezone(ZoneInfo(tz)).date()
    try:
        report = build_daily_report(frame, day, balance, tz=tz, bot=bot, source=f"file {fills_path}", now=now)
    except (FillsError, ValueError) as error:
        return 2, f"error: {error}"
    write_daily(report, out)
    if as_json:
        return 0, json.dumps(report.to_dict(), indent=2, allow_nan=False)
    return 0, daily_text(report)


def daily_from_exchange(settings: Any, bot: str | None, day: date | None, out: Path | None,
                        as_json: bool = False) -> tuple[int, str]:
    """`runbook report daily` from the exchange (no Prefect): (exit code, output)."""
    from tasks.hyperliquid import HyperliquidError, HyperliquidInfo

    try:
        name, bot_settings = settings.bot(bot)
    except Exception as error:  # ConfigError: which bot
        return 2, f"error: {error}"
    tz = settings.reports.timezone
    day = day or previous_day(datetime.now(UTC), tz)
    start, end = fetch_window(day, tz)
    read_at = datetime.now(UTC)
    until = min(end, read_at) - timedelta(milliseconds=1)
    account = bot_settings.hyperliquid
    try:
        with HyperliquidInfo.from_account(account) as client:
            fills = client.fills(account.account_address, start, until)
            history = client.account_value_history(account.account_address)
            try:
                funding: list[dict[str, Any]] | None = client.funding(account.account_address, start, until)
            except HyperliquidError:
                funding = None  # shown as n/a: the summary stands without it
    except HyperliquidError as error:
        return 1, f"error: cannot read the exchange: {error}"
    day_start, _ = day_bounds(day, tz)
    balance = start_balance_at(history, day_start)
    if balance is None or balance <= 0:
        return 1, f"error: the account has no value at {day_start.isoformat()}: give --fills and --start-balance"
    try:
        report = build_daily_report(fills, day, balance, tz=tz, funding=funding, bot=name, source="exchange",
                                    win_rate_threshold=settings.watch.win_rate_threshold, now=read_at)
    except (FillsError, ValueError) as error:
        return 1, f"error: the exchange's fills cannot be used: {error}"
    write_daily(report, out or settings.reports_dir / "daily")
    if as_json:
        return 0, json.dumps(report.to_dict(), indent=2, allow_nan=False)
    return 0, daily_text(report)


def weekly_command(*, journal_url: str | None, from_file: str | None, period: timedelta, end: datetime | None,
                   out: Path, bot: str | None = None, flap_window: timedelta = timedelta(hours=1),
                   as_json: bool = False, now: datetime | None = None) -> tuple[int, str]:
    """`runbook report weekly` without the CLI plumbing: (exit code, output); bad input is (2, 'error: ...')."""
    start, end_at = period_bounds(end, period, now)
    try:
        if from_file:
            frame, warnings = incidents_frame(read_incident_file(from_file), strict=True)
            source = f"file {from_file}"
        else:
            from runbook.journal import Journal

            assert journal_url is not None
            frame, warnings = incidents_frame(Journal(journal_url).kpi_columns(start, end_at, bot), strict=False,
                                              where="journal incident")
            source = "journal"
        report = analyze(frame, start, end_at, now=now, flap_window=flap_window, automated=set(FLOWS),
                         source=source, bot=bot, warnings=warnings)
    except (IncidentsError, ValueError) as error:
        return 2, f"error: {error}"
    write_weekly(report, out)
    if as_json:
        return 0, json.dumps(report.to_dict(), indent=2, allow_nan=False, default=str)
    return 0, weekly_text(report)
