"""Partitions of the sketches table on PostgreSQL: made ahead of time by beat, dropped whole by retention.

Migration 0011 makes ``sketches`` a table partitioned by RANGE (submitted_at): one partition per
``partition_days`` period, aligned on Mondays from 2000-01-03, named ``sketches_pYYYYMMDD`` after its first day,
plus ``sketches_default`` for any row no period holds (rows of a period beat had not made yet). Beat keeps the
current period and ``partitions_ahead`` more made (:func:`ensure_partitions`), so the default partition stays
empty. Retention drops whole periods (:func:`drop_partitions_before`): a DROP of a partition frees its disk at
once, where deleting the same rows one by one writes a tuple version and WAL record per row and leaves the
table to vacuum.

SQLite (and a PostgreSQL database not yet at 0011) has one table: every function here does nothing there, and
retention deletes rows instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.orm import Session

from service.core.schema import SCORE_BUCKETS, Base, Sketch

log = logging.getLogger(__name__)

ORIGIN = datetime(2000, 1, 3, tzinfo=timezone.utc)  # a Monday, so weekly partitions start on Mondays
DEFAULT_PARTITION = "sketches_default"
_PARTITION_RE = re.compile(r"^sketches_(p\d{8}|default)$")
# DDL on the parent waits for running queries; a short lock timeout fails fast (beat retries) rather than
# queueing every reader and writer behind it.
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class Partition:
    """One range partition of sketches: [start, end) in UTC; the default partition has no bounds."""

    name: str
    start: datetime | None
    end: datetime | None
    rows: int  # the planner's estimate (pg_class.reltuples), -1 when never analysed

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "name": self.name,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "rows_estimate": self.rows,
        }


@dataclass
class DropResult:
    """What :func:`drop_partitions_before` removed, and what it kept because a sketch in it is still queued."""

    dropped: list[str] = field(default_factory=list)
    rows: int = 0
    skipped_queued: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"dropped": self.dropped, "rows": self.rows, "skipped_queued": self.skipped_queued}


def is_partition_name(name: str | None) -> bool:
    """True for the name of a partition of sketches (not in the SQLAlchemy metadata)."""
    return bool(name) and bool(_PARTITION_RE.match(name))


def include_name(name, type_, parent_names) -> bool:
    """Alembic ``include_name`` hook: partitions are made at run time, so autogenerate leaves them alone."""
    if type_ == "table":
        return not is_partition_name(name)
    if type_ == "index":
        return not is_partition_name(parent_names.get("table_name"))
    return True


def partitioned(session: Session) -> bool:
    """True when sketches is a partitioned table (PostgreSQL at migration 0011 or later)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    kind = session.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass('sketches')")).scalar()
    return kind == "p"


