"""Dashboard statistics computed in SQL: score histogram, counts, threshold preview, F1 suggestion.

Everything here runs as SQL aggregation over indexed columns, so it stays fast with millions of
stored sketches and works unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from sqlalchemy import Float, and_, case, cast, false, func, literal, select, true, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from service.core import score_rollup
from service.core.schema import STATUS_FAILED, STATUS_QUEUED, STATUS_SCORED, VERDICT_ANOMALY, VERDICT_CAT, Review, Sketch

DEFAULT_BINS = 40
MAX_BINS = 200
# Every score formula of models.scoring lies in [0, 1] (0 = perfect reconstruction, 1 = erased drawing).
SCORE_RANGE = (0.0, 1.0)
# The axes a histogram can be drawn on: the bounded score, or its log-odds (resolution where scores near 1).
AXES = ("score", "logit")
# The window of the per-reviewer "recent" counts.
RECENT = timedelta(days=1)
# "verdict IN (...)" rather than "IS NOT NULL": both engines answer equality lists from the verdict index.
_REVIEWED = Sketch.verdict.in_((VERDICT_ANOMALY, VERDICT_CAT))


@dataclass(frozen=True)
class StatsFilter:
    """Which stored sketches a statistic covers: a submission time window, a model version and a client.

    ``client`` None means every client (the dashboard's view); an API key's statistics name its client.
    """

    since: datetime | None = None
    until: datetime | None = None
    model_version: str | None = None
    client: str | None = None

    def __post_init__(self) -> None:
        # Stored times are UTC; naive inputs are taken as UTC so SQLite's text comparison is right.
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_utc(value))
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be earlier than until")

    @property
    def has_window(self) -> bool:
        """True when a time bound is set."""
        return self.since is not None or self.until is not None

    def clauses(self, index_window: bool = True, index_model: bool = True) -> list[ColumnElement[bool]]:
        """WHERE terms of this filter; the time window is half-open (since <= t < until).

        ``index_window``/``index_model`` False marks those terms as residual checks (see Unindexed), so
        that SQLite keeps to the index of the query's main term.
        """
        at = Sketch.submitted_at if index_window else Unindexed(Sketch.submitted_at)
        out: list[ColumnElement[bool]] = []
        if self.since is not None:
            out.append(at >= self.since)
        if self.until is not None:
            out.append(at < self.until)
        if self.model_version is not None:
            mv = Sketch.model_version if index_model else Unindexed(Sketch.model_version)
            out.append(mv == self.model_version)
        if self.client is not None:
            # Always indexable: (client, score) and (client, submitted_at) hold one client's rows only.
            out.append(Sketch.client == self.client)
        return out

    def residual(self) -> list[ColumnElement[bool]]:
        """All terms as residual checks (for queries driven by another index)."""
        return self.clauses(index_window=False, index_model=False)


class Unindexed(FunctionElement):
    """A column SQLite must not drive the query with: a residual check on rows found through another index.

    SQLite plans without statistics, so it is told; PostgreSQL plans by cost from its statistics and
    gets the plain column, free to pick the window's index when the window is the narrower side.
    """

    inherit_cache = True

    def __init__(self, column) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(Unindexed)
def _unindexed_default(element, compiler, **kw) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(Unindexed, "sqlite")
def _unindexed_sqlite(element, compiler, **kw) -> str:
    # SQLite's documented idiom: a unary "+" keeps the value but hides the column from the planner.
    return "+" + compiler.process(element.clauses, **kw)


def as_utc(value: datetime) -> datetime:
    """A timezone-aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass
class Histogram:
    """Counts of stored scores in fixed, equal-width bins (numpy.histogram semantics)."""

    edges: list[float]
    counts: list[int]
    empty: bool = False
    axis: str = "score"

    @property
    def bins(self) -> int:
        """Number of bins."""
        return len(self.counts)

    @property
    def lo(self) -> float:
        """Left edge of the first bin."""
        return self.edges[0]

    @property
    def hi(self) -> float:
        """Right edge of the last bin (inclusive)."""
        return self.edges[-1]

    @property
    def total(self) -> int:
        """Scores counted in all bins."""
        return int(sum(self.counts))

    def log_counts(self) -> list[float]:
        """log10(1 + count) per bin, for a log-scaled view."""
        return [math.log10(1 + c) for c in self.counts]

    def to_dict(self, log: bool = False) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {
            "bins": self.bins,
            "lo": self.lo,
            "hi": self.hi,
            "edges": self.edges,
            "counts": self.counts,
            "total": self.total,
            "scale": "log" if log else "linear",
            "axis": self.axis,
        }
        if log:
            out["log_counts"] = self.log_counts()
        return out


def score_range(
    session: Session, model_version: str | None = None, client: str | None = None, column=Sketch.score
) -> tuple[float, float] | None:
    """(min, max) stored score (or ``column``), per model version and client when given; None when nothing is scored.

    Two scalar subqueries rather than one ``SELECT min(), max()`` because SQLite only answers a
    lone min() or max() from the index.
    """
    where = [column.is_not(None)]
    if model_version is not None:
        where.append(Sketch.model_version == model_version)
    if client is not None:
        where.append(Sketch.client == client)
    lo = select(func.min(column)).where(*where).scalar_subquery()
    hi = select(func.max(column)).where(*where).scalar_subquery()
    row = session.execute(select(lo, hi)).one()
    if row[0] is None:
        return None
    return float(row[0]), float(row[1])


def bin_edges(lo: float, hi: float, bins: int) -> list[float]:
    """Equal-width edges exactly as numpy.histogram builds them (degenerate ranges widened)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("histogram range must be finite")
    if lo > hi:
        raise ValueError("histogram range: lo must not exceed hi")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return [float(e) for e in np.linspace(lo, hi, bins + 1)]


def check_bins(bins: int) -> int:
    """Validate a requested bin count."""
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 1 and {MAX_BINS}")
    return bins


def histogram(
    session: Session,
    flt: StatsFilter | None = None,
    bins: int = DEFAULT_BINS,
    lo: float | None = None,
    hi: float | None = None,
) -> Histogram:
    """Histogram of stored scores with fixed edges over [lo, hi] (default: the stored score range).

    The default range spans the selected model version's (and client's) scores regardless of the time
    window, so windows are drawn on the same axis. Bins are half-open except the last, as in numpy.
    """
    flt = flt or StatsFilter()
    check_bins(bins)
    if lo is None or hi is None:
        stored = score_range(session, flt.model_version, flt.client)
        if stored is None and lo is None and hi is None:
            return Histogram(edges=bin_edges(0.0, 1.0, bins), counts=[0] * bins, empty=True)
        stored = stored or (0.0, 1.0)
        lo = stored[0] if lo is None else lo
        hi = stored[1] if hi is None else hi
    edges = bin_edges(float(lo), float(hi), bins)
    if not flt.has_window:
        # The score-bucket rollup: a few thousand rows plus one small index range per edge, at any row count.
        counts = score_rollup.histogram_counts(session, edges, flt.client, flt.model_version)
    # One client's window is always read through (client, submitted_at): that index holds only its rows.
    elif flt.client is None and _window_share(session, flt) > COMPLEMENT_ABOVE:
        counts = _counts_by_complement(session, flt, edges)
    else:
        counts = _counts_by_bucket(session, flt, edges)
    return Histogram(edges=edges, counts=counts)


def logit_histogram(session: Session, flt: StatsFilter | None = None, bins: int = DEFAULT_BINS) -> Histogram:
    """Histogram of the stored scores' log-odds over their stored range: where scores pile up at 1 it still resolves.

    Counted from the (score_logit) index without a window, else per row of the window (submitted_at index).
    """
    flt = flt or StatsFilter()
    check_bins(bins)
    column = Sketch.score_logit
    stored = score_range(session, flt.model_version, flt.client, column)
    if stored is None:
        return Histogram(edges=bin_edges(0.0, 1.0, bins), counts=[0] * bins, empty=True, axis="logit")
    edges = bin_edges(stored[0], stored[1], bins)
    if flt.has_window:
        counts = _counts_by_bucket(session, flt, edges, column)
    else:
        counts = _counts_by_range(session, flt, edges, column)
    return Histogram(edges=edges, counts=counts, axis="logit")


# A window spanning more than this share of the stored time range is counted as everything minus
# the rows outside it, so no time filter ever visits more than about half of the rows one by one.
COMPLEMENT_ABOVE = 0.5


def _window_share(session: Session, flt: StatsFilter) -> float:
    """Share of the stored submission time span covered by the window (two index probes)."""
    first = select(func.min(Sketch.submitted_at)).scalar_subquery()
    last = select(func.max(Sketch.submitted_at)).scalar_subquery()
    row = session.execute(select(first, last)).one()
    if row[0] is None:
        return 0.0
    t0, t1 = as_utc(row[0]), as_utc(row[1])
    span = (t1 - t0).total_seconds()
    lo = max(t0, flt.since) if flt.since else t0
    hi = min(t1, flt.until) if flt.until else t1
    if span <= 0:
        return 1.0 if lo <= t0 and hi >= t1 else 0.0
    return max(0.0, (hi - lo).total_seconds()) / span


def _counts_by_complement(session: Session, flt: StatsFilter, edges: list[float]) -> list[int]:
    """Counts in [since, until) as all counts minus those before ``since`` and from ``until`` on."""
    counts = _counts_by_range(session, StatsFilter(model_version=flt.model_version), edges)
    outside = []
    if flt.since is not None:
        outside.append(StatsFilter(until=flt.since, model_version=flt.model_version))
    if flt.until is not None:
        outside.append(StatsFilter(since=flt.until, model_version=flt.model_version))
    for part in outside:
        for i, n in enumerate(_counts_by_bucket(session, part, edges)):
            counts[i] -= n
    return counts


def _in_bin(i: int, edges: list[float], column=Sketch.score) -> ColumnElement[bool]:
    upper = column <= edges[i + 1] if i == len(edges) - 2 else column < edges[i + 1]
    return and_(column >= edges[i], upper)


def _counts_by_range(session: Session, flt: StatsFilter, edges: list[float], column=Sketch.score) -> list[int]:
    """One index range count per bin: each stored score is visited once, straight from the index.

    Used without a time window, where (score) or (model_version, score) covers every term.
    """
    # Not one "GROUP BY bin" pass: PostgreSQL expects one group per row there and scans serially
    # (~350 ms for 8*10^5 scores on 2 cores), while these counts run as a Parallel Append (~180 ms).
    where = flt.clauses()
    parts = [
        select(literal(i).label("b"), func.count().label("n")).where(_in_bin(i, edges, column), *where)
        for i in range(len(edges) - 1)
    ]
    counts = [0] * (len(edges) - 1)
    for b, n in session.execute(union_all(*parts)):
        counts[int(b)] = int(n)
    return counts


def _bucket_expr(edges: list[float], first: int, last: int, column=Sketch.score) -> ColumnElement[int]:
    """Bin index of ``column`` (the score) for bins first..last, by binary search over the edges in a CASE tree.

    Comparing against the exact edge values (not arithmetic on the score) keeps the result
    identical to numpy.histogram, and a tree needs only log2(bins) comparisons per row.
    """
    if first == last:
        return literal(first)
    mid = (first + last + 1) // 2
    return case(
        (column < edges[mid], _bucket_expr(edges, first, mid - 1, column)),
        else_=_bucket_expr(edges, mid, last, column),
    )


def _counts_by_bucket(session: Session, flt: StatsFilter, edges: list[float], column=Sketch.score) -> list[int]:
    """GROUP BY bin over the rows of a time window (found through the submitted_at index)."""
    n_bins = len(edges) - 1
    bucket = _bucket_expr(edges, 0, n_bins - 1, column).label("b")
    # The window drives the query (submitted_at index); score and model version are checked per row.
    score = Unindexed(column)
    stmt = (
        select(bucket, func.count().label("n"))
        .where(score >= edges[0], score <= edges[-1], *flt.clauses(index_model=False))
        .group_by(bucket)
    )
    counts = [0] * n_bins
    for b, n in session.execute(stmt):
        counts[int(b)] = int(n)
    return counts


@dataclass
class Counts:
    """How many stored sketches are in each state."""

    total: int
    scored: int
    flagged: int
    reviewed: int
    queued: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return dict(self.__dict__)


def _count(session: Session, *where: ColumnElement[bool]) -> int:
    return int(session.execute(select(func.count()).select_from(Sketch).where(*where)).scalar_one())


def _count_windowed(session: Session, term: ColumnElement[bool], flt: StatsFilter) -> int:
    """Count ``term`` rows in the filter; for a wide window, all rows minus those outside it.

    ``term`` picks the index; the window is checked per row, so the side with fewer rows is walked.
    For ``flagged`` on PostgreSQL the partial index (submitted_at) INCLUDE (model_version) WHERE flagged
    holds both residual columns, so those checks do not read table rows (bar pages not yet all-visible).
    """
    if flt.client is not None or not flt.has_window or _window_share(session, flt) <= COMPLEMENT_ABOVE:
        return _count(session, term, *flt.residual())
    every = StatsFilter(model_version=flt.model_version)
    total = _count(session, term, *every.residual())
    if flt.since is not None:
        total -= _count(session, term, *StatsFilter(until=flt.since, model_version=flt.model_version).residual())
    if flt.until is not None:
        total -= _count(session, term, *StatsFilter(since=flt.until, model_version=flt.model_version).residual())
    return total


def counts(session: Session, flt: StatsFilter | None = None, scored: int | None = None) -> Counts:
    """Counts by state; pass ``scored`` when already known (a full-range histogram total) to skip a scan.

    Each count is its own query so that every one is answered from an index
    ((status, submitted_at), (flagged, score) or the flagged partial index, verdict) instead of one
    scan of the table.
    """
    flt = flt or StatsFilter()
    by_status = flt.clauses(index_model=False)  # (status, submitted_at) serves status + window
    queued = _count(session, Sketch.status == STATUS_QUEUED, *by_status)
    failed = _count(session, Sketch.status == STATUS_FAILED, *by_status)
    if not flt.has_window:
        # Scored, flagged and reviewed (scored) sketches from the score-bucket rollup.
        rolled = score_rollup.totals(session, flt.client, flt.model_version)
        return Counts(
            total=queued + failed + rolled["scored"],
            scored=rolled["scored"],
            flagged=rolled["flagged"],
            reviewed=rolled["reviewed"],
            queued=queued,
            failed=failed,
        )
    if scored is None and flt.model_version is not None:
        # (model_version, score) holds exactly the scored sketches of that version.
        scored = _count(session, Sketch.score.is_not(None), *flt.clauses(index_window=False))
    elif scored is None:
        scored = _count(session, Sketch.status == STATUS_SCORED, *by_status)
    # '= true' rather than 'IS true': PostgreSQL matches the "WHERE flagged" partial index (which a
    # model version or window needs) only from equality; 'IS true' reads the table for each flagged row.
    flagged = _count_windowed(session, Sketch.flagged == true(), flt)
    reviewed = _count_windowed(session, _REVIEWED, flt)
    return Counts(
        total=queued + failed + int(scored),
        scored=int(scored),
        flagged=flagged,
        reviewed=reviewed,
        queued=queued,
        failed=failed,
    )


def model_versions(session: Session) -> list[str]:
    """Distinct model versions among stored sketches.

    A recursive "loose index scan" on (model_version, score): one index probe per distinct
    value instead of reading every row.
    """
    mv = Sketch.model_version
    seed = select(func.min(mv).label("v")).cte("versions", recursive=True)
    step = select(
        select(func.min(mv)).where(mv > seed.c.v).scalar_subquery().label("v")
    ).where(seed.c.v.is_not(None))
    versions = seed.union_all(step)
    rows = session.execute(select(versions.c.v).where(versions.c.v.is_not(None)))
    return [r[0] for r in rows]


@dataclass
class PercentilePosition:
    """Where a threshold sits among the model's held-out cat score percentiles."""

    percentiles: list[tuple[float, float]]
    below: tuple[float, float] | None = None
    above: tuple[float, float] | None = None
    cat_flag_rate: float | None = None

    def describe(self) -> str:
        """A short human sentence, e.g. 'between p95 (0.031) and p99 (0.052)'."""
        if not self.percentiles:
            return "the model has no held-out percentiles"
        if self.below and self.above:
            return f"between p{_fmt_p(self.below[0])} ({self.below[1]:.4g}) and p{_fmt_p(self.above[0])} ({self.above[1]:.4g})"
        if self.above:
            return f"below p{_fmt_p(self.above[0])} ({self.above[1]:.4g})"
        if self.below:
            return f"above p{_fmt_p(self.below[0])} ({self.below[1]:.4g})"
        return "unknown"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "percentiles": [{"p": p, "value": v} for p, v in self.percentiles],
            "below": {"p": self.below[0], "value": self.below[1]} if self.below else None,
            "above": {"p": self.above[0], "value": self.above[1]} if self.above else None,
            "cat_flag_rate": self.cat_flag_rate,
            "text": self.describe(),
        }


