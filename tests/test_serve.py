"""`runbook serve` as people run it: a subprocess serving deployments, the watcher and the intake.

A real Prefect server, the real sandbox, real HTTP. Alerts go in (a crash, a webhook) and the
triggered deployment runs must come out without anyone starting them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager

RUNBOOK = str(Path(sys.executable).with_name("runbook"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[dict]:
    directory = tmp_path_factory.mktemp("serve") / "sandbox"
    manager.up(directory)
    config = directory / "runbook.toml"
    log = open(directory / "serve.log", "wb")
    env = {**os.environ, "RUNBOOK_WATCH__POLL_INTERVAL_SECONDS": "1"}
    process = subprocess.Popen([RUNBOOK, "serve", "--config", str(config)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    api = prefect_server.url
    try:
        deadline = time.monotonic() + 300  # generous: 15 deployments registered on a loaded shared machine
        deployment = None
        while deployment is None and time.monotonic() < deadline:
            assert process.poll() is None, (directory / "serve.log").read_text()
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            deployment = next((d for d in found if d["name"] == "crash-recovery" and not d.get("paused")), None)
            automations = httpx.post(f"{api}/automations/filter", json={}, timeout=5).json()
            if deployment and not any(a["actions"][0].get("deployment_id") == deployment["id"] for a in automations):
                deployment = None
            time.sleep(0.5)
        assert deployment is not None, "crash-recovery was never registered"
        intake = tomllib.loads(config.read_text())["intake"]
        yield {"dir": directory, "config": config, "process": process, "api": api, "deployment": deployment,
               "intake_url": f"http://127.0.0.1:{intake['port']}", "intake_token": intake["token"]}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        manager.down(directory)


def runs_of(served: dict) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [served["deployment"]["id"]]}}}
    return httpx.post(f"{served['api']}/flow_runs/filter", json=body, timeout=5).json()


def wait(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout:g}s")


def journal_of(served: dict) -> Journal:
    return Journal(load_settings(served["config"]).journal_url)


def test_deployment_has_trigger_and_a_parameter_form(served: dict) -> None:
    schema = served["deployment"]["parameter_openapi_schema"]["properties"]
    assert set(schema) == {"bot", "config", "incident_id"}
    assert all(schema[name].get("description") for name in schema)  # the UI form explains each field
    automations = httpx.post(f"{served['api']}/automations/filter", json={}, timeout=5).json()
    mine = [a for a in automations if a["actions"][0].get("deployment_id") == served["deployment"]["id"]]
    assert mine and mine[0]["trigger"]["expect"] == ["runbook.alert.fired"]
    assert mine[0]["trigger"]["match"] == {"runbook.alert": "crash-recovery"}


def test_crash_is_detected_and_healed_by_a_triggered_run(served: dict) -> None:
    before = {run["id"] for run in runs_of(served)}
    manager.fault(served["dir"], "crash")
    incident = wait("the alert", lambda: journal_of(served).incidents(alert="crash-recovery", open_only=True), 30)[0]
    run = wait("the triggered run", lambda: [r for r in runs_of(served) if r["id"] not in before], 120)[0]
    assert run["parameters"]["incident_id"] == incident.id and run["parameters"]["bot"] == "sandbox"
    done = wait("the recovery", lambda: (lambda i: i if i.status != j.OPEN else None)(journal_of(served).get(incident.id)), 90)
    assert done.status == j.RESOLVED and done.outcome == j.AUTO_RESOLVED, done.summary
    assert done.flow_run_id == run["id"] and done.event_id
    health = load_settings(served["config"]).bots["sandbox"].health_url
    assert httpx.get(health, timeout=3).status_code == 200


def test_alertmanager_webhook_starts_the_remediation(served: dict) -> None:
    before = {run["id"] for run in runs_of(served)}
    payload = {
        "version": "4", "status": "firing", "receiver": "runbook", "groupKey": "{}:{}", "truncatedAlerts": 0,
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{"status": "firing", "labels": {"alertname": "TradingBotDown", "bot": "sandbox"},
                    "annotations": {"summary": "bot down per Prometheus"}, "startsAt": "2026-11-25T00:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom", "fingerprint": "abc"}],
    }
    url = f"{served['intake_url']}/alerts/alertmanager"
    assert httpx.post(url, json=payload, timeout=10).status_code == 401
    answer = httpx.post(url, json=payload, headers={"Authorization": f"Bearer {served['intake_token']}"}, timeout=10)
    assert answer.status_code == 202, answer.text
    run = wait("the triggered run", lambda: [r for r in runs_of(served) if r["id"] not in before], 120)[0]
    incident_id = run["parameters"]["incident_id"]
    done = wait("the run to finish", lambda: (lambda i: i if i.status != j.OPEN else None)(journal_of(served).get(incident_id)), 90)
    # The bot was fine: Prometheus was wrong, and the runbook touched nothing.
    assert done.outcome == j.FALSE_POSITIVE and done.actions == []


def test_runs_start_from_the_warm_fork_server(served: dict) -> None:
    # serve started a multiprocessing fork server with Prefect and the flows imported; runs fork from it.
    # (A run forked from it shows the same command line, one level further down: count serve's children.)
    children = psutil.Process(served["process"].pid).children()
    servers = [p for p in children if "multiprocessing.forkserver" in " ".join(p.cmdline())]
    assert len(servers) == 1, [p.cmdline() for p in children]


def test_runbook_run_goes_through_the_serving_runner(served: dict) -> None:
    before = {run["id"] for run in runs_of(served)}
    result = subprocess.run([RUNBOOK, "run", "crash-recovery", "--config", str(served["config"]), "--json"],
                            capture_output=True, text=True, timeout=240, env={**os.environ, "PREFECT_API_URL": served["api"]})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"] == j.FALSE_POSITIVE  # the bot is healthy: looked at, nothing touched
    # A run of the served deployment (not a flow run of the command's own), created for this command.
    run = httpx.get(f"{served['api']}/flow_runs/{data['flow_run_id']}", timeout=10).json()
    assert run["id"] not in before and run["deployment_id"] == served["deployment"]["id"]
    assert "runbook-run" in run["tags"] and run["state"]["type"] == "COMPLETED"
    assert journal_of(served).get(data["incident_id"]).flow_run_id == run["id"]


def test_sigterm_stops_everything_cleanly(served: dict) -> None:
    process = served["process"]
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served['intake_url']}/healthz", timeout=2)
    log = (served["dir"] / "serve.log").read_text()
    assert "SIGTERM received, initiating graceful shutdown" in log
    # Prefect's runner logs a CancelledError of its own while shutting down; none may come from ours.
    assert not re.search(r'File ".*/(runbook|flows|tasks|deployments)/', log), log
