"""`runbook deploy --pool NAME`: the deployments `runbook serve` serves, registered to a work pool instead,
so workers on other hosts run them (`prefect worker start --pool NAME`). docs/scaling.md.

The code is not shipped with the deployment: every worker host has this project installed (the same
version) and the configuration at the same path, and a flow is loaded by its module path. Each
deployment's trigger is narrowed to the bots of the configuration it was registered with, so a fleet
can register one set per bot host (`--suffix HOST --queue HOST`) and each alert starts the set whose
worker can reach that bot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from prefect.events.schemas.events import ResourceSpecification

from deployments import build_deployments
from runbook.settings import load_settings


class DeployError(Exception):
    pass


@dataclass
class Registered:
    name: str
    flow: str
    deployment_id: str
    work_pool: str
    work_queue: str | None
    entrypoint: str | None
    triggers: int
    schedules: int
    bots: list[str]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def deploy_to_pool(config: Path, pool: str, *, queue: str | None = None, suffix: str | None = None,
                   only: list[str] | None = None) -> list[Registered]:
    """Register every deployment of `config` (or those named in `only`) to the work pool `pool`."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    settings = load_settings(config)
    deployments = build_deployments(config, settings)
    if only:
        unknown = sorted(set(only) - {d.name for d in deployments})
        if unknown:
            raise DeployError(f"no deployment named {', '.join(unknown)}; known: {', '.join(d.name for d in deployments)}")
        deployments = [d for d in deployments if d.name in only]
    with get_client(sync_client=True) as client:
        try:
            kind = client.read_work_pool(pool).type
        except ObjectNotFound:
            raise DeployError(f"work pool {pool!r} does not exist on {client.api_url}; create it with "
                              f"`prefect work-pool create {pool} --type process`") from None
    if kind != "process":
        # Other pool types run flows in containers or elsewhere and need an image or remote storage.
        raise DeployError(f"work pool {pool!r} is of type {kind!r}; runbook deployments need a `process` pool "
                          f"(the code and the configuration are on the worker hosts)")
    bots = sorted(settings.bots)
    registered = []
    for deployment in deployments:
        if suffix:
            deployment.name = f"{deployment.name}-{suffix}"
        deployment.work_queue_name = queue
        for trigger in deployment.triggers:
            # Only this configuration's bots: another host's set answers for its own.
            trigger.match = ResourceSpecification({**trigger.match.root, "runbook.bot": bots})
            if suffix:
                trigger.name = f"{trigger.name} ({suffix})"
        deployment_id = deployment.apply(work_pool_name=pool)
        registered.append(Registered(
            name=deployment.name, flow=deployment.flow_name, deployment_id=str(deployment_id), work_pool=pool,
            work_queue=queue, entrypoint=deployment.entrypoint, triggers=len(deployment.triggers),
            schedules=len(deployment.schedules or []), bots=bots))
    return registered
