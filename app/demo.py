"""`make demo`: a local Prefect server, the sandbox, `runbook serve`, and a crash that heals itself.

Everything lives under ./.demo. The demo waits at the end so you can look around the Prefect UI;
Ctrl-C stops everything it started. DEMO_HOLD=0 stops right after the scenario (for scripts);
DEMO_SCREENSHOT=FILE also saves a screenshot of the triggered run (headless Chromium).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.localserver import LocalServer, start_server

DEMO = Path(".demo").resolve()
BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def runbook(*args: str, env: dict[str, str]) -> int:
    print("$ runbook " + " ".join(args), flush=True)
    return subprocess.run([str(BIN / "runbook"), *args], env=env).returncode


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not happen within {timeout:g}s")


def deployments_ready(server: LocalServer) -> bool:
    response = httpx.post(f"{server.url}/deployments/filter", json={}, timeout=5)
    return any(d["name"] == "crash-recovery" for d in response.json())


def main() -> int:
    say("starting a local Prefect server (SQLite) — takes 5-15 s")
    server = start_server(DEMO / "prefect", port=4200)
    env = {**os.environ, **server.env}
    sandbox_dir = DEMO / "sandbox"
    config = sandbox_dir / "runbook.toml"
    serve: subprocess.Popen[bytes] | None = None
    try:
        say("starting the sandbox: simulated bot, local Hyperliquid API, local Slack API")
        if runbook("sandbox", "up", "--dir", str(sandbox_dir), env=env) != 0:
            return 1
        say("runbook serve: deployments with their alert triggers, the watcher, the webhook intake")
        serve_log = DEMO / "serve.log"
        serve = subprocess.Popen([str(BIN / "runbook"), "serve", "--config", str(config)], env=env,
                                 stdout=open(serve_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("deployment registration", lambda: deployments_ready(server), 90)
        print(f"serving; its log: {serve_log}")
        print(f"\nPrefect UI: {server.ui_url}  — open it now: Deployments shows crash-recovery and its trigger.")
        time.sleep(5)

        say("the bot crashes (runbook sandbox fault crash)")
        runbook("sandbox", "fault", "crash", "--dir", str(sandbox_dir), env=env)
        say("watching: the watcher fires the alert, the trigger starts crash-recovery, the bot comes back")
        from runbook.journal import Journal
        from runbook.settings import load_settings

        journal = Journal(load_settings(config).journal_url)
        wait_for("the alert", lambda: journal.incidents(alert="crash-recovery"), 60)
        incident = journal.incidents(alert="crash-recovery")[0]
        print(f"alert fired: incident #{incident.id} ({incident.summary})")
        wait_for("the recovery", lambda: journal.get(incident.id).resolved_at is not None
                 or journal.get(incident.id).status == "escalated", 120)
        done = journal.get(incident.id)
        took = (done.resolved_at or done.fired_at) - done.fired_at
        print(f"incident #{done.id}: {done.status} ({done.outcome}) in {took.total_seconds():.1f}s — {done.summary}")
        if done.flow_run_id:
            print(f"the triggered run: {server.ui_url}/runs/flow-run/{done.flow_run_id}")
            if os.environ.get("DEMO_SCREENSHOT"):
                from app.screenshot import capture

                shot = capture(f"{server.ui_url}/runs/flow-run/{done.flow_run_id}", Path(os.environ["DEMO_SCREENSHOT"]))
                print(f"screenshot of the triggered run: {shot}")
        print(f"incident report: {sandbox_dir / 'reports' / 'incidents' / f'incident-{done.id}.md'}")
        say("the incident journal")
        runbook("incidents", "--config", str(config), env=env)
        print(f"\nSlack thread (local Slack API): {sandbox_dir / 'slack' / 'messages.jsonl'}")
        print(f"Try more: .venv/bin/runbook sandbox fault websocket --dir {sandbox_dir}   (then: fault clear)")
        if os.environ.get("DEMO_HOLD", "1") != "0":
            print(f"\nThe UI stays up at {server.ui_url}. Press Ctrl-C to stop everything.", flush=True)
            signal.pause()
        return 0 if done.status == "resolved" else 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping runbook serve, the sandbox and the Prefect server")
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        runbook("sandbox", "down", "--dir", str(sandbox_dir), env=env)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
