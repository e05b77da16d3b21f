"""The reports as PDFs a person is glad to open: reportlab (platypus for the page, reportlab.graphics for the
charts). Two documents: the daily trading summary and the weekly alert-pattern analysis.

Each starts with a title, a summary block of the headline figures and the recommendations, then the
charts, the tables, and the definitions of every figure it prints. Charts are drawn from bounded data
(an equity curve is thinned to at most MAX_POINTS points, more than MAX_BARS trades become a histogram),
so a day of a million fills renders as fast as a day of a hundred. Text uses Bitstream Vera, which
ships with reportlab, so "∞", "≤" and "—" print everywhere.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import reportlab
from reportlab.graphics.charts.barcharts import HorizontalBarChart, VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Line, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    CondPageBreak, KeepTogether, ListFlowable, ListItem, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle,
)

from reports.daily import DEFINITIONS as DAILY_DEFINITIONS
from reports.daily import DailyReport, fmt_pct, fmt_ratio, fmt_usd
from reports.weekly import KPI_DEFINITIONS, SEVERITY_ORDER, WeeklyReport, fmt_duration, fmt_rate

MAX_POINTS = 1500
MAX_BARS = 150
HIST_BINS = 40
PAGE_WIDTH = A4[0] - 30 * mm
INK = colors.HexColor("#1f2933")
MUTED = colors.HexColor("#616e7c")
RULE = colors.HexColor("#d9dee3")
CARD = colors.HexColor("#f3f5f7")
ACCENT = colors.HexColor("#2563eb")
GAIN = colors.HexColor("#16a34a")
LOSS = colors.HexColor("#dc2626")
SEVERITY_COLORS = {"EMERGENCY": colors.HexColor("#7f1d1d"), "CRITICAL": colors.HexColor("#dc2626"),
                   "WARNING": colors.HexColor("#f59e0b"), "INFO": colors.HexColor("#3b82f6")}

_FONTS = {"regular": "Helvetica", "bold": "Helvetica-Bold"}


def _fonts() -> dict[str, str]:
    """Register Vera (bundled with reportlab) once; Helvetica if it cannot be found."""
    if _FONTS["regular"] == "Helvetica":
        folder = Path(os.path.dirname(reportlab.__file__)) / "fonts"
        try:
            pdfmetrics.registerFont(TTFont("Vera", str(folder / "Vera.ttf")))
            pdfmetrics.registerFont(TTFont("Vera-Bold", str(folder / "VeraBd.ttf")))
            _FONTS.update(regular="Vera", bold="Vera-Bold")
        except Exception:  # noqa: BLE001 - a font problem must not stop a report: fall back to a core font
            pass
    return _FONTS


def _styles() -> dict[str, ParagraphStyle]:
    f = _fonts()
    return {
        "title": ParagraphStyle("title", fontName=f["bold"], fontSize=17, leading=21, textColor=INK),
        "subtitle": ParagraphStyle("subtitle", fontName=f["regular"], fontSize=8.5, leading=11, textColor=MUTED),
        "h2": ParagraphStyle("h2", fontName=f["bold"], fontSize=11.5, leading=15, textColor=INK, spaceBefore=9,
                             spaceAfter=4),
        "body": ParagraphStyle("body", fontName=f["regular"], fontSize=8.5, leading=11, textColor=INK),
        "small": ParagraphStyle("small", fontName=f["regular"], fontSize=7.5, leading=9.5, textColor=MUTED),
        "label": ParagraphStyle("label", fontName=f["regular"], fontSize=7.5, leading=9, textColor=MUTED),
        "value": ParagraphStyle("value", fontName=f["bold"], fontSize=12, leading=15, textColor=INK),
        "cell": ParagraphStyle("cell", fontName=f["regular"], fontSize=7.8, leading=9.5, textColor=INK,
                               alignment=TA_LEFT),
    }


# ----------------------------------------------------------------------------------------------------------
# building blocks


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(str(text)), style)


def summary_block(items: list[tuple[str, str]], columns: int = 4) -> Table:
    """The headline figures as cards: a grey label above each value."""
    s = _styles()
    cells = [[_p(label, s["label"]), _p(value, s["value"])] for label, value in items]
    while len(cells) % columns:
        cells.append(["", ""])
    rows = [[Table([[c[0]], [c[1]]], colWidths=[PAGE_WIDTH / columns - 4 * mm],
                   style=[("LEFTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 0)])
             if c[0] != "" else "" for c in cells[i:i + columns]] for i in range(0, len(cells), columns)]
    table = Table(rows, colWidths=[PAGE_WIDTH / columns] * columns)
    table.setStyle(TableStyle([
        ("BACKGROUND", (0, 0), (-1, -1), CARD), ("BOX", (0, 0), (-1, -1), 0.5, RULE),
        ("INNERGRID", (0, 0), (-1, -1), 2.5, colors.white), ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 5), ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
        ("LEFTPADDING", (0, 0), (-1, -1), 7),
    ]))
    return table


def data_table(headers: list[str], rows: list[list[Any]], widths: list[float] | None = None,
               font_size: float | None = None) -> Table:
    """A plain striped table; cells are escaped text."""
    s = _styles()
    f = _fonts()
    cell = s["cell"] if font_size is None else ParagraphStyle("small-cell", parent=s["cell"], fontSize=font_size,
                                                              leading=font_size * 1.22)
    body = [[_p(h, ParagraphStyle("head", parent=cell, fontName=f["bold"])) for h in headers]]
    body += [[_p(c, cell) for c in row] for row in rows] or [[_p("none", cell)] + [""] * (len(headers) - 1)]
    total = sum(widths) if widths else len(headers)
    col_widths = [PAGE_WIDTH * w / total for w in widths] if widths else [PAGE_WIDTH / len(headers)] * len(headers)
    table = Table(body, colWidths=col_widths, repeatRows=1)
    style = [
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, INK), ("LINEBELOW", (0, -1), (-1, -1), 0.5, RULE),
        ("VALIGN", (0, 0), (-1, -1), "TOP"), ("TOPPADDING", (0, 0), (-1, -1), 2.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5), ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    for i in range(2, len(body), 2):
        style.append(("BACKGROUND", (0, i), (-1, i), CARD))
    table.setStyle(TableStyle(style))
    return table


def bullets(lines: list[str]) -> ListFlowable:
    s = _styles()
    return ListFlowable([ListItem(_p(line, s["body"]), leftIndent=10) for line in lines], bulletType="bullet",
                        start="•", leftIndent=10, bulletFontName=_fonts()["regular"])


def definitions(items: tuple[tuple[str, str], ...]) -> list[Any]:
    s = _styles()
    f = _fonts()
    term = ParagraphStyle("term", parent=s["small"], fontName=f["bold"], textColor=INK)
    rows = [[_p(name, term), _p(text, s["small"])] for name, text in items]
    table = Table(rows, colWidths=[PAGE_WIDTH * 0.2, PAGE_WIDTH * 0.8])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    return [_p("Definitions", s["h2"]), table]


def _chart_title(drawing: Drawing, text: str) -> None:
    drawing.add(String(0, drawing.height - 11, text, fontName=_fonts()["bold"], fontSize=9.5, fillColor=INK))


def _empty(drawing: Drawing, text: str) -> Drawing:
    drawing.add(String(drawing.width / 2, drawing.height / 2 - 10, text, fontName=_fonts()["regular"], fontSize=9,
                       fillColor=MUTED, textAnchor="middle"))
    return drawing


def _axis_fonts(chart: Any) -> None:
    f = _fonts()["regular"]
    for axis in (chart.xValueAxis if hasattr(chart, "xValueAxis") else chart.categoryAxis,
                 chart.yValueAxis if hasattr(chart, "yValueAxis") else chart.valueAxis):
        axis.labels.fontName = f
        axis.labels.fontSize = 7
        axis.labels.fillColor = MUTED
        axis.strokeColor = RULE


def _nice_step(span: float, ticks: int = 5) -> float:
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def thin(xs: np.ndarray, ys: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ~limit points that keep the shape: each bucket's first, lowest, highest and last point."""
    n = len(xs)
    if n <= limit:
        return xs, ys
    buckets = max(1, limit // 4)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = set()
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        part = ys[lo:hi]
        keep.update((lo, hi - 1, lo + int(np.argmin(part)), lo + int(np.argmax(part))))
    index = np.array(sorted(keep))
    return xs[index], ys[index]


def line_chart(title: str, xs: np.ndarray, ys: np.ndarray, x_label: Any, x_range: tuple[float, float],
               height: float = 60 * mm, empty: str = "no data") -> Drawing:
    drawing = Drawing(PAGE_WIDTH, height)
    _chart_title(drawing, title)
    if len(xs) < 2:
        return _empty(drawing, empty)
    xs, ys = thin(xs, ys)
    chart = LinePlot()
    chart.x, chart.y, chart.width, chart.height = 42, 18, PAGE_WIDTH - 56, height - 38
    chart.data = [list(zip(xs.tolist(), ys.tolist()))]
    chart.lines[0].strokeColor = ACCENT
    chart.lines[0].strokeWidth = 1.3
    lo, hi = float(ys.min()), float(ys.max())
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.001, 1.0)
    chart.yValueAxis.valueMin, chart.yValueAxis.valueMax = lo - pad, hi + pad
    chart.yValueAxis.valueStep = _nice_step(hi - lo + 2 * pad)
    chart.yValueAxis.labelTextFormat = lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"
    chart.xValueAxis.valueMin, chart.xValueAxis.valueMax = x_range
    chart.xValueAxis.valueStep = _nice_step(x_range[1] - x_range[0], 6)
    chart.xValueAxis.labelTextFormat = x_label
    _axis_fonts(chart)
    chart.yValueAxis.visibleGrid = True
    chart.yValueAxis.gridStrokeColor = RULE
    drawing.add(chart)
    return drawing


