"""Geometry of the server-side SVG histogram (the template only draws what is computed here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from service.stats import Histogram

MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 22, 34
X_TICKS = 6


@dataclass
class Bar:
    """One histogram bar in SVG coordinates, with the data it stands for."""

    x: float
    y: float
    w: float
    h: float
    count: int
    lo: float
    hi: float


@dataclass
class Chart:
    """Everything the histogram template draws."""

    width: int
    height: int
    lo: float
    hi: float
    log: bool
    bars: list[Bar] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    threshold: float | None = None
    threshold_x: float | None = None
    threshold_clamped: str | None = None
    axis_title: str = "score"

    @property
    def plot_left(self) -> float:
        """Left edge of the plotting area."""
        return MARGIN_LEFT

    @property
    def plot_right(self) -> float:
        """Right edge of the plotting area."""
        return self.width - MARGIN_RIGHT

    @property
    def plot_top(self) -> float:
        """Top of the plotting area."""
        return MARGIN_TOP

    @property
    def plot_bottom(self) -> float:
        """Baseline of the bars."""
        return self.height - MARGIN_BOTTOM

    @property
    def threshold_label_anchor(self) -> str:
        """Keep the threshold label inside the chart near either edge."""
        if self.threshold_x is None:
            return "middle"
        if self.threshold_x > self.plot_right - 90:
            return "end"
        if self.threshold_x < self.plot_left + 90:
            return "start"
        return "middle"


def fmt_number(v: float) -> str:
    """Compact number for axis labels."""
    if v == 0:
        return "0"
    return f"{v:.3g}"


def _linear_y_ticks(top: int) -> list[int]:
    if top <= 0:
        return [0]
    step = 10 ** math.floor(math.log10(top))
    for mult in (1, 2, 5, 10):
        if top / (step * mult) <= 5:
            step *= mult
            break
    return list(range(0, top + 1, int(step)))


def histogram_chart(hist: Histogram, threshold: float | None, log: bool = False, width: int = 760, height: int = 280) -> Chart:
    """Lay out bars, axes and the threshold line for ``hist`` (log scale uses log10(1 + count)).

    ``threshold`` is on the histogram's axis (a log-odds histogram takes the threshold's log-odds).
    """
    chart = Chart(width=width, height=height, lo=hist.lo, hi=hist.hi, log=log,
                  axis_title="score log-odds" if hist.axis == "logit" else "score")
    left, right, top, bottom = chart.plot_left, chart.plot_right, chart.plot_top, chart.plot_bottom
    span = hist.hi - hist.lo

    def x_of(v: float) -> float:
        return left + (right - left) * (v - hist.lo) / span

    values = hist.log_counts() if log else [float(c) for c in hist.counts]
    vmax = max(values) if values and max(values) > 0 else 1.0
    if log:
        y_top = max(vmax, 1.0)
        marks = [0] + [10**k for k in range(0, int(math.floor(vmax)) + 1) if math.log10(1 + 10**k) <= y_top]
        chart.y_ticks = [(bottom - (bottom - top) * math.log10(1 + c) / y_top, f"{c:,}") for c in marks]
    else:
        ticks = _linear_y_ticks(int(max(hist.counts) if hist.counts else 0))
        y_top = max(float(ticks[-1]), vmax, 1.0)
        chart.y_ticks = [(bottom - (bottom - top) * t / y_top, f"{t:,}") for t in ticks]
    for i, (count, value) in enumerate(zip(hist.counts, values)):
        x0, x1 = x_of(hist.edges[i]), x_of(hist.edges[i + 1])
        h = (bottom - top) * value / y_top
        chart.bars.append(
            Bar(x=round(x0, 2), y=round(bottom - h, 2), w=round(max(x1 - x0 - 1, 0.5), 2), h=round(h, 2),
                count=int(count), lo=hist.edges[i], hi=hist.edges[i + 1])
        )
    chart.x_ticks = [(round(x_of(hist.lo + span * k / (X_TICKS - 1)), 2), fmt_number(hist.lo + span * k / (X_TICKS - 1))) for k in range(X_TICKS)]
    if threshold is not None:
        chart.threshold = threshold
        if threshold < hist.lo:
            chart.threshold_x, chart.threshold_clamped = left, "below"
        elif threshold > hist.hi:
            chart.threshold_x, chart.threshold_clamped = right, "above"
        else:
            chart.threshold_x = round(x_of(threshold), 2)
    return chart


# --------------------------------------------------------------------------- time series (overview trend)

TREND_TICKS = 6
TIME_FORMATS = {"minute": "%H:%M", "hour": "%m-%d %H:00", "day": "%Y-%m-%d"}


@dataclass
class TrendBar:
    """One bucket's volume: scored, failed and the rest (queued) stacked, with its tooltip."""

    x: float
    w: float
    y_scored: float
    h_scored: float
    y_failed: float
    h_failed: float
    y_other: float
    h_other: float
    title: str


@dataclass
class TrendLine:
    """A polyline (one run of buckets with a value) of one measure."""

    name: str
    points: str


@dataclass
class TrendMark:
    """A vertical marker: a threshold change or a model version first seen."""

    x: float
    kind: str
    label: str
    at: str


