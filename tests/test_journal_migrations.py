"""Journal migrations (Alembic, runbook/migrations) on real SQLite files.

A journal made by the first schema (tests/fixtures/journal_schema_v1.sql, that schema's DDL as SQLite kept
it) upgrades in place on first use without losing a row; a new journal gets exactly the model's schema
from the migrations; the migrations have one head and runbook.journal.SCHEMA_REVISION names it. The shared
PostgreSQL journal is migrated in tests/test_shared_journal.py.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine

from runbook import journal as j
from runbook.journal import Journal

V1_DDL = Path(__file__).parent / "fixtures" / "journal_schema_v1.sql"
ROOT = Path(__file__).resolve().parents[1]


def old_journal(path: Path) -> None:
    """A journal as the first schema made it, with rows in every table: resolved and open incidents,
    actions, notifications."""
    with sqlite3.connect(path) as db:
        db.executescript(V1_DDL.read_text())
        db.executemany(
            "INSERT INTO incidents (id, alert, bot, severity, status, outcome, summary, fired_at, last_fired_at, "
            "response_started_at, resolved_at, repeat_count, escalation_level, flow_run_id, event_id, slack_channel, "
            "slack_ts, open_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(1, "crash-recovery", "alpha", "CRITICAL", "resolved", "auto-resolved", "restarted",
              "2026-01-05 10:00:00.000000", "2026-01-05 10:00:00.000000", "2026-01-05 10:00:05.000000",
              "2026-01-05 10:00:40.000000", 2, None, "run-1", "ev-1", "C1", "1.1", None),
             (2, "memory-usage", "alpha", "WARNING", "open", None, "rss high", "2026-01-06 08:00:00.000000",
              "2026-01-06 08:05:00.000000", None, None, 0, None, None, None, None, None, "memory-usage\x1falpha")])
        db.executemany(
            "INSERT INTO actions (incident_id, bot, at, step, description, ok, dry_run, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(1, "alpha", "2026-01-05 10:00:05.000000", "restart", "restarted the bot", 1, 0, '{"pid": 42}'),
             (1, "alpha", "2026-01-05 10:00:30.000000", "verify", "health ok", 1, 0, None)])
        db.execute("INSERT INTO notifications (incident_id, at, channel, status_line, text, delivered, error, ts) "
                   "VALUES (1, '2026-01-05 10:00:01.000000', 'slack', 'firing', 'bot down', 1, NULL, '1.1')")


def counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("incidents", "actions", "notifications")}


def test_a_journal_of_the_first_schema_upgrades_in_place_without_losing_a_row(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    old_journal(path)
    before = counts(path)
    with sqlite3.connect(path) as db:
        assert "triggered_at" not in {row[1] for row in db.execute("PRAGMA table_info(incidents)")}

    journal = Journal(f"sqlite:///{path}")  # first use: stamped 0001, upgraded to the head

    assert counts(path) == before == {"incidents": 2, "actions": 2, "notifications": 1}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(j.SCHEMA_REVISION,)]
        assert "triggered_at" in {row[1] for row in db.execute("PRAGMA table_info(incidents)")}
    # the old rows read back through the journal, every field as it was
    resolved = journal.get(1)
    assert (resolved.alert, resolved.status, resolved.outcome, resolved.repeat_count, resolved.flow_run_id) == \
        ("crash-recovery", j.RESOLVED, j.AUTO_RESOLVED, 2, "run-1")
    assert resolved.fired_at.isoformat() == "2026-01-05T10:00:00+00:00" and resolved.triggered_at is None
    assert [(a.step, a.as_dict()["detail"]) for a in resolved.actions] == [("restart", {"pid": 42}), ("verify", None)]
    assert [n.status_line for n in resolved.notifications] == ["firing"]
    # the open incident is still the one open incident of its alert and bot
    again, created = journal.open_incident("memory-usage", "alpha", "WARNING")
    assert not created and again.id == 2 and again.repeat_count == 1
    # and what the new schema added works on it
    journal.update(2, triggered_at=j.utcnow())
    journal.record_balance_high("alpha", j.Decimal("1234.5"), source="test")
    assert journal.balance_high("alpha").amount == j.Decimal("1234.5")
    # a second open finds it current and changes nothing
    assert j.migrate(create_engine(f"sqlite:///{path}")) == []


def test_migrations_build_exactly_the_models_schema(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(f"sqlite:///{tmp_path}/new.db")
    # every revision, in order, from the first to the head
    assert j.migrate(engine) == [f"{n:04d}" for n in range(1, int(j.SCHEMA_REVISION) + 1)]
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), j.Base.metadata)
    # a column added to the model without a migration shows up here: write the migration (docs/operations.md)
    assert differences == []


def test_a_journal_made_by_create_all_before_alembic_is_stamped_not_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    engine = create_engine(f"sqlite:///{path}")
    j.Base.metadata.create_all(engine)  # what the journal did before it had migrations
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO incidents (alert, bot, severity, status, summary, fired_at, last_fired_at, repeat_count) "
            "VALUES ('crash-recovery', 'alpha', 'CRITICAL', 'open', '', '2026-01-05 10:00:00', '2026-01-05 10:00:00', 0)")
    engine.dispose()
    assert j.migrate(create_engine(f"sqlite:///{path}")) == []  # stamped at the head: nothing to apply
    assert counts(path)["incidents"] == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(j.SCHEMA_REVISION,)]


def test_one_head_and_schema_revision_names_it() -> None:
    # two migrations written in parallel with the same parent make two heads: renumber one after merging
    assert j.migration_heads() == {j.SCHEMA_REVISION}


def test_the_alembic_command_reads_the_same_migrations(tmp_path: Path) -> None:
    # how a person writing a migration uses it (docs/operations.md): upgrade a scratch journal, then compare
    alembic = str(Path(sys.executable).with_name("alembic"))
    url = f"sqlite:///{tmp_path}/scratch.db"
    for args in (["upgrade", "head"], ["check"]):
        done = subprocess.run([alembic, "-c", str(ROOT / "runbook/migrations/alembic.ini"), "-x", f"url={url}", *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "No new upgrade operations detected" in done.stdout + done.stderr


def test_two_processes_opening_a_new_journal_at_once_both_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    code = f"from runbook.journal import Journal; Journal({url!r}).ping()"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    with sqlite3.connect(tmp_path / "race.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(j.SCHEMA_REVISION,)]
