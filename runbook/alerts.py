"""The alert catalogue: one entry per alert of RUNBOOK.md, read by everything else.

The key of an alert is also the name of its flow, its deployment and `runbook run NAME`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import Enum


class Severity(str, Enum):
    CRITICAL = "CRITICAL"
    WARNING = "WARNING"
    INFO = "INFO"
    EMERGENCY = "EMERGENCY"


# The runbook's escalation path: who is paged once an incident has been open this long.
ESCALATION_LEVELS: tuple[tuple[str, str, timedelta], ...] = (
    ("L1", "On-call engineer", timedelta(0)),
    ("L2", "Senior engineer", timedelta(minutes=15)),
    ("L3", "Engineering manager", timedelta(hours=1)),
    ("L4", "Executive team", timedelta(hours=4)),
)


@dataclass(frozen=True)
class Alert:
    key: str
    title: str
    severity: Severity
    condition: str
    # Runbook response target: act within this long of the alert firing (None: reviewed daily).
    response_target: timedelta | None
    # How long the section allows before it escalates past L1 (e.g. "cannot be restarted within 10 minutes").
    escalate_after: timedelta | None
    # Name of the flow that handles it (same as key where the flow exists).
    flow: str
    impact: str
    scheduled: bool = False

    @property
    def response_target_seconds(self) -> float | None:
        return self.response_target.total_seconds() if self.response_target else None


FIVE_MIN = timedelta(minutes=5)
THIRTY_MIN = timedelta(minutes=30)

CATALOGUE: dict[str, Alert] = {
    alert.key: alert
    for alert in (
        Alert("crash-recovery", "Bot Crashed/Stopped", Severity.CRITICAL,
              "Trading bot process is not responding or has crashed",
              FIVE_MIN, timedelta(minutes=10), "crash-recovery", "Potential financial loss or system failure"),
        Alert("websocket-disconnected", "WebSocket Disconnected >2 Minutes", Severity.CRITICAL,
              "WebSocket connection lost for more than 2 minutes",
              FIVE_MIN, timedelta(minutes=10), "websocket-disconnected", "Real-time price data unavailable"),
        Alert("stop-loss-review", "Position Hit Stop-Loss", Severity.CRITICAL,
              "Position closed due to stop-loss trigger",
              FIVE_MIN, timedelta(minutes=15), "stop-loss-review", "Realized losses, possible risk limit breach"),
        Alert("daily-loss-limit", "Daily Loss Limit Reached", Severity.CRITICAL,
              "Daily loss limit exceeded (100% of threshold)",
              FIVE_MIN, timedelta(minutes=30), "daily-loss-limit", "Trading suspended, significant drawdown"),
        Alert("api-auth-failed", "API Authentication Failed", Severity.CRITICAL,
              "Authentication with Hyperliquid API failed",
              FIVE_MIN, timedelta(minutes=15), "api-auth-failed", "All API calls failing, trading impossible"),
        Alert("insufficient-balance", "Insufficient Balance", Severity.CRITICAL,
              "Account balance too low to continue trading",
              FIVE_MIN, timedelta(minutes=30), "insufficient-balance", "Order rejections, trading suspended"),
        Alert("api-latency", "API Latency >5 Seconds", Severity.WARNING,
              "API response time exceeds 5 seconds",
              THIRTY_MIN, timedelta(hours=1), "api-latency", "Slow trade execution, missed opportunities"),
        Alert("memory-usage", "Memory Usage >80%", Severity.WARNING,
              "System memory usage exceeds 80%",
              THIRTY_MIN, timedelta(hours=1), "memory-usage", "Slow performance, potential crashes"),
        Alert("win-rate-review", "Win Rate Below 40%", Severity.WARNING,
              "Trading win rate drops below 40%",
              THIRTY_MIN, timedelta(hours=1), "win-rate-review", "Consistent losses, strategy ineffective"),
        Alert("daily-summary", "Daily Trading Summary", Severity.INFO,
              "End-of-day summary (sent daily)", None, None, "daily-summary", "Informational only",
              scheduled=True),
        Alert("new-balance-high", "New Balance High", Severity.INFO,
              "Account balance reaches new all-time high", None, None, "new-balance-high", "Informational only"),
        Alert("system-failure", "Complete System Failure", Severity.EMERGENCY,
              "The trading system has failed as a whole", FIVE_MIN, timedelta(minutes=5), "system-failure",
              "Uncontrolled positions, potential large financial loss"),
        Alert("security-breach", "Security Breach Suspected", Severity.EMERGENCY,
              "A compromise of the host or the keys is suspected", FIVE_MIN, timedelta(minutes=5),
              "security-breach", "Funds and credentials at risk"),
        Alert("emergency-backup", "Evidence Backup", Severity.EMERGENCY,
              "Preserve logs, data and config now", None, None, "emergency-backup", "Evidence preservation"),
        Alert("weekly-alert-analysis", "Weekly Review: Alert Patterns", Severity.INFO,
              "Weekly alert-pattern analysis (scheduled)", None, None, "weekly-alert-analysis",
              "Continuous improvement", scheduled=True),
    )
}


class UnknownAlert(KeyError):
    def __str__(self) -> str:
        return f"unknown alert {self.args[0]!r}; known: {', '.join(CATALOGUE)}"


def get_alert(key: str) -> Alert:
    try:
        return CATALOGUE[key]
    except KeyError:
        raise UnknownAlert(key) from None


def escalation_level(open_for: timedelta) -> str:
    """The highest level an incident open this long has reached on the runbook's path."""
    level = ESCALATION_LEVELS[0][0]
    for name, _, after in ESCALATION_LEVELS:
        if open_for >= after:
            level = name
    return level
