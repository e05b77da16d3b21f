"""Drills: `runbook drill` on the sandbox while `runbook serve` (watcher + triggered deployments) runs.

The short drill of `make test`: two scenarios and a refusal, each a "Done when" of issue 18 —
- `latency` with its alert turned off in config (`watch.disabled`): not detected, and the figures drop;
- `exchange-unreachable`, whose cause the websocket flow misreads: a refused connection is an answer from
  the API host (the exchange is not listening), which the flow classifies as "network down";
- a bot without `drill_allowed` refuses before anything is injected.
The whole drill (every scenario) runs in `make bench` (bench/drill.py). Real parts throughout: the sandbox's
processes, `runbook serve` and `runbook drill` as subprocesses, the session's Prefect server, a SQLite journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from conftest import running_sandbox
from reports.drill import DrillReport, verdict
from reports.weekly import weekly_command
from runbook.drills import NOT_COVERED, SCENARIOS, parse_scenarios
from runbook.journal import Journal, utcnow
from runbook.settings import load_settings
from sandbox.faults import read_faults

RUNBOOK = str(Path(sys.executable).with_name("runbook"))
# Short thresholds so the websocket scenario is seen in seconds; the latency alert turned off. The sandbox's
# random walk fires a win-rate review or a new balance high by chance: off too, so no real incident is open.
SERVE_ENV = {
    "RUNBOOK_WATCH__POLL_INTERVAL_SECONDS": "1",
    "RUNBOOK_WATCH__WEBSOCKET_DOWN_SECONDS": "3",
    "RUNBOOK_WATCH__DISABLED": '["api-latency", "win-rate-review", "new-balance-high"]',
    "RUNBOOK_INFRA__WEBSOCKET_RECONNECT_WAIT_SECONDS": "2",
    "RUNBOOK_INFRA__NETWORK_SAMPLES": "2",
}
DRILL_ENV = {**SERVE_ENV, "RUNBOOK_DRILL__DETECT_TIMEOUT_SECONDS": "8", "RUNBOOK_DRILL__POLL_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[dict]:
    with running_sandbox(tmp_path_factory.mktemp("drill") / "sandbox") as directory:
        config = directory / "runbook.toml"
        log = open(directory / "serve.log", "wb")
        process = subprocess.Popen([RUNBOOK, "serve", "--config", str(config), "--no-intake"],
                                   env={**os.environ, **SERVE_ENV}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while True:
                assert process.poll() is None, (directory / "serve.log").read_text()
                found = httpx.post(f"{prefect_server.url}/deployments/filter",
                                   json={"deployments": {"name": {"any_": ["websocket-disconnected", "api-latency"]}}},
                                   timeout=10).json()
                if len(found) == 2 and not any(d["paused"] for d in found) \
                        and "serving" in (directory / "serve.log").read_text():
                    break
                assert time.monotonic() < deadline, "runbook serve never registered its deployments"
                time.sleep(0.5)
            yield {"dir": directory, "config": config}
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def test_the_short_drill_grades_a_turned_off_alert_and_a_misread_cause(served: dict, tmp_path: Path) -> None:
    config = served["config"]
    journal = Journal(load_settings(config).journal_url)
    before = utcnow()
    done = subprocess.run([RUNBOOK, "drill", "--config", str(config), "--scenarios", "latency,exchange-unreachable",
                           "--out", str(tmp_path / "drills"), "--json"],
                          capture_output=True, text=True, timeout=400, env={**os.environ, **DRILL_ENV})
    assert done.returncode == 1, done.stderr[-3000:]  # it ran, and found problems
    result = json.loads(done.stdout)
    rows = {row["scenario"]: row for row in result["scenarios"]}
    for row in rows.values():  # every scenario has a verdict and the fields of the issue
        assert {"scenario", "alert", "detected", "detect_seconds", "response_seconds", "cause_seconds",
                "cause_found", "cause_correct", "recovered", "outcome", "verdict"} <= set(row)

    latency = rows["latency"]  # turned off: nothing fired, nothing answered
    assert latency["detected"] is False and latency["alert"] is None and latency["verdict"] == "NOT DETECTED"

    refused = rows["exchange-unreachable"]  # detected, answered, cause misread
    assert refused["detected"] is True and refused["alert"] == "websocket-disconnected", refused
    assert 0 < refused["detect_seconds"] <= refused["response_seconds"] <= refused["cause_seconds"]
    assert refused["cause_found"].startswith("cause: network down"), refused
    assert refused["cause_correct"] is False and "cause misread" in refused["verdict"]
    assert refused["recovered"] is True and refused["outcome"] == "escalated"  # left to a person, as it should

    # Half the drilled scenarios were seen: both figures show the alert that was off.
    assert result["scenarios_drilled"] == 2
    assert result["alert_coverage"] == 0.5 and result["detection_accuracy"] == 0.5
    assert result["cause_accuracy"] == 0.0
    assert result["investigation_median_seconds"] == refused["cause_seconds"]
    # What no injection can produce is listed, not skipped.
    assert {key for key, row in rows.items() if not row["covered"]} == set(NOT_COVERED)
    assert Path(result["pdf"]).read_bytes().startswith(b"%PDF")
    assert "scenario 2 of 2 (exchange-unreachable)" in done.stderr  # progress in the terminal

    # The bot is back, the faults cleared, the drill's incidents marked and closed.
    assert read_faults(served["dir"] / "faults.json") == {}
    assert httpx.get(load_settings(config).bots["sandbox"].health_url, timeout=5).status_code == 200
    drilled = journal.incidents(since=before)
    assert drilled and all(i.drill_id == result["drill_id"] for i in drilled), [i.as_dict() for i in drilled]
    assert not journal.incidents(open_only=True)
    assert journal.latest_drill("sandbox").id == result["drill_id"]

    # The weekly report: the drill's incidents are not in the KPIs, they are in its drill section.
    code, out = weekly_command(journal_url=journal.url, from_file=None, period=timedelta(days=7), end=None,
                               out=tmp_path / "weekly", as_json=True)
    weekly = json.loads(out)
    production = [i for i in journal.incidents() if i.drill_id is None]
    assert code == 0 and weekly["incidents"] == len(production) and weekly["uptime"] == 1.0
    assert "websocket-disconnected" not in weekly["by_alert"]
    assert weekly["drill"]["latest_drill_id"] == result["drill_id"]
    assert weekly["drill"]["alert_coverage"] == 0.5
    assert weekly["drill"]["drill_incidents"] == len([i for i in journal.incidents() if i.drill_id is not None])


def test_a_bot_without_drill_allowed_is_refused_before_anything_is_injected(served: dict, tmp_path: Path) -> None:
    text = served["config"].read_text().replace("drill_allowed = true", "drill_allowed = false")
    config = tmp_path / "runbook.toml"
    config.write_text(text)
    settings = load_settings(config)
    journal = Journal(settings.journal_url)
    bot_pid = (served["dir"] / "bot" / "trading_bot.pid").read_text()
    incidents = len(journal.incidents())
    from flows.drill import drill
    from tasks.drill import DrillRefused

    with pytest.raises(DrillRefused, match="does not allow drills.*nothing was injected"):
        drill(config=str(config), scenarios="crash")
    assert (served["dir"] / "bot" / "trading_bot.pid").read_text() == bot_pid  # the bot was not killed
    assert read_faults(served["dir"] / "faults.json") == {}
    assert len(journal.incidents()) == incidents


def test_serve_registers_the_drill_deployment_with_its_schedule_off(served: dict, prefect_server) -> None:
    found = httpx.post(f"{prefect_server.url}/deployments/filter",
                       json={"deployments": {"name": {"any_": ["drill"]}}}, timeout=10).json()
    assert len(found) == 1 and found[0]["parameters"]["config"] == str(served["config"])
    schedules = found[0]["schedules"]
    assert [s["schedule"]["cron"] for s in schedules] == ["0 6 1 * *"] and not schedules[0]["active"]


def test_figures_and_verdicts_from_rows() -> None:
    """The KPI arithmetic on hand-written rows (docs/kpis.md "Drills"), no drill needed."""
    from datetime import UTC, datetime

    def row(key: str, alert: str | None, cause: str | None, correct: bool | None, seconds: float | None,
            recovered: bool | None = True) -> dict:
        return {"scenario": key, "expected_alert": SCENARIOS[key].alert, "end_expected": SCENARIOS[key].end,
                "alert": alert, "detected": alert is not None, "detect_seconds": 1.0 if alert else None,
                "response_seconds": 2.0 if alert else None, "cause_seconds": seconds, "cause_found": cause,
                "cause_correct": correct, "recovered": recovered if alert else None, "outcome": "x"}

    rows = [row("crash", "crash-recovery", "diagnosis: crashed", True, 3.0),
            row("hang", "crash-recovery", "diagnosis: healthy", False, 5.0),
            row("websocket", "crash-recovery", "diagnosis: hung", False, 9.0, recovered=False),
            row("latency", None, None, None, None)]
    at = datetime(2026, 12, 1, tzinfo=UTC)
    report = DrillReport("b", 1, at, at, rows)
    assert report.alert_coverage == 0.5 and report.detection_accuracy == 0.75
    assert report.cause_accuracy == pytest.approx(1 / 3) and report.investigation_median_seconds == 5.0
    assert [verdict(r) for r in rows] == [
        "passed", "cause misread", "wrong alert (crash-recovery, expected websocket-disconnected); cause misread; "
        "did not end healthy", "NOT DETECTED"]
    assert parse_scenarios("hang, crash") == ["crash", "hang"]
    with pytest.raises(ValueError, match="unknown drill scenario"):
        parse_scenarios("crash,meteor")
