"""Monitoring over time, shared by the dashboard, the API and the alert evaluation in the worker.

- :func:`timeseries`: per minute, hour or day, the sketches submitted then: submitted, scored, flagged and
  failed counts, the flag rate, the score quantiles p50/p95 and the queue lag (submit to scored). Minute
  buckets are aggregated straight from the sketches (a minute window is short), with ``percentile_cont`` on
  PostgreSQL and the same interpolation by window functions on SQLite. Hour and day buckets come from the
  hourly rollup (``service.core.rollups``) plus the hours not rolled up yet, so a month of a million sketches
  is a few thousand rows; their quantiles are read from the rollup's score histogram (within 0.01).
- :func:`marks`: threshold changes and model versions first seen, to draw on the chart.
- :func:`client_breakdown`: per client, the last 24 hours against the client's own previous week.
- :func:`window_reading`: one alert metric over a trailing window, straight from the sketches.
- :func:`queue_health`: queued sketches, the oldest one's age, and the workers seen (heartbeats).

Counts are by submission time (a sketch belongs to the bucket it was submitted in, whatever became of it
later) and ``flagged`` is the flag decided at scoring, so a threshold change shows as a step at its mark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Integer, case, cast, func, literal, select
from sqlalchemy.orm import Session

from service.core import rollups
from service.core.rollups import (
    HOUR,
    UNIT_STEPS,
    HourRow,
    LagSeconds,
    TimeBucket,
    as_datetime,
    count_if,
    flagged_at_scoring,
    floor_time,
)
from service.core.schema import (
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_SCORED,
    Sketch,
    StatsHourly,
    ThresholdChange,
    utcnow,
)

BUCKETS = ("minute", "hour", "day")
# Buckets shown when no window is asked for (the current, partial one included): 2 hours, 2 days, 30 days.
DEFAULT_POINTS = {"minute": 120, "hour": 48, "day": 30}
MAX_POINTS = {"minute": 1440, "hour": 2000, "day": 2000}
QUANTILES = (0.5, 0.95)


class SeriesError(ValueError):
    """A time-series request that cannot be answered (bad bucket, window or too many points)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class Point:
    """One bucket of the time series."""

    start: datetime
    submitted: int = 0
    scored: int = 0
    flagged: int = 0
    failed: int = 0
    lag_sum_s: float = 0.0
    lag_max_s: float | None = None
    p50: float | None = None
    p95: float | None = None

    @property
    def flag_rate(self) -> float | None:
        """Flagged share of the scored sketches (None when none was scored)."""
        return self.flagged / self.scored if self.scored else None

    @property
    def lag_avg_s(self) -> float | None:
        """Mean submit-to-scored time of the scored sketches."""
        return self.lag_sum_s / self.scored if self.scored else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "start": self.start.isoformat(),
            "submitted": self.submitted,
            "scored": self.scored,
            "flagged": self.flagged,
            "failed": self.failed,
            "flag_rate": self.flag_rate,
            "p50": self.p50,
            "p95": self.p95,
            "lag_avg_s": self.lag_avg_s,
            "lag_max_s": self.lag_max_s,
        }


@dataclass
class Mark:
    """Something to draw on the chart: a threshold change or a model version first seen."""

    at: datetime
    kind: str  # "threshold" or "model"
    label: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"at": self.at.isoformat(), "kind": self.kind, "label": self.label}


@dataclass
class Series:
    """A time series over [since, until) in buckets of one unit, with its marks."""

    bucket: str
    since: datetime
    until: datetime
    client: str | None
    points: list[Point] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)

    @property
    def totals(self) -> Point:
        """All buckets together (quantiles left out)."""
        total = Point(start=self.since)
        for p in self.points:
            total.submitted += p.submitted
            total.scored += p.scored
            total.flagged += p.flagged
            total.failed += p.failed
            total.lag_sum_s += p.lag_sum_s
            if p.lag_max_s is not None:
                total.lag_max_s = max(total.lag_max_s or 0.0, p.lag_max_s)
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "bucket": self.bucket,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "client": self.client,
            "points": [p.to_dict() for p in self.points],
            "marks": [m.to_dict() for m in self.marks],
        }


