"""A supervised bot: the sandbox bot run by a real supervisord (`supervisor` from PyPI) with autorestart=true.

A SIGTERM to a supervised bot's PID only makes supervisord start it again; the runbook stops, starts and
restarts it through `supervisorctl` instead, so a deliberate stop stays stopped. Here: crash recovery restarts a
hung bot through supervisord; the daily-loss halt and system-failure stop it and it stays down.

systemd cannot run in these test machines (no systemd as PID 1): its path is the same code with `systemctl`
in place of `supervisorctl`, and is covered only as far as the commands issued — by a stand-in `systemctl`
(tests/fixtures/fake_systemctl.py) that records its arguments. That is the one mocked part of this module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import eth_account
import httpx
import psutil
import pytest
from hyperliquid.exchange import Exchange

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import BotSettings, load_settings
from sandbox import manager
from tasks.process import ProcessError, find_bot_processes, locate_bot, start_bot, stop_bot, supervise
from conftest import running_sandbox

PROGRAM = "trading-bot"
FAKE_SYSTEMCTL = Path(__file__).parent / "fixtures" / "fake_systemctl.py"


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def bot_settings(directory: Path) -> BotSettings:
    return load_settings(config_of(directory)).bots["sandbox"]


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def healthy(directory: Path) -> bool:
    try:
        return httpx.get(bot_settings(directory).health_url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def status(directory: Path) -> str:
    """supervisord's state of the bot program (RUNNING, STOPPED, STARTING, BACKOFF, ...)."""
    done = subprocess.run(ctl(directory) + ["status", PROGRAM], capture_output=True, text=True, timeout=30)
    return done.stdout.split()[1] if len(done.stdout.split()) > 1 else done.stdout + done.stderr


def ctl(directory: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("supervisorctl")), "-c", str(directory / "supervisord.conf")]