def signed_bars(title: str, values: list[float], labels: list[str], height: float = 55 * mm,
                empty: str = "no data", horizontal: bool = False) -> Drawing:
    """Bars green above zero and red below."""
    drawing = Drawing(PAGE_WIDTH, height)
    _chart_title(drawing, title)
    if not values:
        return _empty(drawing, empty)
    chart = HorizontalBarChart() if horizontal else VerticalBarChart()
    if horizontal:
        chart.x, chart.y, chart.width, chart.height = 70, 14, PAGE_WIDTH - 90, height - 32
        chart.categoryAxis.joinAxisMode = "left"  # names at the left edge, not on the zero line
    else:
        chart.x, chart.y, chart.width, chart.height = 42, 20, PAGE_WIDTH - 56, height - 38
    chart.data = [values]
    chart.categoryAxis.categoryNames = labels
    chart.bars.strokeColor = None
    for i, value in enumerate(values):
        chart.bars[(0, i)].fillColor = GAIN if value >= 0 else LOSS
    lo, hi = min(0.0, min(values)), max(0.0, max(values))
    pad = (hi - lo) * 0.08 or 1.0
    chart.valueAxis.valueMin, chart.valueAxis.valueMax = lo - pad, hi + pad
    chart.valueAxis.valueStep = _nice_step(hi - lo + 2 * pad)
    chart.valueAxis.labelTextFormat = lambda v: f"{v:,.0f}" if abs(v) >= 100 or v == 0 else f"{v:,.2f}"
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = RULE
    _axis_fonts(chart)
    if len(labels) > 24 and not horizontal:  # too many to print: keep every n-th label
        step = math.ceil(len(labels) / 12)
        chart.categoryAxis.categoryNames = [name if i % step == 0 else "" for i, name in enumerate(labels)]
    chart.barSpacing = 0.5
    chart.groupSpacing = 1 if len(values) > 50 else 4
    drawing.add(chart)
    return drawing


