"""What every remediation flow does around its runbook steps: the incident's life, told as it happens.

An `IncidentRun` opens (or joins) the incident in the journal, links it to the flow run, records each
action, posts the Slack thread, and at the end writes the incident report as a Prefect markdown
artifact and a file. Flows use it so that they can read like their runbook section.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import Flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.context import get_run_context
from prefect.settings import PREFECT_UI_URL
from prefect.states import Failed, State

from runbook import journal as j
from runbook.alerts import ESCALATION_LEVELS, Alert, Severity, get_alert
from runbook.journal import Journal, utcnow
from runbook.redact import redact
from runbook.settings import BotSettings, Settings, load_settings, resolve_secret
from tasks.notify import AlertNotice, StakeholderUpdate, notify, notify_stakeholders, post_notice
from tasks.oncall import notify_people, page_people

# The Prefect state a run ends in when its incident escalated, failed or stayed unresolved: of type
# FAILED, so the UI and the API never show such a run green.
ESCALATED_STATE = "Escalated"
# Every remediation flow's deadline: the longest approval pause (policy.approval_timeout_seconds, 900 s
# by default) plus the work around it.
FLOW_TIMEOUT_SECONDS = 1800.0
_ROLES = {name: role for name, role, _ in ESCALATION_LEVELS}


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
    # What keeps it from happening again (the runbook section's "Prevention"); flows may set it. It goes into
    # the stakeholder update at resolution and the post-incident review.
    prevention: str = "to be decided from the post-incident review's follow-ups"
    review_path: Path | None = None

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

    def start_response(self) -> None:
        self.journal.start_response(self.incident_id, self.flow_run_id)

    def tell(self, status: str, description: str, next_steps: list[str], mention_level: str | None = None) -> None:
        """The incident's news in its Slack thread, and to the people `[oncall]` routes its severity to.

        People are paged when the incident opens (L1) and when it escalates (that level). INFO is not posted
        one by one: its outcome becomes a line of the daily digest."""
        incident = self.journal.get(self.incident_id)
        severity = self.alert.severity.value
        if self.alert.severity is Severity.INFO:
            if status in ("RESOLVED", "ESCALATED"):
                notify_people(self.settings.oncall, self.settings.journal_url, self.incident_id, severity,
                              f"{self.alert.title} on {self.bot_name}: {self._redact(description)}", "",
                              status=status)
            return
        level = mention_level or "L1"
        notice = AlertNotice(
            alert_type=self.alert.title, severity=severity, timestamp=incident.fired_at,
            description=f"{description} (bot {self.bot_name}, incident #{self.incident_id})",
            impact=self.alert.impact, status=status, actions_taken=list(self.actions_taken),
            next_steps=next_steps, mention=mention_for(self.settings, mention_level) if mention_level else None,
        )
        notify(self.settings.slack, self.settings.journal_url, self.incident_id, notice)
        if status == "OPEN":
            self._tell_stakeholders(incident)
        if status in ("OPEN", "ESCALATED"):
            notify_people(self.settings.oncall, self.settings.journal_url, self.incident_id, severity,
                          page_subject(severity, status, self.alert.title, self.bot_name, self.incident_id, level),
                          self._redact(notice.render()), level=level, status=status)

    # -- endings ---------------------------------------------------------------------------------

    def resolve(self, outcome: str, summary: str) -> Outcome:
        self.journal.resolve(self.incident_id, outcome, self._redact(summary))
        self.note(f"resolved ({outcome}): {summary}")
        steps = ["review the incident report"] if outcome != j.FALSE_POSITIVE else []
        if self.alert.severity in (Severity.CRITICAL, Severity.EMERGENCY):
            self.review_path = self._write_review(self.journal.get(self.incident_id))
            steps.append(f"post-incident review: {self.review_path}")
        self.tell("RESOLVED", summary, steps)
        self._tell_stakeholders(self.journal.get(self.incident_id))
        return self._finish()

    def escalate(self, level: str, summary: str, next_steps: list[str], outcome: str = j.OUTCOME_ESCALATED) -> Outcome:
        who = _ROLES[level]
        self.journal.escalate(self.incident_id, level, self._redact(summary), outcome=outcome)
        self.note(f"escalated to {level} ({who}): {summary}")
        self.tell("ESCALATED", f"{summary} Escalated to {level} ({who}).", next_steps, mention_level=level)
        self._tell_stakeholders(self.journal.get(self.incident_id))
        return self._finish()

    # -- stakeholders and the post-incident review (CRITICAL and EMERGENCY) ------------------------

    def _tell_stakeholders(self, incident: j.Incident) -> None:
        """The runbook's stakeholder template, filled from the journal: at open (once per incident) and when
        the run ends (resolved, or escalated and still being worked on)."""
        if self.alert.severity not in (Severity.CRITICAL, Severity.EMERGENCY):
            return
        opening = incident.status == j.OPEN
        if opening and any(n.status_line == "STAKEHOLDER" for n in incident.notifications):
            return
        end = incident.resolved_at or utcnow()
        minutes = (end - incident.fired_at).total_seconds() / 60
        if incident.status == j.RESOLVED:
            duration, status = f"{minutes:.0f} min ({incident.fired_at:%H:%M}-{end:%H:%M} UTC)", f"operational (resolved: {incident.outcome})"
        elif incident.status == j.ESCALATED:
            duration = f"{minutes:.0f} min so far (since {incident.fired_at:%H:%M} UTC), ongoing"
            status = f"degraded: escalated to {incident.escalation_level} ({_ROLES.get(incident.escalation_level or '', '')}), being worked on"
        else:
            duration, status = f"began {incident.fired_at:%Y-%m-%d %H:%M} UTC, ongoing", "under investigation"
        contacts = self.settings.oncall.contacts("L1")
        update = StakeholderUpdate(
            severity=incident.severity,
            brief_description=f"{self.alert.title} on bot {self.bot_name}, incident #{incident.id}",
            impact_on_trading=self.alert.impact, downtime_duration=duration,
            identified_cause="under investigation" if opening else incident.summary,
            steps_taken=[f"{a.at:%H:%M:%S} {a.description}" for a in incident.actions],
            preventive_measures=self.prevention + (f" (review: {self.review_path})" if self.review_path else ""),
            status=status,
            on_call_engineer=contacts[0].name if contacts else (self.settings.slack.escalation.get("L1") or "the on-call engineer"),
        )
        notify_stakeholders(self.settings.slack, self.settings.journal_url, self.incident_id, update)

    def _write_review(self, incident: j.Incident) -> Path:
        """The post-incident review beside the incident report: timeline, detection, actions with times, root
        cause as found, prevention, follow-ups."""
        actions = "\n".join(f"| {a.at:%H:%M:%S} | {a.step} | {'ok' if a.ok else 'FAILED'}{' (dry-run)' if a.dry_run else ''} "
                            f"| {a.description.replace('|', '/')} |" for a in incident.actions) or "| | | | none |"
        timeline = "\n".join(f"| {at:%H:%M:%S} | {text.replace('|', '/')} |" for at, text in self.timeline)
        missed = [d for d in self.journal.deliveries(incident.id) if d.channel != j.DIGEST and not d.delivered]
        follow_ups = [f"confirm the prevention below is in place for {self.alert.title}"]
        if incident.repeat_count:
            follow_ups.append(f"the alert repeated {incident.repeat_count} time(s) while open: check its threshold")
        if missed:
            follow_ups.append(f"{len(missed)} page(s) never reached a person: check the [oncall] channels")
        if any(not a.ok for a in incident.actions):
            follow_ups.append("some actions failed: see the table above")
        response = (f"{(incident.response_started_at - incident.fired_at).total_seconds():.0f} s after it fired"
                    if incident.response_started_at else "no automated response recorded")
        text = (
            f"# Post-incident review: incident #{incident.id}, {self.alert.title}\n\n"
            f"Bot {incident.bot}, severity {incident.severity}, outcome **{incident.outcome}**, fired "
            f"{j._iso(incident.fired_at)}, resolved {j._iso(incident.resolved_at) or '-'}.\n\n"
            f"## Detection\n\nFired at {j._iso(incident.fired_at)} ({self.alert.condition}); repeats while open: "
            f"{incident.repeat_count}. Response started {response}.\n\n"
            f"## Timeline (UTC)\n\n| time | event |\n|---|---|\n{timeline}\n\n"
            f"## Actions\n\n| time | step | result | description |\n|---|---|---|---|\n{actions}\n\n"
            f"## Root cause (as found)\n\n{incident.summary}\n\n"
            f"## Prevention\n\n{self.prevention}\n\n"
            f"## Follow-ups\n\n" + "\n".join(f"- [ ] {item}" for item in follow_ups) + "\n"
        )
        folder = self.settings.reports_dir / "incidents"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"incident-{incident.id}-review.md"
        path.write_text(self._redact(text))
        return path

    def _finish(self) -> Outcome:
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
        pages = "\n".join(
            f"| {d.at:%H:%M:%S} | {d.channel} | {d.level} {d.contact} | {d.status_line} | "
            + ("kept for the daily digest" if d.channel == j.DIGEST else "delivered" if d.delivered
               else f"NOT delivered after {d.attempts} attempt(s): {(d.error or '').replace('|', '/')}") + " |"
            for d in self.journal.deliveries(incident.id)
        ) or "| | | | | none |"
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
            + (f"**Post-incident review:** [{self.review_path.name}]({self.review_path})\n\n" if self.review_path else "")
            + f"## Timeline (UTC)\n\n| time | event |\n|---|---|\n{rows}\n\n"
            f"## Actions\n\n| time | step | result | description |\n|---|---|---|---|\n{action_rows}\n\n"
            f"## Evidence\n\n{evidence}\n\n"
            f"## Notifications\n\n| time | status | delivery |\n|---|---|---|\n{notes}\n\n"
            f"## Pages to people\n\n| time | channel | to | status | delivery |\n|---|---|---|---|---|\n{pages}\n"
        )

    def _redact(self, text: str) -> str:
        return redact(text, secrets_of(self.settings))


def secrets_of(settings: Settings) -> list[str | None]:
    """What must never be shown: the Slack token and every people channel URL."""
    try:
        token = resolve_secret(settings.slack.token, None)
    except Exception:
        token = None
    return [token, *settings.oncall.secrets()]


def mention_for(settings: Settings, level: str) -> str | None:
    """Slack mentions of a level: its contacts' Slack ids from `[oncall]`, else `[slack.escalation]`."""
    ids = [f"<@{c.slack_id}>" for c in settings.oncall.contacts(level) if c.slack_id]
    return " ".join(ids) if ids else settings.slack.escalation.get(level)