def _fmt_p(p: float) -> str:
    return f"{p:g}"


def parse_percentiles(meta: dict) -> list[tuple[float, float]]:
    """Held-out cat score percentiles from model metadata as sorted (percent, score) pairs.

    Accepts a mapping such as {"p95": 0.03, "99": 0.05} or {"0.95": 0.03}, or a list of
    {"p": 95, "value": 0.03} / [95, 0.03]; anything unreadable is ignored.
    """
    raw = None
    for key in ("percentiles", "cat_percentiles", "heldout_percentiles", "held_out_percentiles"):
        if meta.get(key):
            raw = meta[key]
            break
    pairs: list[tuple[float, float]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        for entry in raw:
            if isinstance(entry, dict):
                items.append((entry.get("p", entry.get("percentile")), entry.get("value", entry.get("score"))))
            elif isinstance(entry, (list, tuple)) and len(entry) == 2:
                items.append((entry[0], entry[1]))
    for key, value in items:
        try:
            text = str(key).strip().lower().lstrip("p")
            p = float(text)
            v = float(value)
        except (TypeError, ValueError):
            continue
        if "." in text and 0 < p < 1:
            p *= 100.0
        if 0 < p <= 100 and math.isfinite(v):
            pairs.append((p, v))
    return sorted(pairs)


def percentile_position(t: float, percentiles: list[tuple[float, float]]) -> PercentilePosition:
    """Locate ``t`` among the percentiles and estimate the share of held-out cats it would flag."""
    pos = PercentilePosition(percentiles=percentiles)
    if not percentiles:
        return pos
    below = [pv for pv in percentiles if pv[1] <= t]
    above = [pv for pv in percentiles if pv[1] > t]
    pos.below = below[-1] if below else None
    pos.above = above[0] if above else None
    if pos.below and pos.above:
        (p0, v0), (p1, v1) = pos.below, pos.above
        frac = p0 + (p1 - p0) * ((t - v0) / (v1 - v0) if v1 > v0 else 0.0)
        pos.cat_flag_rate = max(0.0, 1.0 - frac / 100.0)
    elif pos.below:
        # Beyond the highest known percentile: at most that share of cats is flagged.
        pos.cat_flag_rate = max(0.0, 1.0 - pos.below[0] / 100.0)
    return pos


@dataclass
class Preview:
    """What applying threshold ``t`` would do."""

    threshold: float
    flagged: int
    scored: int | None
    reviewed: int
    true_positives: int
    false_positives: int
    false_negatives: int
    position: PercentilePosition = field(default_factory=lambda: PercentilePosition([]))

    @property
    def precision(self) -> float | None:
        """Share of flagged reviewed items confirmed anomalous (None when none flagged)."""
        denom = self.true_positives + self.false_positives
        return self.true_positives / denom if denom else None

    @property
    def recall(self) -> float | None:
        """Share of confirmed anomalies that would be flagged (None without anomaly verdicts)."""
        denom = self.true_positives + self.false_negatives
        return self.true_positives / denom if denom else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "threshold": self.threshold,
            "flagged": self.flagged,
            "reviewed": self.reviewed,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "precision": self.precision,
            "recall": self.recall,
            "position": self.position.to_dict(),
        }


