"""The drill scenarios: one failure of the runbook each, what injects it and what the runbook should do.

`runbook drill` (flows/drill.py) injects each scenario into a bot while the production path runs — the
watcher detects, the deployment's trigger starts the flow, the flow diagnoses and remediates — and grades
what happened against this table: the alert that should fire, the cause the flow should name and the state
the bot should end in. Runbook failures no injection can produce are listed in NOT_COVERED, so a drill
report always says what it did not test (docs/kpis.md "Drills").
"""

from __future__ import annotations

from dataclasses import dataclass

from runbook.alerts import CATALOGUE, Severity

# How the bot should end once the runbook has answered the fault (checked before the drill clears it):
HEALTHY = "healthy"      # the runbook healed it: /health healthy, websocket connected
DOWN = "down"            # trading deliberately stopped: halted by its breaker, or stopped and held
ESCALATED = "escalated"  # nothing the runbook may fix itself: the incident is escalated to a person
END_STATES = (HEALTHY, DOWN, ESCALATED)

# A flow states its classification in one log line of its run: "diagnosis: hung — ...", "cause: network
# down — ...", "key: wrong key — ...". Flows that state none are judged on their final summary.
CAUSE_LINE = r"^(diagnosis|cause|key): "


@dataclass(frozen=True)
class Scenario:
    key: str            # also the sandbox fault's name, and the key of its inject command in config
    alert: str          # the catalogue alert that should fire
    cause: str          # regular expression the flow's classification must match to be correct
    end: str            # HEALTHY, DOWN or ESCALATED
    what: str           # the failure, as the runbook section describes it


SCENARIOS: dict[str, Scenario] = {
    s.key: s for s in (
        Scenario("crash", "crash-recovery", r"^diagnosis: crashed\b", HEALTHY,
                 "the bot process dies (SIGKILL)"),
        Scenario("hang", "crash-recovery", r"^diagnosis: hung\b", HEALTHY,
                 "the bot is alive but /health never answers and trading stops"),
        Scenario("websocket", "websocket-disconnected", r"^cause: bot not reconnecting\b", HEALTHY,
                 "the bot's websocket drops and does not come back while the network and exchange are fine"),
        Scenario("stop-loss", "stop-loss-review", r"(^|; )stop-loss on ", HEALTHY,
                 "an open position hits its stop-loss and is closed at a loss"),
        Scenario("daily-loss", "daily-loss-limit", r"^Daily loss limit reached", DOWN,
                 "the day's losses reach the daily loss limit; the bot's breaker stops trading"),
        Scenario("auth", "api-auth-failed", r"^key: (?!valid agent|master key)", ESCALATED,
                 "the exchange rejects the bot's key"),
        Scenario("low-balance", "insufficient-balance", r"^Insufficient balance:", ESCALATED,
                 "the account balance drops below what trading needs"),
        Scenario("latency", "api-latency", r"^cause: the exchange\b", ESCALATED,
                 "the exchange answers every request slowly (> 5 s)"),
        Scenario("memory", "memory-usage", r"the bot was the largest process|\ba leak\b", HEALTHY,
                 "the bot's memory grows steadily"),
        # Connection refused is an answer from the API host: the exchange is not listening, the network is fine.
        Scenario("exchange-unreachable", "websocket-disconnected", r"^cause: exchange down\b", ESCALATED,
                 "the exchange stops listening and refuses connections"),
    )
}

# Runbook failures with an alert but no way to inject them here (alert key -> why).
NOT_COVERED: dict[str, str] = {
    "win-rate-review": "no injection can make a losing streak of 20+ trades on demand",
    "system-failure": "a complete failure of the host is not injected by a drill",
    "security-breach": "a compromise cannot be simulated safely",
}


def failure_alerts() -> list[str]:
    """The catalogue's failure alerts (the runbook's failure scenarios): not INFO, not scheduled."""
    return [key for key, alert in CATALOGUE.items()
            if alert.severity is not Severity.INFO and not alert.scheduled and key != "emergency-backup"]


def parse_scenarios(text: str | None) -> list[str]:
    """`all` (or nothing) or a comma list of scenario keys, in the table's order; ValueError names a bad one."""
    if text is None or text.strip().lower() in ("", "all"):
        return list(SCENARIOS)
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in wanted if name not in SCENARIOS]
    if unknown or not wanted:
        raise ValueError(f"unknown drill scenario(s) {', '.join(unknown) or repr(text)}; "
                         f"known: all, {', '.join(SCENARIOS)}")
    return [key for key in SCENARIOS if key in wanted]
