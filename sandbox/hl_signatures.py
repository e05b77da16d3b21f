"""Signed `POST /exchange` bodies: the body's shape, the signer recovered from the L1 action's signature
(the official SDK's own recovery), and the signer's account and nonce (replays and stale or future nonces
refused as the real exchange does)."""

from __future__ import annotations

from typing import Any

from hyperliquid.utils.signing import recover_agent_or_user_from_l1_action

from sandbox.hl_market import ADDRESS_RE, NONCE_FUTURE_MS, NONCE_PAST_MS, NONCES_KEPT, BadRequest, JsonDict, now_ms
from sandbox.hl_state import ExchangeError, VenueState


class VenueAuth(VenueState):
    """Who signed, for which account, with a fresh nonce."""

    def authenticate(self, signer: str, nonce: int, expires_after: int | None, vault: str | None) -> str:
        """Map the recovered signer to its account and consume the nonce; raises ExchangeError."""
        with self._lock:
            unknown = f"L1 error: User or API Wallet {signer} does not exist."
            if self.faults.active("auth"):
                raise ExchangeError(unknown)
            master = self.master_of(signer)
            if master is None:
                raise ExchangeError(unknown)
            if vault is not None and vault.lower() != master:  # only for the signer's own account
                raise ExchangeError(unknown)
            now = now_ms()
            if expires_after is not None and expires_after < now:
                raise ExchangeError(f"Action expired: expiresAfter {expires_after} is before current time {now}")
            used = self.state["nonces"].setdefault(signer, [])
            too_old = nonce < now - NONCE_PAST_MS or (len(used) >= NONCES_KEPT and nonce <= used[0])
            if nonce in used or too_old:
                raise ExchangeError(f"Invalid nonce: duplicate nonce {nonce}")
            if nonce > now + NONCE_FUTURE_MS:
                raise ExchangeError(f"Invalid nonce: nonce {nonce} is too far in the future")
            used.append(nonce)
            used.sort()
            del used[:-NONCES_KEPT]
            self._save()
            return master



def parse_exchange_body(body: Any) -> tuple[JsonDict, int, JsonDict, str | None, int | None]:
    if not isinstance(body, dict):
        raise BadRequest("body must be an object")
    action, nonce, signature = body.get("action"), body.get("nonce"), body.get("signature")
    vault, expires = body.get("vaultAddress"), body.get("expiresAfter")
    if not isinstance(action, dict) or not isinstance(action.get("type"), str):
        raise BadRequest("action must be an object with a type")
    if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce < 0:
        raise BadRequest("nonce must be an int")
    if not isinstance(signature, dict) or not {"r", "s", "v"} <= signature.keys():
        raise BadRequest("signature must have r, s, v")
    if vault is not None and (not isinstance(vault, str) or not ADDRESS_RE.match(vault)):
        raise BadRequest("bad vaultAddress")
    if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
        raise BadRequest("bad expiresAfter")
    return action, nonce, signature, vault, expires



def recover_signer(action: JsonDict, signature: JsonDict, vault: str | None, nonce: int, expires: int | None) -> str:
    """The address that signed the L1 action (lower-case); an undecodable signature is a bad body."""
    try:
        return recover_agent_or_user_from_l1_action(action, signature, vault, nonce, expires, False).lower()
    except Exception as exc:  # noqa: BLE001 - any undecodable signature is a bad body
        raise BadRequest("bad signature") from exc
