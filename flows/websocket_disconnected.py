"""🔌 WebSocket Disconnected >2 Minutes (RUNBOOK.md), as a flow.

Immediate actions: check network connectivity to the API host (DNS, TCP connect, API requests with their
spread — in Python, not by shelling out to ping/curl), let the bot reconnect by itself (its reconnect
attempts in the log), restart it only if it does not come back, verify the connection.
Investigation: the websocket lines of the log (attempts, their spacing, whether it backs off), network
diagnostics (TLS to the API host) and rate-limit mentions.

The finding names the cause: network down, exchange down, rate-limited, or the bot not reconnecting.
Only the last is cured by restarting the bot, and the restart is crash recovery's (tasks/restart.py:
the same restart policy and storm guard). For the others a restart would not help — or, rate-limited,
would make it worse — so the flow waits for the bot's own reconnect and, failing that, escalates with
the cause and what to do about it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prefect import flow, task

from runbook import journal as j
from runbook.incident import IncidentRun, Outcome
from runbook.markdown import table
from runbook.settings import BotSettings
from tasks import NO_CACHE_POLICY
from tasks.futures import settle
from tasks.logs import ReconnectHistory, RecentMatches, reconnect_history, recent_matches
from tasks.network import NetworkReport, check_network
from tasks.probes import HealthReport, check_health, probe_health_once
from tasks.process import BotProcess, check_process
from tasks.restart import guarded_restart

ALERT = "websocket-disconnected"

NETWORK_DOWN = "network down"
EXCHANGE_DOWN = "exchange down"
RATE_LIMITED = "rate-limited"
NOT_RECONNECTING = "bot not reconnecting"

# What a person does about each cause when the bot has not come back by itself (RUNBOOK.md, Prevention too).
NEXT_STEPS = {
    NETWORK_DOWN: ["fix the host's network path to the API (DNS, proxy, firewall, routing: traceroute/mtr from "
                   "the bot host)", "the bot reconnects by itself once the API host is reachable; a restart "
                   "would not help", "re-run this flow to confirm"],
    EXCHANGE_DOWN: ["check Hyperliquid's service status; the exchange is answering with errors or not in time",
                    "the bot reconnects by itself once the exchange is back; a restart would not help",
                    "consider pausing trading until it is"],
    RATE_LIMITED: ["the exchange is rate-limiting this host: do not restart (new connections count against the "
                   "limit too)", "reduce the bot's request and reconnect rate (retry with exponential backoff, "
                   "connection pooling)", "wait for the limit window to pass, then verify the websocket"],
}


@dataclass
class Findings:
    process: BotProcess | None
    health: HealthReport
    network: NetworkReport | None
    network_error: str | None
    history: ReconnectHistory | None
    rate_limits: RecentMatches | None

    def network_verdict(self, run: IncidentRun) -> str:
        if self.network is None:
            return "unknown"
        return self.network.verdict(run.settings.infra.slow_connect_ms, run.settings.watch.latency_threshold_seconds)

    def recent_rate_limits(self) -> int:
        """Rate-limit lines since the websocket went down (or in the recent window if that is not in the log)."""
        if self.rate_limits is None or self.rate_limits.error:
            return 0
        since = self.history.last_disconnect if self.history and self.history.last_disconnect else None
        if since is None:
            return self.rate_limits.matches
        since = since.replace(microsecond=0)
        return sum(1 for stamp, _ in self.rate_limits.last if datetime.fromisoformat(stamp) >= since)

    def cause(self, run: IncidentRun) -> tuple[str, str]:
        """(cause, why) — the network first: nothing else can be judged through a broken path."""
        verdict = self.network_verdict(run)
        network = self.network
        if verdict == "slow-network":
            return NETWORK_DOWN, f"the network to the API host is degraded ({network.tcp.summary()})"
        if verdict in ("dns-failure", "unreachable"):
            if verdict == "dns-failure":
                detail = network.dns.summary()
            elif network.tcp is not None and not network.tcp.reachable:
                detail = network.tcp.summary()
            else:
                detail = network.http.summary() if network.http else verdict
            return NETWORK_DOWN, f"the API host is not reachable from here ({detail})"
        if verdict == "rate-limited":
            return RATE_LIMITED, (f"the exchange is rate-limiting ({network.http.rate_limited} of "
                                  f"{len(network.http.samples)} API requests answered 429)")
        # What the exchange answers our own requests now outranks what the bot's log said a while ago.
        if verdict in ("exchange-error", "exchange-slow"):
            return EXCHANGE_DOWN, f"the API host is reachable but the exchange fails ({network.http.summary()})"
        if self.recent_rate_limits():
            return RATE_LIMITED, (f"the exchange is rate-limiting ({self.recent_rate_limits()} rate-limit lines in "
                                  "the bot's log since the disconnect)")
        if verdict == "unknown":
            return NOT_RECONNECTING, f"the network checks could not run ({self.network_error}); assuming the bot"
        return NOT_RECONNECTING, ("DNS, TCP and the API answer normally, yet the bot's websocket is down"
                                  + (f"; {self.history.summary()}" if self.history else ""))


def look(run: IncidentRun, since: datetime) -> Findings:
    """Immediate actions and investigation, concurrently: process, health, network, websocket and rate-limit lines."""
    bot, infra = run.bot, run.settings.infra
    process = check_process.submit(bot)
    health = check_health.submit(bot)
    log = bot.path(bot.log_file)
    history = reconnect_history.submit(log, since, infra.websocket_pattern, infra.reconnect_pattern)
    limits = recent_matches.submit(log, infra.rate_limit_pattern, since)
    try:
        network, network_error = check_network(bot.hyperliquid.api_url, infra.network_samples,
                                               infra.network_timeout_seconds), None
    except ValueError as error:  # a misconfigured api_url
        network, network_error = None, str(error)
    (p, _), (h, herr), (hist, _), (lim, _) = (settle(x) for x in (process, health, history, limits))
    if h is None:
        h = HealthReport(url=bot.health_url, reachable=False, error=herr)
    return Findings(p, h, network, network_error, hist, lim)


@task(name="wait for the bot to reconnect", cache_policy=NO_CACHE_POLICY)
def wait_for_reconnect(bot: BotSettings, deadline_epoch: float, poll_seconds: float = 1.0) -> tuple[bool, str]:
    """Runbook: "Bot should auto-reconnect" — poll the health endpoint's websocket check until the deadline."""
    while True:
        health = probe_health_once(bot)
        if health.websocket_connected is True:
            return True, health.summary()
        if time.time() + poll_seconds > deadline_epoch:
            return False, health.summary()
        time.sleep(poll_seconds)