def histogram(title: str, values: np.ndarray, height: float = 55 * mm) -> Drawing:
    counts, edges = np.histogram(values, bins=HIST_BINS)
    drawing = Drawing(PAGE_WIDTH, height)
    _chart_title(drawing, title)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 42, 20, PAGE_WIDTH - 56, height - 38
    chart.data = [counts.tolist()]
    mids = (edges[:-1] + edges[1:]) / 2
    step = math.ceil(len(mids) / 8)
    chart.categoryAxis.categoryNames = [f"{m:,.2f}" if i % step == 0 else "" for i, m in enumerate(mids)]
    chart.bars.strokeColor = None
    for i, mid in enumerate(mids):
        chart.bars[(0, i)].fillColor = GAIN if mid >= 0 else LOSS
    chart.valueAxis.valueMin = 0
    chart.valueAxis.valueStep = _nice_step(float(counts.max()) or 1.0)
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = RULE
    _axis_fonts(chart)
    drawing.add(chart)
    return drawing


def stacked_bars(title: str, series: dict[str, list[int]], labels: list[str], height: float = 60 * mm,
                 empty: str = "no incidents") -> Drawing:
    drawing = Drawing(PAGE_WIDTH, height)
    _chart_title(drawing, title)
    names = [name for name in series if any(series[name])]
    if not names:
        return _empty(drawing, empty)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 42, 20, PAGE_WIDTH - 150, height - 38
    chart.data = [series[name] for name in names]
    chart.categoryAxis.style = "stacked"
    step = math.ceil(len(labels) / 14)
    chart.categoryAxis.categoryNames = [name if i % step == 0 else "" for i, name in enumerate(labels)]
    chart.bars.strokeColor = None
    for i, name in enumerate(names):
        chart.bars[i].fillColor = SEVERITY_COLORS.get(name, MUTED)
    totals = np.sum(np.array(chart.data), axis=0)
    chart.valueAxis.valueMin = 0
    chart.valueAxis.valueMax = float(totals.max()) * 1.1 or 1
    chart.valueAxis.valueStep = _nice_step(float(totals.max()) or 1.0)
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = RULE
    _axis_fonts(chart)
    drawing.add(chart)
    drawing.add(_legend(PAGE_WIDTH - 95, height - 30, [(SEVERITY_COLORS.get(n, MUTED), n) for n in names]))
    return drawing


