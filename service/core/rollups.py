"""The hourly rollup of sketches: per (UTC hour, client, model version) counts, queue lag and a score histogram.

Time series over days and the per-client page must not read every stored sketch (a sketch row carries its
drawing and two bitmaps: a million of them is gigabytes). ``stats_hourly`` holds one row per hour, client and
model version, aggregated in SQL from the sketches submitted in that hour. An hour is rolled up only once it
can no longer change: it ended more than ``SETTLE`` ago and none of its sketches is still queued (a scored or
failed sketch never changes status again, and ``flagged`` here is the flag decided at scoring: score above
the threshold then in force, which a later threshold change does not rewrite). Readers combine the stored
hours with the same aggregation run live over the hours not rolled up yet (normally the last one or two),
so what they see is always complete and current.

Rows inserted with an old ``submitted_at`` (imports, the bench's seeding) are noticed through the id
watermark: the next refresh rolls their hours again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import Float, and_, case, delete, func, insert, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from service.core.schema import (
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_SCORED,
    Sketch,
    StatsHourly,
    StatsRollupState,
    utcnow,
)

# Equal-width score bins over [0, 1] (every score formula lies there): quantiles read from the rollup are
# within one bin (0.01) of the exact ones.
BINS = 100
HOUR = timedelta(hours=1)
# A sketch's row becomes visible when its insert commits, a moment after its submitted_at: an hour is rolled
# up only this long after it ended, so no late commit can miss it.
SETTLE = timedelta(minutes=5)
# The first refresh of a large database rolls this much time per statement.
CHUNK = timedelta(days=7)
STATE_ID = 1
UNIT_FORMATS = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}
UNIT_STEPS = {"minute": timedelta(minutes=1), "hour": HOUR, "day": timedelta(days=1)}


# --------------------------------------------------------------------------- portable SQL pieces


class TimeBucket(FunctionElement):
    """Start of the UTC minute, hour or day of a timestamp column (a naive UTC datetime or its text)."""

    inherit_cache = True

    def __init__(self, unit: str, column) -> None:
        if unit not in UNIT_FORMATS:
            raise ValueError(f"unknown time unit {unit!r}")
        self.unit = unit
        super().__init__(column)


@compiles(TimeBucket)
def _bucket_pg(element, compiler, **kw) -> str:
    # AT TIME ZONE 'UTC': date_trunc on timestamptz would cut at the session's time zone's midnight.
    return f"date_trunc('{element.unit}', {compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC')"


@compiles(TimeBucket, "sqlite")
def _bucket_sqlite(element, compiler, **kw) -> str:
    return f"strftime('{UNIT_FORMATS[element.unit]}', {compiler.process(element.clauses, **kw)})"


class LagSeconds(FunctionElement):
    """scored_at - submitted_at of a sketch, in seconds."""

    type = Float()
    inherit_cache = True


@compiles(LagSeconds)
def _lag_pg(element, compiler, **kw) -> str:
    return "EXTRACT(EPOCH FROM (sketches.scored_at - sketches.submitted_at))"


@compiles(LagSeconds, "sqlite")
def _lag_sqlite(element, compiler, **kw) -> str:
    # SQLite stores both as text; julianday() parses them.
    return "((julianday(sketches.scored_at) - julianday(sketches.submitted_at)) * 86400.0)"


class ScoreBin(FunctionElement):
    """Index of the score's bin among BINS equal bins over [0, 1] (scores outside go to the end bins); NULL for NULL."""

    inherit_cache = True

    def __init__(self, column, bins: int = BINS) -> None:
        self.bins = bins
        super().__init__(column)


@compiles(ScoreBin)
def _bin_pg(element, compiler, **kw) -> str:
    col = compiler.process(element.clauses, **kw)
    n = element.bins
    # GREATEST/LEAST skip NULLs on PostgreSQL, hence the explicit CASE.
    return f"CASE WHEN {col} IS NULL THEN NULL ELSE LEAST(GREATEST(CAST(FLOOR({col} * {n}) AS INTEGER), 0), {n - 1}) END"


