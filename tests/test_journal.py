"""The incident journal on a real SQLite file: dedup, lifecycle, storm counting, survival across opens."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from runbook import journal as j
from runbook.journal import Journal, JournalError


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(f"sqlite:///{tmp_path}/journal.db")


def test_one_open_incident_per_alert_and_bot(journal: Journal) -> None:
    first, created = journal.open_incident("crash-recovery", "alpha", "CRITICAL", "down")
    again, created_again = journal.open_incident("crash-recovery", "alpha", "CRITICAL", "down")
    other, other_created = journal.open_incident("crash-recovery", "beta", "CRITICAL", "down")
    assert created and not created_again and other_created
    assert again.id == first.id and again.repeat_count == 1
    assert other.id != first.id
    journal.resolve(first.id, j.AUTO_RESOLVED, "restarted")
    reopened, created = journal.open_incident("crash-recovery", "alpha", "CRITICAL", "down again")
    assert created and reopened.id != first.id


def test_concurrent_opens_make_one_incident(journal: Journal) -> None:
    ids: list[int] = []

    def fire() -> None:
        ids.append(journal.open_incident("memory-usage", "alpha", "WARNING")[0].id)

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert journal.get(ids[0]).repeat_count == 7


def test_lifecycle_actions_and_notifications(journal: Journal) -> None:
    incident, _ = journal.open_incident("crash-recovery", "alpha", "CRITICAL")
    journal.start_response(incident.id, "run-1")
    first_response = journal.get(incident.id).response_started_at
    journal.start_response(incident.id)  # keeps the first time
    journal.record_action(incident.id, "alpha", "restart", "started PID 1")
    journal.record_action(incident.id, "alpha", "restart", "would restart", dry_run=True)
    journal.record_notification(incident.id, "#a", "OPEN", "text", delivered=False, error="Slack down")
    journal.escalate(incident.id, "L2", "did not come back")
    got = journal.get(incident.id)
    assert got.response_started_at == first_response and got.flow_run_id == "run-1"
    assert got.status == j.ESCALATED and got.escalation_level == "L2" and got.outcome == j.OUTCOME_ESCALATED
    assert [a.step for a in got.actions] == ["restart", "restart"]
    assert journal.undelivered(incident.id)[0].error == "Slack down"
    assert journal.count_actions("alpha", "restart", timedelta(hours=1)) == 1  # dry-run not counted
    assert [i.id for i in journal.incidents(open_only=True)] == [incident.id]
    row = got.as_dict()
    for key in ("id", "alert", "bot", "severity", "status", "outcome", "fired_at", "response_started_at",
                "resolved_at", "flow_run_id"):
        assert key in row
    assert row["fired_at"].endswith("Z")


def test_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    incident, _ = Journal(url).open_incident("api-latency", "alpha", "WARNING")
    j._engine.cache_clear()
    assert Journal(url).get(incident.id).alert == "api-latency"


def test_errors_are_clear(journal: Journal) -> None:
    with pytest.raises(JournalError, match="no incident #999"):
        journal.get(999)
    incident, _ = journal.open_incident("a", "b", "INFO")
    with pytest.raises(JournalError, match="unknown outcome"):
        journal.resolve(incident.id, "fixed-itself", "?")


def test_make_demo_reports_the_incident_of_its_own_crash(journal: Journal) -> None:
    # `make demo` run again in the same checkout: the journal holds the first run's resolved incident; the
    # demo must show the one its new crash opened (runbook/demo.py), not the journal's first
    from runbook.demo import incident_since

    first, _ = journal.open_incident("crash-recovery", "sandbox", "CRITICAL", "first run")
    journal.resolve(first.id, j.AUTO_RESOLVED, "restarted")
    crashed_at = j.utcnow()
    assert incident_since(journal, "crash-recovery", crashed_at) is None  # not fired yet: keep waiting
    second, _ = journal.open_incident("crash-recovery", "sandbox", "CRITICAL", "second run")
    assert incident_since(journal, "crash-recovery", crashed_at).id == second.id != first.id
    # a crash joining an incident left open by an earlier run is that incident (a repeat moves last_fired_at)
    later = j.utcnow()
    joined, created = journal.open_incident("crash-recovery", "sandbox", "CRITICAL", "third run")
    assert not created and incident_since(journal, "crash-recovery", later).id == second.id
