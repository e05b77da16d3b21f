"""Probe the bot over HTTP: its /health JSON and its Prometheus metrics.

Every probe has its own timeout and turns every failure (refused, timeout, HTML, invalid JSON, wrong
types) into a `HealthReport` with a readable `error`, never an exception: a broken probe is a finding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prefect import task
from prometheus_client.parser import text_string_to_metric_families

from runbook.paths import dig
from runbook.settings import BotSettings, HealthFields, MetricNames
from tasks import NO_CACHE_POLICY

__all__ = ["dig"]  # re-exported: the flows read /health through this module


@dataclass
class HealthReport:
    url: str
    reachable: bool
    status_code: int | None = None
    status: str | None = None
    websocket_connected: bool | None = None
    total_pnl: str | None = None
    account_balance: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    body: dict[str, Any] | None = field(default=None, repr=False)

    timed_out: bool = False
    halted: bool = False

    @property
    def healthy(self) -> bool:
        """Answered 200 with a status the config counts as healthy."""
        return self.status_code == 200 and self.error is None and self.status is not None and not self.halted

    @property
    def condition(self) -> str:
        """One word for what the probe saw: healthy, halted, unhealthy, hung, unreachable or invalid."""
        if self.timed_out:
            return "hung"
        if not self.reachable:
            return "unreachable"
        if self.status is None or (self.error and self.status_code == 200):
            return "invalid"
        if self.halted:
            return "halted"
        return "healthy" if self.healthy else "unhealthy"

    def summary(self) -> str:
        if not self.reachable:
            return f"health endpoint unreachable: {self.error}"
        if self.error:
            return f"health answered HTTP {self.status_code} but {self.error}"
        ws = {True: "connected", False: "DISCONNECTED", None: "unknown"}[self.websocket_connected]
        return f"health HTTP {self.status_code}, status {self.status!r}, websocket {ws} ({self.latency_ms:.0f} ms)"


def probe_health_once(bot: BotSettings) -> HealthReport:
    fields = bot.fields
    report = HealthReport(url=bot.health_url, reachable=False)
    started = time.perf_counter()
    try:
        response = httpx.get(bot.health_url, timeout=bot.probe_timeout_seconds)
    except httpx.TimeoutException:
        report.error = f"no answer within {bot.probe_timeout_seconds:g}s"
        report.timed_out = True
        return report
    except httpx.HTTPError as error:
        report.error = f"{type(error).__name__}: {error}"
        return report
    report.reachable = True
    report.latency_ms = (time.perf_counter() - started) * 1000
    report.status_code = response.status_code
    try:
        body = response.json()
    except ValueError:
        report.error = f"the body is not JSON ({response.headers.get('content-type', 'no content-type')})"
        return report
    if not isinstance(body, dict):
        report.error = f"the body is JSON {type(body).__name__}, not an object"
        return report
    report.body = body
    status = dig(body, fields.status)
    if not isinstance(status, str):
        report.error = f"field {fields.status!r} is missing or not a string"
        return report
    report.status = status
    websocket = dig(body, fields.websocket_connected)
    report.websocket_connected = websocket if isinstance(websocket, bool) else None
    for name in ("total_pnl", "account_balance"):
        value = dig(body, getattr(fields, name))
        setattr(report, name, None if value is None else str(value))
    report.halted = status in fields.stopped_values
    if response.status_code == 200 and status not in fields.healthy_values and not report.halted:
        report.error = f"status {status!r} is not one of {fields.healthy_values + fields.stopped_values}"
    return report


@task(name="check health endpoint", cache_policy=NO_CACHE_POLICY)
def check_health(bot: BotSettings) -> HealthReport:
    """Runbook: `curl http://localhost:8001/health`."""
    return probe_health_once(bot)


@dataclass
class MetricsSnapshot:
    url: str
    samples: dict[str, float] = field(default_factory=dict)
    families: list[str] = field(default_factory=list)
    error: str | None = None

    def value(self, name: str, **labels: str) -> float | None:
        key = name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else "")
        return self.samples.get(key)


def read_metrics_once(bot: BotSettings) -> MetricsSnapshot:
    snapshot = MetricsSnapshot(url=bot.metrics_url)
    try:
        response = httpx.get(bot.metrics_url, timeout=bot.probe_timeout_seconds)
        response.raise_for_status()
    except httpx.HTTPError as error:
        snapshot.error = f"{type(error).__name__}: {error}"
        return snapshot
    try:
        for family in text_string_to_metric_families(response.text):
            snapshot.families.append(family.name)
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                snapshot.samples[sample.name + ("{" + labels + "}" if labels else "")] = sample.value
    except (ValueError, TypeError, IndexError) as error:
        snapshot.error = f"metrics text is malformed: {error}"
    return snapshot


@task(name="read metrics", cache_policy=NO_CACHE_POLICY)
def read_metrics(bot: BotSettings) -> MetricsSnapshot:
    """Runbook: `curl http://localhost:8000 | grep api_request_duration`, parsed properly."""
    return read_metrics_once(bot)


def metric_total(snapshot: MetricsSnapshot, name: str) -> float | None:
    """A metric summed over its labels (None when the bot does not expose it)."""
    values = [v for k, v in snapshot.samples.items() if k.split("{")[0] == name]
    return sum(values) if values else None


@task(name="check metrics move", cache_policy=NO_CACHE_POLICY)
def liveness(bot: BotSettings, metric: str, window_seconds: float) -> tuple[bool | None, str]:
    """Runbook crash symptom "No metrics updates": does the bot's own liveness metric change within the
    window? (None: the metric cannot be read, so it says nothing.)"""
    first = read_metrics_once(bot)
    start = metric_total(first, metric)
    if start is None:
        return None, f"{metric} not readable: {first.error or 'not exposed'}"
    deadline = time.monotonic() + window_seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, window_seconds / 4))
        now = metric_total(read_metrics_once(bot), metric)
        if now is not None and now != start:
            return True, f"{metric} moving ({start:g} -> {now:g})"
    return False, f"{metric} unchanged at {start:g} for {window_seconds:g}s"


def number(value: Any) -> float | None:
    """A /health value as a float, or None when it is missing, a bool or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def breaker_state(health: HealthReport, fields: HealthFields) -> tuple[bool, str | None]:
    """(tripped, reason): the bot halted itself — status "stopped", or the breaker flag in /health.

    The flag matters when another check outranks it: the sandbox reports "unhealthy" while the
    exchange is unreachable even though its breaker has tripped.
    """
    body = health.body or {}
    reason = dig(body, fields.circuit_breaker_reason)
    tripped = health.halted or dig(body, fields.circuit_breaker) is True
    return tripped, reason if isinstance(reason, str) and reason else None