def _legend(x: float, y: float, pairs: list[tuple[Any, str]]) -> Legend:
    legend = Legend()
    legend.x, legend.y = x, y
    legend.columnMaximum = len(pairs)  # one column
    legend.colorNamePairs = pairs
    legend.fontName = _fonts()["regular"]
    legend.fontSize = 7.5
    legend.alignment = "right"
    legend.dx = legend.dy = 7
    legend.deltay = 11
    return legend


def target_bars(title: str, rows: list[tuple[str, float, float | None]], height: float | None = None) -> Drawing:
    """Horizontal bars of a value per category (minutes), each with its target as a dark tick."""
    height = height or max(45 * mm, (len(rows) * 15 + 45))
    drawing = Drawing(PAGE_WIDTH, height)
    _chart_title(drawing, title)
    if not rows:
        return _empty(drawing, "no responses in the period")
    chart = HorizontalBarChart()
    chart.x, chart.y, chart.width, chart.height = 120, 22, PAGE_WIDTH - 210, height - 42
    values = [value for _, value, _ in rows]
    chart.data = [values]
    chart.categoryAxis.categoryNames = [name for name, _, _ in rows]
    chart.bars.strokeColor = None
    top = max(values + [t for _, _, t in rows if t is not None]) * 1.1 or 1.0
    for i, (_, value, target) in enumerate(rows):
        chart.bars[(0, i)].fillColor = LOSS if target is not None and value > target else GAIN
    chart.valueAxis.valueMin, chart.valueAxis.valueMax = 0, top
    chart.valueAxis.valueStep = _nice_step(top)
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = RULE
    _axis_fonts(chart)
    drawing.add(chart)
    band = chart.height / len(rows)
    for i, (_, _, target) in enumerate(rows):  # the target as a tick across the bar's band
        if target is None:
            continue
        x = chart.x + chart.width * target / top
        y0 = chart.y + band * i
        drawing.add(Line(x, y0 + band * 0.1, x, y0 + band * 0.9, strokeColor=INK, strokeWidth=1.6))
    drawing.add(_legend(PAGE_WIDTH - 78, height - 6, [(GAIN, "within target"), (LOSS, "over target"),
                                                       (INK, "target")]))
    return drawing


def _doc(path: Path, title: str) -> SimpleDocTemplate:
    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(_fonts()["regular"], 7)
        canvas.setFillColor(MUTED)
        canvas.drawString(15 * mm, 9 * mm, title)
        canvas.drawRightString(A4[0] - 15 * mm, 9 * mm, f"page {doc.page}")
        canvas.restoreState()

    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=14 * mm,
                            bottomMargin=16 * mm, title=title, author="runbook", subject=title)
    doc._footer = footer  # type: ignore[attr-defined]
    return doc


def _build(doc: SimpleDocTemplate, story: list[Any]) -> None:
    doc.build(story, onFirstPage=doc._footer, onLaterPages=doc._footer)  # type: ignore[attr-defined]


