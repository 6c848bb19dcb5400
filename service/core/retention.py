"""Retention: how long sketches and their images are kept, and the run that removes what has expired.

Three limits, in days (None or 0: for ever), from the ``retention_policy`` row an admin saved on the dashboard,
else from the ``SKETCHWATCH_RETENTION_*`` settings:

- ``images_days``: the bitmaps and reconstructions of unflagged, unreviewed sketches are dropped (the row stays:
  score, flag, drawing, metadata);
- ``sketches_days``: unflagged, unreviewed sketches are deleted;
- ``kept_days``: flagged or reviewed sketches (a staff verdict, a client's label, or drawn into an audit) are
  deleted with their reviews. It is at least ``sketches_days``: a longer limit, never a shorter one.

What a run never removes: a sketch still queued (every condition requires another status, and a partition
holding one is not dropped), and a sketch whose hour the hourly rollup (service.core.rollups) has not summed
yet: the run refreshes the rollup and stops at its edge, so the time series outlive the rows.

On PostgreSQL partitioned by migration 0011, partitions wholly older than the kept limit are dropped whole
(``service.core.partitions.drop_partitions_before``, passed in as ``drop_partitions``); everything else, and
all of it on SQLite, is deleted by rows in batches of ``BATCH``, a time slice at a time, one transaction each.
Rows in other tables that name a sketch (reviews, audit samples, client_refs, shadow scores, score history:
every table with a ``sketch_id`` column) go with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from service.core.schema import (
    STATUS_QUEUED,
    AuditSample,
    Base,
    RetentionChange,
    RetentionPolicy,
    RetentionRun,
    Sketch,
    utcnow,
)

log = logging.getLogger(__name__)

POLICY_ID = 1
BATCH = 5000
# Deletes walk the table a slice of submission time at a time, so the kept rows they step over are read
# once per slice instead of once per batch.
SLICE = timedelta(days=1)
# A run re-examines this much before the previous run's image cutoff: rows whose flag or verdict changed
# around the edge are caught. Older ones that became unflagged later go with the sketches limit.
IMAGES_OVERLAP = timedelta(days=1)
MAX_DAYS = 36_500
LIMITS = ("images_days", "sketches_days", "kept_days")
KINDS = ("bitmaps", "reconstructions", "sketches", "kept_sketches", "reviews", "dependents", "partitions",
         "partition_sketches")  # fmt: skip
TRIGGERS = ("beat", "cli", "dashboard", "test")

DropPartitions = Callable[[Session, datetime], Any]


class PolicyError(ValueError):
    """A retention limit that cannot be saved; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Policy:
    """The limits in force, where they come from, and who last changed them."""

    images_days: int | None
    sketches_days: int | None
    kept_days: int | None
    source: str = "settings"
    updated_at: datetime | None = None
    updated_by: str | None = None

    def limits(self) -> dict[str, int | None]:
        """The three limits as a dict (None: for ever)."""
        return {name: getattr(self, name) for name in LIMITS}

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**self.limits(), "source": self.source, "updated_by": self.updated_by,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}  # fmt: skip


@dataclass
class RunReport:
    """What one run removed (or, dry, would remove), per kind, and the cutoffs it used."""

    dry_run: bool
    trigger: str
    started_at: datetime
    finished_at: datetime | None = None
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    cutoffs: dict[str, str | None] = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    skipped_partitions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "dry_run": self.dry_run, "trigger": self.trigger, "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None, "removed": dict(self.removed),
            "cutoffs": dict(self.cutoffs), "policy": self.policy, "skipped_partitions": list(self.skipped_partitions),
        }  # fmt: skip


# --------------------------------------------------------------------------- the policy


def _days(value: int | None) -> int | None:
    return int(value) if value else None


def validate(images_days: int | None, sketches_days: int | None, kept_days: int | None) -> dict[str, int | None]:
    """The limits normalised (0 -> None), or PolicyError naming the first field that is wrong."""
    values = {"images_days": images_days, "sketches_days": sketches_days, "kept_days": kept_days}
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise PolicyError(name, "must be a whole number of days")
        if value is not None and not 0 <= value <= MAX_DAYS:
            raise PolicyError(name, f"must be between 0 (keep for ever) and {MAX_DAYS} days")
    out = {name: _days(value) for name, value in values.items()}
    if out["kept_days"] is not None and (out["sketches_days"] is None or out["kept_days"] < out["sketches_days"]):
        raise PolicyError("kept_days", "flagged and reviewed sketches must be kept at least as long as the others")
    return out


def policy(session: Session, settings) -> Policy:
    """The limits in force: the admin's saved row, else the settings."""
    row = session.get(RetentionPolicy, POLICY_ID)
    if row is not None and row.updated_at is not None:
        return Policy(_days(row.images_days), _days(row.sketches_days), _days(row.kept_days), "dashboard",
                      row.updated_at, row.updated_by)  # fmt: skip
    return Policy(_days(settings.retention_images_days), _days(settings.retention_sketches_days),
                  _days(settings.retention_kept_days))  # fmt: skip


