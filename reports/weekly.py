"""Weekly Review: alert patterns (RUNBOOK.md "Weekly Review Process" and "Metrics and KPIs").

From the incident journal (or an alert history in a file): alert volume per alert, severity and day, MTTR
per alert and per severity against the runbook's targets, false-positive rate, uptime, MTBF, recovery time
against the RTO, auto-resolution rate, the noisiest alerts and the slowest responses, alert-fatigue signals
(repeats, flapping), and recommendations. Every KPI is the one DESIGN.md "KPI definitions" names; the same
words are printed in the PDF (KPI_DEFINITIONS) and in docs/kpis.md.

Everything is vectorised (pandas / numpy): one frame of incidents, group-bys, no loop per incident.

Choices the definitions leave open (documented in docs/kpis.md):

* The period is [end - period, end) on `fired_at`, UTC. Downtime also counts crash-recovery / system-failure
  incidents fired before the period and still unresolved at its start (clipped to it); every other figure
  counts only incidents fired in the period.
* An unresolved downtime incident runs to the period's end, or to now when the period is not over.
* A KPI target is "met" when the figure is within it: mean MTTR <= target, worst recovery <= RTO,
  false-positive rate < 5 %, uptime > 99.9 %.
* Recovery time (worst, median) is over the downtime incidents fired in the period and resolved; one still
  unresolved after longer than the RTO makes `rto_met` false, and is counted in `recovery_unresolved`.
* False-positive and auto-resolution rates leave INFO incidents out (reports and celebrations are not
  alerts someone answers); volumes, MTTR per alert and the per-day chart include every severity.
* Flapping: an incident fired on the same alert and bot within `flap_window` (60 min by default) of the
  previous one's resolution. Repeats: firings counted on an incident already open (`repeat_count`).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports import paused_gc
from runbook.alerts import CATALOGUE, Severity

DOWNTIME_ALERTS = ("crash-recovery", "system-failure")
RTO_SECONDS = 600.0
FALSE_POSITIVE_TARGET = 0.05
UPTIME_TARGET = 0.999
TOP_N = 5
SEVERITIES = tuple(s.value for s in Severity)
SEVERITY_ORDER = ("EMERGENCY", "CRITICAL", "WARNING", "INFO")
FIELDS = ("id", "alert", "bot", "severity", "status", "outcome", "fired_at", "response_started_at", "resolved_at",
          "repeat_count", "acknowledged_at")
TIME_FIELDS = ("fired_at", "response_started_at", "resolved_at", "acknowledged_at")
FLAP_RECOMMEND = 2
REPEAT_RECOMMEND = 10
FP_ALERT_SHARE = 0.2

KPI_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("Period", "[end - period, end) on fired_at, in UTC."),
    ("MTTR", "Mean Time to Response: mean of response_started_at - fired_at over the incidents with a response "
             "(first remediation step or a person's acknowledgement), per alert and per severity; with the median "
             "and the p90 (linear interpolation). Target: 5 min CRITICAL and EMERGENCY, 30 min WARNING; met when "
             "the mean is within it."),
    ("Time to acknowledge", "acknowledged_at - fired_at over the incidents a person acknowledged (`runbook ack`, "
                            "the Slack button, a pager), per severity: median and p90, shown beside the response "
                            "time against the same targets; met when the median is within the target."),
    ("Time to resolve", "The same over resolved_at - fired_at of resolved incidents."),
    ("False-positive rate", "False-positive incidents / all incidents of the period, INFO excluded. Target < 5 %."),
    ("Auto-resolution rate", "Incidents resolved by their flow alone (auto-resolved) / all incidents, INFO "
                             "excluded."),
    ("Alert volume", "Incidents per alert, per severity and per day. Repeats of an open incident are counted on "
                     "it, and reported as a fatigue signal."),
    ("Flapping", "An incident fired on the same alert and bot within the flap window (60 min) of the previous "
                 "one's resolution."),
    ("Downtime", "The union of [fired_at, resolved_at] of crash-recovery and system-failure incidents, clipped "
                 "to the period; an unresolved one runs to the period's end (or now)."),
    ("Uptime", "1 - downtime / period. Target > 99.9 %."),
    ("MTBF", "(period - downtime) / number of crash-recovery and system-failure incidents fired in the period; "
             "none without such incidents."),
    ("Recovery time", "resolved_at - fired_at of those incidents. The RTO (10 min) is met when the worst one is "
                      "within it (and none is still unresolved past it); reported as worst and median."),
)


class IncidentsError(ValueError):
    """Unusable alert history; the message is one line naming the record and field."""


def severity_target(severity: str) -> float | None:
    """The runbook's response target of a severity: the tightest of its alerts' in the catalogue."""
    targets = [a.response_target_seconds for a in CATALOGUE.values()
               if a.severity.value == severity and a.response_target_seconds is not None]
    return min(targets) if targets else None


def alert_target(alert: str, severity: str) -> float | None:
    known = CATALOGUE.get(alert)
    if known is not None:
        return known.response_target_seconds
    return severity_target(severity)


def fmt_duration(seconds: float | None) -> str:
    """Seconds as people read them, to the second below an hour: 42 s, 4 min 30 s, 2 h 05 min, 1 d 6 h."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        minutes, secs = divmod(total, 60)
        return f"{minutes} min" + (f" {secs:02d} s" if secs else "")
    if total < 86400:
        hours, rest = divmod(total, 3600)
        return f"{hours} h {rest // 60:02d} min"
    days, rest = divmod(total, 86400)
    return f"{days} d {rest // 3600} h"