def period_start(t: datetime, days: int) -> datetime:
    """Start of the ``days``-long period that holds ``t`` (periods are aligned on ORIGIN)."""
    width = timedelta(days=days)
    return ORIGIN + width * ((t.astimezone(timezone.utc) - ORIGIN) // width)


def partition_name(start: datetime) -> str:
    """The name of the partition starting at ``start``."""
    return f"sketches_p{start:%Y%m%d}"


def list_partitions(session: Session) -> list[Partition]:
    """The partitions of sketches, range ones by start, the default partition last ([] when not partitioned)."""
    if not partitioned(session):
        return []
    rows = session.execute(
        text(
            """
            SELECT c.relname, CAST(b.m[1] AS timestamptz), CAST(b.m[2] AS timestamptz), c.reltuples::bigint
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                                    'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') AS m) b
            WHERE i.inhparent = 'sketches'::regclass
            """
        )
    ).all()
    parts = [Partition(name, start, end, int(n)) for name, start, end, n in rows]
    return sorted(parts, key=lambda p: (p.start is None, p.start or ORIGIN))


def ensure_partitions(session: Session, now: datetime, days: int, ahead: int) -> list[str]:
    """Make the partitions of the current period and ``ahead`` more; returns the names made.

    Rows already in the default partition for a new period (beat was down) move into it. A period that
    overlaps an existing partition (``days`` changed) is left to the default partition and logged.
    """
    if not partitioned(session):
        return []
    existing = [p for p in list_partitions(session) if p.start is not None]
    made: list[str] = []
    start = period_start(now, days)
    for _ in range(ahead + 1):
        end = start + timedelta(days=days)
        if any(p.start < end and start < p.end for p in existing):
            if not any(p.start == start and p.end == end for p in existing):
                log.warning("period %s..%s overlaps an existing partition; its rows go to the default", start, end)
        else:
            _create_partition(session, start, end)
            made.append(partition_name(start))
        start = end
    return made


def _create_partition(session: Session, start: datetime, end: datetime) -> None:
    name = partition_name(start)
    bounds = {"lo": start, "hi": end}
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    stray = session.execute(
        text(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE submitted_at >= :lo AND submitted_at < :hi"), bounds
    ).scalar_one()
    if stray:
        # A partition cannot be made while the default partition holds rows of its range: they leave through
        # the parent and come back through it, so the rollup triggers see -1 then +1.
        session.execute(text("CREATE TEMP TABLE moving_sketches (LIKE sketches) ON COMMIT DROP"))
        session.execute(
            text(
                "WITH moved AS (DELETE FROM sketches WHERE submitted_at >= :lo AND submitted_at < :hi RETURNING *) "
                "INSERT INTO moving_sketches SELECT * FROM moved"
            ),
            bounds,
        )
    session.execute(
        text(
            f"CREATE TABLE {name} PARTITION OF sketches FOR VALUES FROM "
            f"('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    if stray:
        session.execute(text("INSERT INTO sketches SELECT * FROM moving_sketches"))
        session.execute(text("DROP TABLE moving_sketches"))
    log.info("made partition %s (%s..%s), moved %d rows from the default partition", name, start, end, stray)


def drop_partitions_before(session: Session, cutoff: datetime, limit: int | None = None) -> DropResult:
    """Drop every range partition that ends at or before ``cutoff`` (at most ``limit``), with its dependents.

    Reviews, audit samples, client_refs and shadow scores of the dropped sketches are deleted, and the
    score-bucket rollup is given the matching -n deltas (a DROP fires no row trigger). A partition holding a
    sketch that is still queued is kept and named in ``skipped_queued``. Rows of the default partition are
    never dropped here (retention deletes them). Runs in the caller's transaction; does nothing (an empty
    result) on SQLite.
    """
    result = DropResult()
    if not partitioned(session):
        return result
    cutoff = cutoff.astimezone(timezone.utc)
    candidates = [p for p in list_partitions(session) if p.end is not None and p.end <= cutoff]
    for part in candidates[:limit] if limit else candidates:
        queued = session.execute(text(f"SELECT 1 FROM {part.name} WHERE status = 'queued' LIMIT 1")).first()
        if queued:
            result.skipped_queued.append(part.name)
            continue
        result.rows += _drop_partition(session, part.name)
        result.dropped.append(part.name)
    return result


def _drop_partition(session: Session, name: str) -> int:
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    # Detached first: from then on no query sees its rows, and the deletes below match what was dropped.
    session.execute(text(f"ALTER TABLE sketches DETACH PARTITION {name}"))
    rows = session.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
    for table in dependent_tables():
        session.execute(text(f"DELETE FROM {table} t USING {name} s WHERE t.sketch_id = s.id"))
    session.execute(
        text(
            f"""
            INSERT INTO score_bucket_deltas (client, model_version, bucket, flagged, verdict, n)
            SELECT client, coalesce(model_version, ''), {_bucket_sql(name)}, coalesce(flagged, false),
                   coalesce(verdict, ''), -count(*)
            FROM {name} WHERE score IS NOT NULL GROUP BY 1, 2, 3, 4, 5
            """
        )
    )
    session.execute(text(f"DROP TABLE {name}"))
    log.info("dropped partition %s (%d sketches)", name, rows)
    return int(rows)


def dependent_tables() -> list[str]:
    """Tables holding sketch ids (no foreign key points at partitioned sketches): their rows go with the sketches."""
    return [t.name for t in Base.metadata.sorted_tables if "sketch_id" in t.c and t.name != Sketch.__tablename__]


def _bucket_sql(table: str) -> str:
    return f"least(greatest(floor({table}.score * {SCORE_BUCKETS}), 0), {SCORE_BUCKETS - 1})::int"
