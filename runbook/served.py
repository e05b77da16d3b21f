"""`runbook run NAME` through a running `runbook serve`: a run of its deployment, started warm.

When `runbook serve` serves NAME (its deployment exists, is not paused and its runner polls: status
READY), `runbook run` asks the Prefect API for a run of that deployment and waits for it to end, so
the flow starts in serve's warm process (runbook/warmstart.py) instead of this fresh Python importing
Prefect and the project first. This path talks to the REST API with httpx and imports no Prefect: the
command's own start-up stays small. With no serve running (or `--local`), `runbook run` runs the flow
in its own process as before.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class ServedError(Exception):
    """The served run could not be created or followed; the message says why. `bad_input`: the server
    refused the parameters (bad usage, exit 2), not a failure of the run."""

    def __init__(self, message: str, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


@dataclass
class ServedRun:
    id: str
    state: str
    message: str
    api_url: str

    @property
    def ui_url(self) -> str | None:
        ui = os.environ.get("PREFECT_UI_URL")
        return f"{ui.rstrip('/')}/runs/flow-run/{self.id}" if ui else None


def api_url() -> str | None:
    """The Prefect API this command talks to (PREFECT_API_URL); None: no server named, run locally."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    return url.rstrip("/") or None


def served_deployment(api: str, name: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """NAME's deployment if a runner serves it now (READY and not paused), else None."""
    try:
        response = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [name]}}},
                              timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError:
        return None  # no server to ask: the local path reports that in its own words
    ready = [d for d in response.json() if d.get("name") == name and not d.get("paused") and d.get("status") == "READY"]
    return ready[0] if len(ready) == 1 else None


def accepts(deployment: dict[str, Any], parameter: str) -> bool:
    schema = deployment.get("parameter_openapi_schema") or {}
    return parameter in (schema.get("properties") or {})


def start_run(api: str, deployment: dict[str, Any], parameters: dict[str, Any], timeout: float = 10.0) -> str:
    """Create a run of the deployment now; its runner picks it up on its next poll."""
    try:
        response = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                              json={"parameters": parameters, "tags": ["runbook-run"]}, timeout=timeout)
    except httpx.HTTPError as error:
        raise ServedError(f"cannot create a run of {deployment['name']}: {error}") from error
    if response.status_code in (409, 422):
        raise ServedError(f"the server refused the parameters of {deployment['name']}: {response.text[:500]}",
                          bad_input=True)
    if response.status_code >= 400:
        raise ServedError(f"creating a run of {deployment['name']} failed: HTTP {response.status_code} "
                          f"{response.text[:300]}")
    return response.json()["id"]


def wait_run(api: str, run_id: str, timeout_seconds: float, poll_seconds: float = 0.25,
             on_pause: Any = None) -> ServedRun:
    """Follow the run until it ends (or `timeout_seconds` pass: ServedError); `on_pause(run_id)` once
    when it pauses for an approval."""
    deadline = time.monotonic() + timeout_seconds
    told = False
    while True:
        try:
            response = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10)
            response.raise_for_status()
            state = response.json().get("state") or {}
        except httpx.HTTPError:
            state = {}  # a server restart or a 503 under load: look again until the deadline
        kind = state.get("type")
        if kind in FINAL:
            return ServedRun(run_id, kind, state.get("message") or "", api)
        if kind == "PAUSED" and not told and on_pause is not None:
            on_pause(run_id)
            told = True
        if time.monotonic() > deadline:
            raise ServedError(f"flow run {run_id} did not end within {timeout_seconds:g}s (state {kind}); "
                              "it goes on in `runbook serve`")
        time.sleep(poll_seconds)