def fmt_rate(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f} %"


def _f(value: Any) -> float | None:
    """A float for JSON, None for NaN/None."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _iso(value: datetime | pd.Timestamp | None) -> str | None:
    if value is None or value is pd.NaT:
        return None
    return pd.Timestamp(value).tz_convert("UTC").isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------------------------------------
# input: the journal's columns or a file of incidents -> one typed frame


def incidents_frame(columns: dict[str, list[Any]] | list[dict[str, Any]], *, strict: bool = True,
                    where: str = "incident") -> tuple[pd.DataFrame, list[str]]:
    """See _incidents_frame (the same, with the garbage collector paused while it builds its columns)."""
    with paused_gc():
        return _incidents_frame(columns, strict=strict, where=where)


def _incidents_frame(columns: dict[str, list[Any]] | list[dict[str, Any]], *, strict: bool = True,
                     where: str = "incident") -> tuple[pd.DataFrame, list[str]]:
    """A typed frame (alert, bot, severity, outcome, fired, response, resolved, repeats, id) and warnings.

    `columns` is a list of incident objects (a file) or the journal's columns (Journal.kpi_columns).
    `strict` (files): a time that is not ISO 8601, a missing alert or fired_at, an unknown severity, or a
    response / resolution before the firing is an IncidentsError naming the record. Not strict (the
    journal): negative durations are clipped to 0 and reported as warnings. Text columns come out as
    categoricals, so every group-by after this works on integer codes."""
    if isinstance(columns, list):
        bad = next((i for i, r in enumerate(columns) if not isinstance(r, dict)), None)
        if bad is not None:
            raise IncidentsError(f"{where} {bad}: expected an object, got {type(columns[bad]).__name__}")
        raw = {name: list(map(dict.get, columns, repeat(name))) for name in FIELDS}  # one C-level pass a field
    else:
        size = len(next(iter(columns.values()), []))
        raw = {name: columns.get(name, [None] * size) for name in FIELDS}
    # object arrays, not pandas' string dtype: what follows is a few vectorised passes over them
    cols = {name: pd.Series(np.array(values, dtype=object) if values else np.zeros(0, dtype=object), dtype=object)
            for name, values in raw.items()}
    n = len(cols["alert"])
    warnings: list[str] = []

    def fail(mask: np.ndarray, message: str) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            raise IncidentsError(f"{where} {i}: {message}")

    for name in ("alert", "fired_at"):
        fail(cols[name].isna().to_numpy(), f"missing {name!r}")
    alert = _category(cols["alert"])
    known = {k: a.severity.value for k, a in CATALOGUE.items()}
    known_severity = pd.Series(alert, copy=False).map(known).astype(object)
    given = cols["severity"]
    severity = given.where(given.notna(), known_severity)
    fail(severity.isna().to_numpy(), "missing 'severity' (and the alert is not in the catalogue)")
    severity = _category(severity)
    upper = [str(c).upper() for c in severity.categories]
    if len(set(upper)) == len(upper):
        severity = severity.rename_categories(upper)
    else:  # "critical" and "CRITICAL" both given
        severity = pd.Categorical([str(v).upper() for v in severity])
    fail(~pd.Series(severity).isin(SEVERITIES).to_numpy(), f"severity must be one of {', '.join(SEVERITIES)}")

    times: dict[str, pd.Series] = {}
    for name in TIME_FIELDS:
        parsed = _parse_times(cols[name])
        fail((parsed.isna() & cols[name].notna()).to_numpy(), f"{name!r} is not an ISO 8601 time")
        times[name] = parsed
    fired = times["fired_at"]
    for name, label in (("response_started_at", "response"), ("resolved_at", "resolution"),
                        ("acknowledged_at", "acknowledgement")):
        early = (times[name] < fired).to_numpy()
        if early.any():
            if strict:
                fail(early, f"{name!r} is before 'fired_at'")
            warnings.append(f"{int(early.sum())} incident(s) have a {label} time before they fired: counted as 0 s")
            times[name] = times[name].where(~early, fired)
    repeats = pd.to_numeric(cols["repeat_count"], errors="coerce")
    if strict:
        fail((repeats.isna() & cols["repeat_count"].notna()).to_numpy() | (repeats < 0).to_numpy(),
             "'repeat_count' must be a whole number >= 0")
    frame = pd.DataFrame({
        "id": cols["id"], "alert": alert,
        "bot": _category(cols["bot"].where(cols["bot"].notna(), "")),
        "severity": severity,
        "outcome": _category(cols["outcome"].where(cols["outcome"].notna(), "")),
        "fired": fired, "response": times["response_started_at"], "resolved": times["resolved_at"],
        "acknowledged": times["acknowledged_at"],
        "repeats": repeats.fillna(0).clip(lower=0).astype(np.int64),
    }, index=pd.RangeIndex(n))
    return frame, warnings


def _category(values: pd.Series) -> pd.Categorical:
    """Text as a categorical (factorised once); anything that is not text becomes its str()."""
    result = pd.Categorical(values.to_numpy(dtype=object))
    if all(isinstance(c, str) for c in result.categories):
        return result
    return pd.Categorical([str(v) for v in values])


def _parse_times(values: pd.Series) -> pd.Series:
    """ISO 8601 strings (or datetimes) -> UTC timestamps; naive ones are UTC; anything else -> NaT."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind not in ("string", "datetime", "empty"):  # numbers, booleans, objects: not a time
        values = values.where(values.map(lambda v: isinstance(v, (str, datetime))), None)
    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