def record(run: IncidentRun, seen: Findings, cause: str, why: str) -> None:
    if seen.network is not None:
        run.add_evidence(f"Network checks to {seen.network.url}", table(["check", "result"], seen.network.rows()))
    else:
        run.add_evidence("Network checks", f"not run: {seen.network_error}")
    if seen.history is not None:
        lines = "\n".join(f"{stamp} {message}" for stamp, message in seen.history.lines) or "(none in the window)"
        run.add_evidence("WebSocket log lines", f"{seen.history.summary()}\n\n```\n{lines}\n```")
    if seen.rate_limits is not None:
        body = seen.rate_limits.error or (f"{seen.rate_limits.matches} lines matching `{seen.rate_limits.pattern}` "
                                          f"since {seen.rate_limits.since:%H:%M:%S} UTC")
        if seen.rate_limits.last:
            body += "\n\n```\n" + "\n".join(f"{s} {m}" for s, m in seen.rate_limits.last) + "\n```"
        run.add_evidence("Rate-limit mentions", body)
    run.add_evidence("Classification", table(["", ""], [["cause", cause], ["why", why],
                                                        ["health", seen.health.summary()]]))


@flow(name="websocket-disconnected",
      description="Runbook: WebSocket Disconnected >2 Minutes — network checks, reconnect attempts, wait for the "
                  "bot's own reconnect, restart only a bot that does not come back, verify.")
