"""`runbook serve`: every deployment served, plus the watcher and the webhook intake, in one process.

Ctrl-C (or SIGTERM) stops the runner, the watcher and the intake; Prefect pauses the served
deployments on the way out, and the next `serve` resumes them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from prefect import serve

from deployments import build_deployments
from runbook.journal import Journal
from runbook.settings import load_settings
from runbook.watcher import Watcher

log = logging.getLogger("runbook.serve")


def serve_all(config: Path, *, watch: bool = True, intake: bool = True) -> None:
    settings = load_settings(config)
    deployments = build_deployments(config)
    automated = {deployment.name for deployment in deployments}
    # Register deployments and their triggers before anything can fire: an alert event emitted
    # before its trigger exists would start nothing.
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
    print(f"serving {len(deployments)} deployment(s): {', '.join(sorted(automated))}; "
          f"watching {', '.join(settings.bots)} every {settings.watch.poll_interval_seconds:g}s", flush=True)
    if settings.watch.warm_start:
        from runbook import warmstart

        warmstart.install()  # each run forks from a warm process: no Python + Prefect + project imports
    try:
        serve(*deployments, print_starting_message=False, query_seconds=settings.watch.runner_poll_seconds)
    finally:
        stop.set()
        if intake_server is not None:
            intake_server.stop()
        for thread in threads:
            thread.join(timeout=10)