def read_incident_file(path: str) -> list[dict[str, Any]]:
    """Incidents from a file: a JSON list (`runbook incidents --json`) or JSON lines (one object a line)."""
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise IncidentsError(f"cannot read {name}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise IncidentsError(f"cannot read {name}: {error.strerror or error}") from None
    body = text.strip()
    if not body:
        return []
    if body.startswith("["):
        try:
            with paused_gc():
                return json.loads(body)
        except json.JSONDecodeError as error:
            raise IncidentsError(f"invalid JSON in {name}: {error.msg} at line {error.lineno} column {error.colno}") \
                from None
    lines = [line for line in text.splitlines() if line.strip()]
    try:  # one parse of all the lines as a list: far fewer calls than one a line
        with paused_gc():
            return json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):  # find the line that is not JSON, to name it
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            raise IncidentsError(f"invalid JSON in {name} line {number}: {error.msg} (column {error.colno}); "
                                 "expected JSON lines (one incident object per line) or a JSON list") from None
    raise IncidentsError(f"invalid JSON lines in {name}: every line parses alone but not together (a line "
                         "holding several values?)")


# ----------------------------------------------------------------------------------------------------------
# the analysis


@dataclass
class WeeklyReport:
    start: datetime
    end: datetime
    generated_at: datetime
    source: str
    bot: str | None
    incidents: int
    by_severity: dict[str, dict[str, Any]]
    by_alert: dict[str, dict[str, Any]]
    per_day: pd.DataFrame  # index: UTC day; columns: severities; values: incidents fired
    false_positives: int
    false_positive_rate: float | None
    auto_resolution_rate: float | None
    downtime_seconds: float
    uptime: float
    mtbf_seconds: float | None
    downtime_incidents: int
    recovery_time_worst_seconds: float | None
    recovery_time_median_seconds: float | None
    recovery_unresolved: int
    rto_met: bool | None
    repeats: int
    flapping: int
    noisiest: list[dict[str, Any]]
    slowest: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    pdf_path: str | None = None

    @property
    def period_seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def title(self) -> str:
        days = self.period_seconds / 86400
        span = f"{days:g} days" if days >= 1 else fmt_duration(self.period_seconds)
        return (f"Weekly alert-pattern analysis — {self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC "
                f"({span})")

    def severity_figure(self, severity: str, key: str) -> Any:
        return self.by_severity.get(severity, {}).get(key)

    def headline(self) -> list[tuple[str, str]]:
        def mttr(severity: str) -> tuple[str, str]:
            block = self.by_severity.get(severity) or {}
            target = block.get("target_seconds")
            return (f"MTTR {severity.lower()} (target {fmt_duration(target)})",
                    fmt_duration(block.get("mttr_mean_seconds")))

        def tta(severity: str) -> tuple[str, str]:
            block = self.by_severity.get(severity) or {}
            return (f"Time to acknowledge {severity.lower()} median / p90",
                    f"{fmt_duration(block.get('tta_median_seconds'))} / {fmt_duration(block.get('tta_p90_seconds'))}")

        return [
            ("Incidents", f"{self.incidents:,}"),
            mttr("CRITICAL"),
            mttr("WARNING"),
            ("False-positive rate (target < 5 %)", fmt_rate(self.false_positive_rate)),
            ("Uptime (target > 99.9 %)", fmt_rate(self.uptime, 3)),
            ("MTBF", fmt_duration(self.mtbf_seconds)),
            ("Recovery worst / median (RTO 10 min)", f"{fmt_duration(self.recovery_time_worst_seconds)} / "
                                                     f"{fmt_duration(self.recovery_time_median_seconds)}"),
            ("Auto-resolution rate", fmt_rate(self.auto_resolution_rate)),
            ("Repeats / flapping", f"{self.repeats:,} / {self.flapping:,}"),
            tta("CRITICAL"),
            tta("WARNING"),
        ]

    def message(self) -> str:
        lines = [f"*{self.title}*"] + [f"{label}: {value}" for label, value in self.headline()[:6]]
        if self.recommendations:
            lines.append("Top recommendation: " + self.recommendations[0])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        per_day = [{"date": day.strftime("%Y-%m-%d"), **{k: int(v) for k, v in row.items()}}
                   for day, row in self.per_day.iterrows()]
        return {
            "report": "weekly-alert-analysis",
            "period": {"start": _iso(self.start), "end": _iso(self.end), "seconds": self.period_seconds},
            "bot": self.bot, "source": self.source, "generated_at": _iso(self.generated_at), "pdf": self.pdf_path,
            "incidents": self.incidents,
            "false_positives": self.false_positives, "false_positive_rate": self.false_positive_rate,
            "false_positive_target": FALSE_POSITIVE_TARGET,
            "false_positive_met": None if self.false_positive_rate is None
            else self.false_positive_rate < FALSE_POSITIVE_TARGET,
            "auto_resolution_rate": self.auto_resolution_rate,
            "downtime_seconds": self.downtime_seconds, "uptime": self.uptime, "uptime_target": UPTIME_TARGET,
            "uptime_met": self.uptime > UPTIME_TARGET,
            "mtbf_seconds": self.mtbf_seconds, "downtime_incidents": self.downtime_incidents,
            "recovery_time_worst_seconds": self.recovery_time_worst_seconds,
            "recovery_time_median_seconds": self.recovery_time_median_seconds,
            "recovery_unresolved": self.recovery_unresolved, "rto_seconds": RTO_SECONDS, "rto_met": self.rto_met,
            "repeats": self.repeats, "flapping": self.flapping,
            "by_severity": self.by_severity, "by_alert": self.by_alert, "per_day": per_day,
            "noisiest": self.noisiest, "slowest": self.slowest,
            "recommendations": list(self.recommendations), "warnings": list(self.warnings),
        }


