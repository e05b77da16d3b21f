"""⏱️ API Latency >5 Seconds (RUNBOOK.md), as a flow. Read-only: it changes nothing.

Actions: "Monitor Trend" — the bot's `api_request_duration` as percentiles over a window (two readings of
its histogram, parsed with prometheus_client's parser); "Check Network" — the runbook's own latency samples
to the API host (DNS, TCP connect, API requests, with their spread); "Review API Usage" — the rate of the
bot's `API CALL` lines and the endpoints they hit.
Investigation: rate limiting (429 answers, rate-limit lines, the address's request budget from
userRateLimit), request volume, network congestion.

The finding names the cause — the network, the exchange, or the bot's own request volume — with the
runbook's resolution for it (request batching, connection pooling, endpoint optimisation). A person
reviews it within the WARNING's 30 minutes: the flow escalates to L1 with it, or records a false positive
when requests are fast again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect import flow

from runbook import journal as j
from runbook.markdown import table
from tasks.futures import settle
from tasks.hyperliquid import RateLimit, probe_rate_limit
from tasks.incident import IncidentRun, Outcome
from tasks.logs import RecentMatches, recent_matches
from tasks.network import NetworkReport, check_network
from tasks.probes import LatencyDistribution, read_latency

ALERT = "api-latency"

NETWORK = "the network"
EXCHANGE = "the exchange"
BOT_VOLUME = "the bot's own request volume"

# The runbook's resolutions, by cause.
RESOLUTIONS = {
    NETWORK: ["assess network congestion between the bot host and the API host (TCP connect times above)",
              "add connection pooling: keep connections open instead of a new TCP/TLS handshake per request",
              "check proxies, VPNs and DNS on the path"],
    EXCHANGE: ["the exchange itself answers slowly: check Hyperliquid's status; nothing on the host to change",
               "consider API endpoint optimisation: fewer heavy info requests, websocket subscriptions instead "
               "of polling", "re-run this flow later to see whether it has passed"],
    BOT_VOLUME: ["implement request batching (bulk orders and cancels instead of one request each)",
                 "poll less: cut the heaviest endpoints listed under API usage",
                 "add connection pooling, and back off exponentially on 429"],
}


@dataclass
class Findings:
    window: LatencyDistribution
    since_start: LatencyDistribution
    window_seconds: float
    network: NetworkReport | None
    network_error: str | None
    calls: RecentMatches | None
    rate_limit_lines: RecentMatches | None
    budget: RateLimit | None
    budget_error: str | None


def measure(run: IncidentRun) -> Findings:
    """Two readings of the bot's histogram a window apart; the network samples, API usage and the address's
    budget are taken meanwhile (and the log read over that same window)."""
    bot, infra = run.bot, run.settings.infra
    start, started = datetime.now(UTC), time.monotonic()
    before = read_latency(bot, infra.latency_metric)
    budget = probe_rate_limit.submit(bot.hyperliquid)
    try:
        network, network_error = check_network(bot.hyperliquid.api_url, infra.network_samples,
                                               infra.network_timeout_seconds), None
    except ValueError as error:  # a misconfigured api_url
        network, network_error = None, str(error)
    remaining = infra.latency_window_seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    log = bot.path(bot.log_file)
    calls = recent_matches.submit(log, infra.api_call_pattern, start)
    limits = recent_matches.submit(log, infra.rate_limit_pattern, start)
    after = read_latency(bot, infra.latency_metric)
    (b, berr), (c, _), (lim, _) = (settle(x) for x in (budget, calls, limits))
    return Findings(after.minus(before), after, time.monotonic() - started, network, network_error, c, lim, b, berr)


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:,.0f} ms"


def record(run: IncidentRun, seen: Findings) -> None:
    window, total = seen.window, seen.since_start
    if window.error:
        run.add_evidence("Bot request latency", f"could not read {window.url}: {window.error}")
    elif window.kind == "absent":
        run.add_evidence("Bot request latency", f"no histogram or summary named {window.metric}* at {window.url}")
    else:
        run.add_evidence(f"Bot request latency ({window.family}, {window.kind})", table(
            ["", f"last {seen.window_seconds:.0f} s", "since the bot started"],
            [["requests", f"{window.count:.0f}", f"{total.count:.0f}"],
             ["p50", _ms(window.quantile(0.5)), _ms(total.quantile(0.5))],
             ["p90", _ms(window.quantile(0.9)), _ms(total.quantile(0.9))],
             ["p99", _ms(window.quantile(0.99)), _ms(total.quantile(0.99))],
             ["mean", _ms(window.mean), _ms(total.mean)]]))
    if seen.network is not None:
        run.add_evidence(f"Latency samples to {seen.network.url}", table(["check", "result"], seen.network.rows()))
    else:
        run.add_evidence("Latency samples", f"not taken: {seen.network_error}")
    rows = []
    if seen.calls is not None:
        rows.append(["`API CALL` lines", seen.calls.error or f"{seen.calls.matches} in the window "
                     f"({seen.calls.per_minute:g}/min; budget {run.settings.infra.api_calls_per_minute_budget:g}/min)"])
        rows += [[f"  {endpoint}", count] for endpoint, count in seen.calls.groups]
    if seen.rate_limit_lines is not None:
        rows.append(["rate-limit lines", seen.rate_limit_lines.error or seen.rate_limit_lines.matches])
    if seen.budget is not None:
        rows.append(["address request budget (userRateLimit)",
                     f"{seen.budget.used:,} of {seen.budget.cap:,} used ({seen.budget.usage:.1%}); "
                     f"headroom {seen.budget.headroom:,}"])
    else:
        rows.append(["address request budget (userRateLimit)", f"unavailable: {seen.budget_error}"])
    run.add_evidence("API usage and rate limits", table(["", ""], rows))


def slow_now(run: IncidentRun, seen: Findings) -> tuple[bool, str]:
    """Is the alert's condition still true: requests above the threshold, or none getting through at all?"""
    threshold = run.settings.watch.latency_threshold_seconds
    p90 = seen.window.quantile(0.9)
    if p90 is not None and p90 > threshold:
        return True, f"the bot's p90 over the last {seen.window_seconds:.0f}s is {_ms(p90)} (threshold {threshold:g}s)"
    network = seen.network
    if network is not None:
        verdict = network.verdict(run.settings.infra.slow_connect_ms, threshold)
        if verdict in ("dns-failure", "unreachable"):
            return True, "no request reaches the API host at all"
        answer = network.http.spread if network.http else None
        if answer is not None and answer.median > threshold * 1000:
            return True, f"the runbook's own requests take {answer.median:,.0f} ms (median)"
    shown = f"p90 {_ms(p90)} over {seen.window.count:.0f} requests" if p90 is not None else "no bot requests measured"
    return False, f"{shown} in the last {seen.window_seconds:.0f}s, own samples " + \
        (str(network.http.spread) if network and network.http and network.http.spread else "n/a")


