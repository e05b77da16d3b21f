"""Tell people: the runbook's "Internal Alert Notification" in Slack, one thread per incident.

The first message of an incident opens the thread; later ones reply in it and update the first
message's status line, so the channel shows each incident once with its current state. A failed
notification never stops a remediation: it is recorded in the journal as undelivered with the
reason, and the flow goes on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from runbook.journal import Journal
from runbook.redact import redact
from runbook.settings import SlackSettings, resolve_secret
from tasks import NO_CACHE_POLICY

STATUSES = ("OPEN", "INVESTIGATING", "RESOLVED", "ESCALATED")


@dataclass
class AlertNotice:
    """The fields of the runbook's internal alert template."""

    alert_type: str
    severity: str
    timestamp: datetime
    description: str
    impact: str
    status: str
    actions_taken: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    mention: str | None = None

    def render(self) -> str:
        actions = "\n".join(f"- {a}" for a in self.actions_taken) or "- none yet"
        steps = "\n".join(f"- {s}" for s in self.next_steps) or "- none"
        head = f"{self.mention} " if self.mention else ""
        return (
            f"{head}Subject: [ALERT] Trading Bot - {self.alert_type}\n\n"
            f"Alert Details:\n"
            f"- Severity: {self.severity}\n"
            f"- Time: {self.timestamp.isoformat(timespec='seconds')}\n"
            f"- Description: {self.description}\n"
            f"- Impact: {self.impact}\n\n"
            f"Actions Taken:\n{actions}\n\n"
            f"Next Steps:\n{steps}\n\n"
            f"Status: {self.status}"
        )


def slack_client(settings: SlackSettings) -> WebClient | None:
    token = resolve_secret(settings.token, settings.token_block)
    if not token:
        return None
    return WebClient(
        token=token, base_url=settings.base_url, timeout=int(settings.timeout_seconds),
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2), ConnectionErrorRetryHandler(max_retry_count=1)],
    )


def _reason(error: Exception) -> str:
    if isinstance(error, SlackApiError):
        return f"Slack answered {error.response.status_code}: {error.response.get('error', 'unknown error')}"
    return f"{type(error).__name__}: {error}"


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # the watcher escalates outside any flow run
        return logging.getLogger("runbook.notify")


@task(name="notify Slack", cache_policy=NO_CACHE_POLICY)
def notify(settings: SlackSettings, journal_url: str, incident_id: int, notice: AlertNotice) -> bool:
    """Post `notice` in the incident's thread (a flow step)."""
    return post_notice(settings, journal_url, incident_id, notice)


# Slack action ids of the buttons; the intake's POST /slack/interactions dispatches on them.
ACK_ACTION, APPROVE_ACTION, REJECT_ACTION = "runbook_ack", "runbook_approve", "runbook_reject"
# Statuses whose message carries the Acknowledge button (a person may still need to take the incident).
_ACKABLE = ("OPEN", "INVESTIGATING", "ESCALATED")
_SECTION_LIMIT = 3000  # Slack's limit on a section block's text


def text_sections(text: str) -> list[dict[str, Any]]:
    chunks = [text[i:i + _SECTION_LIMIT] for i in range(0, len(text), _SECTION_LIMIT)][:40] or [" "]
    return [{"type": "section", "text": {"type": "mrkdwn", "text": chunk}} for chunk in chunks]


def button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": text}, "action_id": action_id,
                              "value": value}
    if style:
        button["style"] = style
    return button


def post_notice(settings: SlackSettings, journal_url: str, incident_id: int, notice: AlertNotice) -> bool:
    """Post `notice` in the incident's thread. Returns whether Slack took it; never raises.

    While the incident is not acknowledged, the message carries an Acknowledge button."""
    incident = Journal(journal_url).get(incident_id)
    text = notice.render()
    blocks = None
    if notice.status in _ACKABLE and incident.acknowledged_at is None:
        blocks = text_sections(text) + [{"type": "actions", "block_id": f"incident-{incident_id}", "elements": [
            button("Acknowledge", ACK_ACTION, str(incident_id), "primary")]}]
    root = (f"[{notice.status}] [ALERT] Trading Bot - {notice.alert_type} "
            f"(incident #{incident_id}, bot {incident.bot})")
    return post_in_thread(settings, journal_url, incident_id, notice.status, text, blocks=blocks,
                          root_text=root) is not None


def post_in_thread(settings: SlackSettings, journal_url: str, incident_id: int, status_line: str, text: str, *,
                   blocks: list[dict[str, Any]] | None = None, root_text: str | None = None) -> tuple[str, str] | None:
    """Post in the incident's thread (its first message opens it); `root_text` also updates the thread's
    first message. Journaled as a notification either way. Returns (channel, ts), or None when Slack did not
    take it; never raises."""
    logger = _logger()
    journal = Journal(journal_url)
    token = None
    try:
        token = resolve_secret(settings.token, settings.token_block)
    except Exception as error:  # a missing Secret block must not stop the remediation
        logger.warning("Slack token unavailable: %s", _reason(error))
    text = redact(text, [token])
    if blocks is not None:
        blocks = json.loads(redact(json.dumps(blocks), [token]))
    incident = journal.get(incident_id)
    channel = incident.slack_channel or settings.channel
    if not token:
        journal.record_notification(incident_id, channel, status_line, text, delivered=False,
                                    error="Slack is not configured (no token)")
        logger.warning("Slack not configured; notification %s kept in the journal", status_line)
        return None
    client = slack_client(settings)
    assert client is not None
    try:
        if incident.slack_ts:
            reply = client.chat_postMessage(channel=incident.slack_channel, text=text, blocks=blocks,
                                            thread_ts=incident.slack_ts)
            if root_text:
                try:
                    client.chat_update(channel=incident.slack_channel, ts=incident.slack_ts,
                                       text=redact(root_text, [token]))
                except SlackApiError as error:  # the reply is what matters; the status line is a nicety
                    logger.warning("could not update the thread's first message: %s", _reason(error))
            ts = reply["ts"]
        else:
            reply = client.chat_postMessage(channel=channel, text=text, blocks=blocks)
            ts = reply["ts"]
            journal.update(incident_id, slack_channel=reply["channel"], slack_ts=ts)
    except Exception as error:
        reason = _reason(error)
        journal.record_notification(incident_id, channel, status_line, text, delivered=False, error=reason)
        logger.warning("Slack notification %s not delivered (%s); kept in the journal", status_line, reason)
        return None
    journal.record_notification(incident_id, channel, status_line, text, delivered=True, ts=ts)
    return str(reply["channel"]), str(ts)


