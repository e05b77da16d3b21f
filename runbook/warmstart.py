"""Flow runs of `runbook serve` started from a warm process instead of a fresh Python each time.

Prefect's runner starts a run of a served flow with `prefect.flow_engine.run_flow_in_subprocess`: a
`spawn` process that imports Python, Prefect and the project again (about 4 s on a loaded 2-core
machine) before the flow's first line. `install()` hands the runner `run_flow_in_warm_subprocess`
instead: the same call, the same payload (Prefect's own `cloudpickle_wrapped_call`, environment
sanitising and control-channel bootstrap) and still one process per run — a crashing or hanging
remediation cannot take serve down, and the runner cancels or kills it as before — but the process is
forked from a multiprocessing fork server that imported Prefect, its engine and every flow once, when
serve started. The run is still the deployment's run, created by the automation, shown in the UI.

The fork server is a separate single-threaded process started before the runner, so forking it is safe
(forking serve itself, with its threads and event loop, would not be).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.context
import os
from typing import Any

from prefect.context import SettingsContext, get_settings_context, serialize_context
from prefect.engine import handle_engine_signals
from prefect.flow_engine import (
    _CONTROL_CHANNEL_ENV_KEYS, _run_serialized_call_with_control_bootstrap, _runtime_subprocess_env, run_flow,
)
from prefect.settings.context import get_current_settings
from prefect.settings.models.root import Settings
from prefect.utilities.callables import cloudpickle_wrapped_call
from prefect.utilities.processutils import sanitize_subprocess_env

# What a run imports before its first line: Prefect's engines and client, then every flow (which
# imports its tasks and the ground floor). `__main__` first, so a child does not re-run serve's script.
ENGINE_MODULES = [
    "prefect.flow_engine", "prefect.task_engine", "prefect.client.orchestration", "prefect.events.clients",
    "prefect.logging.handlers", "prefect.concurrency.sync", "prefect.input.run_input", "prefect.artifacts",
]


def preload_modules() -> list[str]:
    from flows import FLOWS

    return ["__main__", *ENGINE_MODULES, __name__,
            *sorted({target.partition(":")[0] for target in FLOWS.values()})]


_context: multiprocessing.context.ForkServerContext | None = None


def start(preload: list[str] | None = None) -> multiprocessing.context.ForkServerContext:
    """Start the fork server now (its imports run while serve registers deployments)."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(preload if preload is not None else preload_modules())
        from multiprocessing import forkserver

        forkserver.ensure_running()
        _context = context
    return _context


def install() -> None:
    """Point Prefect's runner at the warm start for every served (in-memory) flow."""
    from prefect.runner import _starter_direct

    start()
    _starter_direct.run_flow_in_subprocess = run_flow_in_warm_subprocess


def _run_flow_with_env(*args: Any, env: dict[str, str] | None = None, remove_env: set[str] | None = None,
                       **kwargs: Any) -> None:
    """In the forked child: the run's environment and settings, then Prefect's engine (as Prefect does)."""
    for key in remove_env or ():
        os.environ.pop(key, None)
    os.environ.update(_runtime_subprocess_env(env))
    with SettingsContext(profile=get_settings_context().profile, settings=Settings()):
        flow_run = kwargs.get("flow_run")
        with handle_engine_signals(getattr(flow_run, "id", None)):
            result = run_flow(*args, **kwargs)
            if asyncio.iscoroutine(result):
                asyncio.run(result)


def run_flow_in_warm_subprocess(flow: Any, flow_run: Any = None, parameters: dict[str, Any] | None = None,
                                wait_for: Any = None, context: dict[str, Any] | None = None,
                                env: dict[str, str | None] | None = None) -> multiprocessing.process.BaseProcess:
    """`prefect.flow_engine.run_flow_in_subprocess`, forked from the warm fork server instead of spawned."""
    merged_env: dict[str, str | None] = (
        get_current_settings().to_environment_variables(exclude_unset=True)
        | os.environ
        | {"PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false"}  # as Prefect's own subprocess start
        | (env or {})
    )
    sanitized = sanitize_subprocess_env(merged_env)
    wrapped = cloudpickle_wrapped_call(
        _run_flow_with_env,
        env=_runtime_subprocess_env(sanitized),
        remove_env={key for key, value in merged_env.items() if value is None},
        flow=flow, flow_run=flow_run, parameters=parameters, wait_for=wait_for,
        context=context or serialize_context(),
    )
    startup_env = {key: value for key, value in sanitized.items() if key in _CONTROL_CHANNEL_ENV_KEYS}
    process = start().Process(target=_run_serialized_call_with_control_bootstrap,
                              args=(wrapped.args[0], startup_env))
    process.start()
    return process
