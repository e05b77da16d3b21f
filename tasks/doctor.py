"""`runbook doctor`: does the configuration map onto the live bot? Every configured path, metric and pattern,
probed once against the running bot, with what was read.

Each item is `resolved` (the path exists, the metric is there, the pattern matched log lines — shown),
`unresolved` (it does not: what was found instead is named), or `unseen` (nothing contradicts it, but the bot
has not shown it yet: a marker no recent line matched, a position field while no position is open).
Read-only: one /health request, one metrics request, the ends of the two logs and the bot's config file.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from runbook.paths import resolve
from runbook.settings import BotSettings, Settings
from tasks.botconfig import BotConfigError, read_config
from tasks.logs import LogLine, parse_line, tail_bytes, unreadable
from tasks.probes import probe_health_once

RESOLVED, UNRESOLVED, UNSEEN = "resolved", "unresolved", "unseen"
SHOWN_LINES = 3  # matched log lines shown per pattern
# /health fields read relative to position_health (the first two) or to one of its positions (the rest).
_IN_POSITION_HEALTH = ("positions", "positions_without_stop")
_IN_POSITION = ("position_coin", "position_size", "position_entry", "position_mark", "position_stop",
                "position_pnl")


@dataclass
class Item:
    kind: str  # health, metric, log, marker, watch, config
    name: str  # the setting, e.g. fields.daily_pnl
    configured: str  # its value: a path, a metric name or a pattern
    status: str
    read: str  # what was read, or what was found instead
    lines: list[str] = field(default_factory=list)  # log lines it matched (or could not parse)


@dataclass
class DoctorReport:
    bot: str
    items: list[Item] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(item.status != UNRESOLVED for item in self.items)

    def counts(self) -> dict[str, int]:
        counts = {RESOLVED: 0, UNRESOLVED: 0, UNSEEN: 0}
        for item in self.items:
            counts[item.status] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"bot": self.bot, "ok": self.ok, "counts": self.counts(), "items": [asdict(i) for i in self.items]}


def examine(settings: Settings, name: str, bot: BotSettings, max_lines: int = 20000) -> DoctorReport:
    report = DoctorReport(bot=name)
    report.items += _health_items(bot)
    report.items.append(_latency_item(bot))
    main, errors = bot.path(bot.log_file), bot.path(bot.error_log_file)
    lines: dict[str, list[LogLine]] = {}
    for setting, path in (("log_file", main), ("error_log_file", errors)):
        item, lines[setting] = _log_item(bot, setting, path, max_lines)
        report.items.append(item)
    main_lines, all_lines = lines["log_file"], lines["log_file"] + lines["error_log_file"]
    markers = bot.markers
    for marker, pattern in markers.patterns.items():
        searched = lines["error_log_file"] if marker == "auth" else main_lines
        report.items.append(_pattern_item("marker", f"markers.{marker}", pattern, searched))
    report.items.append(_trade_result_item(bot, main_lines))
    for alert, pattern in settings.watch.log_patterns.items():
        report.items.append(_pattern_item("watch", f"watch.log_patterns.{alert}", pattern, all_lines))
    report.items += _config_items(bot)
    return report


# --- /health ------------------------------------------------------------------------------------


def _health_items(bot: BotSettings) -> list[Item]:
    fields = bot.fields
    health = probe_health_once(bot)
    body = health.body
    paths = fields.paths
    if body is None:
        why = health.error or health.summary()
        return [Item("health", f"fields.{key}", path, UNRESOLVED, f"/health not read: {why}")
                for key, path in paths.items()]
    items: list[Item] = []
    for key, path in paths.items():
        if key in _IN_POSITION_HEALTH + _IN_POSITION:
            continue
        found = resolve(body, path)
        items.append(Item("health", f"fields.{key}", path, RESOLVED if found.found else UNRESOLVED, found.describe()))
    status = resolve(body, fields.status)
    words = fields.healthy_values + fields.stopped_values
    if status.found:
        known = status.value in words
        items.append(Item("health", "fields.healthy_values/stopped_values", ", ".join(words),
                          RESOLVED if known else UNRESOLVED,
                          f"status {status.value!r} is " + ("healthy" if status.value in fields.healthy_values else
                                                            "stopped" if known else f"none of {words}")))
    auth = resolve(body, fields.api_auth)
    if auth.found:
        failing = auth.value in fields.api_auth_failing
        items.append(Item("health", "fields.api_auth_failing", ", ".join(fields.api_auth_failing), RESOLVED,
                          f"api_auth is {auth.value!r}: " + ("failing" if failing else "not failing")))
    items += _position_items(fields, resolve(body, fields.position_health))
    return items


def _position_items(fields: Any, position_health: Any) -> list[Item]:
    items: list[Item] = []
    if not position_health.found or not isinstance(position_health.value, dict):
        why = "position_health does not resolve" if not position_health.found else \
            f"position_health ({fields.position_health}) is not an object"
        return [Item("health", f"fields.{key}", getattr(fields, key), UNRESOLVED, why)
                for key in _IN_POSITION_HEALTH + _IN_POSITION]
    inside = position_health.value
    for key in _IN_POSITION_HEALTH:
        found = resolve(inside, getattr(fields, key))
        items.append(Item("health", f"fields.{key}", getattr(fields, key), RESOLVED if found.found else UNRESOLVED,
                          f"in {fields.position_health}: {found.describe()}"))
    rows = resolve(inside, fields.positions).value
    row = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else None
    for key in _IN_POSITION:
        path = getattr(fields, key)
        if row is None:
            items.append(Item("health", f"fields.{key}", path, UNSEEN, "no open position to read it from"))
            continue
        found = resolve(row, path)
        items.append(Item("health", f"fields.{key}", path, RESOLVED if found.found else UNRESOLVED,
                          f"in the first position: {found.describe()}"))
    return items


# --- metrics ------------------------------------------------------------------------------------


def _latency_item(bot: BotSettings) -> Item:
    names = bot.metrics
    configured = f"{names.latency} ({names.latency_unit})"
    try:
        response = httpx.get(bot.metrics_url, timeout=bot.probe_timeout_seconds)
        response.raise_for_status()
        families = list(text_string_to_metric_families(response.text))
    except httpx.HTTPError as error:
        return Item("metric", "metrics.latency", configured, UNRESOLVED, f"{bot.metrics_url}: {type(error).__name__}: {error}")
    except (ValueError, TypeError, IndexError) as error:
        return Item("metric", "metrics.latency", configured, UNRESOLVED, f"metrics text is malformed: {error}")
    family = next((f for f in families if f.name == names.latency), None)
    if family is None or family.type not in ("histogram", "summary"):
        timed = [f"{f.name} ({f.type})" for f in families if f.type in ("histogram", "summary")]
        what = f"{names.latency} is a {family.type}, not a histogram or summary" if family else \
            f"no family named {names.latency}"
        return Item("metric", "metrics.latency", configured, UNRESOLVED,
                    f"{what}; histograms and summaries there: {', '.join(timed) or 'none'}")
    count = sum(s.value for s in family.samples if s.name.endswith("_count"))
    total = sum(s.value for s in family.samples if s.name.endswith("_sum")) * names.latency_scale
    mean = total / count if count else None
    read = f"{family.type} {family.name}: {count:.0f} requests" + (
        f", mean {mean:.3f} s" if mean is not None else "")
    hint = ""
    if mean is not None and names.latency_unit == "seconds" and mean > 120:
        hint = " — a mean this long suggests the metric counts milliseconds (latency_unit)"
    return Item("metric", "metrics.latency", configured, RESOLVED, read + hint)


# --- logs ---------------------------------------------------------------------------------------


def _log_item(bot: BotSettings, setting: str, path: Any, max_lines: int) -> tuple[Item, list[LogLine]]:
    fmt = bot.logs
    configured = f"{path} ({fmt.format}" + (f": {fmt.line_pattern}" if fmt.format == "text" else
                                           f": {fmt.timestamp_field}, {fmt.level_field}, {fmt.message_field}") + ")"
    try:
        lines = [parse_line(raw, fmt) for raw in tail_bytes(path, max_lines) if raw.strip()]
    except OSError as error:
        return Item("log", f"{setting} / logs", configured, UNRESOLVED, unreadable(path, error)), []
    if not lines:
        return Item("log", f"{setting} / logs", configured, UNSEEN, f"{path} is empty"), []
    parsed = [line for line in lines if line.record is not None]
    dated = [line for line in parsed if line.when is not None]
    with_message = [line for line in parsed if line.value_of("message") is not None]
    read = (f"{len(parsed)} of the last {len(lines)} lines in the format, {len(dated)} with a readable time, "
            f"{len(with_message)} with a message")
    if not dated or not with_message:
        shown = [line.raw for line in lines[-SHOWN_LINES:]]
        return Item("log", f"{setting} / logs", configured, UNRESOLVED, read + "; the last lines are:", shown), lines
    sample = dated[-1]
    shown = [f"{sample.raw}  =>  timestamp {sample.timestamp!r}, level {sample.level!r}, message {sample.message!r}"]
    unparsed = [line.raw for line in lines if line.record is None][-SHOWN_LINES:]
    shown += [f"not in the format: {raw}" for raw in unparsed]
    return Item("log", f"{setting} / logs", configured, RESOLVED, read, shown), lines


def _pattern_item(kind: str, name: str, pattern: str, lines: list[LogLine]) -> Item:
    compiled = re.compile(pattern, re.IGNORECASE)
    hits = [line.message for line in lines if compiled.search(line.message)]
    if not hits:
        return Item(kind, name, pattern, UNSEEN, f"no line of the {len(lines)} read matches")
    return Item(kind, name, pattern, RESOLVED, f"{len(hits)} of {len(lines)} lines match", hits[-SHOWN_LINES:])


def _trade_result_item(bot: BotSettings, lines: list[LogLine]) -> Item:
    """The trade-exit words: the literal pre-filter is in every exit line, and which results were seen."""
    markers = bot.markers
    compiled = re.compile(markers.trade_exit, re.IGNORECASE)
    exits = [(line.message, found) for line in lines if (found := compiled.search(line.message))]
    configured = (f"literal {markers.trade_exit_literal!r}, loss {markers.trade_loss!r}, "
                  f"stop-loss reason {markers.stop_loss_reason!r}")
    if not exits:
        return Item("marker", "markers.trade_exit_literal/trade_loss/stop_loss_reason", configured, UNSEEN,
                    "no trade-exit line to check them against")
    without = [message for message, _ in exits if markers.trade_exit_literal.lower() not in message.lower()]
    if without:
        return Item("marker", "markers.trade_exit_literal/trade_loss/stop_loss_reason", configured, UNRESOLVED,
                    f"{len(without)} trade-exit lines lack the literal {markers.trade_exit_literal!r}", without[-3:])
    results = sorted({found["result"] for _, found in exits})
    reasons = sorted({found["reason"] for _, found in exits})
    seen_loss = any(found["result"].lower() == markers.trade_loss.lower() for _, found in exits)
    seen_stop = any(found["reason"].lower() == markers.stop_loss_reason.lower() for _, found in exits)
    read = (f"{len(exits)} exits; results seen: {', '.join(results)}; reasons seen: {', '.join(reasons)}"
            + ("" if seen_loss else f"; no {markers.trade_loss!r} result yet")
            + ("" if seen_stop else f"; no {markers.stop_loss_reason!r} reason yet"))
    return Item("marker", "markers.trade_exit_literal/trade_loss/stop_loss_reason", configured,
                RESOLVED if seen_loss and seen_stop else UNSEEN, read, [message for message, _ in exits[-3:]])


# --- the bot's config file ----------------------------------------------------------------------


def _config_items(bot: BotSettings) -> list[Item]:
    path = bot.path(bot.config_file)
    keys = bot.config_keys
    try:
        config = read_config(path)
    except BotConfigError as error:
        return [Item("config", f"config_keys.{key}", dotted, UNRESOLVED, str(error)) for key, dotted in keys.paths.items()]
    items = []
    for key, dotted in keys.paths.items():
        found = resolve(config.data, dotted)
        if not found.found and key == "daily_loss_reset_at":
            # The runbook writes this one; it need not exist yet, but the object it goes in must.
            parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
            holder = resolve(config.data, parent) if parent else None
            if holder is None or (holder.found and isinstance(holder.value, dict)):
                items.append(Item("config", f"config_keys.{key}", dotted, RESOLVED,
                                  f"not set yet (the runbook writes it); {parent or 'the top level'} exists"))
                continue
        items.append(Item("config", f"config_keys.{key}", dotted, RESOLVED if found.found else UNRESOLVED,
                          found.describe()))
    return items
