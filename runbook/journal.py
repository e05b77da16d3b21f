"""The incident journal: every incident, the actions taken in it and the notifications sent.

SQLAlchemy, SQLite by default (WAL, created on first use), any SQLAlchemy URL by config. It survives
restarts and is the source of the weekly KPIs. One unresolved incident per alert and bot is enforced by
the database itself (a partial unique index), so two alerts racing each other cannot open two.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean, DateTime, ForeignKey, Index, Integer, String, Text, create_engine, event, func, or_, select, text,
    type_coerce, update,
)
from sqlalchemy.engine import Engine
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
        }


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
    Base.metadata.create_all(engine)
    return engine


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
        for _ in range(3):  # the open one may be resolved between our insert and our update: try again
            try:
                with self._session() as session:
                    incident = Incident(
                        alert=alert, bot=bot, severity=severity, status=OPEN, summary=summary, fired_at=now,
                        last_fired_at=now, flow_run_id=flow_run_id, event_id=event_id, repeat_count=0,
                        open_key=key,
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

    def for_flow_run(self, flow_run_id: str) -> Incident | None:
        """The incident a flow run answered (the latest, if a run ever joined several)."""
        with self._session() as session:
            found = session.scalar(select(Incident.id).where(Incident.flow_run_id == flow_run_id)
                                   .order_by(Incident.id.desc()).limit(1))
        return None if found is None else self.get(found)

    def count_actions(self, bot: str, step: str, within: timedelta) -> int:
        """How many times `step` really ran (not dry-run, succeeded) on this bot lately: the storm guard."""
        since = utcnow() - within
        with self._session() as session:
            return session.scalar(
                select(func.count(Action.id)).where(
                    Action.bot == bot, Action.step == step, Action.at >= since,
                    Action.ok.is_(True), Action.dry_run.is_(False),
                )
            ) or 0

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

    def restart_underway(self, bot: str, within: timedelta) -> Incident | None:
        """An unresolved incident of another runbook (WebSocket, memory...) that stopped or restarted this bot
        within `within` and has not verified it since: the bot is down or starting on purpose, not crashed.
        """
        verify = aliased(Action)
        verified = select(verify.id).where(verify.incident_id == Incident.id, verify.step == "verify",
                                           verify.at >= Action.at)
        query = (
            select(Incident).join(Action)
            .where(Incident.bot == bot, Incident.status != RESOLVED, Action.step.in_(("stop", "restart")),
                   Action.dry_run.is_(False), Action.at >= utcnow() - within, Incident.alert != "crash-recovery",
                   ~verified.exists())
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

        Times come as the database hands them over (naive UTC: text on SQLite, datetimes elsewhere), unconverted:
        100 000 incidents are parsed at once by pandas (reports/weekly.py), not one by one here."""
        table = Incident.__table__
        raw = {"fired_at", "response_started_at", "resolved_at"}
        query = (select(*(type_coerce(table.c[name], String).label(name) if name in raw else table.c[name]
                          for name in KPI_COLUMNS))
                 .where(table.c.fired_at < end,
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
