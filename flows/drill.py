"""Incident-response drill (RUNBOOK.md "Weekly Review" drills, "Metrics and KPIs"), as a flow.

Each failure scenario of the runbook (runbook/drills.py) is injected into the bot, one at a time, while the
production path runs: the watcher detects it, the deployment's trigger starts the flow, the flow diagnoses,
remediates and tells people. The drill only watches and measures — time to detect, to respond, to the
classified cause; whether the cause was right and the bot ended as it should — then clears the fault and
waits for a healthy bot before the next scenario. Results: a table artifact, a PDF beside the daily and
weekly ones, the figures in the journal (the weekly report shows them), and the flow's return value.

Safety: only a bot with `drill_allowed = true` is drilled, only with the inject commands configured for it,
never while one of its real incidents is open, and never unless the production path is being served; a
refusal happens before anything is injected. Incidents the drill causes are marked as drill incidents
and never count in the production KPIs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from reports.drill import DrillReport, not_covered_rows
from reports.pdf import write_drill
from runbook.drills import CAUSE_LINE, SCENARIOS, Scenario, failure_alerts, parse_scenarios
from runbook.journal import Journal
from runbook.settings import BotSettings, Settings, load_settings
from tasks.drill import (
    DrillAborted, check_allowed, check_end, check_no_real_incident, check_served, detect_deadline, lease, now,
    read_cause, restore, run_command, seconds_between, wait_for_alert, wait_for_conclusion, wait_runs_done,
    wait_healthy,
)

NAME = "drill"


class Progress:
    """Scenario k of n and what the drill waits for: in the run's log (the terminal) and a progress artifact."""

    def __init__(self, bot: str, total: int) -> None:
        self.total = max(total, 1)
        self.artifact_id = None
        slug = re.sub(r"[^a-z0-9-]+", "-", bot.lower()).strip("-") or "bot"
        try:
            self.artifact_id = create_progress_artifact(progress=0.0, key=f"drill-progress-{slug}",
                                                        description=f"drill of {bot}: starting")
        except Exception as error:  # noqa: BLE001 - progress is a courtesy, the drill goes on
            get_run_logger().warning("no progress artifact: %s", error)

    def say(self, done: int, text: str) -> None:
        get_run_logger().info(text)
        print(f"drill: {text}", file=sys.stderr, flush=True)
        if self.artifact_id is not None:
            try:
                update_progress_artifact(self.artifact_id, progress=100.0 * done / self.total, description=text)
            except Exception:  # noqa: BLE001
                pass


def drill_scenario(settings: Settings, bot_name: str, bot: BotSettings, drill_id: int, scenario: Scenario,
                   k: int, progress: Progress) -> dict[str, Any]:
    """Inject one scenario, measure the production path's answer, put the bot back."""
    drill, n = settings.drill, progress.total
    journal = Journal(settings.journal_url)
    journal.renew_drill(drill_id, lease(settings))
    row: dict[str, Any] = {"scenario": scenario.key, "covered": True, "expected_alert": scenario.alert,
                           "end_expected": scenario.end, "alert": None, "detected": False, "detect_seconds": None,
                           "response_seconds": None, "cause_seconds": None, "cause_found": None,
                           "cause_correct": None, "recovered": None, "outcome": "not detected"}
    prefix = f"scenario {k} of {n} ({scenario.key})"
    progress.say(k - 1, f"{prefix}: injecting — {scenario.what}")
    # Times run from the moment the inject command returned (the fault is in place by then); incidents are
    # looked for from the moment it started, so one seen while the command was exiting still counts.
    command_started = now()
    row["injected"] = True
    run_command(bot.drill.inject[scenario.key], bot.drill.command_timeout_seconds)
    injected_at = now()
    row["inject_seconds"] = seconds_between(command_started, injected_at)
    wait = detect_deadline(settings, scenario)
    progress.say(k - 1, f"{prefix}: waiting up to {wait:g}s for the {scenario.alert} alert")
    fired = wait_for_alert(settings.journal_url, bot_name, command_started, scenario.alert, wait, drill.poll_seconds)
    if fired:
        primary = next((i for i in fired if i.alert == scenario.alert), fired[0])
        row.update(alert=primary.alert, detected=True, incident_id=primary.id,
                   detect_seconds=seconds_between(injected_at, primary.fired_at))
        left = max(drill.conclude_timeout_seconds - (now() - injected_at).total_seconds(), 1.0)
        progress.say(k - 1, f"{prefix}: {primary.alert} fired after {row['detect_seconds']:.1f}s (incident "
                            f"#{primary.id}); waiting up to {left:.0f}s for its flow to conclude")
        incident, run = wait_for_conclusion(settings.journal_url, primary.id, left, drill.poll_seconds)
        row.update(response_seconds=seconds_between(injected_at, incident.response_started_at),
                   outcome=incident.outcome or ("no response" if incident.response_started_at is None
                                                else f"still {incident.status}"),
                   flow_run_id=incident.flow_run_id)
        if incident.flow_run_id:
            cause = read_cause(incident.flow_run_id, CAUSE_LINE, incident.summary if incident.status != "open" else "",
                               run["end"] if run else None)
            if cause is not None:
                row.update(cause_found=cause.text, cause_seconds=seconds_between(injected_at, cause.at),
                           cause_correct=primary.alert == scenario.alert and bool(re.search(scenario.cause, cause.text)))
        progress.say(k - 1, f"{prefix}: checking the bot ended {scenario.end}")
        row["recovered"], row["end_seen"] = check_end(bot_name, bot, settings.journal_url, scenario.end, incident,
                                                      grace_seconds=15.0, poll_seconds=drill.poll_seconds)
        left = max(drill.conclude_timeout_seconds - (now() - injected_at).total_seconds(), 1.0)
        wait_runs_done(bot_name, failure_alerts(), left, drill.poll_seconds)
    else:
        row["end_seen"] = "no alert fired"
    progress.say(k - 1, f"{prefix}: clearing the fault, waiting for a healthy bot")
    restore(settings, bot_name, bot, drill_id, command_started, failure_alerts())
    progress.say(k, f"{prefix}: done — {'detected by ' + row['alert'] if row['detected'] else 'NOT detected'}")
    return row


