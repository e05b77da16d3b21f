"""API Authentication Failed end to end: keys made in the test with eth-account, the sandbox exchange verifying
signatures (userRole, extraAgents, a signed no-op through the official SDK), a real Prefect server.

Nothing is mocked. Agents are approved on the sandbox exchange the way `sandbox up` does it (its
`/_sandbox/accounts` control endpoint stands in for the master signing approveAgent); every test keeps the
sandbox bot's own agent approved. The flow reads the key from a runbook TOML variant pointing at the test's
key file (or environment variable). After every run, each place the runbook writes to — the report file,
the Prefect artifact and flow-run logs, the Slack thread, the journal database — is searched for the key.

One sandbox serves the module. The TLS checks run against a local HTTPS server with a self-signed
certificate made by `openssl` (the sandbox exchange is plain HTTP).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from eth_account import Account

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from tasks.keys import inspect_key, signed_noop
from tasks.network import check_tls
from conftest import running_sandbox

KEY_ENV = "RUNBOOK_TEST_AUTH_KEY"


def stakeholder(message: dict) -> bool:
    """A stakeholder update (the status channel), not a message of the incident's thread."""
    return "Trading System Status Update" in (message.get("text") or "")


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def sandbox_state(directory: Path) -> dict:
    return json.loads((directory / "state.json").read_text())


def hex_of(account) -> str:
    return bytes(account.key).hex()


def approve(directory: Path, master: str, agents: list[dict], balance: str | None = None) -> None:
    """Set the account's approved agents on the sandbox exchange (what approveAgent by its master does)."""
    body = {"address": master, "agents": agents, **({"balance": balance} if balance else {})}
    response = httpx.post(f"{sandbox_state(directory)['urls']['exchange']}/_sandbox/accounts", json=body, timeout=5)
    assert response.status_code == 200, response.text


def variant(directory: Path, folder: Path, *, key_file: Path | None = None, key_env: str | None = None,
            account: str | None = None) -> Path:
    """The sandbox's runbook.toml, with the bot's key (and account) replaced."""
    lines = []
    for line in config_of(directory).read_text().splitlines():
        if line.startswith("key_file = "):
            line = f"key_file = {json.dumps(str(key_file))}" if key_file else f"key_env = {json.dumps(key_env)}"
        elif line.startswith("account_address = ") and account:
            line = f"account_address = {json.dumps(account)}"
        lines.append(line)
    path = folder / "runbook.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def key_file(folder: Path, account, *, json_form: bool = True) -> Path:
    path = folder / "key.json"
    text = json.dumps({"address": account.address.lower(), "private_key": "0x" + hex_of(account)}) if json_form \
        else hex_of(account)
    path.write_text(text)
    path.chmod(0o600)
    return path


def run_flow(toml: Path):
    from flows.api_auth_failed import api_auth_failed

    return api_auth_failed(config=str(toml))


