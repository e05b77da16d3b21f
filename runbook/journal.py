"""The incident journal: every incident, the actions taken in it and the notifications sent.

SQLAlchemy, SQLite by default (WAL, created on first use), any SQLAlchemy URL by config; PostgreSQL
(`postgresql+psycopg://...`) for a journal shared by several watchers. It survives restarts and is the
source of the weekly KPIs. One unresolved incident per alert and bot is enforced by the database itself
(a unique key), so two alerts racing each other -- or two watchers on two hosts -- cannot open two.

The schema is Alembic's (runbook/migrations): the first use of a journal in a process upgrades it to the
newest revision, a journal made before Alembic included (see migrate()).
"""

from __future__ import annotations

import fcntl
import gc
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean, DateTime, ForeignKey, Index, Integer, String, Text, create_engine, event, func, inspect, or_, select,
    text, type_coerce, update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

OPEN, RESOLVED, ESCALATED = "open", "resolved", "escalated"
# Outcomes (DESIGN.md "KPI definitions"), plus no-automation for alerts whose flow does not exist yet.
AUTO_RESOLVED = "auto-resolved"
RESOLVED_MANUALLY = "resolved-manually"
FALSE_POSITIVE = "false-positive"
OUTCOME_ESCALATED = "escalated"
FAILED = "failed"
NO_AUTOMATION = "no-automation"
OUTCOMES = (AUTO_RESOLVED, RESOLVED_MANUALLY, FALSE_POSITIVE, OUTCOME_ESCALATED, FAILED, NO_AUTOMATION)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), always handed back aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("journal times must be timezone-aware")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    pass


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert: Mapped[str] = mapped_column(String(64), index=True)
    bot: Mapped[str] = mapped_column(String(128), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=OPEN)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_fired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    response_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    repeat_count: Mapped[int] = mapped_column(Integer, default=0)
    escalation_level: Mapped[str | None] = mapped_column(String(4), nullable=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # When its remediation was last triggered (the alert event emitted).
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    slack_channel: Mapped[str | None] = mapped_column(String(64), nullable=True)
    slack_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Unresolved incidents carry their (alert, bot) here; resolved ones NULL, so the unique index
    # below allows one unresolved incident per pair on every database (NULLs never collide).
    open_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    # Set on incidents a drill caused (the drill's id): they never count in the production KPIs.
    drill_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)

    actions: Mapped[list["Action"]] = relationship(back_populates="incident", order_by="Action.id")
    notifications: Mapped[list["Notification"]] = relationship(
        back_populates="incident", order_by="Notification.id"
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alert": self.alert,
            "bot": self.bot,
            "severity": self.severity,
            "status": self.status,
            "outcome": self.outcome,
            "summary": self.summary,
            "fired_at": _iso(self.fired_at),
            "last_fired_at": _iso(self.last_fired_at),
            "response_started_at": _iso(self.response_started_at),
            "resolved_at": _iso(self.resolved_at),
            "repeat_count": self.repeat_count,
            "escalation_level": self.escalation_level,
            "flow_run_id": self.flow_run_id,
            "event_id": self.event_id,
            "drill_id": self.drill_id,
        }


class Drill(Base):
    """One drill (flows/drill.py): while `active_until` is ahead, incidents opened on its bot are its own."""

    __tablename__ = "drills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot: Mapped[str] = mapped_column(String(128), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A lease, renewed per scenario: a drill that died stops claiming incidents when it runs out.
    active_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    scenarios: Mapped[str] = mapped_column(Text, default="[]")
    # The drill's figures (reports/drill.py DrillReport.to_dict) once finished, as JSON.
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    report_path: Mapped[str | None] = mapped_column(Text, nullable=True)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "bot": self.bot, "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "status": self.status,
                "scenarios": json.loads(self.scenarios or "[]"),
                "result": json.loads(self.result) if self.result else None, "report_path": self.report_path}


class Action(Base):
    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    bot: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    step: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    incident: Mapped[Incident] = relationship(back_populates="actions")

    def as_dict(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "step": self.step, "description": self.description, "ok": self.ok,
                "dry_run": self.dry_run, "detail": json.loads(self.detail) if self.detail else None}


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    channel: Mapped[str] = mapped_column(String(64))
    status_line: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    ts: Mapped[str | None] = mapped_column(String(32), nullable=True)

    incident: Mapped[Incident] = relationship(back_populates="notifications")

    def as_dict(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "channel": self.channel, "status": self.status_line,
                "delivered": self.delivered, "error": self.error, "ts": self.ts}