def confusion_at(session: Session, t: float, flt: StatsFilter | None = None) -> tuple[int, int, int, int]:
    """(reviewed, TP, FP, FN) of the rule ``score > t`` against reviewed verdicts (verdict index)."""
    flt = flt or StatsFilter()
    above = Sketch.score > t
    anomaly = Sketch.verdict == VERDICT_ANOMALY
    cat = Sketch.verdict == VERDICT_CAT
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((and_(anomaly, above), 1), else_=0)), 0),
            func.coalesce(func.sum(case((and_(cat, above), 1), else_=0)), 0),
            func.coalesce(func.sum(case((and_(anomaly, ~above), 1), else_=0)), 0),
        ).where(_REVIEWED, Sketch.score.is_not(None), *flt.residual())
    ).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def preview(
    session: Session, t: float, percentiles: list[tuple[float, float]] | None = None, flt: StatsFilter | None = None
) -> Preview:
    """Count flagged at ``t`` (score > t), precision/recall on reviews, and the percentile position."""
    if not math.isfinite(t):
        raise ValueError("threshold must be a finite number")
    flt = flt or StatsFilter()
    if flt.has_window:
        flagged = _count(session, Sketch.score > t, *flt.clauses(index_window=False))
    else:
        flagged = score_rollup.count_above(session, t, flt.client, flt.model_version)
    reviewed, tp, fp, fn = confusion_at(session, t, flt)
    return Preview(
        threshold=float(t),
        flagged=flagged,
        scored=None,
        reviewed=reviewed,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        position=percentile_position(float(t), percentiles or []),
    )


