"""Reach people: pager, SMS and email to the contacts routed for a severity, through Apprise.

`page_people(oncall, journal_url, incident_id, severity, subject, body, level=...)` is the one call
for "tell the people routed for severity X at level Ln": it reads the `[oncall]` routing, sends one
message per contact and channel (each with its own deadline), journals every one with its delivery,
and never raises. INFO is not sent at all: it becomes a digest line the daily summary carries.
An undelivered message is retried by the watcher (`retry_due`) with backoff until it is delivered or
its incident is resolved. Channel URLs are secrets: they are never journaled, logged or posted, and
every error text is redacted with them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import apprise
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from runbook import journal as j
from runbook.journal import Delivery, Journal, utcnow
from runbook.redact import redact
from runbook.settings import Contact, OncallSettings
from tasks import NO_CACHE_POLICY


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # the watcher retries outside any flow run
        return logging.getLogger("runbook.oncall")


@dataclass(frozen=True)
class Sent:
    """What became of one message (the journal holds the same)."""

    delivery_id: int
    channel: str
    level: str
    contact: str
    delivered: bool
    error: str | None = None


def with_deadline(url: str, seconds: float) -> str:
    """The Apprise URL with connect/read deadlines (`cto`, `rto`) unless it sets its own: SMTP and HTTP
    sends can then never block longer than this."""
    query = dict(parse_qsl(urlsplit(url).query))
    extra = [f"{name}={seconds:g}" for name in ("cto", "rto") if name not in query]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


# How a pager or phone shows the message (Apprise's notification types).
_NOTIFY_TYPES = {"CRITICAL": apprise.NotifyType.FAILURE, "EMERGENCY": apprise.NotifyType.FAILURE,
                 "WARNING": apprise.NotifyType.WARNING}


def send(url: str, subject: str, body: str, timeout: float, secrets: list[str], severity: str = "INFO") -> str | None:
    """One message through Apprise; None when it was taken, else the (redacted) reason."""
    notifier = apprise.Apprise()
    try:
        added = notifier.add(with_deadline(url, timeout))
    except Exception as error:  # noqa: BLE001 - a malformed URL is a finding, not a crash
        return redact(f"not a usable Apprise URL: {error}", secrets)
    if not added:
        return "not a usable Apprise URL (check its scheme and fields)"
    with apprise.LogCapture(level=logging.WARNING) as captured:
        try:
            ok = notifier.notify(title=subject, body=body,
                                 notify_type=_NOTIFY_TYPES.get(severity, apprise.NotifyType.INFO))
        except Exception as error:  # noqa: BLE001 - a plugin bug must not stop a remediation
            return redact(f"{type(error).__name__}: {error}", secrets)
    if ok:
        return None
    lines = [line.split(" - ", 2)[-1] for line in captured.getvalue().splitlines() if line.strip()]
    return redact("; ".join(lines[-3:]) or "the channel did not take the message", secrets)


def _channels(oncall: OncallSettings, severity: str) -> list[str]:
    return list(oncall.routes.get(severity, []))


def page_people(oncall: OncallSettings, journal_url: str, incident_id: int, severity: str, subject: str,
                body: str, *, level: str = "L1", status: str = "OPEN") -> list[Sent]:
    """Tell the people routed for `severity` at escalation `level` (default L1). Never raises.

    CRITICAL/EMERGENCY go to each L1 contact's pager (and SMS where configured), WARNING by email (and
    SMS), as `[oncall.routes]` says; INFO is kept as a digest line, not sent. Each message is journaled
    with its delivery; the failed ones are retried later by the watcher."""
    logger = _logger()
    secrets = oncall.secrets()
    try:
        journal = Journal(journal_url)
        incident = journal.get(incident_id)
    except Exception as error:  # noqa: BLE001 - no journal, no paging bookkeeping; the flow goes on
        logger.warning("people not paged for incident #%s: %s", incident_id, error)
        return []
    subject, body = redact(subject, secrets), redact(body, secrets)
    sent: list[Sent] = []
    for channel in _channels(oncall, severity):
        if channel == j.DIGEST:
            row = journal.record_delivery(incident_id, incident.bot, channel=j.DIGEST, level=level, contact="digest",
                                          severity=severity, status_line=status, subject=subject, body=body)
            sent.append(Sent(row.id, j.DIGEST, level, "digest", False, "kept for the daily digest"))
            continue
        for contact in oncall.contacts(level):
            url = contact.url(channel)
            if url is None:
                continue
            row = journal.record_delivery(incident_id, incident.bot, channel=channel, level=level,
                                          contact=contact.name, severity=severity, status_line=status,
                                          subject=subject, body=body)
            sent.append(_attempt(oncall, journal, row, url.get_secret_value(), secrets))
    missed = [s for s in sent if not s.delivered and s.channel != j.DIGEST]
    if missed:
        logger.warning("%d of %d page(s) for incident #%s not delivered yet (retried by the watcher): %s",
                       len(missed), len(sent), incident_id, "; ".join(f"{s.channel} {s.contact}: {s.error}" for s in missed))
    return sent


@task(name="page people", cache_policy=NO_CACHE_POLICY)
def notify_people(oncall: OncallSettings, journal_url: str, incident_id: int, severity: str, subject: str,
                  body: str, level: str = "L1", status: str = "OPEN") -> list[Sent]:
    """`page_people` as a flow step."""
    return page_people(oncall, journal_url, incident_id, severity, subject, body, level=level, status=status)


def _backoff(oncall: OncallSettings, attempts: int) -> timedelta:
    seconds = oncall.retry_initial_seconds * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, oncall.retry_max_seconds))


def _attempt(oncall: OncallSettings, journal: Journal, row: Delivery, url: str, secrets: list[str]) -> Sent:
    error = send(url, row.subject, row.body, oncall.send_timeout_seconds, secrets, row.severity)
    attempts = row.attempts + 1
    journal.delivery_attempted(row.id, delivered=error is None, error=error,
                               next_attempt_at=None if error is None else utcnow() + _backoff(oncall, attempts))
    return Sent(row.id, row.channel, row.level, row.contact, error is None, error)


def _contact(oncall: OncallSettings, level: str, name: str) -> Contact | None:
    return next((c for c in oncall.contacts(level) if c.name == name), None)


def retry_due(oncall: OncallSettings, journal_url: str) -> list[Sent]:
    """Send again every undelivered message whose backoff has passed (the watcher calls this each poll).

    A message whose incident was resolved meanwhile, or whose contact or channel is no longer configured,
    is given up and says why in the journal."""
    journal = Journal(journal_url)
    secrets = oncall.secrets()
    done = []
    for row, status in journal.due_deliveries():
        if status == j.RESOLVED:
            journal.abandon_delivery(row.id, "incident resolved")
            continue
        contact = _contact(oncall, row.level, row.contact)
        url = contact.url(row.channel) if contact is not None and row.channel in ("pager", "sms", "email") else None
        if url is None:
            journal.abandon_delivery(row.id, f"{row.level} contact {row.contact!r} has no {row.channel} URL any more")
            continue
        done.append(_attempt(oncall, journal, row, url.get_secret_value(), secrets))
    return done


def digest(journal_url: str, bot: str) -> tuple[list[int], str]:
    """The INFO lines of `bot` not yet carried by a daily summary, as text, with their journal ids."""
    rows = Journal(journal_url).pending_digest(bot)
    text = "\n".join(f"- {row.at.strftime('%Y-%m-%d %H:%M')} UTC #{row.incident_id} {row.subject}" for row in rows)
    return [row.id for row in rows], text
