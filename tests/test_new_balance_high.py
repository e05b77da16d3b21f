"""New balance high end to end, and the scheduled reports under `runbook serve`: the real sandbox (bot, exchange,
Slack), flows on the real Prefect server, a real journal. One sandbox for the module; the test that records
an unbeatable high runs last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from conftest import running_sandbox

RUNBOOK = str(Path(sys.executable).with_name("runbook"))


@pytest.fixture(scope="module")
def sandbox_dir(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("balance-high") / "sandbox") as directory:
        yield directory


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def bot_json(directory: Path) -> Path:
    return directory / "bot" / "config" / "config.json"


def backups(directory: Path) -> list[Path]:
    return sorted(bot_json(directory).parent.glob("config.json.bak-*"))


def slack_posts(directory: Path) -> list[dict]:
    path = directory / "slack" / "messages.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["method"] == "chat.postMessage"]


def account_value(directory: Path) -> Decimal:
    from tasks.hyperliquid import HyperliquidInfo

    account = load_settings(config_of(directory)).bots["sandbox"].hyperliquid
    with HyperliquidInfo.from_account(account) as client:
        return client.account_state(account.account_address).account_value


def wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout:g}s")


def test_first_high_is_recorded_backed_up_and_celebrated(sandbox_dir: Path) -> None:
    from flows.new_balance_high import new_balance_high

    before = account_value(sandbox_dir)
    outcome = new_balance_high(config=str(config_of(sandbox_dir)))
    after = account_value(sandbox_dir)
    assert outcome.status == j.RESOLVED and outcome.outcome == j.AUTO_RESOLVED, outcome.summary
    high = journal_of(sandbox_dir).balance_high("sandbox")
    assert high is not None and high.source == "exchange" and high.previous is None
    assert high.incident_id == outcome.incident_id
    # the bot trades meanwhile: the recorded value is the exchange's at the time of the run
    assert min(before, after) - 5 <= high.amount <= max(before, after) + 5

    # the config copied beside it, byte for byte, with a timestamped name
    [backup] = backups(sandbox_dir)
    assert high.config_backup == str(backup) and backup.read_bytes() == bot_json(sandbox_dir).read_bytes()
    config = json.loads(bot_json(sandbox_dir).read_text())
    detail = json.loads(high.detail)
    assert detail["strategy"]["strategy"] == config["strategy"]
    assert detail["strategy"]["position_sizing"] == config["position_sizing"] and "bot" not in detail["strategy"]
    assert detail["scale_up"] is False and detail["advice"].startswith("Do not scale up yet")  # a young account

    # celebrated in the incident's Slack thread, documented in its report
    posts = [p for p in slack_posts(sandbox_dir) if "New all-time balance high" in (p["text"] or "")]
    assert posts and posts[-1]["ok"] and f"{float(high.amount):,.2f} USD" in posts[-1]["text"]
    report = Path(outcome.report_path).read_text()
    assert "Strategy settings that produced it" in report and "| strategy | name | random-walk |" in report
    assert "Consider scaling up" in report and "backup-config" in report


def test_serve_registers_the_report_schedules_and_the_alert_triggers_the_flow(sandbox_dir: Path) -> None:
    from prefect.client.orchestration import get_client

    from tasks.firing import fire_alert

    env = {**os.environ, "RUNBOOK_REPORTS__DAILY_TIME": "06:30", "RUNBOOK_REPORTS__TIMEZONE": "Europe/Zurich",
           "RUNBOOK_REPORTS__WEEKLY_DAY": "fri", "RUNBOOK_REPORTS__WEEKLY_TIME": "17:45"}
    log = open(sandbox_dir / "serve.log", "wb")
    serve = subprocess.Popen([RUNBOOK, "serve", "--config", str(config_of(sandbox_dir)), "--no-watch", "--no-intake"],
                             env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def registered() -> dict | None:
            assert serve.poll() is None, (sandbox_dir / "serve.log").read_text()
            with get_client(sync_client=True) as client:
                found = {d.name: d for d in client.read_deployments() if d.name in
                         ("daily-summary", "weekly-alert-analysis", "new-balance-high")}
                automations = client.read_automations()
            nbh = found.get("new-balance-high")
            if len(found) < 3 or any(d.paused for d in found.values()) or \
                    not any(getattr(a.actions[0], "deployment_id", None) == nbh.id for a in automations):
                return None
            # Another module's `serve` on this session server may have registered the same deployments with
            # the default schedule: wait for this serve's registration to replace them.
            for name in ("daily-summary", "weekly-alert-analysis"):
                if not any(getattr(s.schedule, "timezone", None) == "Europe/Zurich" for s in found[name].schedules):
                    return None
            return found

        found = wait("the report deployments", registered, 120)
        daily = [s.schedule for s in found["daily-summary"].schedules]
        weekly = [s.schedule for s in found["weekly-alert-analysis"].schedules]
        assert [(s.cron, s.timezone) for s in daily] == [("30 6 * * *", "Europe/Zurich")]
        assert [(s.cron, s.timezone) for s in weekly] == [("45 17 * * fri", "Europe/Zurich")]
        assert all(s.active for s in found["daily-summary"].schedules + found["weekly-alert-analysis"].schedules)
        assert not found["new-balance-high"].schedules  # fired by its alert, not by the clock

        # the watcher's alert event starts the served flow, which answers the incident
        journal = journal_of(sandbox_dir)
        firing = fire_alert(journal, "new-balance-high", "sandbox", "balance above the previous high (test)",
                            source="test", automated={"new-balance-high"})
        done = wait("the triggered run to resolve the incident",
                    lambda: (lambda i: i if i.status != j.OPEN else None)(journal.get(firing.incident_id)), 120)
        assert done.flow_run_id and done.outcome in (j.AUTO_RESOLVED, j.FALSE_POSITIVE), done.summary
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)
        log.close()


def test_a_balance_below_the_recorded_high_is_a_false_positive(sandbox_dir: Path) -> None:
    from flows.new_balance_high import new_balance_high
    from app.watcher import Watcher

    journal = journal_of(sandbox_dir)
    journal.record_balance_high("sandbox", Decimal("1000000000"), source="test")
    copies = backups(sandbox_dir)
    outcome = new_balance_high(config=str(config_of(sandbox_dir)))
    assert outcome.outcome == j.FALSE_POSITIVE and "not above the recorded high 1,000,000,000.00" in outcome.summary
    assert backups(sandbox_dir) == copies and journal.balance_high("sandbox").amount == Decimal("1000000000")

    # a watcher started now remembers the recorded high, so the bot's balance fires nothing
    watcher = Watcher(load_settings(config_of(sandbox_dir)), journal, {"new-balance-high"})
    state = watcher.bots[0]
    assert state.balance_high == 1e9
    fired = [key for key, _ in watcher.evaluate(state, watcher.observe(state), time.monotonic())]
    assert "new-balance-high" not in fired
