"""Firing an alert: into the journal (deduplicated) and out as a Prefect event.

Both the watcher and the webhook intake come through here. A repeat of an open incident is counted
on it and emits nothing, so a flapping condition never starts a second remediation. Each deployment
has a trigger on `runbook.alert.fired` events for its alert; the event carries the incident id, the
triggered run records its own id on the incident, and the incident records the event id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from prefect.events import emit_event

from runbook import journal as j
from runbook.alerts import get_alert
from runbook.journal import Journal, utcnow
from runbook.settings import SlackSettings
from tasks.notify import AlertNotice, post_notice

EVENT_FIRED = "runbook.alert.fired"
# An automated incident whose remediation has not started this long after it fired is triggered
# again on its next repeat (the first trigger was lost: server down, runner stopped, worker killed).
RETRIGGER_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class Firing:
    incident_id: int
    alert: str
    bot: str
    created: bool
    event_id: str | None
    automated: bool

    def describe(self) -> str:
        if not self.created:
            return f"{self.alert} on {self.bot}: repeat counted on open incident #{self.incident_id}"
        how = "remediation triggered" if self.automated else "no automated response: a person must act"
        return f"{self.alert} on {self.bot}: incident #{self.incident_id} opened ({how})"


def event_resource(alert: str, bot: str, incident_id: int) -> dict[str, str]:
    return {
        "prefect.resource.id": f"runbook.incident.{incident_id}",
        "prefect.resource.name": f"{alert} on {bot}",
        "runbook.alert": alert,
        "runbook.bot": bot,
        "runbook.incident": str(incident_id),
    }


def fire_alert(journal: Journal, alert_key: str, bot: str, summary: str, *, source: str,
               automated: set[str], slack: SlackSettings | None = None, journal_url: str | None = None) -> Firing:
    """Record the alert and, for a new incident, emit the event that starts its remediation.

    An alert with no automated response is announced in Slack here (given `slack`), since no flow
    will do it; an automated one is announced by its flow.
    """
    alert = get_alert(alert_key)
    is_automated = alert.key in automated
    incident, created = journal.open_incident(alert.key, bot, alert.severity.value, summary)
    if not created:
        stuck = (is_automated and incident.response_started_at is None
                 and utcnow() - (incident.triggered_at or incident.fired_at) > RETRIGGER_AFTER)
        if stuck:
            journal.update(incident.id, triggered_at=utcnow(),
                           event_id=_emit(alert.key, bot, incident.id, summary, source, retrigger=True))
        return Firing(incident.id, alert.key, bot, False, incident.event_id, is_automated)
    event_id = _emit(alert.key, bot, incident.id, summary, source)
    fields: dict[str, object] = {"event_id": event_id, "triggered_at": utcnow()}
    if not is_automated:
        fields["outcome"] = j.NO_AUTOMATION
    journal.update(incident.id, **fields)
    if not is_automated and slack is not None and journal_url is not None:
        post_notice(slack, journal_url, incident.id, AlertNotice(
            alert_type=alert.title, severity=alert.severity.value, timestamp=incident.fired_at,
            description=f"{summary} (bot {bot}, incident #{incident.id})", impact=alert.impact, status="OPEN",
            next_steps=["no automated response yet: follow the runbook section by hand"],
        ))
    return Firing(incident.id, alert.key, bot, True, event_id, is_automated)


def _emit(alert: str, bot: str, incident_id: int, summary: str, source: str, retrigger: bool = False) -> str | None:
    event = emit_event(
        event=EVENT_FIRED,
        resource=event_resource(alert, bot, incident_id),
        payload={"incident_id": incident_id, "summary": summary, "source": source, "retrigger": retrigger},
    )
    return str(event.id) if event is not None else None