@dataclass
class TrendChart:
    """Everything the trend templates draw: geometry in SVG units plus axis labels."""

    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    bars: list[TrendBar] = field(default_factory=list)
    lines: list[TrendLine] = field(default_factory=list)
    marks: list[TrendMark] = field(default_factory=list)
    x_ticks: list[tuple[float, str, str]] = field(default_factory=list)  # (x, label, text-anchor)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_title: str = ""


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def bucket_title(p, bucket: str) -> str:
    """A bucket's tooltip: its start and every measure."""
    start = p.start.strftime(TIME_FORMATS[bucket] if bucket != "hour" else "%Y-%m-%d %H:00")
    return (
        f"{start} UTC: {p.submitted:,} submitted, {p.scored:,} scored, {p.flagged:,} flagged "
        f"({_pct(p.flag_rate)}), {p.failed:,} failed; score p50 {_num(p.p50)}, p95 {_num(p.p95)}; "
        f"lag mean {_num(p.lag_avg_s, '.2f')} s, max {_num(p.lag_max_s, '.2f')} s"
    )


def _frame(width: int, height: int) -> TrendChart:
    return TrendChart(width=width, height=height, left=MARGIN_LEFT, right=width - MARGIN_RIGHT, top=MARGIN_TOP,
                      bottom=height - MARGIN_BOTTOM)  # fmt: skip


def _time_axis(chart: TrendChart, series) -> None:
    n = max(len(series.points), 1)
    step = (chart.right - chart.left) / n
    picks = sorted({round(k * (n - 1) / max(TREND_TICKS - 1, 1)) for k in range(TREND_TICKS)}) if n > 1 else [0]
    # Labels near either edge are anchored inside the chart.
    chart.x_ticks = [
        (round(chart.left + step * (i + 0.5), 2), series.points[i].start.strftime(TIME_FORMATS[series.bucket]),
         "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle")
        for i in picks
        if i < len(series.points)
    ]
    span = (series.until - series.since).total_seconds() or 1.0
    for m in series.marks:
        frac = min(max((m.at - series.since).total_seconds() / span, 0.0), 1.0)
        chart.marks.append(TrendMark(x=round(chart.left + (chart.right - chart.left) * frac, 2), kind=m.kind,
                                     label=m.label, at=m.at.strftime("%Y-%m-%d %H:%M:%S UTC")))  # fmt: skip


def volume_chart(series, width: int = 760, height: int = 200) -> TrendChart:
    """Stacked bars per bucket: scored, failed and still queued sketches."""
    chart = _frame(width, height)
    chart.y_title = "sketches"
    n = max(len(series.points), 1)
    step = (chart.right - chart.left) / n
    top = max((p.submitted for p in series.points), default=0)
    ticks = _linear_y_ticks(int(top))
    y_top = max(float(ticks[-1]), float(top), 1.0)
    scale = (chart.bottom - chart.top) / y_top
    chart.y_ticks = [(round(chart.bottom - t * scale, 2), f"{t:,}") for t in ticks]
    for i, p in enumerate(series.points):
        x = chart.left + step * i
        h_s, h_f = p.scored * scale, p.failed * scale
        h_o = max(p.submitted - p.scored - p.failed, 0) * scale
        y_s = chart.bottom - h_s
        y_f = y_s - h_f
        chart.bars.append(TrendBar(
            x=round(x, 2), w=round(max(step - 1, 0.5), 2), y_scored=round(y_s, 2), h_scored=round(h_s, 2),
            y_failed=round(y_f, 2), h_failed=round(h_f, 2), y_other=round(y_f - h_o, 2), h_other=round(h_o, 2),
            title=bucket_title(p, series.bucket),
        ))  # fmt: skip
    _time_axis(chart, series)
    return chart


def rate_chart(series, width: int = 760, height: int = 200) -> TrendChart:
    """Lines over [0, 1]: the flag rate and the p50/p95 scores per bucket (gaps where nothing was scored)."""
    chart = _frame(width, height)
    chart.y_title = "rate · score"
    n = max(len(series.points), 1)
    step = (chart.right - chart.left) / n
    chart.y_ticks = [(round(chart.bottom - (chart.bottom - chart.top) * t, 2), f"{t:g}") for t in (0, 0.25, 0.5, 0.75, 1)]
    for name, get in (("flag_rate", lambda p: p.flag_rate), ("p50", lambda p: p.p50), ("p95", lambda p: p.p95)):
        run: list[str] = []
        for i, p in enumerate(series.points):
            v = get(p)
            if v is None:
                if run:
                    chart.lines.append(TrendLine(name, " ".join(run)))
                run = []
                continue
            x = chart.left + step * (i + 0.5)
            y = chart.bottom - (chart.bottom - chart.top) * min(max(v, 0.0), 1.0)
            run.append(f"{x:.2f},{y:.2f}")
        if run:
            chart.lines.append(TrendLine(name, " ".join(run)))
    for i, p in enumerate(series.points):
        chart.bars.append(TrendBar(x=round(chart.left + step * i, 2), w=round(step, 2), y_scored=chart.top,
                                   h_scored=chart.bottom - chart.top, y_failed=0, h_failed=0, y_other=0, h_other=0,
                                   title=bucket_title(p, series.bucket)))  # fmt: skip
    _time_axis(chart, series)
    return chart