def set_policy(session: Session, settings, actor: str, **limits: int | None) -> Policy:
    """Save new limits (validated; PolicyError names the field) and record who changed them from what."""
    new = validate(*(limits.get(name) for name in LIMITS))
    before = policy(session, settings)
    row = session.get(RetentionPolicy, POLICY_ID)
    if row is None:
        row = RetentionPolicy(id=POLICY_ID)
        session.add(row)
    for name, value in new.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    row.updated_by = actor
    session.add(RetentionChange(changed_at=row.updated_at, changed_by=actor, before=before.limits(), after=new))
    session.flush()
    return policy(session, settings)


def changes(session: Session, limit: int = 20) -> list[RetentionChange]:
    """The latest changes of the limits, newest first."""
    return list(session.execute(select(RetentionChange).order_by(RetentionChange.id.desc()).limit(limit)).scalars())


def runs(session: Session, limit: int = 10) -> list[RetentionRun]:
    """The latest runs, newest first."""
    return list(session.execute(select(RetentionRun).order_by(RetentionRun.id.desc()).limit(limit)).scalars())


# --------------------------------------------------------------------------- which rows


def _not_queued():
    return Sketch.status != STATUS_QUEUED


def kept_clause():
    """Sketches kept until the longer limit: flagged, reviewed by staff or their client, or in an audit sample."""
    return or_(
        Sketch.flagged.is_(True),
        Sketch.verdict.is_not(None),
        Sketch.client_verdict.is_not(None),
        Sketch.id.in_(select(AuditSample.sketch_id)),
    )


def _plain_clause():
    """Unflagged, unreviewed sketches outside any audit sample (the complement of :func:`kept_clause`)."""
    return and_(
        Sketch.flagged.is_not(True),
        Sketch.verdict.is_(None),
        Sketch.client_verdict.is_(None),
        Sketch.id.not_in(select(AuditSample.sketch_id)),
    )


def _dependent_tables() -> list:
    """Every table holding a ``sketch_id`` (no foreign keys to partitioned sketches: deleted here)."""
    return [t for t in Base.metadata.sorted_tables if "sketch_id" in t.c and t.name != Sketch.__tablename__]


