"""People in the loop, in Slack: a run paused for approval asks in the incident's thread (Approve / Reject
buttons, the run's link, the real `runbook approve <run id>`) and shows the answer there; an acknowledged
incident says who took it. The buttons come back through the intake's POST /slack/interactions.
"""

from __future__ import annotations

from datetime import datetime, timezone

from runbook.journal import Approval, Incident, Journal, utcnow
from runbook.redact import redact
from runbook.settings import Settings, SlackSettings, resolve_secret
from tasks.notify import (
    APPROVE_ACTION, REJECT_ACTION, _logger, _reason, button, post_in_thread, slack_client, text_sections,
)


def _when(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def approval_request_text(approval: Approval, title: str) -> str:
    """What the thread says when a run pauses for a person: the action, the deadline, where to answer."""
    left = max(0, int((approval.deadline - utcnow()).total_seconds()))
    return (f":raised_hand: *Approval needed* — {title} (bot {approval.bot}, incident #{approval.incident_id})\n"
            f"*Action:* {approval.kind} — {approval.action}\n"
            f"*Deadline:* {_when(approval.deadline)} (in {left // 60} min {left % 60:02d} s); no answer by then "
            "counts as rejected and nothing is done\n"
            f"*Run:* {approval.ui_url or approval.flow_run_id}\n"
            f"*Answer:* the buttons below, the form at the run's link, or `runbook approve {approval.flow_run_id}` "
            f"(`runbook approve {approval.flow_run_id} --reject` to reject)")


def post_approval_request(settings: SlackSettings, journal_url: str, approval: Approval, title: str) -> bool:
    """Ask in the incident's thread, with Approve / Reject buttons; the message's place is kept on the
    approval so the answer can replace the buttons. Never raises."""
    if approval.incident_id is None:
        return False
    text = approval_request_text(approval, title)
    blocks = text_sections(text) + [{"type": "actions", "block_id": f"approval-{approval.id}", "elements": [
        button("Approve", APPROVE_ACTION, approval.flow_run_id, "primary"),
        button("Reject", REJECT_ACTION, approval.flow_run_id, "danger")]}]
    posted = post_in_thread(settings, journal_url, approval.incident_id, "APPROVAL", text, blocks=blocks)
    if posted is None:
        return False
    Journal(journal_url).update_approval(approval.id, slack_channel=posted[0], slack_ts=posted[1])
    return True


def approval_outcome_text(approval: Approval, who: str) -> str:
    if approval.status == "timed-out":
        return f"no answer by {_when(approval.deadline)}: counted as rejected, nothing done"
    note = f" ({approval.note})" if approval.note else ""
    at = _when(approval.decided_at) if approval.decided_at else "now"
    return f"{approval.status} by {who} at {at}{note}"


def post_approval_outcome(settings: SlackSettings, journal_url: str, approval: Approval, title: str,
                          who: str) -> bool:
    """Replace the request's buttons with its outcome (who answered, from where, when). Never raises."""
    if not approval.slack_ts or not approval.slack_channel:
        return False
    logger = _logger()
    outcome = approval_outcome_text(approval, who)
    request = Journal(journal_url).get_approval(approval.id)
    text = approval_request_text(request, title).split("\n*Answer:*")[0] + f"\n*Outcome:* {outcome}"
    client = slack_client(settings)
    if client is None:
        return False
    try:
        token = resolve_secret(settings.token, settings.token_block)
        client.chat_update(channel=approval.slack_channel, ts=approval.slack_ts, text=redact(text, [token]),
                           blocks=text_sections(redact(text, [token])))
    except Exception as error:  # noqa: BLE001
        logger.warning("approval message not updated with its outcome: %s", _reason(error))
        return False
    return True


def post_acknowledgement(settings: SlackSettings, journal_url: str, incident_id: int, by: str, via: str,
                         note: str = "") -> bool:
    """Say in the thread who took the incident: the escalation ladder stops here. Never raises."""
    text = (f":white_check_mark: Acknowledged by {by} via {via}" + (f": {note}" if note else "")
            + f" — incident #{incident_id} will not be escalated further.")
    return post_in_thread(settings, journal_url, incident_id, "ACKNOWLEDGED", text) is not None


def acknowledge(settings: Settings, incident_id: int, by: str, via: str, note: str = "") -> tuple[Incident, bool]:
    """A person takes the incident (`runbook ack`, the Slack button, a pager's webhook): journaled, the
    escalation stops, and the thread says so (the first time). Raises JournalError for an unknown or
    resolved incident. Returns the incident and whether this was its first acknowledgement."""
    incident, first = Journal(settings.journal_url).acknowledge(incident_id, by, via, note)
    if first:
        post_acknowledgement(settings.slack, settings.journal_url, incident_id, by, via, note)
    return incident, first

