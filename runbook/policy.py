"""The safety policy for destructive steps: auto, approve (pause for a person) or dry-run.

`approve` pauses the flow run with a typed form in the Prefect UI; `runbook approve RUN_ID` answers
it from a shell. No answer within the timeout counts as a rejection: nothing destructive happens
because nobody was there.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from runbook.settings import Policy


class ActionApproval(RunInput):
    approve: bool = Field(False, description="Allow this action to run?")
    note: str = Field("", description="Why (kept in the incident journal)")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    dry_run: bool
    how: str


def authorize(policy: Policy, action: str, timeout_seconds: int, assume_yes: bool = False) -> Decision:
    """Decide whether `action` may run now. Call from a flow (not a task): it may pause the run.

    `assume_yes` is a person's explicit yes given up front (`runbook run NAME --yes`): it answers an
    `approve` policy without pausing; it never overrides `dry-run`."""
    if policy is Policy.auto:
        return Decision(True, False, "allowed by policy 'auto'")
    if policy is Policy.dry_run:
        return Decision(False, True, f"dry-run: would {action}")
    if assume_yes:
        return Decision(True, False, "approved with --yes from the shell")
    form = ActionApproval.with_initial_data(
        description=f"### Approval needed\n\nThe runbook wants to **{action}**.\n\n"
        f"Approve to let it run; reject to leave it to a person. No answer within "
        f"{timeout_seconds} s counts as rejected.",
    )
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_seconds, poll_interval=2)
    except FlowPauseTimeout:
        return Decision(False, False, f"not approved within {timeout_seconds} s")
    note = f" ({answer.note})" if answer.note else ""
    if answer.approve:
        return Decision(True, False, f"approved by a person{note}")
    return Decision(False, False, f"rejected by a person{note}")