@compiles(ScoreBin, "sqlite")
def _bin_sqlite(element, compiler, **kw) -> str:
    col = compiler.process(element.clauses, **kw)
    n = element.bins
    # CAST truncates toward zero, which is FLOOR for the non-negative values kept by MAX.
    return f"CASE WHEN {col} IS NULL THEN NULL ELSE MIN(MAX(CAST({col} * {n} AS INTEGER), 0), {n - 1}) END"


def flagged_at_scoring() -> ColumnElement[bool]:
    """A scored sketch's flag as decided when it was scored (its score above the threshold then in force)."""
    return and_(
        Sketch.status == STATUS_SCORED,
        case((Sketch.threshold.is_(None), Sketch.flagged), else_=Sketch.score > Sketch.threshold),
    )


def count_if(condition) -> ColumnElement[int]:
    """SUM(CASE WHEN condition THEN 1 ELSE 0 END), portable."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def as_datetime(value) -> datetime | None:
    """A bucket value from either database as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def floor_time(value: datetime, unit: str) -> datetime:
    """Start of the UTC minute, hour or day holding ``value``."""
    value = as_datetime(value)
    if unit == "minute":
        return value.replace(second=0, microsecond=0)
    if unit == "hour":
        return value.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        return value.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown time unit {unit!r}")


# --------------------------------------------------------------------------- hourly rows


@dataclass
class HourRow:
    """The sketches of one client and model version submitted in one hour."""

    hour: datetime
    client: str
    model_version: str
    submitted: int = 0
    scored: int = 0
    flagged: int = 0
    failed: int = 0
    lag_sum_s: float = 0.0
    lag_max_s: float | None = None
    bins: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))

    def bins_json(self) -> list[int]:
        """The bins as stored: BINS counts (a fixed-length list, so reading many rows is one numpy array)."""
        return [int(n) for n in self.bins]


def aggregate_hours(session: Session, since: datetime, until: datetime, client: str | None = None) -> list[HourRow]:
    """Aggregate the sketches submitted in [since, until) by hour, client and model version, in SQL."""
    hour = TimeBucket("hour", Sketch.submitted_at).label("h")
    version = func.coalesce(Sketch.model_version, literal("")).label("mv")
    score_bin = ScoreBin(Sketch.score).label("b")
    scored = Sketch.status == STATUS_SCORED
    lag = case((scored, LagSeconds()), else_=None)
    where = [Sketch.submitted_at >= since, Sketch.submitted_at < until]
    if client is not None:
        where.append(Sketch.client == client)
    stmt = (
        select(
            hour,
            Sketch.client,
            version,
            score_bin,
            func.count(),
            count_if(scored),
            count_if(flagged_at_scoring()),
            count_if(Sketch.status == STATUS_FAILED),
            func.coalesce(func.sum(lag), 0.0),
            func.max(lag),
        )
        .where(*where)
        .group_by(hour, Sketch.client, version, score_bin)
    )
    rows: dict[tuple, HourRow] = {}
    for h, c, mv, b, n, n_scored, n_flagged, n_failed, lag_sum, lag_max in session.execute(stmt):
        key = (as_datetime(h), c, mv)
        row = rows.get(key)
        if row is None:
            row = rows[key] = HourRow(hour=key[0], client=c, model_version=mv)
        row.submitted += int(n)
        row.scored += int(n_scored)
        row.flagged += int(n_flagged)
        row.failed += int(n_failed)
        row.lag_sum_s += float(lag_sum or 0.0)
        if lag_max is not None:
            row.lag_max_s = max(float(lag_max), row.lag_max_s or 0.0)
        if b is not None:
            row.bins[int(b)] += int(n_scored)
    return sorted(rows.values(), key=lambda r: (r.hour, r.client, r.model_version))


