"""Security breach end to end on the sandbox: forensics of the live bot, stop, evidence, zeroize only after
approval, and the bot's key nowhere in what the runbook wrote (files, archives, Slack, Prefect logs and
artifacts).

One sandbox for the module. The first test (zeroize rejected) finds the bot running and stops it; the
second (zeroize approved with `runbook approve`) removes the key for good, so it runs last.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from runbook import journal as j
from runbook.cli import app
from runbook.journal import Journal
from runbook.settings import load_settings
from tasks.evidence import read_manifest
from tasks.process import locate_bot
from conftest import running_sandbox


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def settings_of(directory: Path):
    return load_settings(config_of(directory))


def key_file(directory: Path) -> Path:
    return directory / "bot" / "config" / "agent_key.json"


def journal_of(directory: Path) -> Journal:
    return Journal(settings_of(directory).journal_url)


def run_flow(directory: Path, **params):
    from flows.security_breach import security_breach

    return security_breach(config=str(config_of(directory)), **params)


def slack_messages(directory: Path) -> list[dict]:
    base = settings_of(directory).slack.base_url.removesuffix("/api/")
    return httpx.get(f"{base}/_sandbox/messages", timeout=5).json()


def archive_members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def wait_paused(flow_name: str, after: float):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            runs = [r for r in runs if r.created and r.created.timestamp() >= after]
            if runs:
                return runs[0]
            time.sleep(0.3)
    return None


def resume(run_id, answer: dict) -> None:
    from prefect.flow_runs import resume_flow_run

    for attempt in range(20):  # right after the pause the input schema may not be stored yet
        try:
            resume_flow_run(run_id, run_input=answer)
            return
        except Exception as error:
            if "schema" not in str(error).lower() or attempt == 19:
                raise
            time.sleep(0.3)


def start_in_thread(directory: Path, **params) -> tuple[threading.Thread, dict]:
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", run_flow(directory, **params)))
    worker.start()
    return worker, result


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("security-breach") / "sandbox") as directory:
        yield directory


@pytest.fixture
def shared(module_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RUNBOOK_POLICY__APPROVAL_TIMEOUT_SECONDS", "60")
    yield module_sandbox
    journal = journal_of(module_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def test_forensics_stop_and_evidence_then_rejected_zeroize_keeps_the_key(shared: Path) -> None:
    bot = settings_of(shared).bots["sandbox"]
    process = locate_bot(bot)
    assert process is not None
    key_before = key_file(shared).read_bytes()
    started = time.time()
    worker, result = start_in_thread(shared)
    paused = wait_paused("security-breach", started - 1)
    assert paused is not None, "the run never paused for the zeroize approval"
    # Before the answer: the bot is stopped and the evidence is archived; the key is still there.
    assert locate_bot(bot) is None
    assert key_file(shared).read_bytes() == key_before
    [archive] = sorted((shared / "backups" / "sandbox").glob("emergency_backup_*.tar.gz"))
    members = archive_members(archive)
    assert "config/agent_key.json" not in members and "FORENSICS.json" in members
    forensics = json.loads(members["FORENSICS.json"])
    assert forensics["bot_pid"] == process.pid
    assert any(p["pid"] == process.pid and "sandbox.bot" in p["cmdline"] for p in forensics["processes"])
    health_port = int(bot.health_url.rsplit(":", 1)[1].split("/")[0])
    assert any(c["local"].endswith(f":{health_port}") and c["status"] == "LISTEN" for c in forensics["bot_connections"])
    assert [k["path"] for k in forensics["key_files"]] == [str(key_file(shared))]  # metadata, never content
    assert "private_key" not in members["FORENSICS.json"].decode()
    assert all(len(h["sha256"]) == 64 for h in forensics["program_hashes"]) and forensics["program_hashes"]
    token = settings_of(shared).slack.token.get_secret_value()
    assert token not in members["FORENSICS.json"].decode()
    assert any(e["event"].startswith("bot process") for e in forensics["timeline"])
    assert "FORENSICS.json" in {f["path"] for f in read_manifest(archive)["files"]}

    resume(paused.id, {"approve": False, "note": "investigating first"})
    worker.join(timeout=120)
    outcome = result["outcome"]
    assert key_file(shared).read_bytes() == key_before
    assert outcome.status == j.ESCALATED and outcome.details["archive"] == str(archive), outcome.summary
    incident = journal_of(shared).get(outcome.incident_id)
    steps = [(a.step, a.ok) for a in incident.actions]
    # the person's answer is its own journaled step (who, from where), then the zeroize it decided
    assert steps == [("stop", True), ("backup", True), ("approval", False), ("zeroize", False)]
    assert "zeroize rejected by a person via the Prefect UI" in incident.actions[2].description
    assert "rejected by a person via the Prefect UI (investigating first)" in incident.actions[3].description
    report = Path(outcome.report_path).read_text()
    for section in ("Forensic timeline", "Bot network connections", "Isolate the system", "never takes a network "
                    "interface down by itself", "sudo ip link set", "Credential rotation checklist",
                    "Revoke `" + json.loads(key_before)["address"], "Rotate the Slack bot token", "authorized_keys",
                    "Contact authorities if funds were stolen", "Evidence archive"):
        assert section in report or section.lower() in report.lower(), section
    stakeholder = [m for m in slack_messages(shared) if m.get("method") == "chat.postMessage"
                   and "Subject: Trading System Status Update" in (m.get("text") or "")]
    assert len(stakeholder) == 1 and "Suspected security breach" in stakeholder[0]["text"]


def test_zeroize_after_approval_and_the_key_is_nowhere(shared: Path) -> None:
    key_text = key_file(shared).read_text()
    key_hex = json.loads(key_text)["private_key"].lower().removeprefix("0x")
    agent = json.loads(key_text)["address"]
    started = time.time()
    worker, result = start_in_thread(shared)
    paused = wait_paused("security-breach", started - 1)
    assert paused is not None
    assert key_file(shared).exists()  # nothing removed before the answer
    for _ in range(20):  # `runbook approve` answers the form (retrying while the input schema is not stored yet)
        answer = CliRunner().invoke(app, ["approve", str(paused.id), "--note", "confirmed breach",
                                           "--config", str(config_of(shared))])
        if answer.exit_code == 0:
            break
        time.sleep(0.3)
    assert answer.exit_code == 0, answer.output
    worker.join(timeout=120)
    outcome = result["outcome"]

    assert not key_file(shared).exists()
    incident = journal_of(shared).get(outcome.incident_id)
    [zeroize] = [a for a in incident.actions if a.step == "zeroize" and a.ok]
    record = json.loads(zeroize.detail)
    assert record["removed"] is True and record["address"] == agent
    assert record["fingerprint"] == hashlib.sha256(key_text.encode()).hexdigest()[:16]
    assert f"approved by {getpass.getuser()} via the shell (confirmed breach)" in zeroize.description
    assert "Keys zeroized" in Path(outcome.report_path).read_text()

    # The key is in nothing the runbook wrote: files (archives opened), Slack, Prefect logs and artifacts.
    needles = [key_hex.encode(), key_hex.upper().encode()]
    scanned = 0
    for path in shared.rglob("*"):
        if not path.is_file():
            continue
        blobs = [path.read_bytes()]
        if path.name.endswith(".tar.gz"):
            blobs += list(archive_members(path).values())
        scanned += 1
        for blob in blobs:
            assert not any(n in blob for n in needles), f"the key appears in {path}"
    assert scanned > 10 and list((shared / "backups" / "sandbox").glob("*.tar.gz"))
    assert not any(key_hex in json.dumps(m).lower() for m in slack_messages(shared))

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.name and r.flow_id]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
        artifacts = client.read_artifacts()
    assert logs and artifacts
    assert not any(key_hex in (log.message or "").lower() for log in logs)
    assert not any(key_hex in json.dumps(a.data, default=str).lower() for a in artifacts)
    assert not any(key_hex in json.dumps(r.parameters, default=str).lower() for r in runs)