def _stats(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """count, MTTR mean/median/p90, resolve mean, outcome counts and fatigue per value of `key`."""
    groups = frame.groupby(key, sort=True, observed=True)
    table = groups.agg(count=("alert", "size"), mttr_mean_seconds=("ttr", "mean"),
                       mttr_median_seconds=("ttr", "median"), responded=("ttr", "count"),
                       resolve_mean_seconds=("ttres", "mean"), resolved=("ttres", "count"),
                       repeats=("repeats", "sum"), flaps=("flap", "sum"),
                       tta_median_seconds=("tta", "median"), acknowledged=("tta", "count"))
    table["mttr_p90_seconds"] = groups["ttr"].quantile(0.9)  # linear interpolation, NaN skipped
    table["tta_p90_seconds"] = groups["tta"].quantile(0.9)
    outcomes = frame.groupby([key, "outcome"], observed=True).size().unstack(fill_value=0)
    for outcome, name in (("false-positive", "false_positives"), ("auto-resolved", "auto_resolved"),
                          ("escalated", "escalated"), ("failed", "failed"), ("no-automation", "no_automation")):
        table[name] = outcomes[outcome].reindex(table.index, fill_value=0) if outcome in outcomes else 0
    return table


def _row(values: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("count", "responded", "resolved", "acknowledged", "repeats", "flaps", "false_positives", "auto_resolved",
                    "escalated", "failed", "no_automation"):
            out[name] = int(value)
        else:
            out[name] = _f(value)
    return out


def _union_seconds(starts: np.ndarray, ends: np.ndarray) -> float:
    """Total length of the union of intervals [start, end) (int64 ns), vectorised."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if not len(starts):
        return 0.0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    new_block = np.ones(len(starts), dtype=bool)
    new_block[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new_block)
    block_end = np.maximum.reduceat(ends, first)
    return float((block_end - starts[first]).sum()) / 1e9


def analyze(frame: pd.DataFrame, start: datetime, end: datetime, *, now: datetime | None = None,
            flap_window: timedelta = timedelta(hours=1), automated: set[str] | None = None, source: str = "journal",
            bot: str | None = None, warnings: list[str] | None = None) -> WeeklyReport:
    """Every KPI of [start, end) from a frame made by incidents_frame."""
    if end <= start:
        raise ValueError(f"the period is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    now = now or datetime.now(UTC)
    if automated is None:
        from flows import FLOWS

        automated = set(FLOWS)
    t0, t1 = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    horizon = min(t1, pd.Timestamp(now).tz_convert("UTC"))
    if bot:
        frame = frame.loc[frame["bot"] == bot]

    # flapping over everything loaded (the previous incident may have fired before the period)
    ordered = frame.sort_values(["alert", "bot", "fired"], kind="stable")
    previous_resolved = ordered.groupby(["alert", "bot"], sort=False, observed=True)["resolved"].shift(1)
    gap = ordered["fired"] - previous_resolved
    flap = (gap >= pd.Timedelta(0)) & (gap <= pd.Timedelta(flap_window))
    frame = frame.assign(flap=flap.reindex(frame.index).fillna(False).astype(bool))

    in_period = (frame["fired"] >= t0) & (frame["fired"] < t1)
    p = frame.loc[in_period].copy()
    p["ttr"] = (p["response"] - p["fired"]).dt.total_seconds()
    p["ttres"] = (p["resolved"] - p["fired"]).dt.total_seconds()
    p["tta"] = (p["acknowledged"] - p["fired"]).dt.total_seconds()
    alerting = p["severity"] != "INFO"
    answered = p.loc[alerting]
    n_alerting = len(answered)
    false_positives = int((answered["outcome"] == "false-positive").sum())
    auto = int((answered["outcome"] == "auto-resolved").sum())

    by_severity: dict[str, dict[str, Any]] = {}
    sev_table = _stats(p, "severity") if len(p) else None
    for severity in SEVERITY_ORDER:
        present = sev_table is not None and severity in sev_table.index
        if not present and severity not in ("CRITICAL", "WARNING"):
            continue
        block = _row(sev_table.loc[severity]) if present else {
            "count": 0, "mttr_mean_seconds": None, "mttr_median_seconds": None, "mttr_p90_seconds": None,
            "responded": 0, "resolve_mean_seconds": None, "resolved": 0, "repeats": 0, "flaps": 0,
            "tta_median_seconds": None, "tta_p90_seconds": None, "acknowledged": 0}
        target = severity_target(severity)
        mean, tta = block.get("mttr_mean_seconds"), block.get("tta_median_seconds")
        block.update(target_seconds=target, met=None if target is None or mean is None else mean <= target,
                     tta_met=None if target is None or tta is None else tta <= target)
        by_severity[severity] = block

    by_alert: dict[str, dict[str, Any]] = {}
    if len(p):
        alert_table = _stats(p, "alert")
        severity_of = p.groupby("alert", observed=True)["severity"].first()
        for alert, values in alert_table.iterrows():
            block = _row(values)
            severity = str(severity_of[alert])
            target = alert_target(str(alert), severity)
            mean = block.get("mttr_mean_seconds")
            known = CATALOGUE.get(str(alert))
            block.update(severity=severity, title=known.title if known else str(alert), target_seconds=target,
                         met=None if target is None or mean is None else mean <= target,
                         automated=str(alert) in automated,
                         false_positive_rate=block["false_positives"] / block["count"] if severity != "INFO" else None)
            by_alert[str(alert)] = block

    # incidents per UTC day and severity, every day of the period shown
    days = pd.date_range(t0.floor("D"), (t1 - pd.Timedelta(1, "ns")).floor("D"), freq="D")
    per_day = (p.groupby([p["fired"].dt.floor("D"), "severity"], observed=True).size().unstack(fill_value=0)
               if len(p) else pd.DataFrame())
    columns = [s for s in SEVERITY_ORDER if s in per_day.columns] or ["CRITICAL", "WARNING"]
    per_day = per_day.reindex(index=days, columns=columns, fill_value=0).fillna(0).astype(np.int64)

    # downtime: union of crash / system-failure intervals clipped to the period
    down = frame.loc[frame["alert"].isin(DOWNTIME_ALERTS)]
    down_start = down["fired"].clip(lower=t0)
    down_end = down["resolved"].fillna(horizon).clip(upper=t1)
    downtime = _union_seconds(down_start.to_numpy(dtype="datetime64[ns]").astype(np.int64),
                              down_end.to_numpy(dtype="datetime64[ns]").astype(np.int64))
    period = (t1 - t0).total_seconds()
    uptime = 1.0 - downtime / period
    fired_down = p.loc[p["alert"].isin(DOWNTIME_ALERTS)]
    mtbf = (period - downtime) / len(fired_down) if len(fired_down) else None
    recovered = fired_down["ttres"].dropna()
    unresolved = fired_down.loc[fired_down["resolved"].isna()]
    overdue = int(((horizon - unresolved["fired"]).dt.total_seconds() > RTO_SECONDS).sum())
    worst = float(recovered.max()) if len(recovered) else None
    median = float(recovered.median()) if len(recovered) else None
    if not len(fired_down):
        rto_met = None
    elif overdue:
        rto_met = False
    else:
        rto_met = None if worst is None else worst <= RTO_SECONDS

    # the noisiest alerts and the slowest responses
    noisiest = sorted(by_alert.items(), key=lambda item: (-(item[1]["count"] + item[1]["repeats"]), item[0]))[:TOP_N]
    slow = p.loc[p["ttr"].notna()].nlargest(TOP_N, "ttr")
    slowest = [{"id": None if pd.isna(r.id) else (int(r.id) if isinstance(r.id, (int, np.integer)) else r.id),
                "alert": r.alert, "bot": r.bot, "severity": r.severity, "fired_at": _iso(r.fired),
                "response_seconds": float(r.ttr), "target_seconds": alert_target(r.alert, r.severity)}
               for r in slow.itertuples(index=False)]

    report = WeeklyReport(
        start=t0.to_pydatetime(), end=t1.to_pydatetime(), generated_at=now, source=source, bot=bot,
        incidents=len(p), by_severity=by_severity, by_alert=by_alert, per_day=per_day,
        false_positives=false_positives,
        false_positive_rate=false_positives / n_alerting if n_alerting else None,
        auto_resolution_rate=auto / n_alerting if n_alerting else None,
        downtime_seconds=downtime, uptime=uptime, mtbf_seconds=mtbf, downtime_incidents=len(fired_down),
        recovery_time_worst_seconds=worst, recovery_time_median_seconds=median, recovery_unresolved=len(unresolved),
        rto_met=rto_met, repeats=int(p["repeats"].sum()), flapping=int(p["flap"].sum()),
        noisiest=[{"alert": alert, "count": b["count"], "repeats": b["repeats"], "flaps": b["flaps"],
                   "false_positives": b["false_positives"]} for alert, b in noisiest],
        slowest=slowest, warnings=list(warnings or []),
    )
    report.recommendations = recommend(report, flap_window)
    return report


# ----------------------------------------------------------------------------------------------------------
# recommendations


def recommend(report: WeeklyReport, flap_window: timedelta = timedelta(hours=1)) -> list[str]:
    """Tune a threshold, add automation, fix a root cause: what the figures point at, worst first, one line
    per kind of action (naming the worst alerts first)."""
    if report.incidents == 0:
        return ["No incidents in the period: run an incident-response drill (RUNBOOK: Training) to check that "
                "alerts still fire and flows still answer end to end."]
    out: list[str] = []
    if report.rto_met is False:
        out.append(f"Recovery missed the 10 min RTO (worst {fmt_duration(report.recovery_time_worst_seconds)}, "
                   f"{report.recovery_unresolved} still unresolved): review the crash-recovery reports of the "
                   "period and what slowed the restart.")
    if report.uptime <= UPTIME_TARGET:
        out.append(f"Uptime {fmt_rate(report.uptime, 3)} is below the 99.9 % target "
                   f"({fmt_duration(report.downtime_seconds)} down): fix the root cause of the outages.")
    if report.downtime_incidents >= 2:
        out.append(f"{report.downtime_incidents} crashes / system failures in the period (MTBF "
                   f"{fmt_duration(report.mtbf_seconds)}): find and fix the root cause rather than restarting.")
    answered = {alert: b for alert, b in report.by_alert.items() if b["severity"] != "INFO"}

    def worst(items: list[tuple[float, str]], limit: int = TOP_N) -> str:
        ranked = [text for _, text in sorted(items, key=lambda item: -item[0])]
        more = f" and {len(ranked) - limit} more" if len(ranked) > limit else ""
        return ", ".join(ranked[:limit]) + more

    slow_manual = [(b["mttr_mean_seconds"] / b["target_seconds"], f"{alert} ({fmt_duration(b['mttr_mean_seconds'])} "
                    f"against {fmt_duration(b['target_seconds'])})")
                   for alert, b in answered.items() if b["met"] is False and not b["automated"]]
    unanswered = [(b["no_automation"], f"{alert} ({b['no_automation']} incident(s) with no automated response)")
                  for alert, b in answered.items() if b["no_automation"] and not b["automated"] and b["met"] is not False]
    if slow_manual or unanswered:
        out.append("Add automation for " + worst(slow_manual + unanswered) + ".")
    slow_auto = [(b["mttr_mean_seconds"] / b["target_seconds"], f"{alert} ({fmt_duration(b['mttr_mean_seconds'])} "
                  f"against {fmt_duration(b['target_seconds'])})")
                 for alert, b in answered.items() if b["met"] is False and b["automated"]]
    if slow_auto:
        out.append("Automated yet slower than their target: " + worst(slow_auto) + ": check the trigger path "
                   "(runbook serve running, runner polling, flow start-up).")
    noisy = [(b["false_positives"] / b["count"], f"{alert} ({b['false_positives']} of {b['count']})")
             for alert, b in answered.items()
             if b["false_positives"] >= 2 and b["false_positives"] / b["count"] >= FP_ALERT_SHARE]
    if noisy:
        out.append("Tune the thresholds of the alerts that end as false positives: " + worst(noisy) + ".")
    elif report.false_positive_rate is not None and report.false_positive_rate >= FALSE_POSITIVE_TARGET:
        out.append(f"False-positive rate {fmt_rate(report.false_positive_rate)} is above the 5 % target: review "
                   "the thresholds of the alerts that ended as false positives.")
    tired = [(b["flaps"] * 10 + b["repeats"], f"{alert} ({b['flaps']} re-fired within "
              f"{fmt_duration(flap_window.total_seconds())} of resolving, {b['repeats']} repeats while open)")
             for alert, b in report.by_alert.items() if b["flaps"] >= FLAP_RECOMMEND or b["repeats"] >= REPEAT_RECOMMEND]
    if tired:
        out.append("Alert fatigue: " + worst(tired) + ": add hysteresis or a longer duration to their conditions.")
    failed = sum(b["escalated"] + b["failed"] for b in report.by_alert.values())
    if failed:
        out.append(f"{failed} incident(s) ended escalated or failed: read their reports and add the failure "
                   "scenarios to the runbook (Update Runbook).")
    if not out:
        out.append("Every KPI is within its target: no change needed this week.")
    return out


# ----------------------------------------------------------------------------------------------------------
# `runbook report weekly` and the flow share these


def period_bounds(end: datetime | None, period: timedelta, now: datetime | None = None) -> tuple[datetime, datetime]:
    end = (end or now or datetime.now(UTC)).astimezone(UTC)
    return end - period, end


def parse_end(text: str | None) -> datetime | None:
    """`--end`: a date (its 00:00 UTC, so `--end 2026-11-23` covers up to the end of the 22nd) or a time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--end takes YYYY-MM-DD or an ISO 8601 time, not {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def report_file_name(report: WeeklyReport) -> str:
    suffix = f"-{report.bot}" if report.bot else ""
    return f"weekly-alert-analysis{suffix}-{report.end:%Y-%m-%dT%H%M}.pdf"


def write_weekly(report: WeeklyReport, folder: Path) -> Path:
    from reports.pdf import render_weekly

    folder.mkdir(parents=True, exist_ok=True)
    path = render_weekly(report, folder / report_file_name(report))
    report.pdf_path = str(path)
    return path


def text_summary(report: WeeklyReport) -> str:
    rows = report.headline()
    width = max(len(label) for label, _ in rows)
    lines = [report.title, ""] + [f"  {label:<{width}}  {value}" for label, value in rows]
    if report.by_alert:
        lines += ["", "By alert"]
        for alert, b in report.by_alert.items():
            lines.append(f"  {alert:<24} {b['severity']:<9} {b['count']:>6}  MTTR {fmt_duration(b['mttr_mean_seconds'])}"
                         f" (target {fmt_duration(b['target_seconds'])})")
    lines += ["", "Recommendations:"] + [f"  - {line}" for line in report.recommendations]
    lines += [f"warning: {w}" for w in report.warnings]
    if report.pdf_path:
        lines += ["", f"PDF: {report.pdf_path}"]
    return "\n".join(lines)


def weekly_command(*, journal_url: str | None, from_file: str | None, period: timedelta, end: datetime | None,
                   out: Path, bot: str | None = None, flap_window: timedelta = timedelta(hours=1),
                   as_json: bool = False, now: datetime | None = None) -> tuple[int, str]:
    """`runbook report weekly` without the CLI plumbing: (exit code, output); bad input is (2, 'error: ...')."""
    start, end_at = period_bounds(end, period, now)
    try:
        if from_file:
            frame, warnings = incidents_frame(read_incident_file(from_file), strict=True)
            source = f"file {from_file}"
        else:
            from runbook.journal import Journal

            assert journal_url is not None
            frame, warnings = incidents_frame(Journal(journal_url).kpi_columns(start, end_at, bot), strict=False,
                                              where="journal incident")
            source = "journal"
        report = analyze(frame, start, end_at, now=now, flap_window=flap_window, source=source, bot=bot,
                         warnings=warnings)
    except (IncidentsError, ValueError) as error:
        return 2, f"error: {error}"
    write_weekly(report, out)
    if as_json:
        return 0, json.dumps(report.to_dict(), indent=2, allow_nan=False, default=str)
    return 0, text_summary(report)
