"""`make demo`: a local Prefect server, the sandbox, a crash, and crash recovery from the shell.

Everything lives under ./.demo; Ctrl-C stops all of it. Set DEMO_HOLD=0 to stop right after the
scenario instead of keeping the UI up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runbook.localserver import start_server

DEMO = Path(".demo").resolve()


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def runbook(*args: str, env: dict[str, str]) -> int:
    command = [str(Path(sys.executable).with_name("runbook")), *args]
    print("$ runbook " + " ".join(args), flush=True)
    return subprocess.run(command, env=env).returncode


def main() -> int:
    say("starting a local Prefect server (SQLite) — takes 5-15 s")
    server = start_server(DEMO / "prefect", port=4200)
    env = {**os.environ, **server.env}
    sandbox_dir = DEMO / "sandbox"
    config = sandbox_dir / "runbook.toml"
    try:
        print(f"Prefect UI: {server.ui_url}")
        say("starting the sandbox: simulated bot, local Hyperliquid API, local Slack API")
        if runbook("sandbox", "up", "--dir", str(sandbox_dir), env=env) != 0:
            return 1
        time.sleep(3)  # let the bot trade a little so the evidence has something in it
        say("the bot crashes")
        runbook("sandbox", "fault", "crash", "--dir", str(sandbox_dir), env=env)
        say("crash recovery, as the runbook's 'Bot Crashed/Stopped' section")
        code = runbook("run", "crash-recovery", "--config", str(config), env=env)
        say("the incident journal")
        runbook("incidents", "--config", str(config), env=env)
        say(f"what Slack got (thread): {sandbox_dir / 'slack' / 'messages.jsonl'}")
        print(f"\nOpen {server.ui_url} to see the flow run, its task runs and the incident artifact.")
        if os.environ.get("DEMO_HOLD", "1") != "0":
            print("Press Ctrl-C to stop the server and the sandbox.", flush=True)
            signal.pause()
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping the sandbox and the Prefect server")
        runbook("sandbox", "down", "--dir", str(sandbox_dir), env=env)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
