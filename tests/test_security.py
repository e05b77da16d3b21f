"""Security: what the runbook may touch, and what it must never say.

- No shell: no command is ever built from text (alerts, logs, config values reach processes only as
  argument lists); checked over the source with the AST, so a new `shell=True` fails the suite.
- Processes: only the configured bot's verified PID is ever signalled (real decoy processes here).
- Files: writes stay inside the bot's folder and never follow a link out of it.
- Secrets: a planted key and token never appear in anything the runbook writes (see the end).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from runbook.settings import BotSettings
from tasks.process import ProcessError, locate_bot, stop_process
from conftest import running_sandbox

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "runbook", "flows", "tasks", "reports", "deployments", "sandbox", "bench")


def source_files() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def shell_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        where = f"{path.relative_to(ROOT)}:{node.lineno} {name}"
        if name in {"os.system", "os.popen", "eval", "exec", "subprocess.getoutput", "subprocess.getstatusoutput"} \
                or name.startswith("os.exec") or name.startswith("os.spawn"):
            found.append(where)
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                found.append(f"{where} shell=")
        if name.startswith(("subprocess.", "asyncio.create_subprocess")) and node.args:
            first = node.args[0]
            if isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)) and not isinstance(
                    getattr(first, "value", None), bytes):
                found.append(f"{where} with a string command")
    return found


def test_no_command_is_ever_built_from_text() -> None:
    files = source_files()
    assert len(files) > 30  # the walk found the project
    offenders = [use for path in files for use in shell_uses(path)]
    assert offenders == []


def test_the_shell_check_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess\nos.system('x')\nsubprocess.run(f'kill {pid}', shell=True)\n"
                   "subprocess.Popen('ls -l')\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(shell_uses(bad)) == 4
    finally:
        ROOT = saved


# -- processes ---------------------------------------------------------------------------------------


@pytest.fixture
def decoys(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def spawn(decoys: list[subprocess.Popen[bytes]], *marker: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *marker])
    decoys.append(process)
    time.sleep(0.2)
    return process


def bot_in(folder: Path, marker: str) -> BotSettings:
    return BotSettings(working_dir=folder, process_match=[marker], pidfile=Path("trading_bot.pid"),
                       start_command=["true"])


def test_a_pidfile_pointing_at_another_process_is_not_believed(tmp_path: Path, decoys: list) -> None:
    marker = f"secbot-{os.getpid()}-{time.monotonic_ns()}"
    bystander = spawn(decoys, "innocent-bystander")
    (tmp_path / "trading_bot.pid").write_text(str(bystander.pid))  # stale pidfile, PID now someone else's
    assert locate_bot(bot_in(tmp_path, marker)) is None
    assert psutil.pid_exists(bystander.pid)


def test_two_processes_matching_the_bot_are_refused_not_guessed(tmp_path: Path, decoys: list) -> None:
    marker = f"secbot-{os.getpid()}-{time.monotonic_ns()}"
    spawn(decoys, marker)
    spawn(decoys, marker, "a-copy")
    with pytest.raises(ProcessError, match="refusing to guess"):
        locate_bot(bot_in(tmp_path, marker))


def test_a_recycled_pid_is_never_signalled(tmp_path: Path, decoys: list) -> None:
    marker = f"secbot-{os.getpid()}-{time.monotonic_ns()}"
    bot = bot_in(tmp_path, marker)
    real = spawn(decoys, marker)
    (tmp_path / "trading_bot.pid").write_text(str(real.pid))
    found = locate_bot(bot)
    assert found is not None and found.pid == real.pid
    # Between the look and the act, the bot died and its PID went to another program.
    recycled = replace(found, create_time=found.create_time - 3600)
    with pytest.raises(ProcessError, match="no longer the bot"):
        stop_process.fn(recycled, bot, 1.0)
    assert real.poll() is None  # untouched
    assert stop_process.fn(found, bot, 5.0).endswith("stopped by SIGTERM")


# -- secrets never leave ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, prefect_server: object) -> Iterator[Path]:
    """A sandbox whose bot keeps its agent key in its folder (config/agent_key.json), as real bots do."""

    with running_sandbox(tmp_path_factory.mktemp("secrets") / "sandbox") as directory:
        yield directory


def secrets_of(directory: Path) -> dict[str, str]:
    import json
    import tomllib

    key = json.loads((directory / "bot" / "config" / "agent_key.json").read_text())["private_key"]
    toml = tomllib.loads((directory / "runbook.toml").read_text())
    return {"agent key": key.removeprefix("0x").lower(), "slack token": toml["slack"]["token"],
            "intake token": toml["intake"]["token"]}


def leaks(text: str | bytes, secrets: dict[str, str]) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lowered = text.lower()
    return [name for name, value in secrets.items() if value.lower() in lowered]


def test_planted_secrets_never_appear_in_any_output(planted: Path) -> None:
    import json
    import tarfile

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from sandbox import manager

    from runbook.settings import load_settings

    secrets = secrets_of(planted)
    config = planted / "runbook.toml"
    settings = load_settings(config)
    env = {**os.environ, "RUNBOOK_POLICY__ZEROIZE": "dry-run", "RUNBOOK_POLICY__LIQUIDATE": "dry-run",
           "RUNBOOK_POLICY__KILL": "dry-run", "RUNBOOK_POLICY__RESTART": "auto"}
    found: dict[str, list[str]] = {}
    outputs: list[dict] = []

    def run(name: str) -> None:
        done = subprocess.run([str(Path(sys.executable).with_name("runbook")), "run", name, "--config", str(config),
                               "--json"], capture_output=True, text=True, timeout=300, env=env)
        for where, text in ((f"{name} stdout", done.stdout), (f"{name} stderr", done.stderr)):
            if leaks(text, secrets):
                found[where] = leaks(text, secrets)
        try:
            outputs.append(json.loads(done.stdout))
        except ValueError:
            raise AssertionError(f"{name}: no JSON answer (exit {done.returncode}): {done.stderr[-2000:]}") from None

    manager.fault(planted, "auth")
    run("api-auth-failed")
    manager.fault(planted, "clear")
    manager.fault(planted, "crash")
    run("crash-recovery")
    run("emergency-backup")
    run("security-breach")

    # Prefect: every log line and artifact of those runs.
    run_ids = [o["flow_run_id"] for o in outputs if o.get("flow_run_id")]
    assert len(run_ids) == len(outputs)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)), limit=200)
        assert logs, "no logs were shipped: the scan would prove nothing"
        for line in logs:
            if leaks(line.message, secrets):
                found[f"prefect log {line.flow_run_id}"] = leaks(line.message, secrets)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
        assert len(runs) == len(run_ids)
        for artifact in client.read_artifacts():
            text = json.dumps(artifact.data) + json.dumps(artifact.description or "")
            if leaks(text, secrets):
                found[f"artifact {artifact.key}"] = leaks(text, secrets)

    # Files: Slack's messages and uploads, reports, archives, the journal.
    scanned = 0
    journal_file = Path(settings.journal_url.removeprefix("sqlite:///"))
    files = [journal_file, *(p for root in (planted / "slack", settings.reports_dir, planted / "backups")
                             for p in root.rglob("*") if p.is_file())]
    assert any(p.name.endswith(".tar.gz") for p in files) and any(p.suffix == ".md" for p in files)
    for path in files:
        scanned += 1
        data = path.read_bytes()
        if path.suffix == ".pdf":
            from pypdf import PdfReader

            data = "\n".join(page.extract_text() or "" for page in PdfReader(path).pages).encode()
        if leaks(data, secrets):
            found[str(path)] = leaks(data, secrets)
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path) as archive:
                names = archive.getnames()
                assert not [n for n in names if n.endswith("agent_key.json")], names
                for member in archive.getmembers():
                    handle = archive.extractfile(member)
                    content = handle.read() if handle is not None else b""
                    if leaks(content, secrets):
                        found[f"{path}:{member.name}"] = leaks(content, secrets)
    assert scanned > 5
    assert found == {}