def _atomic(path: Path, render: Any) -> Path:
    """Render to a temporary file beside `path`, then rename: a reader never sees half a PDF."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        render(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------------
# daily


def _clock(start: datetime, tz: str) -> Any:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)

    def label(hours: float) -> str:
        return (start + timedelta(hours=hours)).astimezone(zone).strftime("%H:%M")
    return label


def _multiple(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value >= 0.1 else f"{value * 100:.2f} % of"


def render_daily(report: DailyReport, path: Path) -> Path:
    return _atomic(path, lambda tmp: _render_daily(report, tmp))


def _render_daily(report: DailyReport, path: Path) -> None:
    s = _styles()
    m = report.metrics
    doc = _doc(path, report.title)
    partial = (f" · partial day: data until {report.data_until:%H:%M} UTC" if report.partial else "")
    story: list[Any] = [
        _p(report.title, s["title"]),
        _p(f"Calendar day in {report.tz} · {report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC · "
           f"start balance {fmt_usd(report.start_balance)} USD · source: {report.source or 'exchange'} · generated "
           f"{report.generated_at:%Y-%m-%d %H:%M} UTC{partial}", s["subtitle"]),
        Spacer(1, 5 * mm),
        summary_block(report.headline()),
        _p("Recommendations", s["h2"]), bullets(report.recommendations),
    ]

    # charts: equity, P&L per trade, P&L per coin
    curve = report.equity_curve()
    hours = np.array([(at - report.start).total_seconds() / 3600 for at, _ in curve])
    equity = np.array([value for _, value in curve])
    span = max((report.end - report.start).total_seconds() / 3600, 1.0)
    story += [Spacer(1, 3 * mm), line_chart(f"Equity (start balance + closed-trade P&L, USD) — {report.tz}",
                                              hours, equity, _clock(report.start, report.tz), (0.0, span),
                                              empty="no closed trades: equity unchanged")]
    pnl = report.trades["pnl"].to_numpy(dtype=np.float64) if len(report.trades) else np.zeros(0)
    if len(pnl) > MAX_BARS:
        story.append(histogram(f"P&L per trade — distribution of {len(pnl):,} trades (USD, bins)", pnl))
    else:
        labels = [str(i + 1) for i in range(len(pnl))]
        story.append(signed_bars("P&L per trade, in close order (USD)", pnl.tolist(), labels,
                                 empty="no closed trades"))
    coins = sorted(m.by_coin.items(), key=lambda item: item[1].total_pnl)
    story.append(signed_bars("Net P&L per coin (USD)", [float(c.total_pnl) for _, c in coins],
                             [coin for coin, _ in coins], height=max(40 * mm, 18 * len(coins) + 40),
                             empty="no fills", horizontal=True))

    # comparisons
    windows = [report.today, report.previous, *report.trailing.values()]
    story += [CondPageBreak(60 * mm), _p("Compared with the previous day and the trailing days", s["h2"]),
              data_table(["", *[f"{w.label} ({w.first_day:%m-%d}" + (f" to {w.last_day:%m-%d})" if w.days > 1
                                                                     else ")") for w in windows]],
                         [["Trades", *[f"{w.metrics.trades:,}" for w in windows]],
                          ["Trades per day", *[f"{w.trades_per_day:,.1f}" for w in windows]],
                          ["Win rate", *[fmt_pct(w.metrics.win_rate) for w in windows]],
                          ["Profit factor", *[fmt_ratio(w.metrics.profit_factor) for w in windows]],
                          ["Net P&L (USD)", *[fmt_usd(w.metrics.total_pnl, sign=True) for w in windows]],
                          ["Net P&L per day (USD)", *[fmt_usd(w.pnl_per_day, sign=True) for w in windows]],
                          ["Fees (USD)", *[fmt_usd(w.metrics.fees) for w in windows]],
                          ["Best trade (USD)", *[fmt_usd(w.metrics.best_trade, sign=True) for w in windows]],
                          ["Worst trade (USD)", *[fmt_usd(w.metrics.worst_trade, sign=True) for w in windows]],
                          ["Max drawdown", *[fmt_pct(w.metrics.max_drawdown_pct) for w in windows]]],
                         widths=[1.5, 1, 1, 1, 1])]

    # risk
    e = report.exposure
    risk = report.risk.metrics
    story += [_p("Risk", s["h2"]), data_table(["Metric", "Value"], [
        ["Max drawdown (day)", f"{fmt_usd(m.max_drawdown)} USD ({fmt_pct(m.max_drawdown_pct)} of the peak)"],
        [f"Max drawdown ({report.risk.label})", f"{fmt_usd(risk.max_drawdown)} USD ({fmt_pct(risk.max_drawdown_pct)})"],
        ["Sharpe (30 daily returns, ann. √365)", fmt_ratio(risk.sharpe)],
        ["Sortino (30 daily returns, ann. √365)", fmt_ratio(risk.sortino)],
        ["Time in market", fmt_pct(e.time_in_market, 1) + (f" — {e.note}" if e.note else "")],
        ["Peak gross exposure", "n/a" if e.peak_gross_usd is None else
         f"{fmt_usd(e.peak_gross_usd)} USD ({_multiple(e.peak_leverage)} the start balance)"
         + (f" at {e.peak_gross_at:%H:%M} UTC" if e.peak_gross_at else "")],
        ["Largest position", "n/a" if e.largest_usd is None else
         f"{e.largest_coin} {fmt_usd(e.largest_usd)} USD" + (f" at {e.largest_at:%H:%M} UTC" if e.largest_at else "")],
        ["Longest streaks", f"{m.longest_winning_streak} wins, {m.longest_losing_streak} losses"],
        ["Average win / loss (USD)", f"{fmt_usd(m.avg_win)} / {fmt_usd(m.avg_loss)}"],
        ["Expectancy per trade (USD)", fmt_usd(m.expectancy, sign=True)],
    ], widths=[1.3, 2])]

    # best and worst trades
    best, worst = report.best_and_worst()
    trade_rows = [[t["coin"], t["position"] or "", (t["closed_at"] or "")[11:19], fmt_usd(t["pnl"], sign=True),
                   fmt_duration(t["holding_seconds"])] for t in best] + \
                 [[t["coin"], t["position"] or "", (t["closed_at"] or "")[11:19], fmt_usd(t["pnl"], sign=True),
                   fmt_duration(t["holding_seconds"])] for t in worst]
    story += [KeepTogether([_p("Best and worst trades", s["h2"]),
                            data_table(["Coin", "Position closed", "Closed (UTC)", "P&L (USD)", "Held"], trade_rows,
                                       widths=[1, 1.2, 1, 1, 1])])]

    # per coin
    story += [KeepTogether([_p("By coin", s["h2"]), data_table(
        ["Coin", "Trades", "Win rate", "Profit factor", "Net P&L (USD)", "Fees (USD)", "Funding (USD)"],
        [[coin, f"{c.trades:,}", fmt_pct(c.win_rate), fmt_ratio(c.profit_factor), fmt_usd(c.total_pnl, sign=True),
          fmt_usd(c.fees), fmt_usd(c.funding, sign=True) if c.funding is not None else "n/a"]
         for coin, c in sorted(m.by_coin.items())])])]
    story += [Spacer(1, 3 * mm), _p(f"Fills used: {m.fills:,}" + (f" ({m.duplicates_dropped:,} duplicates dropped)"
                                                                    if m.duplicates_dropped else "")
                                    + f" · closed trades: {m.trades:,} (wins {m.wins:,}, losses {m.losses:,}, "
                                    f"break-even {m.breakevens:,})", s["small"])]
    story += definitions(DAILY_DEFINITIONS)
    _build(doc, story)


# ----------------------------------------------------------------------------------------------------------
# weekly


def render_weekly(report: WeeklyReport, path: Path) -> Path:
    return _atomic(path, lambda tmp: _render_weekly(report, tmp))


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def _render_weekly(report: WeeklyReport, path: Path) -> None:
    s = _styles()
    doc = _doc(path, report.title)
    scope = f"bot {report.bot}" if report.bot else "all bots"
    story: list[Any] = [
        _p(report.title, s["title"]),
        _p(f"Source: {report.source} · {scope} · generated {report.generated_at:%Y-%m-%d %H:%M} UTC", s["subtitle"]),
        Spacer(1, 5 * mm), summary_block(report.headline(), columns=3),
        _p("Recommendations", s["h2"]), bullets(report.recommendations),
    ]
    for warning in report.warnings:
        story.append(_p(f"Data warning: {warning}", s["small"]))

    days = [day.strftime("%m-%d") for day in report.per_day.index]
    series = {severity: report.per_day[severity].astype(int).tolist() for severity in SEVERITY_ORDER
              if severity in report.per_day.columns}
    story += [Spacer(1, 3 * mm), stacked_bars("Alerts per day by severity (UTC days)", series, days)]
    mttr_rows = [(alert, b["mttr_mean_seconds"] / 60, None if b["target_seconds"] is None else b["target_seconds"] / 60)
                 for alert, b in sorted(report.by_alert.items()) if b["mttr_mean_seconds"] is not None]
    story.append(target_bars("Mean time to response per alert against its target (minutes)", mttr_rows))

    story += [CondPageBreak(50 * mm), _p("By severity", s["h2"]), data_table(
        ["Severity", "Incidents", "MTTR mean", "median", "p90", "Target", "Met", "Ack median", "Ack p90", "Ack met",
         "Resolve mean"],
        [[sev, f"{b['count']:,}", fmt_duration(b["mttr_mean_seconds"]), fmt_duration(b["mttr_median_seconds"]),
          fmt_duration(b["mttr_p90_seconds"]), fmt_duration(b["target_seconds"]), _met(b["met"]),
          fmt_duration(b.get("tta_median_seconds")), fmt_duration(b.get("tta_p90_seconds")), _met(b.get("tta_met")),
          fmt_duration(b["resolve_mean_seconds"])] for sev, b in report.by_severity.items()],
        widths=[1.3, 0.9, 1, 0.9, 0.9, 0.9, 0.6, 1, 0.9, 0.7, 1.1], font_size=7)]
    story += [_p("By alert", s["h2"]), data_table(
        ["Alert", "Severity", "Count", "MTTR mean", "p90", "Target", "Met", "False pos.", "Auto", "Repeats",
         "Flaps"],
        [[alert, b["severity"], f"{b['count']:,}", fmt_duration(b["mttr_mean_seconds"]),
          fmt_duration(b["mttr_p90_seconds"]), fmt_duration(b["target_seconds"]), _met(b["met"]),
          f"{b['false_positives']:,}", f"{b['auto_resolved']:,}", f"{b['repeats']:,}", f"{b['flaps']:,}"]
         for alert, b in sorted(report.by_alert.items(), key=lambda item: -item[1]["count"])],
        widths=[2.3, 1.35, 0.75, 1.2, 1.2, 0.9, 0.55, 0.9, 0.75, 0.9, 0.7], font_size=7)]
    story += [_p("Reliability", s["h2"]), data_table(["KPI", "Value", "Target", "Met"], [
        ["Uptime", fmt_rate(report.uptime, 3), "> 99.9 %", _met(report.uptime > 0.999)],
        ["Downtime", fmt_duration(report.downtime_seconds), "", ""],
        ["MTBF", fmt_duration(report.mtbf_seconds), "track and improve", ""],
        ["Crashes / system failures fired", f"{report.downtime_incidents:,}", "", ""],
        ["Recovery time, worst", fmt_duration(report.recovery_time_worst_seconds), "≤ 10 min (RTO)",
         _met(report.rto_met)],
        ["Recovery time, median", fmt_duration(report.recovery_time_median_seconds), "", ""],
        ["Still unresolved", f"{report.recovery_unresolved:,}", "", ""],
        ["False-positive rate", fmt_rate(report.false_positive_rate), "< 5 %",
         _met(None if report.false_positive_rate is None else report.false_positive_rate < 0.05)],
        ["Auto-resolution rate", fmt_rate(report.auto_resolution_rate), "", ""],
    ], widths=[2, 1.2, 1.2, 0.6])]
    story += [KeepTogether([_p("Noisiest alerts", s["h2"]), data_table(
        ["Alert", "Incidents", "Repeats while open", "Re-fired after resolving (flapping)", "False positives"],
        [[n["alert"], f"{n['count']:,}", f"{n['repeats']:,}", f"{n['flaps']:,}", f"{n['false_positives']:,}"]
         for n in report.noisiest], widths=[2, 1, 1.2, 1.8, 1.1])])]
    story += [KeepTogether([_p("Slowest responses", s["h2"]), data_table(
        ["Incident", "Alert", "Bot", "Fired (UTC)", "Time to response", "Target"],
        [[f"#{r['id']}" if r["id"] is not None else "-", r["alert"], r["bot"], (r["fired_at"] or "")[:16].replace("T", " "),
          fmt_duration(r["response_seconds"]), fmt_duration(r["target_seconds"])] for r in report.slowest],
        widths=[0.8, 1.8, 1, 1.5, 1.2, 0.9])])]
    story += definitions(KPI_DEFINITIONS)
    _build(doc, story)