def page_subject(severity: str, status: str, title: str, bot: str, incident_id: int, level: str) -> str:
    return f"[{severity}] {status} {level}: {title} on {bot} (incident #{incident_id})"


def escalate_incident(settings: Settings, incident_id: int, level: str, text: str, next_steps: list[str], *,
                      close_as: str | None = None) -> None:
    """Escalate an incident from outside its flow (the watcher's clock, a run that died): journal it, post
    it in the thread with that level's mentions, and page that level's people. Never raises past the journal.

    `close_as` marks the incident escalated with that outcome (a dead run); otherwise only its level rises."""
    journal = Journal(settings.journal_url)
    incident = journal.get(incident_id)
    alert = get_alert(incident.alert)
    text = redact(text, secrets_of(settings))
    if close_as is not None:
        journal.escalate(incident_id, level, text, outcome=close_as)
    else:
        journal.update(incident_id, escalation_level=level)
    journal.record_action(incident_id, incident.bot, "escalate", text)
    notice = AlertNotice(
        alert_type=alert.title, severity=alert.severity.value, timestamp=incident.fired_at,
        description=f"{incident.summary} (bot {incident.bot}, incident #{incident.id}) — {text}",
        impact=alert.impact, status="ESCALATED", next_steps=next_steps, mention=mention_for(settings, level),
    )
    post_notice(settings.slack, settings.journal_url, incident_id, notice)
    page_people(settings.oncall, settings.journal_url, incident_id, alert.severity.value,
                page_subject(alert.severity.value, "ESCALATED", alert.title, incident.bot, incident_id, level),
                redact(notice.render(), secrets_of(settings)), level=level, status="ESCALATED")