@flow(name=NAME, description="Runbook: incident-response drill — inject every failure scenario into a bot that "
                             "allows it while the production path runs, and measure alert coverage, detection "
                             "accuracy, cause accuracy and time to the root cause.")
def drill(bot: str | None = None, config: str | None = None, scenarios: str | None = None,
          out: str | None = None) -> dict[str, Any]:
    """Drill the runbook's failure scenarios on one bot.

    Args:
        bot: which configured bot (default: drill.bot, or the only one); it must have drill_allowed = true
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        scenarios: "all" or a comma list such as crash,hang (default: drill.scenarios)
        out: folder for the PDF (default: reports_dir/drills)
    """
    settings = load_settings(config)
    bot_name, bot_settings = settings.bot(bot or settings.drill.bot)
    asked = scenarios or settings.drill.scenarios
    wanted = parse_scenarios(asked)
    skipped = check_allowed(bot_name, bot_settings, wanted, explicit=asked.strip().lower() != "all")
    runnable = [key for key in wanted if key not in skipped]
    check_served([SCENARIOS[key].alert for key in runnable])
    check_no_real_incident(settings.journal_url, bot_name)
    wait_healthy(bot_name, bot_settings, settings.drill.healthy_timeout_seconds, settings.drill.poll_seconds)

    journal = Journal(settings.journal_url)
    record = journal.start_drill(bot_name, runnable, lease(settings))
    started = record.started_at
    progress = Progress(bot_name, len(runnable))
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    status = "finished"
    try:
        for k, key in enumerate(runnable, 1):
            rows.append(drill_scenario(settings, bot_name, bot_settings, record.id, SCENARIOS[key], k, progress))
    except (DrillAborted, RuntimeError) as error:
        status = "aborted"
        problems.append(str(error))
        done = {row["scenario"] for row in rows}
        rows += [{"scenario": key, "covered": True, "injected": False, "expected_alert": SCENARIOS[key].alert,
                  "alert": None, "detected": None, "detect_seconds": None, "response_seconds": None,
                  "cause_seconds": None, "cause_found": None, "cause_correct": None, "recovered": None,
                  "outcome": "not run (drill aborted)"} for key in runnable if key not in done]
        progress.say(len(done), f"drill aborted: {error}")
        if isinstance(error, RuntimeError):  # an inject command failed: the fault may be half in place
            try:
                restore(settings, bot_name, bot_settings, record.id, started, failure_alerts())
            except Exception as restore_error:  # noqa: BLE001 - reported, and the drill still reports
                problems.append(f"the bot was not restored after the abort: {restore_error}")
    rows += not_covered_rows(skipped)
    report = DrillReport(bot=bot_name, drill_id=record.id, started_at=started, finished_at=now(), rows=rows,
                         status=status, problems=problems)
    write_drill(report, Path(out) if out else settings.reports_dir / "drills")
    journal.finish_drill(record.id, status, report.to_dict(), report.pdf_path)
    try:
        create_table_artifact(table=report.table(), key=f"drill-{record.id}", description=report.summary())
    except Exception as error:  # noqa: BLE001 - the PDF and the journal hold the results
        get_run_logger().warning("could not create the drill table artifact: %s", error)
    progress.say(len(runnable), report.summary())
    return report.to_dict()