def supervisord_conf(directory: Path) -> str:
    home = directory / "bot"
    return "\n".join([
        "[unix_http_server]", f"file={directory / 'supervisor.sock'}", "",
        "[supervisord]", "nodaemon=true", f"logfile={directory / 'logs' / 'supervisord.log'}",
        f"pidfile={directory / 'supervisord.pid'}", f"childlogdir={directory / 'logs'}", "",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "", "[supervisorctl]", f"serverurl=unix://{directory / 'supervisor.sock'}", "",
        f"[program:{PROGRAM}]", f"command={' '.join(manager._bot_command(home))}", f"directory={home}",
        "autostart=true", "autorestart=true", "startsecs=1", "startretries=5", "stopwaitsecs=10",
        f"stdout_logfile={home / 'logs' / 'stdout.log'}", "redirect_stderr=true", "",
    ])


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    """The module's sandbox with its bot handed over to a real supervisord, and the runbook told so."""
    with running_sandbox(tmp_path_factory.mktemp("supervised") / "sandbox") as directory:
        manager.fault(directory, "crash")  # the bot `sandbox up` started goes; supervisord starts its own
        (directory / "supervisord.conf").write_text(supervisord_conf(directory))
        supervisord = subprocess.Popen([str(Path(sys.executable).with_name("supervisord")), "-c",
                                        str(directory / "supervisord.conf")], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            text = config_of(directory).read_text()
            config_of(directory).write_text(text.replace("[bots.sandbox]\n", "[bots.sandbox]\n" + "\n".join([
                'supervisor = "supervisord"', f'supervisor_name = "{PROGRAM}"',
                f"supervisorctl = {json.dumps(ctl(directory))}", ""])))
            wait_for(lambda: healthy(directory), 60, "the bot started by supervisord")
            yield directory
        finally:
            supervisord.terminate()  # it stops its program first
            try:
                supervisord.wait(30)
            except subprocess.TimeoutExpired:
                supervisord.kill()
                supervisord.wait(5)


@pytest.fixture
def shared(supervised: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RUNBOOK_RECOVERY__VERIFY_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("RUNBOOK_POLICY__CONFIG_CHANGE", "dry-run")
    monkeypatch.setenv("RUNBOOK_EMERGENCY__LIQUIDATION_RETRY_DELAY_SECONDS", "0.1")
    yield supervised
    manager.fault(supervised, "clear")
    journal = journal_of(supervised)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def supervisord_child(process: psutil.Process | None, directory: Path) -> bool:
    pid = int((directory / "supervisord.pid").read_text())
    return process is not None and process.ppid() == pid


def stays_down(directory: Path, seconds: float) -> None:
    """No process matches the bot, and supervisord keeps it STOPPED, for `seconds` (checked every second)."""
    bot = bot_settings(directory)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert find_bot_processes(bot) == [], "the bot came back"
        time.sleep(1)
    assert status(directory) == "STOPPED"


def test_crash_recovery_restarts_a_hung_bot_through_supervisord(shared: Path) -> None:
    from flows.crash_recovery import crash_recovery

    before = locate_bot(bot_settings(shared))
    assert supervisord_child(psutil.Process(before.pid), shared)
    manager.fault(shared, "hang")
    outcome = crash_recovery(config=str(config_of(shared)))
    manager.fault(shared, "clear")

    assert outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    after = locate_bot(bot_settings(shared))
    assert after is not None and after.pid != before.pid
    assert supervisord_child(psutil.Process(after.pid), shared)  # supervisord's own child, not ours
    incident = journal_of(shared).get(outcome.incident_id)
    [restart] = [a for a in incident.actions if a.step == "restart"]
    assert f"supervisorctl -c {shared / 'supervisord.conf'} restart {PROGRAM}`" in restart.description
    assert [a.step for a in incident.actions] == ["restart", "verify"]


def lose_past_the_limit(directory: Path) -> None:
    """Today's fills on the exchange show a loss past the bot's 100 USD daily limit (the bot itself does not know)."""
    settings = bot_settings(directory)
    account = settings.hyperliquid
    key = json.loads((directory / "bot" / "config" / "agent_key.json").read_text())["private_key"]
    exchange = Exchange(eth_account.Account.from_key(key), account.api_url, account_address=account.account_address,
                        timeout=10)
    mid = Decimal(httpx.post(f"{account.api_url}/info", json={"type": "allMids"}, timeout=5).json()["ETH"])
    assert exchange.market_open("ETH", True, 0.5)["status"] == "ok"
    pin = httpx.post(f"{account.api_url}/_sandbox/set_mid", json={"coin": "ETH", "px": str(round(mid * Decimal("0.8"), 1))},
                     timeout=5)
    assert pin.status_code == 200, pin.text
    try:
        assert exchange.market_close("ETH")["status"] == "ok"
    finally:
        httpx.post(f"{account.api_url}/_sandbox/set_mid", json={"coin": "ETH", "px": None}, timeout=5)


def test_daily_loss_halt_holds_under_supervisord(shared: Path) -> None:
    from flows.daily_loss_limit import daily_loss_limit

    lose_past_the_limit(shared)
    running = locate_bot(bot_settings(shared))
    outcome = daily_loss_limit(config=str(config_of(shared)))

    assert "kept trading past the limit; stopped it" in outcome.summary, outcome.summary
    assert not psutil.pid_exists(running.pid) or psutil.Process(running.pid).status() == psutil.STATUS_ZOMBIE
    stop = next(a for a in journal_of(shared).get(outcome.incident_id).actions if a.step == "stop")
    assert f"supervisorctl -c {shared / 'supervisord.conf'} stop {PROGRAM}`" in stop.description
    stays_down(shared, 8)
    # A person resumes: through the supervisor as well.
    journal_of(shared).resolve(outcome.incident_id, j.RESOLVED_MANUALLY, "limit reviewed")
    assert "start" in start_bot.fn(bot_settings(shared))
    wait_for(lambda: healthy(shared), 60, "the bot started again through supervisorctl")


def test_system_failure_leaves_the_supervised_bot_stopped(shared: Path) -> None:
    from flows.crash_recovery import crash_recovery
    from flows.system_failure import system_failure

    running = locate_bot(bot_settings(shared))
    assert running is not None
    outcome = system_failure(config=str(config_of(shared)), assume_yes=True)

    incident = journal_of(shared).get(outcome.incident_id)
    [stop] = [a for a in incident.actions if a.step == "stop"]
    assert stop.ok and f"supervisorctl -c {shared / 'supervisord.conf'} stop {PROGRAM}`" in stop.description
    assert not psutil.pid_exists(running.pid) or psutil.Process(running.pid).status() == psutil.STATUS_ZOMBIE
    # Crash recovery, fired meanwhile, leaves a bot stopped on purpose alone.
    again = crash_recovery(config=str(config_of(shared)))
    assert again.outcome == j.FALSE_POSITIVE and "stopped on purpose" in again.summary
    stays_down(shared, 30)


def test_systemd_commands_issued(tmp_path: Path) -> None:
    """systemd cannot run here: a stand-in systemctl records the argument lists the runbook issues."""
    record = tmp_path / "systemctl.jsonl"
    bot = BotSettings(working_dir=tmp_path, process_match=["no-such-bot-anywhere"], systemd_unit="trading-bot.service",
                      systemctl=[sys.executable, str(FAKE_SYSTEMCTL), str(record)])
    assert "systemctl.py" in stop_bot.fn(None, bot, 5)
    start_bot.fn(bot)
    supervise(bot, "restart")
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls == [["stop", "trading-bot.service"], ["start", "trading-bot.service"],
                     ["restart", "trading-bot.service"]]
    failing = bot.model_copy(update={"supervisor_name": "missing.service"})
    with pytest.raises(ProcessError, match="Unit missing.service not loaded"):
        supervise(failing, "stop")