# ----------------------------------------------------------------------------------------------
# request latency: the bot's request-duration histogram (or summary), as percentiles over a window


@dataclass
class LatencyDistribution:
    """One reading of a request-duration metric, summed over its labels; seconds throughout.

    A histogram keeps cumulative bucket counts, so the difference of two readings is the distribution of
    the requests made between them (`minus`), and `quantile` interpolates within buckets as Prometheus'
    histogram_quantile does. A summary carries the bot's own quantiles and, over a window, only a mean.
    """

    url: str
    metric: str
    kind: str = "absent"  # histogram, summary or absent
    family: str | None = None
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (upper bound, cumulative count)
    count: float = 0.0
    total: float = 0.0
    quantiles: dict[float, float] = field(default_factory=dict)  # summary only
    error: str | None = None

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None

    def minus(self, earlier: LatencyDistribution) -> LatencyDistribution:
        """The requests observed after `earlier` (a restarted bot's counters start again: then all of these)."""
        if earlier.error or earlier.kind != self.kind or self.count < earlier.count:
            return self
        before = dict(earlier.buckets)
        return LatencyDistribution(
            url=self.url, metric=self.metric, kind=self.kind, family=self.family,
            buckets=[(bound, count - before.get(bound, 0.0)) for bound, count in self.buckets],
            count=self.count - earlier.count, total=self.total - earlier.total, quantiles=dict(self.quantiles),
        )

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) in seconds: interpolated in the histogram, or the summary's own if it has it."""
        if self.kind == "summary":
            return self.quantiles.get(q)
        if self.kind != "histogram" or self.count <= 0 or not self.buckets:
            return None
        rank, lower, below = q * self.count, 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower  # above the largest finite bucket: its bound is all we know
                inside = cumulative - below
                return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
            lower, below = bound, cumulative
        return lower


def _latency_from_text(text: str, url: str, names: MetricNames) -> LatencyDistribution:
    metric = names.latency
    reading = LatencyDistribution(url=url, metric=metric)
    scale = names.latency_scale
    for family in text_string_to_metric_families(text):
        if family.name != metric or family.type not in ("histogram", "summary"):
            continue
        reading.kind, reading.family = family.type, family.name
        buckets: dict[float, float] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound * scale] = buckets.get(bound * scale, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                reading.count += sample.value
            elif sample.name.endswith("_sum"):
                reading.total += sample.value * scale
            elif "quantile" in sample.labels:
                # Several label sets each have their own quantiles; keep the worst one.
                q = float(sample.labels["quantile"])
                reading.quantiles[q] = max(reading.quantiles.get(q, 0.0), sample.value * scale)
        reading.buckets = sorted(buckets.items())
        break
    return reading


def read_latency_once(bot: BotSettings) -> LatencyDistribution:
    metric = bot.metrics.latency
    try:
        response = httpx.get(bot.metrics_url, timeout=bot.probe_timeout_seconds)
        response.raise_for_status()
    except httpx.HTTPError as error:
        return LatencyDistribution(url=bot.metrics_url, metric=metric, error=f"{type(error).__name__}: {error}")
    try:
        return _latency_from_text(response.text, bot.metrics_url, bot.metrics)
    except (ValueError, TypeError, IndexError, KeyError) as error:
        return LatencyDistribution(url=bot.metrics_url, metric=metric, error=f"metrics text is malformed: {error}")


@task(name="read request-duration metric", cache_policy=NO_CACHE_POLICY)
def read_latency(bot: BotSettings) -> LatencyDistribution:
    """Runbook `curl http://localhost:8000 | grep api_request_duration`, as a distribution (the configured
    metric, in its configured unit, read in seconds)."""
    return read_latency_once(bot)
