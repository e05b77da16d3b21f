"""What every remediation flow does around its runbook steps: the incident's life, told as it happens.

An `IncidentRun` opens (or joins) the incident in the journal, links it to the flow run, records each
action, posts the Slack thread, and at the end writes the incident report as a Prefect markdown
artifact and a file. Flows use it so that they can read like their runbook section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.settings import PREFECT_UI_URL

from runbook import journal as j
from runbook.alerts import ESCALATION_LEVELS, Alert, get_alert
from runbook.journal import Journal, utcnow
from runbook.redact import redact
from runbook.settings import BotSettings, Settings, load_settings, resolve_secret
from tasks.notify import AlertNotice, notify


@dataclass
class Outcome:
    """What a flow run ends with; `runbook run` turns it into an exit code."""

    incident_id: int
    alert: str
    bot: str
    status: str
    outcome: str
    summary: str
    report_path: str
    flow_run_id: str | None
    ui_url: str | None
    # What the run produced that a person needs next, e.g. {"archive": "/path/emergency_backup_....tar.gz"};
    # `runbook run` prints each entry.
    details: dict[str, str] = field(default_factory=dict)

    @property
    def problem_remains(self) -> bool:
        return self.status != j.RESOLVED

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _flow_run_id() -> str | None:
    try:
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    except Exception:
        return None


@dataclass
class IncidentRun:
    alert: Alert
    bot_name: str
    bot: BotSettings
    settings: Settings
    journal: Journal
    incident_id: int
    joined_existing: bool
    flow_run_id: str | None
    timeline: list[tuple[datetime, str]] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)
    actions_taken: list[str] = field(default_factory=list)
    # Evidence still being read (in parallel with the remediation); recorded before the report.
    pending_evidence: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def open(cls, alert_key: str, bot: str | None, config: str | None, incident_id: int | None = None,
             description: str = "") -> "IncidentRun":
        """Load config, then open the incident (or join the open one for this alert and bot)."""
        settings = load_settings(config)
        bot_name, bot_settings = settings.bot(bot)
        alert = get_alert(alert_key)
        journal = Journal(settings.journal_url)
        flow_run_id = _flow_run_id()
        if incident_id is not None:
            incident, created = journal.get(incident_id), False
        else:
            incident, created = journal.open_incident(
                alert.key, bot_name, alert.severity.value, description or alert.condition, flow_run_id=flow_run_id,
            )
        run = cls(alert, bot_name, bot_settings, settings, journal, incident.id, not created, flow_run_id)
        run.note(f"incident #{incident.id} {'opened' if created else 'joined'} for {alert.title} on bot {bot_name}")
        return run

    # -- recording -------------------------------------------------------------------------------

    def note(self, text: str) -> None:
        text = self._redact(text)
        self.timeline.append((utcnow(), text))
        get_run_logger().info(text)

    def act(self, step: str, description: str, *, ok: bool = True, dry_run: bool = False,
            detail: dict[str, Any] | None = None) -> None:
        """Record an action: the journal (for the KPIs and the storm guard), the timeline, the thread."""
        description = self._redact(description)
        self.journal.record_action(self.incident_id, self.bot_name, step, description, ok=ok, dry_run=dry_run,
                                   detail=detail)
        self.actions_taken.append(description)
        self.note(("[dry-run] " if dry_run else "") + description)

    def add_evidence(self, title: str, markdown: str) -> None:
        self.evidence[title] = self._redact(markdown)

    def add_evidence_later(self, record: Callable[[], None]) -> None:
        """`record()` adds evidence being gathered now, in the background; it runs before the report."""
        self.pending_evidence.append(record)

    def collect_evidence(self) -> None:
        while self.pending_evidence:
            record = self.pending_evidence.pop(0)
            try:
                record()
            except Exception as error:  # evidence lost must not lose the report
                self.note(f"evidence could not be recorded: {type(error).__name__}: {error}")

    def start_response(self) -> None:
        self.journal.start_response(self.incident_id, self.flow_run_id)

    def tell(self, status: str, description: str, next_steps: list[str], mention_level: str | None = None) -> None:
        incident = self.journal.get(self.incident_id)
        mention = self.settings.slack.escalation.get(mention_level) if mention_level else None
        notice = AlertNotice(
            alert_type=self.alert.title, severity=self.alert.severity.value, timestamp=incident.fired_at,
            description=f"{description} (bot {self.bot_name}, incident #{self.incident_id})",
            impact=self.alert.impact, status=status, actions_taken=list(self.actions_taken),
            next_steps=next_steps, mention=mention,
        )
        notify(self.settings.slack, self.settings.journal_url, self.incident_id, notice)

    # -- endings ---------------------------------------------------------------------------------

    def resolve(self, outcome: str, summary: str) -> Outcome:
        self.journal.resolve(self.incident_id, outcome, self._redact(summary))
        self.note(f"resolved ({outcome}): {summary}")
        self.tell("RESOLVED", summary, ["review the incident report"] if outcome != j.FALSE_POSITIVE else [])
        return self._finish()

    def escalate(self, level: str, summary: str, next_steps: list[str], outcome: str = j.OUTCOME_ESCALATED) -> Outcome:
        who = dict((name, role) for name, role, _ in ESCALATION_LEVELS)[level]
        self.journal.escalate(self.incident_id, level, self._redact(summary), outcome=outcome)
        self.note(f"escalated to {level} ({who}): {summary}")
        self.tell("ESCALATED", f"{summary} Escalated to {level} ({who}).", next_steps, mention_level=level)
        return self._finish()

    def _finish(self) -> Outcome:
        self.collect_evidence()
        incident = self.journal.get(self.incident_id)
        report = self._redact(self.render_report(incident))
        path = self._write_report(report)
        try:
            create_markdown_artifact(markdown=report, key=f"incident-{self.incident_id}",
                                     description=f"Incident #{self.incident_id}: {self.alert.title}")
        except Exception as error:  # the file and the journal still hold the report
            get_run_logger().warning("could not create the incident artifact: %s", error)
        ui = PREFECT_UI_URL.value()
        return Outcome(
            incident_id=self.incident_id, alert=self.alert.key, bot=self.bot_name, status=incident.status,
            outcome=incident.outcome or "", summary=incident.summary, report_path=str(path),
            flow_run_id=self.flow_run_id,
            ui_url=f"{ui}/runs/flow-run/{self.flow_run_id}" if ui and self.flow_run_id else None,
        )

    def _write_report(self, report: str) -> Path:
        folder = self.settings.reports_dir / "incidents"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"incident-{self.incident_id}.md"
        path.write_text(report)
        return path

    def render_report(self, incident: j.Incident) -> str:
        rows = "\n".join(f"| {at.strftime('%H:%M:%S.%f')[:-3]} | {text.replace('|', '/')} |" for at, text in self.timeline)
        action_rows = "\n".join(
            f"| {action.at.strftime('%H:%M:%S')} | {action.step} | {'dry-run' if action.dry_run else ('ok' if action.ok else 'FAILED')} "
            f"| {action.description.replace('|', '/')} |"
            for action in incident.actions
        ) or "| | | | none |"
        notes = "\n".join(
            f"| {n.at.strftime('%H:%M:%S')} | {n.status_line} | {'delivered' if n.delivered else 'NOT delivered: ' + (n.error or '')} |"
            for n in incident.notifications
        ) or "| | | none |"
        evidence = "\n\n".join(f"### {title}\n\n{body}" for title, body in self.evidence.items()) or "_none_"
        return (
            f"# Incident #{incident.id}: {self.alert.title}\n\n"
            f"| | |\n|---|---|\n"
            f"| Bot | {incident.bot} |\n| Severity | {incident.severity} |\n"
            f"| Status | **{incident.status.upper()}** |\n| Outcome | {incident.outcome or '-'} |\n"
            f"| Fired | {j._iso(incident.fired_at)} |\n| Response started | {j._iso(incident.response_started_at) or '-'} |\n"
            f"| Resolved | {j._iso(incident.resolved_at) or '-'} |\n| Escalation | {incident.escalation_level or '-'} |\n"
            f"| Repeats | {incident.repeat_count} |\n| Flow run | {self.flow_run_id or '-'} |\n\n"
            f"**Summary:** {incident.summary}\n\n"
            f"## Timeline (UTC)\n\n| time | event |\n|---|---|\n{rows}\n\n"
            f"## Actions\n\n| time | step | result | description |\n|---|---|---|---|\n{action_rows}\n\n"
            f"## Evidence\n\n{evidence}\n\n"
            f"## Notifications\n\n| time | status | delivery |\n|---|---|---|\n{notes}\n"
        )

    def _redact(self, text: str) -> str:
        try:
            token = resolve_secret(self.settings.slack.token, None)
        except Exception:
            token = None
        return redact(text, [token])
