"""How flows are served: one deployment per automated runbook flow, each triggered by its alert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Schedule

from runbook.alerts import get_alert
from runbook.firing import EVENT_FIRED
from runbook.settings import Settings, load_settings


def alert_trigger(alert_key: str) -> DeploymentEventTrigger:
    """Start the deployment when its alert fires; the event names the bot and the incident."""
    return DeploymentEventTrigger(
        name=f"{alert_key} fired",
        expect={EVENT_FIRED},
        match={"runbook.alert": alert_key},
        parameters={
            "bot": "{{ event.resource['runbook.bot'] }}",
            # Rendered text parsed as JSON, so the flow's int parameter gets an int, not "12".
            "incident_id": {"__prefect_kind": "json",
                            "value": {"__prefect_kind": "jinja", "template": "{{ event.resource['runbook.incident'] }}"}},
        },
    )


def report_schedules(alert_key: str, settings: Settings) -> list[Schedule]:
    """A scheduled report's cron from `[reports]`, in the configured time zone (DST included)."""
    reports = settings.reports
    cron = {"daily-summary": reports.daily_cron, "weekly-alert-analysis": reports.weekly_cron}.get(alert_key)
    return [Cron(cron, timezone=reports.timezone)] if cron else []


def deployment_specs(config: Path, settings: Settings | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """Every flow that exists, with what its deployment is made of: its trigger (and schedule, for
    scheduled reports). `flow.to_deployment(**spec)` and a Runner's `add_flow(flow, **spec)` take it."""
    from flows import registry

    settings = settings or load_settings(config)
    specs = []
    for key, flow in registry().items():
        alert = get_alert(key)
        specs.append((flow, dict(
            name=key,
            description=f"Runbook: {alert.title} ({alert.severity.value}). {alert.condition}.",
            parameters={"config": str(config)},
            triggers=[] if alert.scheduled else [alert_trigger(key)],
            schedules=report_schedules(key, settings) if alert.scheduled else None,
            tags=["runbook", alert.severity.value.lower()],
            # Loaded by module path, so the runner finds the flow whatever its working directory.
            entrypoint_type=EntrypointType.MODULE_PATH,
        )))
    return specs


def build_deployments(config: Path, settings: Settings | None = None) -> list[RunnerDeployment]:
    """Every flow that exists as a deployment, with its trigger (and schedule, for scheduled reports)."""
    return [flow.to_deployment(**spec) for flow, spec in deployment_specs(config, settings)]