# -- reports: a file into the channel -----------------------------------------------------------


@dataclass
class Upload:
    """What became of a report posted to Slack: delivered with its permalink, or why not."""

    delivered: bool
    channel: str
    permalink: str | None = None
    error: str | None = None


def channel_id(client: WebClient, channel: str) -> str:
    """The id of a channel given as `#name`, `name` or an id (file uploads take ids only)."""
    name = channel.lstrip("#")
    cursor = None
    while True:
        page = client.conversations_list(types="public_channel,private_channel", exclude_archived=True, limit=1000,
                                         cursor=cursor)
        for found in page.get("channels") or []:
            if found.get("id") == channel or found.get("name") == name:
                return str(found["id"])
        cursor = (page.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            raise LookupError(f"no Slack channel {channel!r} visible to the bot")


def upload_file(settings: SlackSettings, path: str, message: str, title: str, channel: str | None = None) -> Upload:
    """Upload the file at `path` into `channel` (default: the alert channel) with `message` as its comment.

    Never raises: a report is not lost because Slack is down; the caller says so in its artifact."""
    logger = _logger()
    target = channel or settings.channel
    token = None
    try:
        token = resolve_secret(settings.token, settings.token_block)
    except Exception as error:
        logger.warning("Slack token unavailable: %s", _reason(error))
    if not token:
        return Upload(False, target, error="Slack is not configured (no token)")
    client = slack_client(settings)
    assert client is not None
    try:
        answer = client.files_upload_v2(channel=channel_id(client, target), file=str(path),
                                        filename=path.rsplit("/", 1)[-1], title=title,
                                        initial_comment=redact(message, [token]))
    except Exception as error:
        reason = _reason(error)
        logger.warning("could not post %s to Slack %s: %s", title, target, reason)
        return Upload(False, target, error=reason)
    file = answer.get("file") or {}
    return Upload(True, target, permalink=file.get("permalink"))


@task(name="post report to Slack", cache_policy=NO_CACHE_POLICY, timeout_seconds=120)
def post_report(settings: SlackSettings, path: str, message: str, title: str, channel: str | None = None) -> Upload:
    """The PDF into the channel with a short summary as its comment (a failed post fails nothing)."""
    return upload_file(settings, path, message, title, channel)


# -- stakeholders: the runbook's "Stakeholder Communication" ------------------------------------


@dataclass
class StakeholderUpdate:
    """The fields of the runbook's stakeholder template ("Trading System Status Update")."""

    severity: str
    brief_description: str
    impact_on_trading: str
    downtime_duration: str
    identified_cause: str
    steps_taken: list[str]
    preventive_measures: str
    status: str
    on_call_engineer: str

    def render(self) -> str:
        steps = "".join(f"\n- {step}" for step in self.steps_taken) or " none yet"
        return (
            "Subject: Trading System Status Update\n\n"
            "Dear Team,\n\n"
            f"We experienced a {self.severity} incident with the trading system:\n\n"
            f"Issue: {self.brief_description}\n"
            f"Impact: {self.impact_on_trading}\n"
            f"Duration: {self.downtime_duration}\n\n"
            f"Root Cause: {self.identified_cause}\n"
            f"Resolution:{steps}\n\n"
            f"Prevention: {self.preventive_measures}\n\n"
            f"The system is now {self.status}.\n"
            f"Please contact {self.on_call_engineer} with questions.\n\n"
            "Best regards,\n"
            "Trading Operations Team"
        )


@task(name="notify stakeholders", cache_policy=NO_CACHE_POLICY)
def notify_stakeholders(settings: SlackSettings, journal_url: str, incident_id: int, update: StakeholderUpdate) -> bool:
    """Post the stakeholder update to the stakeholder channel (its own message, not the incident thread).

    Recorded in the journal like every notification (status "STAKEHOLDER"); never raises."""
    logger = _logger()
    journal = Journal(journal_url)
    channel = settings.stakeholder_channel
    token = None
    try:
        token = resolve_secret(settings.token, settings.token_block)
    except Exception as error:
        logger.warning("Slack token unavailable: %s", _reason(error))
    text = redact(update.render(), [token])
    if not token:
        journal.record_notification(incident_id, channel, "STAKEHOLDER", text, delivered=False,
                                    error="Slack is not configured (no token)")
        return False
    client = slack_client(settings)
    assert client is not None
    try:
        reply = client.chat_postMessage(channel=channel, text=text)
    except Exception as error:
        reason = _reason(error)
        journal.record_notification(incident_id, channel, "STAKEHOLDER", text, delivered=False, error=reason)
        logger.warning("stakeholder update not delivered (%s); kept in the journal", reason)
        return False
    journal.record_notification(incident_id, channel, "STAKEHOLDER", text, delivered=True, ts=reply["ts"])
    return True
