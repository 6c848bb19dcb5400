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
    """Lay out bars, axes and the threshold line for ``hist`` (log scale uses log10(1 + count))."""
    chart = Chart(width=width, height=height, lo=hist.lo, hi=hist.hi, log=log)
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