def everything_written(directory: Path, outcome) -> str:
    """Every output of the run: report, artifact, flow-run logs, Slack thread, journal database."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    run_id = UUID(outcome.flow_run_id)
    deadline = time.monotonic() + 10
    with get_client(sync_client=True) as client:
        while True:  # logs arrive in batches: wait for the resolution's line
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            if any("resolved (" in log.message or "escalated to" in log.message for log in logs) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[run_id])))
    assert logs and artifacts, "nothing to scan: the scan would prove nothing"
    base = load_settings(config_of(directory)).slack.base_url.removesuffix("/api/")
    slack = httpx.get(f"{base}/_sandbox/messages", timeout=5).text
    database = load_settings(config_of(directory)).journal_url.removeprefix("sqlite:///")
    return "\n".join([Path(outcome.report_path).read_text(), slack, Path(database).read_bytes().decode("latin-1"),
                      *(log.message for log in logs), *(str(artifact.data) for artifact in artifacts)])


def assert_never_shown(directory: Path, outcome, *keys) -> None:
    written = everything_written(directory, outcome).lower()
    for key in keys:
        assert hex_of(key) not in written, "a private key was written out"
    assert keys[0].address.lower() in written  # the derived address is there: the scan read real output


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("auth") / "sandbox") as directory:
        yield directory


@pytest.fixture
def shared(module_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RUNBOOK_INFRA__NETWORK_SAMPLES", "2")
    monkeypatch.setenv("RUNBOOK_INFRA__NETWORK_TIMEOUT_SECONDS", "2")
    yield module_sandbox
    manager.fault(module_sandbox, "clear")
    state = sandbox_state(module_sandbox)
    approve(module_sandbox, state["account_address"], [state["agent_address"]])
    journal = journal_of(module_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


# (kind, outcome, words in the summary, a recovery step)
CASES = {
    "valid agent": (j.FALSE_POSITIVE, "an agent approved for", None),
    "master key": (j.FALSE_POSITIVE, "WARNING: the bot signs with the account's master key, which can withdraw", None),
    "wrong key": (j.OUTCOME_ESCALATED, "wrong key: the key derives", "rotate the key"),
    "key for a different account": (j.OUTCOME_ESCALATED, "key for a different account: the key derives",
                                    "fix the address"),
    "unapproved agent": (j.OUTCOME_ESCALATED, "unapproved agent: the key derives", "re-approve the agent"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_keys_are_told_apart_and_never_shown(shared: Path, tmp_path: Path, kind: str) -> None:
    state = sandbox_state(shared)
    account, bot_agent = state["account_address"], state["agent_address"]
    key = Account.create()
    if kind == "valid agent":
        approve(shared, account, [bot_agent, {"address": key.address, "name": "ops"}])
        toml = variant(shared, tmp_path, key_file=key_file(tmp_path, key))
    elif kind == "master key":  # an account of its own, configured as the account, its key from the environment
        approve(shared, key.address, [], balance="1000")
        os.environ[KEY_ENV] = "0x" + hex_of(key)
        toml = variant(shared, tmp_path, key_env=KEY_ENV, account=key.address.lower())
    elif kind == "wrong key":  # never approved anywhere; a bare hex key file
        toml = variant(shared, tmp_path, key_file=key_file(tmp_path, key, json_form=False))
    elif kind == "key for a different account":  # an agent, but of another account
        other = Account.create()
        approve(shared, other.address, [key.address], balance="1000")
        toml = variant(shared, tmp_path, key_file=key_file(tmp_path, key))
    else:  # approved once for this account, expired an hour ago
        approve(shared, account, [bot_agent, {"address": key.address, "name": "old",
                                              "validUntil": int((time.time() - 3600) * 1000)}])
        toml = variant(shared, tmp_path, key_file=key_file(tmp_path, key))
    try:
        outcome = run_flow(toml)
    finally:
        os.environ.pop(KEY_ENV, None)

    expected, words, step = CASES[kind]
    assert outcome.outcome == expected, outcome.summary
    assert words in outcome.summary and key.address in outcome.summary, outcome.summary
    if kind == "unapproved agent":
        assert "its approval expired" in outcome.summary
    if step is not None:
        messages = httpx.get(load_settings(config_of(shared)).slack.base_url.removesuffix("/api/")
                             + "/_sandbox/messages", timeout=5).json()
        last = [m for m in messages if m["method"] == "chat.postMessage" and not stakeholder(m)][-1]["text"]
        assert "Status: ESCALATED" in last and f"- {step}" in last
    report = Path(outcome.report_path).read_text()
    noop_accepted = kind != "wrong key" and kind != "unapproved agent"
    assert ("the exchange accepted a no-op signed by" in report) == noop_accepted
    assert_never_shown(shared, outcome, key)


def test_exchange_rejecting_the_bots_own_agent(shared: Path) -> None:
    """The `auth` fault: the exchange stops accepting the sandbox bot's agent (its approval revoked)."""
    manager.fault(shared, "auth")
    deadline = time.monotonic() + 15
    errors = Path(load_settings(config_of(shared)).bots["sandbox"].path(Path("logs/trading_bot_errors.log")))
    while "auth failed" not in (errors.read_text() if errors.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.3)
    outcome = run_flow(config_of(shared))
    assert outcome.status == j.ESCALATED, outcome.summary
    assert "unapproved agent" in outcome.summary and "the exchange does not accept it" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert "the exchange REJECTED a no-op signed by" in report and "does not exist" in report
    assert "Auth lines of the error log" in report and "auth failed: User or API Wallet" in report
    agent_key = json.loads((shared / "bot" / "config" / "agent_key.json").read_text())["private_key"]
    written = everything_written(shared, outcome).lower()
    assert agent_key.removeprefix("0x").lower() not in written


def test_key_problems_are_clear_and_quote_no_key(tmp_path: Path) -> None:
    from runbook.settings import BotSettings

    def bot(**hyperliquid) -> BotSettings:
        return BotSettings(working_dir=tmp_path, process_match=["x"], start_command=["true"],
                           hyperliquid={"api_url": "http://127.0.0.1:9", "account_address": "0x" + "1" * 40,
                                        **hyperliquid})

    secret = Account.create()
    broken = tmp_path / "broken.json"
    broken.write_text('{"private_key": "0x' + hex_of(secret)[:-3] + 'zzz"}')
    cases = {
        "does not exist": bot(key_file=tmp_path / "missing.json"),
        "is JSON without a \"private_key\" string": bot(key_file=_write(tmp_path / "nokey.json", '{"address": "0x1"}')),
        "does not parse as a secp256k1 private key": bot(key_file=broken),
        f"environment variable {KEY_ENV}_UNSET is not set": bot(key_env=f"{KEY_ENV}_UNSET"),
        "no signing key configured": bot(),
    }
    for words, settings in cases.items():
        check = inspect_key.fn(settings)
        assert not check.ok and words in check.error, check.error
        assert hex_of(secret)[:20] not in check.error
    good = bot(key_file=_write(tmp_path / "good.hex", hex_of(secret)))
    good.hyperliquid.key_file.chmod(0o644)
    check = inspect_key.fn(good)
    assert check.ok and check.address == secret.address and check.source.endswith("(bare hex)")
    assert any("readable by other users" in warning for warning in check.warnings)
    unreachable = signed_noop.fn(good)  # nothing listens on port 9
    assert not unreachable.reached and "cannot reach" in unreachable.message


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                           "-subj", "/CN=localhost/O=Runbook Test CA", "-addext", "subjectAltName=DNS:localhost",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr.decode()[-300:]}")

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], cert
    finally:
        server.shutdown()


def test_tls_certificate_checks(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    untrusted = check_tls.fn(f"https://localhost:{port}", 5)
    assert untrusted.tls and not untrusted.verified and "self-signed" in untrusted.problem
    trusted = check_tls.fn(f"https://localhost:{port}", 5, cafile=str(cert))
    assert trusted.verified and trusted.hostname_ok and trusted.problem is None
    assert "Runbook Test CA" in trusted.issuer and 29 <= trusted.days_left <= 30
    wrong_name = check_tls.fn(f"https://127.0.0.1:{port}", 5, cafile=str(cert))
    assert wrong_name.hostname_ok is False and "mismatch" in wrong_name.problem
    assert wrong_name.issuer is not None  # still read, without the hostname check
    plain = check_tls.fn("http://127.0.0.1:9", 5)
    assert not plain.tls and plain.problem is None and "no TLS (plain HTTP)" in plain.summary()