def websocket_disconnected(bot: str | None = None, config: str | None = None, incident_id: int | None = None,
                           wait_seconds: float | None = None) -> Outcome:
    """Find out why the bot's websocket is down, and get it back.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
        wait_seconds: how long to give the bot's own reconnect, counted from the start of this run
            (default: infra.websocket_reconnect_wait_seconds)
    """
    started = time.time()
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "WebSocket connection lost for more than 2 minutes",
             ["check network connectivity", "watch for the bot's own reconnect"], mention_level="L1")
    wait = run.settings.infra.websocket_reconnect_wait_seconds if wait_seconds is None else wait_seconds
    if wait < 0:
        raise ValueError(f"wait_seconds must not be negative, not {wait!r}")
    return run.under_bot_lock(lambda: _respond(run, wait, started + wait))


def _respond(run: IncidentRun, wait: float, deadline: float) -> Outcome:
    run.start_response()
    since = datetime.now(UTC) - timedelta(minutes=run.settings.infra.recent_log_minutes)
    seen = look(run, since)
    if seen.process is not None and seen.health.websocket_connected is True:
        record(run, seen, "none", "the websocket is connected")
        return run.resolve(j.FALSE_POSITIVE, f"the websocket is connected ({seen.health.summary()}); nothing touched.")

    if seen.process is None:
        # A bot that is not running is crash recovery's case (its own alert fires): starting it here would race
        # that runbook and would ignore a bot held down on purpose.
        record(run, seen, "bot not running", seen.health.summary())
        held = run.journal.deliberate_stop(run.bot_name)
        if held is not None:
            return run.resolve(j.FALSE_POSITIVE, f"the bot was stopped on purpose in incident #{held.id} "
                               f"({held.alert}); no websocket is expected. Nothing touched.")
        return run.escalate("L1", "the bot process is not running, so neither is its websocket: this is the "
                            "crash-recovery runbook's case; not started from here.",
                            ["check the crash-recovery incident for this bot", "verify the websocket once it is back"])
    if seen.health.websocket_connected is None:
        record(run, seen, "unknown", seen.health.summary())
        return run.escalate("L1", f"cannot tell whether the websocket is connected: {seen.health.summary()}.",
                            ["check the bot by hand (is it hung? see crash recovery)",
                             "check fields.websocket_connected points at the health JSON's websocket flag"])
    cause, why = seen.cause(run)
    record(run, seen, cause, why)
    run.note(f"cause: {cause} — {why}")
    run.tell("INVESTIGATING", f"WebSocket down; likely cause: {cause} ({why})",
             ["wait for the bot's own reconnect"] + ([] if cause == NOT_RECONNECTING else NEXT_STEPS[cause][:1]))

    back, detail = wait_for_reconnect(run.bot, deadline)
    if back:
        return run.resolve(j.AUTO_RESOLVED, f"the bot reconnected by itself (cause seen: {cause}); not restarted. "
                           f"{detail}")
    run.note(f"the bot did not reconnect within the {wait:g}s wait window: {detail}")
    if cause != NOT_RECONNECTING:
        return run.escalate("L1", f"WebSocket still down: {cause} — {why}. Not restarting the bot: that cannot "
                            "fix it.", NEXT_STEPS[cause])

    result = guarded_restart(run, seen.process, f"websocket down ({cause})")
    if isinstance(result, Outcome):
        return result
    health = probe_health_once(run.bot)
    if health.websocket_connected is not True:
        run.act("verify", f"after the restart: {health.summary()}", ok=False)
        return run.escalate("L2", f"bot restarted but its websocket is not connected: {health.summary()}",
                            ["read the bot's websocket log lines", "check the network to the API host again"])
    return run.resolve(j.AUTO_RESOLVED, f"{why}; the bot did not reconnect by itself, so it was restarted and its "
                       f"websocket is connected again ({result}).")

