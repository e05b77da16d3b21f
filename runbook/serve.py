"""`runbook serve`: every deployment served, plus the watcher and the webhook intake, in one process.

Each triggered run is a process of its own, forked from a warm fork server (runbook/warmstart.py;
`watch.warm_start = false` serves as `prefect.serve` does, a new Python per run).
Ctrl-C (or SIGTERM) stops the runner, the watcher and the intake; Prefect pauses the served
deployments on the way out, and the next `serve` resumes them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from prefect import serve
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner

from deployments import build_deployments, deployment_specs
from runbook.journal import Journal
from runbook.settings import Settings, load_settings
from runbook.watcher import Watcher

log = logging.getLogger("runbook.serve")


def warm_runner(config: Path, settings: Settings) -> tuple[Runner, set[str]]:
    """A Runner serving every flow from memory, its runs forked from the warm fork server; and the names
    it serves. (`prefect.serve` of deployments would start each run as `python -m prefect.engine`, a new
    Python importing everything again; a Runner's `add_flow` keeps the flow object, and Prefect then
    starts the run with `run_flow_in_subprocess`, which runbook/warmstart.py replaces with a fork.)"""
    from runbook import warmstart

    runner = Runner(pause_on_shutdown=True, query_seconds=settings.watch.runner_poll_seconds)
    names = set()
    for flow, spec in deployment_specs(config, settings):
        runner.add_flow(flow, **spec)  # registers the deployment and its triggers now
        names.add(spec["name"])
    # Then the fork server, whose imports would otherwise compete with the registration for the CPU; a
    # run that comes before they are done waits for them (still less than a new Python's).
    warmstart.install()
    return runner, names


def serve_all(config: Path, *, watch: bool = True, intake: bool = True) -> None:
    settings = load_settings(config)
    # Register deployments and their triggers before anything can fire: an alert event emitted
    # before its trigger exists would start nothing.
    if settings.watch.warm_start:
        runner, automated = warm_runner(config, settings)
    else:
        deployments = build_deployments(config)
        automated = {deployment.name for deployment in deployments}
        for deployment in deployments:
            deployment.apply()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    intake_server = None
    if watch:
        watcher = Watcher(settings, Journal(settings.journal_url), automated)
        threads.append(threading.Thread(target=watcher.run, args=(stop,), name="runbook-watcher", daemon=True))
    if intake:
        from runbook.intake import IntakeServer

        intake_server = IntakeServer(settings, automated)
        url = intake_server.start()
        if url:
            print(f"intake listening on {url} (POST /alerts/alertmanager, /alerts/grafana)", flush=True)
    for thread in threads:
        thread.start()
    print(f"serving {len(automated)} deployment(s): {', '.join(sorted(automated))}; "
          f"watching {', '.join(settings.bots)} every {settings.watch.poll_interval_seconds:g}s", flush=True)
    try:
        if settings.watch.warm_start:
            try:
                asyncio.run(runner.start())
            except (KeyboardInterrupt, TerminationSignal):
                pass
        else:
            serve(*deployments, print_starting_message=False, query_seconds=settings.watch.runner_poll_seconds)
    finally:
        stop.set()
        if intake_server is not None:
            intake_server.stop()
        for thread in threads:
            thread.join(timeout=10)