class Delivery(Base):
    """One message to one person on one channel (pager, sms, email) or an INFO line kept for the digest.

    The channel's URL is never stored (it is a secret): `level` and `contact` name where it is configured,
    so a retry reads the URL from the settings of the moment."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    bot: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    channel: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(4))
    contact: Mapped[str] = mapped_column(String(128))
    severity: Mapped[str] = mapped_column(String(16))
    status_line: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set when the delivery is given up (its incident resolved before it got through).
    abandoned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "incident_id": self.incident_id, "at": _iso(self.at), "channel": self.channel,
                "level": self.level, "contact": self.contact, "status": self.status_line,
                "delivered": self.delivered, "delivered_at": _iso(self.delivered_at), "attempts": self.attempts,
                "next_attempt_at": _iso(self.next_attempt_at), "error": self.error,
                "abandoned_at": _iso(self.abandoned_at)}


DIGEST = "digest"

Index("ix_actions_bot_step_at", Action.bot, Action.step, Action.at)


class BalanceHigh(Base):
    """An all-time balance high of a bot, as the new-balance-high flow confirmed and recorded it."""

    __tablename__ = "balance_highs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Exact decimal text (money is never a float here); `previous` is the high it beat, if any.
    balance: Mapped[str] = mapped_column(String(64))
    previous: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str] = mapped_column(String(32))
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), nullable=True)
    config_backup: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The strategy settings and performance that produced it (JSON).
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def amount(self) -> Decimal:
        return Decimal(self.balance)

    def as_dict(self) -> dict[str, Any]:
        return {"bot": self.bot, "at": _iso(self.at), "balance": self.balance, "previous": self.previous,
                "source": self.source, "incident_id": self.incident_id, "config_backup": self.config_backup,
                "detail": json.loads(self.detail) if self.detail else None}


# The columns the weekly KPIs read (reports/weekly.py), in this order.
KPI_COLUMNS = ("id", "alert", "bot", "severity", "status", "outcome", "fired_at", "response_started_at",
               "resolved_at", "repeat_count")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def _open_key(alert: str, bot: str) -> str:
    return f"{alert}\x1f{bot}"


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    migrate(engine)
    return engine


MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision of runbook/migrations. A journal already there opens without importing Alembic (a
# process that only records an incident pays nothing for migrations); a new migration bumps it
# (tests/test_journal_migrations.py checks it is the head).
SCHEMA_REVISION = "0004"
MIGRATION_LOCK_SECONDS = 60.0
# A journal made before Alembic has no alembic_version: the newest of these revisions whose tables and
# columns it all has is the one it is at (both were made by create_all of the model of their time).
_BEFORE_ALEMBIC = (
    ("0004", {"incidents": {"drill_id"}, "drills": set(), "deliveries": set()}),
    ("0003", {"incidents": {"triggered_at"}, "balance_highs": set(), "deliveries": set()}),
    ("0002", {"incidents": {"triggered_at"}, "balance_highs": set()}),
    ("0001", {"incidents": {"open_key"}, "actions": set(), "notifications": set()}),
)
_PG_MIGRATION_LOCK = 0x72756E626F6F6B  # pg_advisory_xact_lock key: one migration at a time per database


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migration_heads() -> set[str]:
    """The newest revision(s) of runbook/migrations (one, unless two migrations claim the same parent)."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(_alembic_config()).get_heads())


def _revision_before_alembic(connection: Connection) -> str | None:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    for revision, needs in _BEFORE_ALEMBIC:
        if all(table in tables and columns <= {c["name"] for c in inspector.get_columns(table)}
               for table, columns in needs.items()):
            return revision
    return None


@contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    """Processes opening one SQLite journal at once migrate it one after the other (a lock file beside it)."""
    database = url.removeprefix("sqlite:///")
    if not url.startswith("sqlite:///") or database in ("", ":memory:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        deadline = time.monotonic() + MIGRATION_LOCK_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise JournalError(f"another process has been migrating {database} for over "
                                       f"{MIGRATION_LOCK_SECONDS:g} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: Engine) -> list[str]:
    """Bring the journal's schema to the newest migration; returns the revisions applied (none if current).

    A new database gets every migration from the first. A journal made before Alembic (no alembic_version
    table) is stamped with the revision its tables match, then upgraded in place: rows are kept. Several
    processes starting at once take turns: an advisory lock on PostgreSQL, a lock file beside a SQLite
    journal."""
    with engine.connect() as connection:
        if inspect(connection).has_table("alembic_version") and \
                list(connection.scalars(text("SELECT version_num FROM alembic_version"))) == [SCHEMA_REVISION]:
            return []
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = _alembic_config()
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())
    if len(heads) != 1:
        raise JournalError(f"runbook/migrations has {len(heads)} newest revisions ({', '.join(sorted(heads))}): "
                           "two migrations claim the same parent; point one's down_revision at the other")
    with _sqlite_migration_lock(engine.url.render_as_string(hide_password=False)), engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # the wait for another migrating process has a deadline too
            connection.execute(text(f"SET LOCAL lock_timeout = '{int(MIGRATION_LOCK_SECONDS)}s'"))
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        context = MigrationContext.configure(connection)
        current = set(context.get_current_heads())
        if current == heads:
            return []
        if not current:
            before = _revision_before_alembic(connection)
            if before is not None:
                context.stamp(script, before)
                current = {before}
        applied = [rev.revision for rev in script.iterate_revisions("head", min(current) if current else "base")
                   if rev.revision not in current]
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return list(reversed(applied))


class JournalError(Exception):
    pass


def _require(session: Session, incident_id: int) -> Incident:
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise JournalError(f"no incident #{incident_id}")
    return incident


