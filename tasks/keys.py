"""The bot's signing key: where it is, whether it parses, which address it is, whether the exchange takes it.

The key itself never leaves this module: it is read, parsed with eth-account and used to sign inside the
functions below, and what they return is the derived address and a description of where the key came
from ("key file /path (JSON private_key)", "environment variable NAME"). No error message quotes the key
or the file's text.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hyperliquid.exchange import Exchange
from hyperliquid.utils.error import ClientError, ServerError
from hyperliquid.utils.signing import get_timestamp_ms
from prefect import task

from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY

# The no-op needs no market metadata: passing it keeps the SDK from asking the exchange for it.
_NO_META: dict[str, Any] = {"universe": []}
_NO_SPOT_META: dict[str, Any] = {"universe": [], "tokens": []}


class KeyProblem(Exception):
    """The key cannot be used; the message says where it was looked for and why (never the key)."""


@dataclass(frozen=True)
class _Loaded:
    wallet: LocalAccount
    source: str
    declared_address: str | None
    warnings: tuple[str, ...]


def _from_file(path: Path) -> tuple[str, str, str | None, list[str]]:
    """(key text, description, declared address, warnings) of a key file."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except FileNotFoundError:
        raise KeyProblem(f"key file {path} does not exist") from None
    except OSError as error:
        raise KeyProblem(f"key file {path} cannot be read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise KeyProblem(f"key file {path} is not text") from None
    warnings = []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):04o}); make it 0600")
    key, kind, declared = _key_in(text, f"key file {path}")
    return key, f"key file {path} ({kind})", declared, warnings


def _key_in(text: str, where: str) -> tuple[str, str, str | None]:
    """(key, "bare hex" or "JSON private_key", declared address) of a key file's text."""
    text = text.strip()
    if not text.startswith("{"):
        return text, "bare hex", None
    try:
        document = json.loads(text)
    except ValueError:
        raise KeyProblem(f"{where} starts like JSON but is not valid JSON") from None
    key = document.get("private_key") if isinstance(document, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise KeyProblem(f'{where} is JSON without a "private_key" string')
    declared = document.get("address")
    return key.strip(), "JSON private_key", declared.lower() if isinstance(declared, str) else None


def _parse(text: str, source: str) -> LocalAccount:
    try:
        return Account.from_key(text)
    except Exception as error:  # noqa: BLE001 - eth-account raises several types; none may carry the key out
        digits = len(text.removeprefix("0x"))
        raise KeyProblem(f"the key from {source} does not parse as a secp256k1 private key "
                         f"({type(error).__name__}; {digits} characters where 64 hex digits are expected)") from None


def wallet_from_text(text: str) -> LocalAccount | None:
    """The account a key file's text holds, or None (for recording what a removed file was, by address)."""
    try:
        key, _, _ = _key_in(text, "the text")
        return _parse(key, "the text")
    except KeyProblem:
        return None


def _load(bot: BotSettings) -> _Loaded:
    """Read and parse the configured key: the key file when one is configured, else the env variable."""
    account = bot.hyperliquid
    if account.key_file is not None:
        text, source, declared, warnings = _from_file(bot.path(account.key_file))
    elif account.key_env:
        value = os.environ.get(account.key_env)
        if not value or not value.strip():
            raise KeyProblem(f"environment variable {account.key_env} is not set")
        text, source, declared, warnings = value.strip(), f"environment variable {account.key_env}", None, []
    else:
        raise KeyProblem("no signing key configured (set hyperliquid.key_file or hyperliquid.key_env)")
    return _Loaded(_parse(text, source), source, declared, tuple(warnings))


def load_wallet(bot: BotSettings) -> LocalAccount:
    """The configured signing key as an eth-account account, for signing (KeyProblem says what is wrong)."""
    return _load(bot).wallet


@dataclass
class KeyCheck:
    """What is known about the configured key without showing it."""

    source: str | None = None
    address: str | None = None  # derived from the key (EIP-55 checksummed)
    declared_address: str | None = None  # the address the key file says it is, if it says
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.address is not None

    @property
    def declared_mismatch(self) -> bool:
        return bool(self.declared_address and self.address and self.declared_address != self.address.lower())


@task(name="check signing key", cache_policy=NO_CACHE_POLICY)
def inspect_key(bot: BotSettings) -> KeyCheck:
    """Runbook "Check Credentials" / "Check key format": the key is there, parses, and derives an address."""
    try:
        loaded = _load(bot)
    except KeyProblem as error:
        return KeyCheck(error=str(error))
    return KeyCheck(source=loaded.source, address=loaded.wallet.address, declared_address=loaded.declared_address,
                    warnings=list(loaded.warnings))


@dataclass
class NoopResult:
    """The exchange's answer to a signed no-op: did it get there, and did it accept the signer."""

    signer: str | None = None
    reached: bool = False
    accepted: bool = False
    status_code: int | None = None
    message: str = ""

    def summary(self) -> str:
        if self.accepted:
            return f"the exchange accepted a no-op signed by {self.signer}"
        if self.reached:
            return f"the exchange REJECTED a no-op signed by {self.signer}: {self.message}"
        return f"the no-op did not reach the exchange: {self.message}"


@task(name="send a signed no-op", cache_policy=NO_CACHE_POLICY)
def signed_noop(bot: BotSettings) -> NoopResult:
    """Runbook "Test API Connection" / "Verify EIP-712 signing works": a `noop` action signed with the key.

    A no-op only marks its nonce as used: nothing is traded. The SDK signs for mainnet only when the URL is
    mainnet's, exactly as the bot's own SDK does.
    """
    try:
        loaded = _load(bot)
    except KeyProblem as error:
        return NoopResult(message=str(error))
    account = bot.hyperliquid
    result = NoopResult(signer=loaded.wallet.address)
    try:
        exchange = Exchange(loaded.wallet, account.api_url.rstrip("/"), meta=_NO_META, spot_meta=_NO_SPOT_META,
                            account_address=account.account_address or None, timeout=account.timeout_seconds)
        answer = exchange.noop(get_timestamp_ms())
    except ClientError as error:
        result.reached, result.status_code = True, error.status_code
        result.message = f"HTTP {error.status_code}" + (" (rate-limited)" if error.status_code == 429 else
                                                        f": {str(error.error_message)[:200]}")
        return result
    except ServerError as error:
        result.reached, result.status_code = True, error.status_code
        result.message = f"exchange error HTTP {error.status_code}"
        return result
    except requests.Timeout:
        result.message = f"no answer within {account.timeout_seconds:g}s"
        return result
    except requests.RequestException as error:
        result.message = f"cannot reach {account.api_url}: {type(error).__name__}"
        return result
    result.reached, result.status_code = True, 200
    if isinstance(answer, dict) and answer.get("status") == "ok":
        result.accepted, result.message = True, "ok"
    else:
        response = answer.get("response") if isinstance(answer, dict) else answer
        result.message = str(response)[:300]
    return result