def stored_hours(session: Session, since: datetime, until: datetime, client: str | None = None) -> list[HourRow]:
    """The rolled-up rows of the hours in [since, until)."""
    where = [StatsHourly.hour >= since, StatsHourly.hour < until]
    if client is not None:
        where.append(StatsHourly.client == client)
    stmt = select(
        StatsHourly.hour, StatsHourly.client, StatsHourly.model_version, StatsHourly.submitted, StatsHourly.scored,
        StatsHourly.flagged, StatsHourly.failed, StatsHourly.lag_sum_s, StatsHourly.lag_max_s, StatsHourly.score_bins,
    ).where(*where)  # fmt: skip
    rows = session.execute(stmt).all()
    if not rows:
        return []
    # One array for every row's histogram: parsing them one by one cost more than the query.
    bins = np.asarray([r[9] for r in rows], dtype=np.int64).reshape(len(rows), BINS)
    hours: dict = {}
    return [
        HourRow(
            hour=hours[r[0]] if r[0] in hours else hours.setdefault(r[0], as_datetime(r[0])), client=r[1],
            model_version=r[2], submitted=r[3], scored=r[4], flagged=r[5], failed=r[6], lag_sum_s=float(r[7] or 0.0),
            lag_max_s=r[8], bins=bins[i],
        )  # fmt: skip
        for i, r in enumerate(rows)
    ]


def rolled_until(session: Session) -> datetime | None:
    """Every hour before this is in the rollup (None: nothing rolled up yet)."""
    value = session.execute(
        select(StatsRollupState.rolled_until).where(StatsRollupState.id == STATE_ID)
    ).scalar_one_or_none()
    return as_datetime(value)


def hourly_rows(session: Session, since: datetime, until: datetime, client: str | None = None) -> list[HourRow]:
    """Hour rows covering [since, until): the rolled-up hours from the rollup, the rest aggregated live.

    ``since`` is taken down to its hour: rows are whole hours (the last one may be the current, partial one).
    """
    since = floor_time(since, "hour")
    until = as_datetime(until)
    edge = rolled_until(session) or since
    edge = min(max(edge, since), until)
    rows: list[HourRow] = []
    if since < edge:
        rows += stored_hours(session, since, edge, client)
    if edge < until:
        rows += aggregate_hours(session, edge, until, client)
    return rows


# --------------------------------------------------------------------------- refresh


@dataclass
class RefreshResult:
    """What one refresh did."""

    rolled_until: datetime | None
    hours_rolled: int = 0
    hours_rerolled: int = 0
    rows_written: int = 0
    # False when max_chunks stopped it before the horizon: call again (in a new transaction) for the rest.
    complete: bool = True

    def as_dict(self) -> dict:
        """For task results and logs."""
        return {
            "rolled_until": self.rolled_until.isoformat() if self.rolled_until else None,
            "hours_rolled": self.hours_rolled,
            "hours_rerolled": self.hours_rerolled,
            "rows_written": self.rows_written,
            "complete": self.complete,
        }


def _state(session: Session) -> StatsRollupState:
    stmt = select(StatsRollupState).where(StatsRollupState.id == STATE_ID)
    if session.get_bind().dialect.name == "postgresql":
        # One refresh at a time: a second one waits here and then finds nothing left to do.
        stmt = stmt.with_for_update()
    state = session.execute(stmt).scalar_one_or_none()
    if state is None:
        state = StatsRollupState(id=STATE_ID, rolled_until=None, watermark_id=0)
        session.add(state)
        session.flush()
    return state


def _write(session: Session, since: datetime, until: datetime, rows: Iterable[HourRow]) -> int:
    """Replace the rollup of the hours in [since, until) by ``rows``."""
    session.execute(delete(StatsHourly).where(StatsHourly.hour >= since, StatsHourly.hour < until))
    values = [
        {
            "hour": r.hour, "client": r.client, "model_version": r.model_version, "submitted": r.submitted,
            "scored": r.scored, "flagged": r.flagged, "failed": r.failed, "lag_sum_s": r.lag_sum_s,
            "lag_max_s": r.lag_max_s, "score_bins": r.bins_json(),
        }  # fmt: skip
        for r in rows
    ]
    if values:
        session.execute(insert(StatsHourly), values)
    return len(values)