# -- flows that tell the truth ------------------------------------------------------------------


def escalate_dead_run(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """`on_failure` / `on_crashed` hook: a run that died (exception, timeout, killed worker) leaves its incident
    escalated, journaled and announced, never open and silent. A run that escalated by itself is left alone."""
    log = logging.getLogger("runbook.incident")
    if state.name == ESCALATED_STATE:
        return
    params = flow_run.parameters or {}
    try:
        settings = load_settings(params.get("config"))
        journal = Journal(settings.journal_url)
        incident = (journal.get(int(params["incident_id"])) if params.get("incident_id") is not None
                    else journal.incident_for_flow_run(str(flow_run.id)))
        if incident is None or incident.status != j.OPEN:
            return
        reason = f"{state.name}: {state.message}" if state.message else state.name
        escalate_incident(
            settings, incident.id, "L2",
            f"the remediation run {flow_run.name} ({flow_run.id}) ended {reason}; nobody is acting on this incident",
            [f"{_ROLES['L2']}: take over incident #{incident.id}; the run's logs are in the Prefect UI"],
            close_as=j.FAILED,
        )
        log.warning("incident #%s escalated to L2: run %s ended %s", incident.id, flow_run.id, state.name)
    except Exception:  # noqa: BLE001 - a hook must not raise; the watcher still sees the incident open
        log.exception("could not escalate the incident of run %s", flow_run.id)


class IncidentFlow(Flow[..., Any]):
    """A remediation flow whose run ends `Escalated` (type FAILED) when its incident is not resolved.

    Called directly (tests, `runbook run`) it still returns the `Outcome`, so exit codes stay as they were."""

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        state = super().__call__(*args, return_state=True, wait_for=wait_for, **kwargs)
        if return_state:
            return state
        if state.is_failed() and state.name == ESCALATED_STATE:
            return state.result(raise_on_failure=False)
        return state.result()


def truthful(outcome: Any) -> Any:
    """The Outcome as the run's final state: Escalated (FAILED) when the problem remains."""
    if isinstance(outcome, Outcome) and outcome.problem_remains:
        return Failed(name=ESCALATED_STATE, data=outcome,
                      message=f"incident #{outcome.incident_id} {outcome.status} ({outcome.outcome}): {outcome.summary}"[:500])
    return outcome


def incident_flow(*, name: str, description: str, timeout_seconds: float = FLOW_TIMEOUT_SECONDS,
                  **options: Any) -> Callable[[Callable[..., Any]], IncidentFlow]:
    """`@flow` for a remediation: a deadline for the whole run, hooks that escalate the incident of a run that
    dies, and a final state that says whether the incident was resolved."""

    def decorate(fn: Callable[..., Any]) -> IncidentFlow:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            return truthful(fn(*args, **kwargs))

        return IncidentFlow(run, name=name, description=description, timeout_seconds=timeout_seconds,
                            on_failure=[escalate_dead_run], on_crashed=[escalate_dead_run], **options)

    return decorate
