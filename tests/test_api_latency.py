"""API Latency end to end: the real sandbox bot's histogram, the sandbox exchange's faults, a real Prefect server.

Nothing is mocked. The exchange's faults make each cause real: `latency` answers after a delay (the
exchange is slow), `latency` with `exchange-ratelimit` answers 429 after the delay (the exchange throttles
the bot), `exchange-unreachable` refuses connections (the network path). The threshold is lowered by
configuration from 5 s to 0.8 s and the fault's delay to 1.2 s, and the measuring window to 2 s, so each run
takes seconds; the logic under test is the same. One sandbox serves the module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook import journal as j
from runbook.journal import Journal
from runbook.settings import load_settings
from sandbox import manager
from runbook.settings import MetricNames
from tasks.probes import _latency_from_text
from conftest import running_sandbox


def stakeholder(message: dict) -> bool:
    """A stakeholder update (the status channel), not a message of the incident's thread."""
    return "Trading System Status Update" in (message.get("text") or "")


def config_of(directory: Path) -> Path:
    return directory / "runbook.toml"


def journal_of(directory: Path) -> Journal:
    return Journal(load_settings(config_of(directory)).journal_url)


def run_flow(directory: Path):
    from flows.api_latency import api_latency

    return api_latency(config=str(config_of(directory)))


@pytest.fixture(scope="module")
def module_sandbox(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Path]:
    with running_sandbox(tmp_path_factory.mktemp("latency") / "sandbox") as directory:
        yield directory


@pytest.fixture
def shared(module_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RUNBOOK_WATCH__LATENCY_THRESHOLD_SECONDS", "0.8")
    monkeypatch.setenv("RUNBOOK_INFRA__LATENCY_WINDOW_SECONDS", "2")
    monkeypatch.setenv("RUNBOOK_INFRA__NETWORK_SAMPLES", "2")
    monkeypatch.setenv("RUNBOOK_INFRA__NETWORK_TIMEOUT_SECONDS", "4")
    yield module_sandbox
    manager.fault(module_sandbox, "clear")
    journal = journal_of(module_sandbox)
    for incident in journal.incidents(open_only=True):
        journal.resolve(incident.id, j.RESOLVED_MANUALLY, "test cleanup")


def test_fast_requests_are_a_false_positive(shared: Path) -> None:
    outcome = run_flow(shared)
    assert outcome.outcome == j.FALSE_POSITIVE and outcome.status == j.RESOLVED, outcome.summary
    assert "API requests are fast again" in outcome.summary
    report = Path(outcome.report_path).read_text()
    assert "Bot request latency (api_request_duration_seconds, histogram)" in report
    assert "| p90 |" in report and "`API CALL` lines" in report


@pytest.mark.parametrize("faults, cause, evidence", [
    (("latency",), "the exchange", "reachable quickly but answers slowly"),
    (("latency", "exchange-ratelimit"), "the bot's own request volume", "of the runbook's requests answered 429"),
    (("exchange-unreachable",), "the network", "no connection in 2 attempts (Connection refused)"),
])
def test_each_cause_is_told_apart(shared: Path, monkeypatch: pytest.MonkeyPatch, faults: tuple[str, ...], cause: str,
                                  evidence: str) -> None:
    if "latency" in faults:
        # The bot pauses 3 s between its bursts of requests: a window longer than that (and one slow request)
        # always holds a slow request for the histogram.
        monkeypatch.setenv("RUNBOOK_INFRA__LATENCY_WINDOW_SECONDS", "4.5")
    for kind in faults:
        manager.fault(shared, kind, {"seconds": 1.2} if kind == "latency" else None)
    time.sleep(0.5)  # let the bot's requests meet the fault
    outcome = run_flow(shared)
    assert outcome.status == j.ESCALATED, outcome.summary
    assert f"Cause: {cause} — " in outcome.summary and evidence in outcome.summary, outcome.summary
    incident = journal_of(shared).get(outcome.incident_id)
    assert incident.escalation_level == "L1" and incident.actions == []  # read-only
    report = Path(outcome.report_path).read_text()
    assert f"| cause | {cause} |" in report
    if "latency" in faults:  # the bot's own histogram saw the slow answers over the window
        assert "the bot's p90 over the last" in outcome.summary
    from flows.api_latency import RESOLUTIONS

    last = _slack_last(shared)  # the runbook's resolutions for this cause are the thread's next steps
    assert "Status: ESCALATED" in last and all(f"- {step}" in last for step in RESOLUTIONS[cause])


def _slack_last(directory: Path) -> str:
    import httpx

    base = load_settings(config_of(directory)).slack.base_url.removesuffix("/api/")
    posts = [m for m in httpx.get(f"{base}/_sandbox/messages", timeout=5).json() if m["method"] == "chat.postMessage" and not stakeholder(m)]
    return posts[-1]["text"]


def test_percentiles_come_from_the_histogram_over_the_window() -> None:
    """The window is the difference of two cumulative readings; quantiles interpolate inside buckets."""
    def reading(counts: tuple[int, int, int], total: float):
        text = ("# TYPE api_request_duration_seconds histogram\n"
                f'api_request_duration_seconds_bucket{{endpoint="a",le="0.5"}} {counts[0]}\n'
                f'api_request_duration_seconds_bucket{{endpoint="a",le="2.5"}} {counts[1]}\n'
                f'api_request_duration_seconds_bucket{{endpoint="a",le="+Inf"}} {counts[2]}\n'
                f'api_request_duration_seconds_count{{endpoint="a"}} {counts[2]}\n'
                f'api_request_duration_seconds_sum{{endpoint="a"}} {total}\n')
        return _latency_from_text(text, "http://x/metrics", MetricNames())

    before = reading((100, 100, 100), 10.0)  # 100 fast requests before the window
    after = reading((100, 110, 120), 60.0)  # then 10 in (0.5, 2.5] and 10 above 2.5 s
    window = after.minus(before)
    assert window.kind == "histogram" and window.count == 20
    assert window.mean == pytest.approx(2.5)
    assert window.quantile(0.25) == pytest.approx(0.5 + 2.0 * 0.5)  # halfway through the (0.5, 2.5] bucket
    assert window.quantile(0.9) == pytest.approx(2.5)  # in +Inf: the largest finite bound
    assert after.quantile(0.5) == pytest.approx(0.5 * 60 / 100)  # cumulative: the fast ones dominate