def _cutoff(now: datetime, days: int | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


def _rollup_edge(engine: Engine) -> datetime | None:
    """Refresh the hourly rollup, then return the end of the hours it holds (nothing before it is unsummed)."""
    from service.core import rollups

    while True:
        # A week of hours per transaction, as the beat's refresh does.
        with Session(engine) as session, session.begin():
            result = rollups.refresh(session, max_chunks=1)
        if result.complete:
            return rollups.as_datetime(result.rolled_until)


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return None
    return min(a, b)


# --------------------------------------------------------------------------- the run


def run(
    engine: Engine,
    settings,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    trigger: str = "cli",
    drop_partitions: DropPartitions | None = None,
) -> RunReport:
    """Apply the retention limits (or, ``dry_run``, count what they would remove); the report is also stored.

    ``drop_partitions(session, cutoff)`` drops whole partitions ending at or before ``cutoff`` and returns an
    object with ``dropped`` (names), ``rows`` and ``skipped_queued``; by default that of service.core.partitions
    (a no-op without partitions).
    """
    from service.core import rollups

    now = rollups.as_datetime(now or utcnow())
    report = RunReport(dry_run=dry_run, trigger=trigger, started_at=utcnow())
    with Session(engine) as session:
        pol = policy(session, settings)
        row = session.get(RetentionPolicy, POLICY_ID)
        images_from = rollups.as_datetime(row.images_done_until) if row is not None else None
    report.policy = pol.to_dict()
    edge = _rollup_edge(engine) if not dry_run else _rolled_until(engine)
    images_cut = _cutoff(now, pol.images_days)
    sketches_cut = _earlier(_cutoff(now, pol.sketches_days), edge)
    kept_cut = _earlier(_cutoff(now, pol.kept_days), edge)
    report.cutoffs = {
        "images": _iso(images_cut), "sketches": _iso(sketches_cut), "kept": _iso(kept_cut), "rollup_edge": _iso(edge),
    }  # fmt: skip
    if images_cut is not None:
        lo = images_from - IMAGES_OVERLAP if images_from is not None else None
        _drop_images(engine, report, lo, images_cut)
    if kept_cut is not None:
        _drop_whole_partitions(engine, report, kept_cut, drop_partitions)
    if sketches_cut is not None:
        _delete(engine, report, sketches_cut, _plain_clause(), "sketches")
    if kept_cut is not None:
        _delete(engine, report, kept_cut, kept_clause(), "kept_sketches")
    report.finished_at = utcnow()
    with Session(engine) as session, session.begin():
        session.add(RetentionRun(started_at=report.started_at, finished_at=report.finished_at, trigger=trigger,
                                 dry_run=dry_run, removed=dict(report.removed), cutoffs=dict(report.cutoffs)))  # fmt: skip
        if not dry_run and images_cut is not None:
            saved = session.get(RetentionPolicy, POLICY_ID)
            if saved is None:
                saved = RetentionPolicy(id=POLICY_ID)
                session.add(saved)
            saved.images_done_until = images_cut
    log.info("retention %s: %s", "dry run" if dry_run else "run",
             ", ".join(f"{k} {v}" for k, v in report.removed.items() if v) or "nothing to remove",
             extra={"removed": report.removed, "trigger": trigger})  # fmt: skip
    return report


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _rolled_until(engine: Engine) -> datetime | None:
    """Where a refresh of the rollup would reach now (a dry run writes nothing, not even the rollup)."""
    from service.core import rollups

    with Session(engine) as session:
        return rollups.as_datetime(rollups.horizon(session, utcnow()))


def _slices(engine: Engine, lo: datetime | None, hi: datetime, where) -> list[tuple[datetime, datetime]]:
    """Time slices [a, b) of SLICE from the oldest matching sketch (at or after ``lo``) up to ``hi``."""
    from service.core import rollups

    with Session(engine) as session:
        terms = [Sketch.submitted_at < hi, where]
        if lo is not None:
            terms.append(Sketch.submitted_at >= lo)
        first = rollups.as_datetime(session.execute(select(func.min(Sketch.submitted_at)).where(*terms)).scalar())
    out = []
    start = first
    while start is not None and start < hi:
        out.append((start, min(start + SLICE, hi)))
        start += SLICE
    return out


def _drop_images(engine: Engine, report: RunReport, lo: datetime | None, hi: datetime) -> None:
    """Clear the bitmaps and reconstructions of unflagged, unreviewed, no longer queued sketches before ``hi``."""
    base = and_(_not_queued(), _plain_clause())
    for column, kind in ((Sketch.input_bitmap, "bitmaps"), (Sketch.reconstruction, "reconstructions")):
        has = column.is_not(None)
        if report.dry_run:
            terms = [Sketch.submitted_at < hi, base, has] + ([Sketch.submitted_at >= lo] if lo is not None else [])
            with Session(engine) as session:
                report.removed[kind] += session.execute(select(func.count()).where(*terms)).scalar_one()
            continue
        for a, b in _slices(engine, lo, hi, and_(base, has)):
            with Session(engine) as session, session.begin():
                result = session.execute(
                    update(Sketch)
                    .where(Sketch.submitted_at >= a, Sketch.submitted_at < b, base, has)
                    .values({column.key: None})
                    .execution_options(synchronize_session=False)
                )
                report.removed[kind] += result.rowcount or 0


def _drop_whole_partitions(engine: Engine, report: RunReport, cutoff: datetime, drop: DropPartitions | None) -> None:
    """Drop the partitions wholly older than the kept limit (nothing in them is kept any longer)."""
    if drop is None:
        from service.core.partitions import drop_partitions_before as drop
    with Session(engine) as session:
        if session.get_bind().dialect.name != "postgresql":
            return
    if report.dry_run:
        from service.core import partitions

        with Session(engine) as session:
            parts = [p for p in partitions.list_partitions(session) if p.end is not None and p.end <= cutoff]
        report.removed["partitions"] = len(parts)
        return
    with Session(engine) as session, session.begin():
        result = drop(session, cutoff)
    report.removed["partitions"] += len(getattr(result, "dropped", []) or [])
    report.removed["partition_sketches"] += int(getattr(result, "rows", 0) or 0)
    report.skipped_partitions += list(getattr(result, "skipped_queued", []) or [])


def _delete(engine: Engine, report: RunReport, cutoff: datetime, which, kind: str) -> None:
    """Delete the no longer queued sketches matching ``which`` submitted before ``cutoff``, with their dependents."""
    where = and_(_not_queued(), which)
    if report.dry_run:
        with Session(engine) as session:
            report.removed[kind] += session.execute(
                select(func.count()).where(Sketch.submitted_at < cutoff, where)
            ).scalar_one()
            if kind == "kept_sketches":
                from service.core.schema import Review

                report.removed["reviews"] += session.execute(
                    select(func.count()).select_from(Review).where(
                        Review.sketch_id.in_(select(Sketch.id).where(Sketch.submitted_at < cutoff, where))
                    )
                ).scalar_one()
        return
    tables = _dependent_tables()
    for a, b in _slices(engine, None, cutoff, where):
        while True:
            with Session(engine) as session, session.begin():
                ids = list(
                    session.execute(
                        select(Sketch.id).where(Sketch.submitted_at >= a, Sketch.submitted_at < b, where).limit(BATCH)
                    ).scalars()
                )
                if not ids:
                    break
                for table in tables:
                    gone = session.execute(delete(table).where(table.c.sketch_id.in_(ids))).rowcount or 0
                    report.removed["reviews" if table.name == "reviews" else "dependents"] += gone
                # The status is checked again in the DELETE itself: nothing queued goes, whatever happened since.
                report.removed[kind] += (
                    session.execute(
                        delete(Sketch)
                        # The slice's bounds let PostgreSQL look in one partition only.
                        .where(Sketch.id.in_(ids), Sketch.submitted_at >= a, Sketch.submitted_at < b, _not_queued())
                        .execution_options(synchronize_session=False)
                    ).rowcount
                    or 0
                )
            if len(ids) < BATCH:
                break
