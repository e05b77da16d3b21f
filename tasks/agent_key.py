"""Is the bot's signing key still good at the exchange? (security breach: zeroizing local files does not revoke it)

An agent key copied by an intruder keeps trading for the account until the account drops it: Hyperliquid keeps
it approved until a replacement agent is approved under the same name (or, for the unnamed slot, any new
unnamed agent) from the master account, or until its `validUntil` passes. These tasks read that from the
exchange — `userRole` of the key's address (weight 60) and the account's `extraAgents` (weight 20) — and
never touch the key itself: they take its public address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import task

from runbook.settings import HyperliquidAccount
from tasks import NO_CACHE_POLICY
from tasks.hyperliquid import HyperliquidError, HyperliquidInfo


class KeyStillValid(Exception):
    """The key is still an approved agent (raised by the re-check, which Prefect retries until it is not)."""


@dataclass
class KeyStanding:
    """What the exchange says of one signing address for the account, at `checked_at`."""

    signer: str
    account: str
    valid: bool  # the exchange would take an order signed by it for the account
    role: str  # userRole: agent, user, missing, ...
    name: str | None  # the agent's name (extraAgents), if it has one
    valid_until: datetime | None
    checked_at: datetime

    @property
    def master(self) -> bool:
        return self.signer == self.account

    def revoke_how(self) -> str:
        if self.master:
            return ("it is the account's own master key and cannot be revoked: move the funds to a new account "
                    "now")
        slot = f"under the same name {self.name!r}" if self.name else "in the unnamed agent slot"
        until = f", or let it expire at {self.valid_until:%Y-%m-%d %H:%M} UTC" if self.valid_until else ""
        return (f"from the master account {self.account}, approve a replacement agent {slot} (approveAgent), which "
                f"drops this one{until}")

    def headline(self) -> str:
        if self.valid:
            return f"key still valid at the exchange: revoke it ({self.signer}; {self.revoke_how()})"
        return (f"key no longer valid at the exchange: {self.signer} is not an approved agent of {self.account} "
                f"(userRole {self.role!r}, checked {self.checked_at:%H:%M:%S} UTC)")

    def to_dict(self) -> dict[str, Any]:
        return {"signer": self.signer, "account": self.account, "valid": self.valid, "role": self.role,
                "name": self.name, "valid_until": self.valid_until.isoformat() if self.valid_until else None,
                "checked_at": self.checked_at.isoformat()}


def read_standing(account: HyperliquidAccount, signer: str) -> KeyStanding:
    """userRole of the signer (and the account's extraAgents for its name and expiry)."""
    signer, owner = signer.lower(), account.account_address.lower()
    with HyperliquidInfo.from_account(account, max_attempts=1) as client:
        if signer == owner:
            return KeyStanding(signer, owner, True, "user", None, None, datetime.now(UTC))
        role, master = client.user_role(signer)
        listed = next((a for a in client.extra_agents(owner) if a.address == signer), None)
    valid = role == "agent" and master == owner
    return KeyStanding(signer, owner, valid, role, listed.name if listed else None,
                       listed.valid_until if listed else None, datetime.now(UTC))


def _transient(error: BaseException | None) -> bool:
    return isinstance(error, HyperliquidError) and error.retryable


def _retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as error:  # noqa: BLE001
        return _transient(error)
    return False


def _retry_while_valid(_task: Any, _task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except KeyStillValid:
        return True
    except Exception as error:  # noqa: BLE001
        return _transient(error)
    return False


@task(name="check the key at the exchange", cache_policy=NO_CACHE_POLICY, retries=2, retry_delay_seconds=[1, 4],
      retry_condition_fn=_retry_transient)
def check_key_at_exchange(account: HyperliquidAccount, signer: str) -> KeyStanding:
    """Is the bot's signing address still an approved agent of the account (userRole / extraAgents)?"""
    return read_standing(account, signer)


@task(name="re-check until the key is revoked", cache_policy=NO_CACHE_POLICY, retry_condition_fn=_retry_while_valid)
def await_revocation(account: HyperliquidAccount, signer: str) -> KeyStanding:
    """One re-check; raises KeyStillValid while the key is approved. The flow gives it retries and a delay
    (`.with_options`) spanning `[emergency] key_revocation_watch_seconds`: Prefect does the waiting."""
    standing = read_standing(account, signer)
    if standing.valid:
        raise KeyStillValid(standing.headline())
    return standing
