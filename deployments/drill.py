"""The `drill` deployment: a drill of the configured bot on `[drill]`'s schedule, which is off by default."""

from __future__ import annotations

from pathlib import Path

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from runbook.settings import Settings


def drill_deployment(config: Path, settings: Settings) -> RunnerDeployment:
    """Monthly (say) on a staging bot: `drill.cron` in `reports.timezone`, active only with
    `drill.schedule_active = true`; runnable by hand from the UI either way."""
    from flows.drill import NAME, drill

    drill_settings = settings.drill
    return drill.to_deployment(
        name=NAME,
        description="Runbook drill: inject each failure scenario into a bot with drill_allowed = true and measure "
                    "alert coverage, detection accuracy, cause accuracy and time to the root cause.",
        parameters={"config": str(config), **({"bot": drill_settings.bot} if drill_settings.bot else {})},
        schedules=[Cron(drill_settings.cron, timezone=settings.reports.timezone, active=drill_settings.schedule_active)],
        tags=["runbook", "drill"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