def horizon(session: Session, now: datetime) -> datetime:
    """The end of the hours that can be rolled up now: settled, and before the hour of the oldest queued sketch."""
    limit = floor_time(now - SETTLE, "hour")
    # Queued rows are few and the partial index (id) WHERE status = 'queued' finds them.
    oldest = session.execute(
        select(func.min(Sketch.submitted_at)).where(Sketch.status == STATUS_QUEUED)
    ).scalar_one_or_none()
    if oldest is not None:
        limit = min(limit, floor_time(oldest, "hour"))
    return limit


def refresh(session: Session, now: datetime | None = None, max_chunks: int | None = None) -> RefreshResult:
    """Roll up the hours that became final since the last refresh, and re-roll hours that got late rows.

    ``max_chunks`` bounds the work of one call (CHUNK of time each), so a first refresh of a large database
    can commit as it goes instead of holding one long write transaction (SQLite has a single writer).
    """
    now = as_datetime(now or utcnow())
    state = _state(session)
    done = as_datetime(state.rolled_until)
    top_id = session.execute(select(func.max(Sketch.id))).scalar_one_or_none() or 0
    result = RefreshResult(rolled_until=done)
    if done is not None and top_id > state.watermark_id:
        late = session.execute(
            select(TimeBucket("hour", Sketch.submitted_at))
            .where(Sketch.id > state.watermark_id, Sketch.id <= top_id, Sketch.submitted_at < done)
            .distinct()
        ).scalars()
        for hour in sorted({as_datetime(h) for h in late}):
            result.rows_written += _write(session, hour, hour + HOUR, aggregate_hours(session, hour, hour + HOUR))
            result.hours_rerolled += 1
    end = horizon(session, now)
    if done is None:
        first = session.execute(select(func.min(Sketch.submitted_at))).scalar_one_or_none()
        done = floor_time(first, "hour") if first is not None else end
    start = done
    chunks = 0
    while start < end:
        if max_chunks is not None and chunks >= max_chunks:
            result.complete = False
            break
        stop = min(start + CHUNK, end)
        result.rows_written += _write(session, start, stop, aggregate_hours(session, start, stop))
        result.hours_rolled += int((stop - start) / HOUR)
        start = stop
        chunks += 1
    state.rolled_until = max(done, start)
    state.watermark_id = max(int(state.watermark_id or 0), int(top_id))
    state.refreshed_at = now
    result.rolled_until = as_datetime(state.rolled_until)
    return result


def reset(session: Session) -> None:
    """Forget the rollup: the next refresh rebuilds it from the sketches (after bulk imports or repairs)."""
    session.execute(delete(StatsHourly))
    session.execute(delete(StatsRollupState))


def merge_bins(rows: Iterable[HourRow]) -> np.ndarray:
    """The score histogram of several hour rows together."""
    total = np.zeros(BINS, dtype=np.int64)
    for row in rows:
        total += row.bins
    return total


def quantile_from_bins(bins: np.ndarray, q: float) -> float | None:
    """The q-quantile of a BINS-bin histogram over [0, 1], as percentile_cont ranks it (linear between ranks).

    The value of each rank is placed inside its bin, so the result is within one bin width (0.01) of the exact one.
    """
    n = int(bins.sum())
    if n == 0:
        return None
    cum = np.cumsum(bins)
    pos = (n - 1) * q
    lo = int(math.floor(pos))
    v_lo = _rank_value(bins, cum, lo)
    v_hi = _rank_value(bins, cum, min(lo + 1, n - 1))
    return v_lo + (v_hi - v_lo) * (pos - lo)


def _rank_value(bins: np.ndarray, cum: np.ndarray, rank: int) -> float:
    """Where the value of 0-based ``rank`` lies: its bin, and its place among that bin's values."""
    i = int(np.searchsorted(cum, rank + 1, side="left"))
    before = int(cum[i - 1]) if i > 0 else 0
    return (i + (rank - before + 0.5) / int(bins[i])) / BINS
