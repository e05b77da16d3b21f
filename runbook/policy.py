"""The safety policy for destructive steps: auto, approve (pause for a person) or dry-run.

`approve` pauses the flow run with a typed form in the Prefect UI; `runbook approve <run id>` and the
Approve / Reject buttons in the incident's Slack thread answer it too. No answer within the timeout counts
as a rejection: nothing destructive happens because nobody was there.

Every pause is journaled as an `Approval` (what, which run, the deadline, then who answered and from
where), so `runbook approvals` lists the runs waiting for a person, and another remediation waiting for
the bot's lock learns that a person is deciding instead of waiting blind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from runbook import journal as j
from runbook.journal import Approval, Journal, JournalError
from runbook.settings import Policy

log = logging.getLogger("runbook.policy")

# Where an answer came from, as the journal and the messages say it.
VIA = {"ui": "the Prefect UI", "shell": "the shell", "slack": "Slack"}


class ActionApproval(RunInput):
    approve: bool = Field(False, description="Allow this action to run?")
    note: str = Field("", description="Why (kept in the incident journal)")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    dry_run: bool
    how: str


def decided_by(approval: Approval | None) -> str:
    """"a person" or "alice via Slack": who answered, for the journal and the messages."""
    if approval is None or not approval.decided_via:
        return "a person"
    return f"{approval.decided_by or 'a person'} via {VIA.get(approval.decided_via, approval.decided_via)}"


@dataclass
class ApprovalGate:
    """What a run does around a pause for approval: journal it, tell people at once, record the answer.

    `announce` is called right before the pause (post the request where people see it), `settled` once the
    answer (or the timeout) is in; both are the caller's (tasks post to Slack; this floor does not) and a
    failure in either never stops the run."""

    journal: Journal
    bot: str
    kind: str
    incident_id: int | None = None
    announce: Callable[[Approval], Any] | None = None
    settled: Callable[[Approval], Any] | None = None

    def ask(self, form: type[RunInput], action: str, timeout_seconds: int) -> tuple[Any | None, Approval | None]:
        """Pause for `form`; returns (the answer or None on timeout, the journaled approval)."""
        from prefect.context import get_run_context
        from prefect.settings import PREFECT_UI_URL

        approval = None
        try:
            run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
            ui = PREFECT_UI_URL.value()
            approval = self.journal.open_approval(
                run_id, self.bot, self.kind, action, j.utcnow() + timedelta(seconds=timeout_seconds),
                incident_id=self.incident_id, ui_url=f"{ui}/runs/flow-run/{run_id}" if ui else None)
        except Exception as error:  # noqa: BLE001 - the pause still happens; only the record is missing
            log.warning("approval of %r not journaled: %s", action, error)
        self._call(self.announce, approval)
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=timeout_seconds, poll_interval=2)
        except FlowPauseTimeout:
            self._settle(approval, j.TIMED_OUT, "")
            return None, approval
        approval = self._settle(approval, j.APPROVED if answer.approve else j.REJECTED, answer.note)
        return answer, approval

    def _settle(self, approval: Approval | None, status: str, note: str) -> Approval | None:
        if approval is None:
            return None
        try:
            approval = self.journal.settle_approval(approval.id, status, note)
        except Exception as error:  # noqa: BLE001
            log.warning("approval #%s outcome not journaled: %s", approval.id, error)
            return approval
        self._call(self.settled, approval)
        return approval

    @staticmethod
    def _call(hook: Callable[[Approval], Any] | None, approval: Approval | None) -> None:
        if hook is None or approval is None:
            return
        try:
            hook(approval)
        except Exception as error:  # noqa: BLE001 - telling people must never stop the run
            log.warning("approval #%s: %s failed: %s", approval.id, getattr(hook, "__name__", "hook"), error)


def ask(form: type[RunInput], action: str, timeout_seconds: int,
        gate: ApprovalGate | None = None) -> tuple[Any | None, Approval | None]:
    """Pause for `form` (through `gate` when given); (the answer or None on timeout, the journaled approval)."""
    if gate is not None:
        return gate.ask(form, action, timeout_seconds)
    try:
        return pause_flow_run(wait_for_input=form, timeout=timeout_seconds, poll_interval=2), None
    except FlowPauseTimeout:
        return None, None


def authorize(policy: Policy, action: str, timeout_seconds: int, assume_yes: bool = False,
              gate: ApprovalGate | None = None) -> Decision:
    """Decide whether `action` may run now. Call from a flow (not a task): it may pause the run.

    `assume_yes` is a person's explicit yes given up front (`runbook run NAME --yes`): it answers an
    `approve` policy without pausing; it never overrides `dry-run`. With a `gate`, the pause is journaled
    and announced (see ApprovalGate)."""
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
    answer, approval = ask(form, action, timeout_seconds, gate)
    if answer is None:
        return Decision(False, False, f"not approved within {timeout_seconds} s")
    note = f" ({answer.note})" if answer.note else ""
    if answer.approve:
        return Decision(True, False, f"approved by {decided_by(approval)}{note}")
    return Decision(False, False, f"rejected by {decided_by(approval)}{note}")


# -- answering: `runbook approve`, the Slack buttons --------------------------------------------------


class ApprovalError(Exception):
    """The run cannot be answered (no such run, not paused, already answered); the message says which."""


def answer_approval(journal: Journal | None, run_id: str, approve: bool, by: str, via: str, note: str = "",
                    attempts: int = 10) -> Approval | None:
    """Resume the paused run `run_id` with the same input as the UI form, saying who answered from where.

    The journal learns who answers before the run is resumed (the run records the decision when it wakes);
    if the resume fails that claim is withdrawn. Returns the journaled approval (None when the run's pause
    was not journaled, e.g. a pause from before this version)."""
    approval, claimed = None, False
    if journal is not None:
        approval, claimed = journal.claim_decision(run_id, by, via)
        if approval is not None and not claimed:
            raise ApprovalError(f"run {run_id} is being answered right now by {decided_by(approval)}")
    try:
        for attempt in range(attempts):
            try:
                resume_flow_run(run_id, run_input={"approve": approve, "note": note})
                return approval
            except ObjectNotFound:
                raise ApprovalError(f"no flow run {run_id}") from None
            except Exception as error:  # noqa: BLE001
                # Right after a pause the run's input schema may not be stored yet: try again shortly.
                if "schema" in str(error).lower() and attempt < attempts - 1:
                    time.sleep(0.5)
                    continue
                raise ApprovalError(f"cannot resume {run_id}: {error}") from None
    except BaseException:
        if approval is not None and claimed:
            try:
                journal.release_claim(approval.id)  # type: ignore[union-attr]
            except JournalError as error:
                log.warning("claim on approval #%s not withdrawn: %s", approval.id, error)
        raise
    return approval