def series_window(
    bucket: str, since: datetime | None, until: datetime | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The bucket-aligned window of a request (default: the last 120 minutes, 48 hours or 30 days); SeriesError if bad."""
    if bucket not in BUCKETS:
        raise SeriesError("bucket", f"expected one of {', '.join(BUCKETS)}; got {bucket!r}")
    now = as_datetime(now or utcnow())
    until = as_datetime(until) if until is not None else now
    step = UNIT_STEPS[bucket]
    if since is None:
        since = floor_time(until - timedelta(microseconds=1), bucket) - (DEFAULT_POINTS[bucket] - 1) * step
    since = as_datetime(since)
    if since >= until:
        raise SeriesError("since", "must be earlier than until")
    start = floor_time(since, bucket)
    points = math.ceil((until - start) / step)
    if points > MAX_POINTS[bucket]:
        raise SeriesError(
            "since", f"{points} {bucket} buckets asked for; at most {MAX_POINTS[bucket]} (use a larger bucket)"
        )
    return start, until


def timeseries(
    session: Session,
    bucket: str = "hour",
    since: datetime | None = None,
    until: datetime | None = None,
    client: str | None = None,
    now: datetime | None = None,
) -> Series:
    """The time series of the sketches submitted in the window, one point per bucket (empty buckets included)."""
    start, until = series_window(bucket, since, until, now)
    step = UNIT_STEPS[bucket]
    points: dict[datetime, Point] = {}
    t = start
    while t < until:
        points[t] = Point(start=t)
        t += step
    if bucket == "minute":
        _fill_minutes(session, points, start, until, client)
    else:
        _fill_from_hours(session, points, bucket, rollups.hourly_rows(session, start, until, client))
    series = Series(bucket=bucket, since=start, until=until, client=client, points=list(points.values()))
    series.marks = marks(session, start, until, client)
    return series


def _fill_from_hours(session: Session, points: dict[datetime, Point], bucket: str, rows: list[HourRow]) -> None:
    bins: dict[datetime, np.ndarray] = {}
    keys: dict[datetime, datetime] = {}
    for row in rows:
        key = keys.get(row.hour)
        if key is None:
            key = keys[row.hour] = floor_time(row.hour, bucket)
        point = points.get(key)
        if point is None:
            continue
        point.submitted += row.submitted
        point.scored += row.scored
        point.flagged += row.flagged
        point.failed += row.failed
        point.lag_sum_s += row.lag_sum_s
        if row.lag_max_s is not None:
            point.lag_max_s = max(point.lag_max_s or 0.0, float(row.lag_max_s))
        if key in bins:
            bins[key] += row.bins
        else:
            bins[key] = row.bins.copy()
    for key, merged in bins.items():
        points[key].p50 = rollups.quantile_from_bins(merged, 0.5)
        points[key].p95 = rollups.quantile_from_bins(merged, 0.95)


def _window_terms(since: datetime, until: datetime, client: str | None) -> list:
    terms = [Sketch.submitted_at >= since, Sketch.submitted_at < until]
    if client is not None:
        terms.append(Sketch.client == client)
    return terms


def _fill_minutes(session: Session, points: dict[datetime, Point], since: datetime, until: datetime, client) -> None:
    minute = TimeBucket("minute", Sketch.submitted_at).label("m")
    scored = Sketch.status == STATUS_SCORED
    lag = func.coalesce(func.sum(_scored_lag()), 0.0)
    cols = [
        minute, func.count(), count_if(scored), count_if(flagged_at_scoring()),
        count_if(Sketch.status == STATUS_FAILED), lag, func.max(_scored_lag()),
    ]  # fmt: skip
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        cols += [func.percentile_cont(q).within_group(Sketch.score) for q in QUANTILES]
    stmt = select(*cols).where(*_window_terms(since, until, client)).group_by(minute)
    for row in session.execute(stmt):
        point = points.get(as_datetime(row[0]))
        if point is None:
            continue
        point.submitted, point.scored, point.flagged, point.failed = int(row[1]), int(row[2]), int(row[3]), int(row[4])
        point.lag_sum_s = float(row[5] or 0.0)
        point.lag_max_s = float(row[6]) if row[6] is not None else None
        if postgres:
            point.p50 = float(row[7]) if row[7] is not None else None
            point.p95 = float(row[8]) if row[8] is not None else None
    if not postgres:
        for key, values in _quantiles_by_window_functions(session, since, until, client).items():
            if key in points:
                points[key].p50, points[key].p95 = values


def _scored_lag():
    """The submit-to-scored time of a scored sketch, NULL for the others."""
    return case((Sketch.status == STATUS_SCORED, LagSeconds()), else_=None)


def _quantiles_by_window_functions(session: Session, since: datetime, until: datetime, client) -> dict:
    """percentile_cont(0.5) and (0.95) per minute without it: the two ranks around each position, by ROW_NUMBER."""
    minute = TimeBucket("minute", Sketch.submitted_at)
    ranked = (
        select(
            minute.label("m"),
            Sketch.score.label("score"),
            (func.row_number().over(partition_by=minute, order_by=Sketch.score) - 1).label("r"),
            func.count().over(partition_by=minute).label("n"),
        )
        .where(Sketch.score.is_not(None), *_window_terms(since, until, client))
        .subquery()
    )
    cols = [ranked.c.m, ranked.c.n]
    for q in QUANTILES:
        lo = cast((ranked.c.n - 1) * literal(q), Integer)  # truncation = floor for these non-negative values
        cols.append(func.max(case((ranked.c.r == lo, ranked.c.score), else_=None)))
        cols.append(func.max(case((ranked.c.r == lo + 1, ranked.c.score), else_=None)))
    stmt = select(*cols).where(ranked.c.r <= cast((ranked.c.n - 1) * literal(max(QUANTILES)), Integer) + 1)
    stmt = stmt.group_by(ranked.c.m, ranked.c.n)
    out = {}
    for row in session.execute(stmt):
        n = int(row[1])
        values = []
        for k, q in enumerate(QUANTILES):
            lo, hi = row[2 + 2 * k], row[3 + 2 * k]
            pos = (n - 1) * q
            frac = pos - math.floor(pos)
            values.append(float(lo) if hi is None or frac == 0 else float(lo) + (float(hi) - float(lo)) * frac)
        out[as_datetime(row[0])] = tuple(values)
    return out


def marks(session: Session, since: datetime, until: datetime, client: str | None = None) -> list[Mark]:
    """Threshold changes in the window and model versions first seen in it (among ``client``'s sketches)."""
    out = [
        Mark(at=as_datetime(at), kind="threshold", label=f"threshold {prev:.4g} → {value:.4g}" if prev is not None else f"threshold {value:.4g}")
        for at, value, prev in session.execute(
            select(ThresholdChange.created_at, ThresholdChange.value, ThresholdChange.previous)
            .where(ThresholdChange.created_at >= since, ThresholdChange.created_at < until)
            .order_by(ThresholdChange.created_at)
        )
    ]
    for version, first in first_seen_versions(session, client).items():
        if since <= first < until:
            out.append(Mark(at=first, kind="model", label=f"model {version}"))
    return sorted(out, key=lambda m: m.at)


def first_seen_versions(session: Session, client: str | None = None) -> dict[str, datetime]:
    """When each model version first scored a sketch (its submission time; among ``client``'s sketches if given).

    The rollup names the first hour of each version and one probe of that hour gives the moment; versions
    newer than the rollup come from the live hours.
    """
    edge = rollups.rolled_until(session)
    first: dict[str, datetime] = {}
    if edge is not None:
        where = [StatsHourly.model_version != "", StatsHourly.scored > 0]
        if client is not None:
            where.append(StatsHourly.client == client)
        hours = session.execute(
            select(StatsHourly.model_version, func.min(StatsHourly.hour)).where(*where).group_by(StatsHourly.model_version)
        ).all()
        for version, hour in hours:
            hour = as_datetime(hour)
            terms = [Sketch.model_version == version, *_window_terms(hour, hour + HOUR, client)]
            exact = session.execute(select(func.min(Sketch.submitted_at)).where(*terms)).scalar_one_or_none()
            first[version] = as_datetime(exact) if exact is not None else hour
    live = [Sketch.model_version.is_not(None), Sketch.status == STATUS_SCORED]
    if edge is not None:
        live.append(Sketch.submitted_at >= edge)
    if client is not None:
        live.append(Sketch.client == client)
    for version, at in session.execute(
        select(Sketch.model_version, func.min(Sketch.submitted_at)).where(*live).group_by(Sketch.model_version)
    ):
        first.setdefault(version, as_datetime(at))
    return first


# --------------------------------------------------------------------------- per-client breakdown


@dataclass
class ClientRow:
    """One client: the recent window against its own baseline, and when it was last seen."""

    client: str
    last_seen: datetime | None
    submitted: int = 0
    scored: int = 0
    flagged: int = 0
    failed: int = 0
    base_submitted: int = 0
    base_scored: int = 0
    base_flagged: int = 0
    recent_hours: float = 24.0
    base_hours: float = 168.0

    @property
    def flag_rate(self) -> float | None:
        """Flagged share of the recent window's scored sketches."""
        return self.flagged / self.scored if self.scored else None

    @property
    def base_flag_rate(self) -> float | None:
        """Flagged share over the baseline week."""
        return self.base_flagged / self.base_scored if self.base_scored else None

    @property
    def rate_change(self) -> float | None:
        """Recent flag rate minus the baseline's (a share: 0.05 is 5 points)."""
        if self.flag_rate is None or self.base_flag_rate is None:
            return None
        return self.flag_rate - self.base_flag_rate

    @property
    def rate_z(self) -> float | None:
        """How unusual the recent flag rate is for this client (binomial z-score against its baseline)."""
        p0 = self.base_flag_rate
        if p0 is None or not self.scored:
            return None
        spread = math.sqrt(max(p0 * (1 - p0), 1e-9) / self.scored)
        return (self.flag_rate - p0) / spread

    @property
    def volume_change(self) -> float | None:
        """Recent volume per hour relative to the baseline's (0.5 = half as much again, -1 = silent)."""
        if not self.base_submitted:
            return None
        base_rate = self.base_submitted / self.base_hours
        return (self.submitted / self.recent_hours) / base_rate - 1.0

    @property
    def unusual(self) -> bool:
        """The flag rate moved beyond 3 standard errors, or the volume halved or doubled."""
        z = self.rate_z
        v = self.volume_change
        return (z is not None and abs(z) > 3) or (v is not None and (v <= -0.5 or v >= 1.0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "client": self.client,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "submitted": self.submitted,
            "scored": self.scored,
            "flagged": self.flagged,
            "failed": self.failed,
            "flag_rate": self.flag_rate,
            "baseline_flag_rate": self.base_flag_rate,
            "flag_rate_change": self.rate_change,
            "flag_rate_z": self.rate_z,
            "volume_change": self.volume_change,
        }


def clients_last_seen(session: Session) -> dict[str, datetime]:
    """Every client with its latest submission: one probe of the (client, submitted_at) index per client.

    The distinct clients come from a recursive "loose index scan" instead of reading every row.
    """
    seed = select(func.min(Sketch.client).label("c")).cte("clients", recursive=True)
    step = select(select(func.min(Sketch.client)).where(Sketch.client > seed.c.c).scalar_subquery().label("c")).where(
        seed.c.c.is_not(None)
    )
    names = seed.union_all(step)
    last = select(func.max(Sketch.submitted_at)).where(Sketch.client == names.c.c).scalar_subquery()
    return {c: as_datetime(at) for c, at in session.execute(select(names.c.c, last).where(names.c.c.is_not(None)))}


def client_breakdown(
    session: Session, now: datetime | None = None, recent_hours: int = 24, baseline_days: int = 7
) -> list[ClientRow]:
    """Every client's last ``recent_hours`` (whole hours, the current one included) against its previous week."""
    now = as_datetime(now or utcnow())
    recent_start = floor_time(now, "hour") - (recent_hours - 1) * HOUR
    base_start = recent_start - timedelta(days=baseline_days)
    seen = clients_last_seen(session)
    rows = {c: ClientRow(client=c, last_seen=at, recent_hours=(now - recent_start) / HOUR, base_hours=baseline_days * 24)
            for c, at in seen.items()}  # fmt: skip
    first_hour: dict[str, datetime] = {}
    for r in rollups.hourly_rows(session, base_start, now):
        row = rows.get(r.client)
        if row is None:
            row = rows[r.client] = ClientRow(client=r.client, last_seen=None)
        first_hour[r.client] = min(first_hour.get(r.client, r.hour), r.hour)
        if r.hour >= recent_start:
            row.submitted += r.submitted
            row.scored += r.scored
            row.flagged += r.flagged
            row.failed += r.failed
        else:
            row.base_submitted += r.submitted
            row.base_scored += r.scored
            row.base_flagged += r.flagged
    for client, hour in first_hour.items():
        # A client newer than the baseline week is compared over the hours it existed.
        rows[client].base_hours = max((recent_start - max(hour, base_start)) / HOUR, 1.0)
    return sorted(rows.values(), key=lambda r: (-r.submitted, r.client))


# --------------------------------------------------------------------------- alert readings


@dataclass
class WindowCounts:
    """The sketches submitted in a trailing window."""

    submitted: int = 0
    scored: int = 0
    flagged: int = 0
    failed: int = 0
    queued: int = 0
    lag_max_s: float | None = None


def window_counts(session: Session, since: datetime, until: datetime, client: str | None = None) -> WindowCounts:
    """Counts and the longest submit-to-scored time of the sketches submitted in [since, until), in one query."""
    row = session.execute(
        select(
            func.count(),
            count_if(Sketch.status == STATUS_SCORED),
            count_if(flagged_at_scoring()),
            count_if(Sketch.status == STATUS_FAILED),
            count_if(Sketch.status == STATUS_QUEUED),
            func.max(_scored_lag()),
        ).where(*_window_terms(since, until, client))
    ).one()
    return WindowCounts(
        submitted=int(row[0]), scored=int(row[1]), flagged=int(row[2]), failed=int(row[3]), queued=int(row[4]),
        lag_max_s=float(row[5]) if row[5] is not None else None,
    )  # fmt: skip


def oldest_queued(session: Session, client: str | None = None) -> datetime | None:
    """Submission time of the oldest sketch still queued (the queued rows are few, found by their index)."""
    where = [Sketch.status == STATUS_QUEUED]
    if client is not None:
        where.append(Sketch.client == client)
    return as_datetime(session.execute(select(func.min(Sketch.submitted_at)).where(*where)).scalar_one_or_none())


# --------------------------------------------------------------------------- queue and workers


@dataclass
class QueueHealth:
    """The scoring queue as the database sees it, and the workers seen lately."""

    queued: int
    unsent: int
    oldest_queued_at: datetime | None
    oldest_age_s: float | None
    workers: list = field(default_factory=list)


def queue_health(session: Session, now: datetime | None = None) -> QueueHealth:
    """Queued and never-sent sketches, the oldest queued one's age, and every worker's heartbeat."""
    from service.core.heartbeats import workers_seen

    now = as_datetime(now or utcnow())
    row = session.execute(
        select(func.count(), func.count(Sketch.enqueued_at), func.min(Sketch.submitted_at)).where(
            Sketch.status == STATUS_QUEUED
        )
    ).one()
    oldest = as_datetime(row[2])
    return QueueHealth(
        queued=int(row[0]),
        unsent=int(row[0]) - int(row[1]),
        oldest_queued_at=oldest,
        oldest_age_s=max(0.0, (now - oldest).total_seconds()) if oldest else None,
        workers=workers_seen(session, now),
    )