def cause(run: IncidentRun, seen: Findings) -> tuple[str, str]:
    """(cause, why): the path first, then throttling and volume, then the exchange, else the bot's side."""
    infra, threshold = run.settings.infra, run.settings.watch.latency_threshold_seconds
    network = seen.network
    verdict = network.verdict(infra.slow_connect_ms, threshold) if network else "unknown"
    if verdict in ("dns-failure", "unreachable", "slow-network"):
        part = network.dns.summary() if verdict == "dns-failure" else network.tcp.summary()
        return NETWORK, f"the path to the API host is the problem ({part})"
    volume = []
    if verdict == "rate-limited":
        volume.append(f"{network.http.rate_limited} of {len(network.http.samples)} of the runbook's requests "
                      "answered 429")
    if seen.rate_limit_lines is not None and seen.rate_limit_lines.matches:
        volume.append(f"{seen.rate_limit_lines.matches} rate-limit lines in the bot's log in the window")
    if seen.calls is not None and seen.calls.per_minute > infra.api_calls_per_minute_budget:
        volume.append(f"{seen.calls.per_minute:g} API calls/min, above the budget of "
                      f"{infra.api_calls_per_minute_budget:g}")
    if seen.budget is not None and seen.budget.usage >= infra.rate_limit_usage_high:
        volume.append(f"{seen.budget.usage:.0%} of the address's request budget used")
    if volume:
        return BOT_VOLUME, "the exchange is throttling the bot: " + "; ".join(volume)
    if verdict in ("exchange-error", "exchange-slow"):
        return EXCHANGE, f"the API host is reachable quickly but answers slowly or with errors " \
            f"({network.tcp.summary()}; {network.http.summary()})"
    return BOT_VOLUME, ("the exchange answers the runbook quickly, so the time is spent on the bot's side "
                        "(its own queue of requests)")


@flow(name="api-latency",
      description="Runbook: API Latency >5 Seconds — the bot's request-duration percentiles, the runbook's own "
                  "latency samples, API usage and rate limits; network vs exchange vs the bot's own volume.")
def api_latency(bot: str | None = None, config: str | None = None, incident_id: int | None = None) -> Outcome:
    """Find out why API requests are slow, and which of the runbook's resolutions applies.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
    """
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "API response time exceeds 5 seconds",
             ["measure the latency trend", "check the network", "review API usage"])
    run.start_response()
    seen = measure(run)
    record(run, seen)
    slow, how = slow_now(run, seen)
    if not slow:
        return run.resolve(j.FALSE_POSITIVE, f"API requests are fast again: {how}; nothing to do.")
    found, why = cause(run, seen)
    run.add_evidence("Classification", table(["", ""], [["still slow", how], ["cause", found], ["why", why]]))
    run.note(f"cause: {found} — {why}")
    return run.escalate("L1", f"API latency: {how}. Cause: {found} — {why}.", RESOLUTIONS[found])
