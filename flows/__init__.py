"""One module per runbook section; `registry()` maps each alert key to the flow that answers it."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# alert key -> "module:flow function". Imported on demand: `runbook run NAME` should pay for the one
# flow it runs (pandas, the exchange client...), not for all of them.
FLOWS: dict[str, str] = {
    "crash-recovery": "flows.crash_recovery:crash_recovery",
    "stop-loss-review": "flows.stop_loss_review:stop_loss_review",
    "win-rate-review": "flows.win_rate_review:win_rate_review",
    "daily-loss-limit": "flows.daily_loss_limit:daily_loss_limit",
    "insufficient-balance": "flows.insufficient_balance:insufficient_balance",
    "daily-summary": "flows.daily_summary:daily_summary",
    "new-balance-high": "flows.new_balance_high:new_balance_high",
    "weekly-alert-analysis": "flows.weekly_alert_analysis:weekly_alert_analysis",
    "emergency-backup": "flows.emergency_backup:emergency_backup",
    "system-failure": "flows.system_failure:system_failure",
    "security-breach": "flows.security_breach:security_breach",
    "websocket-disconnected": "flows.websocket_disconnected:websocket_disconnected",
    "api-auth-failed": "flows.api_auth_failed:api_auth_failed",
    "api-latency": "flows.api_latency:api_latency",
    "memory-usage": "flows.memory_usage:memory_usage",
}


def load(name: str) -> Any:
    module, _, attribute = FLOWS[name].partition(":")
    return getattr(import_module(module), attribute)


def registry() -> dict[str, Any]:
    """Every flow, imported (for serving all of them)."""
    return {name: load(name) for name in FLOWS}