def logit(value: float | None) -> float | None:
    """log(p / (1 - p)) of a bounded score or threshold in float64; None at or beyond 0 and 1."""
    if value is None or not 0.0 < value < 1.0:
        return None
    return math.log(value) - math.log1p(-value)


CALIBRATION_FIELDS = ("method", "threshold", "n", "rank", "nominal_false_flag_rate", "expected_false_flag_rate",
                      "interval", "confidence")


def calibration_view(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The calibrated threshold as the API and the threshold page show it (service.core.model_info.calibration)."""
    if not record:
        return None
    out = {name: record.get(name) for name in CALIBRATION_FIELDS}
    out["threshold_logit"] = logit(out["threshold"])
    return out


def threshold_bounds(session: Session) -> tuple[float, float]:
    """The thresholds an admin may apply: the score's range, widened to any stored score outside it.

    Below the lowest possible score every sketch is flagged, above the highest none is: neither is a
    threshold anyone means to set.
    """
    lo, hi = SCORE_RANGE
    stored = score_range(session)
    if stored is not None:
        lo, hi = min(lo, stored[0]), max(hi, stored[1])
    return lo, hi


@dataclass
class FlagChanges:
    """How many stored sketches change flag when threshold ``t`` is applied."""

    threshold: float
    to_flagged: int
    to_unflagged: int

    @property
    def total(self) -> int:
        """Sketches whose flag changes either way."""
        return self.to_flagged + self.to_unflagged

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"threshold": self.threshold, "to_flagged": self.to_flagged, "to_unflagged": self.to_unflagged,
                "total": self.total}


def flag_changes(session: Session, t: float) -> FlagChanges:
    """Count the scored sketches whose stored flag differs from ``score > t``, each way, in SQL.

    Both counts come from the score-bucket rollup by flag, plus one index range at ``t``.
    """
    if not math.isfinite(t):
        raise ValueError("threshold must be a finite number")
    to_flagged, to_unflagged = score_rollup.flag_changes(session, t)
    return FlagChanges(threshold=float(t), to_flagged=to_flagged, to_unflagged=to_unflagged)


@dataclass
class F1Suggestion:
    """The threshold that maximises F1 over the reviewed sketches."""

    threshold: float
    f1: float
    precision: float
    recall: float
    reviewed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def f1_optimal_threshold(session: Session, flt: StatsFilter | None = None) -> F1Suggestion | None:
    """Best-F1 threshold given reviewed verdicts, found with window functions in SQL.

    Candidate cut-offs lie between consecutive distinct reviewed scores; flagging the top k
    reviewed items gives TP = anomalies among them and F1 = 2 TP / (k + P). The suggestion is the
    midpoint below the k-th score. None without any anomaly verdict.
    """
    flt = flt or StatsFilter()
    where = [_REVIEWED, Sketch.score.is_not(None), *flt.residual()]
    is_pos = case((Sketch.verdict == VERDICT_ANOMALY, 1), else_=0)
    per_score = (
        select(Sketch.score.label("score"), func.sum(is_pos).label("pos"), func.count().label("n"))
        .where(*where)
        .group_by(Sketch.score)
        .subquery()
    )
    row = best_f1_cut(session, per_score)
    if row is None or not row.positives:
        return None
    tp, k, positives, reviewed = int(row.tp), int(row.k), int(row.positives), int(row.reviewed)
    threshold = cut_between(float(row.score), row.next_score)
    return F1Suggestion(
        threshold=threshold,
        f1=2.0 * tp / (k + positives),
        precision=tp / k,
        recall=tp / positives,
        reviewed=reviewed,
    )


def overview(
    session: Session, flt: StatsFilter | None = None, bins: int = DEFAULT_BINS, axis: str = "score"
) -> tuple[Histogram, Counts]:
    """Histogram (of the scores, or with ``axis`` "logit" their log-odds) plus counts; its total is the scored count."""
    flt = flt or StatsFilter()
    hist = logit_histogram(session, flt, bins) if axis == "logit" else histogram(session, flt, bins)
    # Every scored sketch has a score and the default range spans them all, so no second scan.
    return hist, counts(session, flt, scored=hist.total)


@dataclass
class Progress:
    """How much of a review queue has a staff verdict."""

    reviewed: int
    total: int

    @property
    def percent(self) -> float:
        """Share reviewed, 0..100 (0 for an empty queue)."""
        return 100.0 * self.reviewed / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"reviewed": self.reviewed, "total": self.total, "percent": self.percent}


def flagged_progress(session: Session) -> Progress:
    """Flagged sketches with a staff verdict, of all flagged (from the score-bucket rollup)."""
    rolled = score_rollup.totals(session)
    return Progress(reviewed=rolled["flagged"] - rolled["flagged_unreviewed"], total=rolled["flagged"])


@dataclass
class ReviewerCount:
    """One reviewer's staff verdicts: in all, and in the last day."""

    reviewer: str
    total: int
    recent: int


def reviewer_counts(session: Session, since: datetime | None = None) -> list[ReviewerCount]:
    """Staff verdicts per reviewer, most active first; ``recent`` counts those from ``since`` on (one GROUP BY).

    A client's own labels (``by_client``) are not reviews by staff and are left out.
    """
    since = as_utc(since) if since is not None else datetime.now(timezone.utc) - RECENT
    recent = func.coalesce(func.sum(case((Review.created_at >= since, 1), else_=0)), 0)
    rows = session.execute(
        select(Review.reviewer, func.count().label("n"), recent.label("recent"))
        .where(Review.by_client.is_(False))
        .group_by(Review.reviewer)
        .order_by(func.count().desc(), Review.reviewer)
    ).all()
    return [ReviewerCount(reviewer=r.reviewer, total=int(r.n), recent=int(r.recent)) for r in rows]


def best_f1_cut(session: Session, per_score):
    """The best-F1 cut over a (score, pos, n) subquery, highest score first: its cumulative row, or None.

    Flagging everything at or above a score gives TP = the positives so far and F1 = 2 TP / (k + P).
    """
    order = per_score.c.score.desc()
    running = dict(order_by=order, rows=(None, 0))
    # The totals ride along as whole-set window sums: the reviewed rows are read once, not twice.
    cum = select(
        per_score.c.score,
        func.sum(per_score.c.pos).over(**running).label("tp"),
        func.sum(per_score.c.n).over(**running).label("k"),
        func.lead(per_score.c.score).over(order_by=order).label("next_score"),
        func.sum(per_score.c.pos).over().label("positives"),
        func.sum(per_score.c.n).over().label("reviewed"),
    ).subquery()
    f1 = (2.0 * cast(cum.c.tp, Float)) / (cast(cum.c.k, Float) + cum.c.positives)
    return session.execute(
        select(cum.c.score, cum.c.next_score, cum.c.tp, cum.c.k, cum.c.positives, cum.c.reviewed, f1.label("f1"))
        .order_by(f1.desc(), cum.c.score.desc())
        .limit(1)
    ).first()


def cut_between(score: float, next_score) -> float:
    """A threshold that flags ``score`` and not ``next_score`` (the next lower one, or None)."""
    if next_score is None:
        return math.nextafter(score, -math.inf)
    threshold = (score + float(next_score)) / 2.0
    if not float(next_score) <= threshold < score:
        # Adjacent floats have no midpoint; the lower score itself still flags exactly the top k.
        threshold = float(next_score)
    return threshold