class Journal:
    """Small, explicit operations on the journal; every call is its own transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._sessions = sessionmaker(_engine(url), expire_on_commit=False)
        except Exception as error:  # a bad URL or an unreachable database: say which
            raise JournalError(f"cannot open the incident journal at {url}: {error}") from error

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def open_incident(
        self, alert: str, bot: str, severity: str, summary: str = "", *,
        fired_at: datetime | None = None, flow_run_id: str | None = None, event_id: str | None = None,
    ) -> tuple[Incident, bool]:
        """Open an incident, or count a repeat on the one already open for this alert and bot.

        Returns the incident and whether it was newly created.
        """
        now = fired_at or utcnow()
        key = _open_key(alert, bot)
        drill = self.active_drill(bot)
        for _ in range(3):  # the open one may be resolved between our insert and our update: try again
            try:
                with self._session() as session:
                    incident = Incident(
                        alert=alert, bot=bot, severity=severity, status=OPEN, summary=summary, fired_at=now,
                        last_fired_at=now, flow_run_id=flow_run_id, event_id=event_id, repeat_count=0,
                        open_key=key, drill_id=drill.id if drill is not None else None,
                    )
                    session.add(incident)
                return incident, True
            except IntegrityError:
                with self._session() as session:
                    # One atomic UPDATE, so repeats racing each other are all counted.
                    session.execute(
                        update(Incident).where(Incident.open_key == key)
                        .values(repeat_count=Incident.repeat_count + 1, last_fired_at=utcnow())
                    )
                    found = session.scalars(select(Incident).where(Incident.open_key == key)).first()
                if found is not None:
                    return found, False
        raise JournalError(f"could not open or join an incident for {alert} on {bot}")

    def get(self, incident_id: int) -> Incident:
        with self._session() as session:
            incident = _require(session, incident_id)
            incident.actions, incident.notifications  # load both before the session closes
            return incident

    def find_open(self, alert: str, bot: str) -> Incident | None:
        with self._session() as session:
            return session.scalars(select(Incident).where(Incident.open_key == _open_key(alert, bot))).first()

    def update(self, incident_id: int, **fields: Any) -> None:
        with self._session() as session:
            incident = _require(session, incident_id)
            for name, value in fields.items():
                setattr(incident, name, value)

    def start_response(self, incident_id: int, flow_run_id: str | None = None) -> None:
        """Mark the first remediation step (MTTR ends here); later calls keep the first time."""
        with self._session() as session:
            incident = _require(session, incident_id)
            if incident.response_started_at is None:
                incident.response_started_at = utcnow()
            if flow_run_id:
                incident.flow_run_id = flow_run_id

    def record_action(
        self, incident_id: int, bot: str, step: str, description: str, *, ok: bool = True,
        dry_run: bool = False, detail: dict[str, Any] | None = None,
    ) -> None:
        with self._session() as session:
            session.add(Action(
                incident_id=incident_id, bot=bot, at=utcnow(), step=step, description=description, ok=ok,
                dry_run=dry_run, detail=json.dumps(detail, default=str) if detail is not None else None,
            ))

    def record_notification(
        self, incident_id: int, channel: str, status_line: str, text: str, *, delivered: bool,
        error: str | None = None, ts: str | None = None,
    ) -> None:
        with self._session() as session:
            session.add(Notification(
                incident_id=incident_id, at=utcnow(), channel=channel, status_line=status_line, text=text,
                delivered=delivered, error=error, ts=ts,
            ))

    # -- deliveries to people (pager, SMS, email) and the INFO digest ---------------------------

    def record_delivery(self, incident_id: int, bot: str, *, channel: str, level: str, contact: str,
                        severity: str, status_line: str, subject: str, body: str) -> Delivery:
        with self._session() as session:
            delivery = Delivery(incident_id=incident_id, bot=bot, at=utcnow(), channel=channel, level=level,
                                contact=contact, severity=severity, status_line=status_line, subject=subject,
                                body=body, delivered=False, attempts=0)
            session.add(delivery)
        return delivery

    def delivery_attempted(self, delivery_id: int, *, delivered: bool, error: str | None = None,
                           next_attempt_at: datetime | None = None) -> None:
        with self._session() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                raise JournalError(f"no delivery #{delivery_id}")
            delivery.attempts += 1
            delivery.delivered = delivered
            delivery.error = None if delivered else error
            delivery.delivered_at = utcnow() if delivered else None
            delivery.next_attempt_at = None if delivered else next_attempt_at

    def deliveries(self, incident_id: int | None = None, *, channel: str | None = None) -> list[Delivery]:
        query = select(Delivery).order_by(Delivery.id)
        if incident_id is not None:
            query = query.where(Delivery.incident_id == incident_id)
        if channel is not None:
            query = query.where(Delivery.channel == channel)
        with self._session() as session:
            return list(session.scalars(query))

    def due_deliveries(self, now: datetime | None = None) -> list[tuple[Delivery, str]]:
        """Undelivered messages (not digest lines, not given up) whose next attempt is due, each with the
        status of its incident."""
        query = (select(Delivery, Incident.status).join(Incident, Delivery.incident_id == Incident.id)
                 .where(Delivery.delivered.is_(False), Delivery.channel != DIGEST, Delivery.abandoned_at.is_(None),
                        Delivery.next_attempt_at <= (now or utcnow()))
                 .order_by(Delivery.id))
        with self._session() as session:
            return [(delivery, status) for delivery, status in session.execute(query).all()]

    def abandon_delivery(self, delivery_id: int, reason: str) -> None:
        with self._session() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is not None:
                delivery.abandoned_at = utcnow()
                delivery.next_attempt_at = None
                delivery.error = f"{delivery.error or ''} (given up: {reason})".strip()

    def pending_digest(self, bot: str | None = None) -> list[Delivery]:
        """INFO lines not yet carried by a daily summary."""
        query = select(Delivery).where(Delivery.channel == DIGEST, Delivery.delivered.is_(False)).order_by(Delivery.id)
        if bot is not None:
            query = query.where(Delivery.bot == bot)
        with self._session() as session:
            return list(session.scalars(query))

    def digest_carried(self, delivery_ids: list[int]) -> None:
        if not delivery_ids:
            return
        with self._session() as session:
            session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids))
                            .values(delivered=True, delivered_at=utcnow(), attempts=Delivery.attempts + 1))

    def incident_for_flow_run(self, flow_run_id: str) -> Incident | None:
        with self._session() as session:
            return session.scalars(select(Incident).where(Incident.flow_run_id == flow_run_id)
                                   .order_by(Incident.id.desc())).first()

    def resolve(self, incident_id: int, outcome: str, summary: str) -> None:
        if outcome not in OUTCOMES:
            raise JournalError(f"unknown outcome {outcome!r}")
        with self._session() as session:
            incident = _require(session, incident_id)
            incident.status = RESOLVED
            incident.outcome = outcome
            incident.summary = summary
            incident.resolved_at = utcnow()
            incident.open_key = None

    def escalate(self, incident_id: int, level: str, summary: str, *, outcome: str = OUTCOME_ESCALATED) -> None:
        """The problem remains: the incident stays unresolved, marked escalated at `level`."""
        with self._session() as session:
            incident = _require(session, incident_id)
            incident.status = ESCALATED
            incident.outcome = outcome
            incident.summary = summary
            incident.escalation_level = level

    def incidents(self, *, open_only: bool = False, alert: str | None = None, bot: str | None = None,
                  since: datetime | None = None, limit: int | None = None) -> list[Incident]:
        query = select(Incident).order_by(Incident.fired_at.desc(), Incident.id.desc())
        if open_only:
            query = query.where(Incident.status != RESOLVED)
        if alert:
            query = query.where(Incident.alert == alert)
        if bot:
            query = query.where(Incident.bot == bot)
        if since:
            query = query.where(Incident.fired_at >= since)
        if limit:
            query = query.limit(limit)
        with self._session() as session:
            return list(session.scalars(query))

    def count_actions(self, bot: str, step: str, within: timedelta, *, drills: bool = True) -> int:
        """How many times `step` really ran (not dry-run, succeeded) on this bot lately: the storm guard.
        With `drills=False`, steps taken in drill incidents do not count (a drill's restarts are no storm)."""
        since = utcnow() - within
        query = select(func.count(Action.id)).where(
            Action.bot == bot, Action.step == step, Action.at >= since, Action.ok.is_(True), Action.dry_run.is_(False))
        if not drills:
            query = query.join(Incident).where(Incident.drill_id.is_(None))
        with self._session() as session:
            return session.scalar(query) or 0

    def deliberate_stop(self, bot: str) -> Incident | None:
        """An unresolved incident in which a remediation stopped this bot on purpose (e.g. daily loss).

        While one exists the bot is held down: crash recovery must not restart it. A stop followed by a
        restart (attempt) in the same incident — the restart step the websocket and memory runbooks share
        with crash recovery — is not a hold.
        """
        restart = aliased(Action)
        restarted = select(restart.id).where(restart.incident_id == Incident.id, restart.step == "restart",
                                             restart.dry_run.is_(False), restart.at >= Action.at)
        query = (
            select(Incident).join(Action)
            .where(Incident.bot == bot, Incident.status != RESOLVED, Action.step == "stop",
                   Action.ok.is_(True), Action.dry_run.is_(False), Incident.alert != "crash-recovery",
                   ~restarted.exists())
            .order_by(Incident.id.desc())
        )
        with self._session() as session:
            return session.scalars(query).first()

    def undelivered(self, incident_id: int | None = None) -> list[Notification]:
        query = select(Notification).where(Notification.delivered.is_(False))
        if incident_id is not None:
            query = query.where(Notification.incident_id == incident_id)
        with self._session() as session:
            return list(session.scalars(query))

    def ping(self) -> None:
        with self._session() as session:
            session.execute(text("SELECT 1"))

    # -- the weekly KPIs and balance highs ------------------------------------------------------

    def kpi_columns(self, start: datetime, end: datetime, bot: str | None = None) -> dict[str, list[Any]]:
        """The KPI_COLUMNS of every incident the KPIs of [start, end) need, column by column: those fired
        in it, and those fired before it that were still unresolved at `start` (they count as downtime).
        Drill incidents are left out: they are the drill's figures, not production's.

        Times come as the database hands them over (naive UTC: text on SQLite, datetimes elsewhere), unconverted:
        100 000 incidents are parsed at once by pandas (reports/weekly.py), not one by one here."""
        table = Incident.__table__
        raw = {"fired_at", "response_started_at", "resolved_at"}
        query = (select(*(type_coerce(table.c[name], String).label(name) if name in raw else table.c[name]
                          for name in KPI_COLUMNS))
                 .where(table.c.fired_at < end, table.c.drill_id.is_(None),
                        or_(table.c.fired_at >= start, table.c.resolved_at.is_(None), table.c.resolved_at > start))
                 .order_by(table.c.fired_at, table.c.id))
        if bot:
            query = query.where(table.c.bot == bot)
        enabled = gc.isenabled()
        gc.disable()  # a million rows stay alive until returned: collections would rescan them for nothing
        try:
            with self._session() as session:
                rows = session.execute(query).all()
            return {name: [row[i] for row in rows] for i, name in enumerate(KPI_COLUMNS)}
        finally:
            if enabled:
                gc.enable()

    def record_balance_high(self, bot: str, balance: Decimal, *, source: str, previous: Decimal | None = None,
                            incident_id: int | None = None, config_backup: str | None = None,
                            detail: dict[str, Any] | None = None, at: datetime | None = None) -> BalanceHigh:
        with self._session() as session:
            high = BalanceHigh(bot=bot, at=at or utcnow(), balance=str(balance),
                               previous=None if previous is None else str(previous), source=source,
                               incident_id=incident_id, config_backup=config_backup,
                               detail=json.dumps(detail, default=str) if detail is not None else None)
            session.add(high)
        return high

    def balance_high(self, bot: str) -> BalanceHigh | None:
        """The highest balance recorded for this bot (None before the first)."""
        with self._session() as session:
            highs = list(session.scalars(select(BalanceHigh).where(BalanceHigh.bot == bot)))
        return max(highs, key=lambda high: (high.amount, high.id), default=None)

    # -- drills ---------------------------------------------------------------------------------

    def start_drill(self, bot: str, scenarios: list[str], lease: timedelta) -> Drill:
        now = utcnow()
        with self._session() as session:
            drill = Drill(bot=bot, started_at=now, active_until=now + lease, status="running",
                          scenarios=json.dumps(scenarios))
            session.add(drill)
        return drill

    def renew_drill(self, drill_id: int, lease: timedelta) -> None:
        with self._session() as session:
            drill = session.get(Drill, drill_id)
            if drill is None:
                raise JournalError(f"no drill #{drill_id}")
            drill.active_until = utcnow() + lease

    def finish_drill(self, drill_id: int, status: str, result: dict[str, Any] | None,
                     report_path: str | None = None) -> None:
        with self._session() as session:
            drill = session.get(Drill, drill_id)
            if drill is None:
                raise JournalError(f"no drill #{drill_id}")
            drill.status, drill.finished_at, drill.active_until = status, utcnow(), None
            drill.result = json.dumps(result, default=str) if result is not None else None
            drill.report_path = report_path

    def active_drill(self, bot: str) -> Drill | None:
        """The drill acting on this bot now (its lease not run out), if any."""
        query = (select(Drill).where(Drill.bot == bot, Drill.active_until.is_not(None), Drill.active_until > utcnow())
                 .order_by(Drill.id.desc()))
        with self._session() as session:
            return session.scalars(query).first()

    def claim_for_drill(self, drill_id: int, bot: str, since: datetime) -> list[int]:
        """Mark as the drill's every incident fired on the bot since `since` (one another path opened while
        the drill injected a fault); returns their ids."""
        with self._session() as session:
            ids = list(session.scalars(select(Incident.id).where(Incident.bot == bot, Incident.fired_at >= since)))
            if ids:
                session.execute(update(Incident).where(Incident.id.in_(ids)).values(drill_id=drill_id))
        return ids

    def latest_drill(self, bot: str | None = None, before: datetime | None = None) -> Drill | None:
        """The most recent finished drill (of a bot), optionally started before a time."""
        query = select(Drill).where(Drill.finished_at.is_not(None), Drill.result.is_not(None))
        if bot:
            query = query.where(Drill.bot == bot)
        if before:
            query = query.where(Drill.started_at < before)
        with self._session() as session:
            return session.scalars(query.order_by(Drill.started_at.desc(), Drill.id.desc())).first()

    def drill_summary(self, start: datetime, end: datetime, bot: str | None = None) -> dict[str, Any]:
        """What the weekly report shows of drills: the latest finished before `end` (its figures and start)
        and how many drill incidents fired in [start, end)."""
        latest = self.latest_drill(bot, before=end)
        return {"result": json.loads(latest.result) if latest is not None and latest.result else None,
                "started_at": latest.started_at if latest is not None else None,
                "incidents": len(self.drill_incidents(start, end, bot))}

    def drill_incidents(self, start: datetime, end: datetime, bot: str | None = None) -> list[Incident]:
        """Incidents drills caused in [start, end) on fired_at: the weekly report's drill section."""
        query = select(Incident).where(Incident.drill_id.is_not(None), Incident.fired_at >= start,
                                       Incident.fired_at < end).order_by(Incident.fired_at)
        if bot:
            query = query.where(Incident.bot == bot)
        with self._session() as session:
            return list(session.scalars(query))
