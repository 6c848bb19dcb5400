"""The sketch store: every state change of a sketch row, in one place.

A row is inserted ``queued`` by the intake, marked unsent by the web's enqueuer when its task cannot be
sent, loaded, scored, charged an attempt, re-sent or given up on by the worker, re-flagged by a threshold
change, and given a verdict by a reviewer. Callers pass a connection or session and commit.

Delivery is at least once, so every write of the worker is guarded by ``status = 'queued'``: a
re-delivered or duplicated task can never score a sketch twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import BigInteger, Connection, DateTime, any_, bindparam, case, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from service.core.db import json_dumps
from service.core.schema import STATUS_FAILED, STATUS_QUEUED, STATUS_SCORED, Review, Sketch, utcnow

log = logging.getLogger(__name__)

# A unique-constraint race resolves on the next attempt; more than this means something else is wrong.
MAX_STORE_ATTEMPTS = 5
# Bounded IN lists stay far below every database's bound-parameter limit.
LOOKUP_CHUNK = 500
MAX_ERROR_CHARS = 1000

_T = Sketch.__table__


# --------------------------------------------------------------------------- insert queued (intake)


def insert_queued(conn: Connection, client: str, rows: list[tuple[int, dict]]) -> list[tuple[int, int, bool]]:
    """Insert rows as queued (one statement, two on SQLite); an already used (client, client_ref) gives its id.

    ``rows`` are (index, values) with client_ref, source_format, drawing, meta and optionally input_bitmap;
    returns (index, id, duplicate) per row. Looks up only the client_refs that conflicted.
    """
    now = utcnow()
    by_ref: dict[str, dict] = {}  # first row per client_ref; later ones in the batch are repeats
    values: list[dict] = []
    for _, row in rows:
        ref = row["client_ref"]
        if ref is None:
            values.append(_row_values(client, row, now))
        elif ref not in by_ref:
            by_ref[ref] = _row_values(client, row, now)
            values.append(by_ref[ref])
    anonymous_ids, fresh = _insert_rows(conn, values)
    known = _resolve_conflicts(conn, client, by_ref, fresh)
    accepted: list[tuple[int, int, bool]] = []
    next_anonymous = iter(anonymous_ids)
    first_seen: set[str] = set()
    for index, row in rows:
        ref = row["client_ref"]
        if ref is None:
            accepted.append((index, next(next_anonymous), False))
        elif ref in known:
            accepted.append((index, known[ref], True))
        else:
            # A repeat of a client_ref inside this batch points at the first one and is a duplicate.
            accepted.append((index, fresh[ref], ref in first_seen))
            first_seen.add(ref)
    return accepted


def existing_ids(conn: Connection, client: str, refs: Iterable[str]) -> dict[str, int]:
    """Ids already stored for these client_refs of ``client``."""
    refs = sorted(set(refs))
    found: dict[str, int] = {}
    for start in range(0, len(refs), LOOKUP_CHUNK):
        chunk = refs[start : start + LOOKUP_CHUNK]
        stmt = select(Sketch.client_ref, Sketch.id).where(Sketch.client == client, Sketch.client_ref.in_(chunk))
        found.update({ref: sketch_id for ref, sketch_id in conn.execute(stmt)})
    return found


def _resolve_conflicts(conn: Connection, client: str, by_ref: dict[str, dict], fresh: dict[str, int]) -> dict[str, int]:
    """Ids of the stored rows our skipped client_refs conflicted with; ``fresh`` gains any re-inserted row.

    A conflicting row can vanish between our INSERT and the lookup (a concurrent transaction rolled back,
    or a purge). Only those refs are inserted again, so rows already committed (autocommit) are never
    inserted twice.
    """
    known: dict[str, int] = {}
    pending = [ref for ref in by_ref if ref not in fresh]
    for attempt in range(1, MAX_STORE_ATTEMPTS + 1):
        if not pending:
            return known
        known.update(existing_ids(conn, client, pending))
        pending = [ref for ref in pending if ref not in known]
        if not pending:
            return known
        log.info("client_ref race for client %s; inserting %d again (attempt %d)", client, len(pending), attempt)
        _, again = _insert_rows(conn, [by_ref[ref] for ref in pending])
        fresh.update(again)
        pending = [ref for ref in pending if ref not in again]
    if pending:
        raise RuntimeError(f"client_ref conflicts for client {client!r} did not resolve")
    return known


def _insert_rows(conn: Connection, values: list[dict]) -> tuple[list[int], dict[str, int]]:
    """Insert queued rows (one client, one timestamp), skipping (client, client_ref) pairs already stored.

    Returns the ids of the rows without a client_ref, in order, and client_ref -> id for the new rows with one.
    """
    if conn.dialect.name == "postgresql":
        return _insert_rows_pg(conn, values)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    anonymous = [v for v in values if v["client_ref"] is None]
    with_ref = [v for v in values if v["client_ref"] is not None]
    ids: list[int] = []
    fresh: dict[str, int] = {}
    if anonymous:
        stmt = insert(_T).returning(_T.c.id, sort_by_parameter_order=True)
        ids = list(conn.execute(stmt, anonymous).scalars())
    if with_ref:
        stmt = (
            sqlite_insert(_T)
            .on_conflict_do_nothing(index_elements=[_T.c.client, _T.c.client_ref])
            .returning(_T.c.client_ref, _T.c.id)
        )
        fresh = {ref: sketch_id for ref, sketch_id in conn.execute(stmt, with_ref)}
    return ids, fresh


# One short statement whatever the batch size: psycopg and PostgreSQL parse it once, where a multi-row
# VALUES list of 10 parameters per row cost the web process a fifth of its CPU per sketch to build and convert.
# ORDER BY the ordinality makes the serial ids follow the input order (as SQLAlchemy's own sorted
# insertmanyvalues relies on), so the rows without a client_ref map back by sorting their ids.
_INSERT_PG = text(
    f"""
    INSERT INTO sketches (client, client_ref, submitted_at, enqueued_at, source_format, drawing, metadata,
                          input_bitmap, status, attempts)
    SELECT :client, v.ref, :now, :now, v.fmt, CAST(v.drawing AS json), CAST(v.meta AS json), v.bitmap,
           '{STATUS_QUEUED}', 0
    FROM unnest(CAST(:refs AS text[]), CAST(:fmts AS text[]), CAST(:drawings AS text[]), CAST(:metas AS text[]),
                CAST(:bitmaps AS bytea[])) WITH ORDINALITY AS v(ref, fmt, drawing, meta, bitmap, n)
    ORDER BY v.n
    ON CONFLICT (client, client_ref) DO NOTHING
    RETURNING id, client_ref
    """
).bindparams(bindparam("now", type_=DateTime(timezone=True)))


def _insert_rows_pg(conn: Connection, values: list[dict]) -> tuple[list[int], dict[str, int]]:
    params = {
        "client": values[0]["client"],
        "now": values[0]["submitted_at"],
        "refs": [v["client_ref"] for v in values],
        "fmts": [v["source_format"] for v in values],
        "drawings": [None if v["drawing"] is None else json_dumps(v["drawing"]) for v in values],
        "metas": [None if v["metadata"] is None else json_dumps(v["metadata"]) for v in values],
        "bitmaps": [v["input_bitmap"] for v in values],
    }
    returned = conn.execute(_INSERT_PG, params).all()
    ids = sorted(sketch_id for sketch_id, ref in returned if ref is None)
    return ids, {ref: sketch_id for sketch_id, ref in returned if ref is not None}


def _row_values(client: str, row: dict, now: datetime) -> dict:
    # Keys are column names (Core INSERT). enqueued_at is stamped here, not after the send: one row version
    # less per sketch; a failed send clears it.
    return {
        "client": client,
        "client_ref": row["client_ref"],
        "submitted_at": now,
        "enqueued_at": now,
        "source_format": row["source_format"],
        "drawing": row["drawing"],
        "metadata": row["meta"],  # the column's name (the ORM attribute is ``meta``)
        "input_bitmap": row.get("input_bitmap"),
        "status": STATUS_QUEUED,
        "attempts": 0,
    }


# --------------------------------------------------------------------------- mark unsent (web enqueuer)


def mark_unsent(conn: Connection, ids: list[int]) -> None:
    """Clear ``enqueued_at`` on still-queued ``ids`` whose task could not be sent (metrics count them unsent)."""
    conn.execute(update(Sketch).where(Sketch.id.in_(ids), Sketch.status == STATUS_QUEUED).values(enqueued_at=None))


# --------------------------------------------------------------------------- load, score, error (worker)


def load_queued(session: Session, ids: list[int]) -> list:
    """The still-queued rows among ``ids`` (id, drawing, input_bitmap, attempts), by id."""
    return session.execute(
        select(Sketch.id, Sketch.drawing, Sketch.input_bitmap, Sketch.attempts)
        .where(_id_among(session, ids), Sketch.status == STATUS_QUEUED)
        .order_by(Sketch.id)
    ).all()


def _id_among(session: Session, ids: list[int]):
    """``id IN ids``; on PostgreSQL one array parameter, so the statement text is the same for every batch."""
    if session.get_bind().dialect.name == "postgresql":
        return Sketch.id == any_(bindparam("ids", ids, type_=ARRAY(BigInteger)))
    return Sketch.id.in_(ids)


_WRITE_SCORE = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_QUEUED)
    .values(
        status=STATUS_SCORED,
        score=bindparam("b_score"),
        flagged=bindparam("b_flagged"),
        threshold=bindparam("b_threshold"),
        model_version=bindparam("b_version"),
        reconstruction=bindparam("b_recon"),
        input_bitmap=bindparam("b_input"),
        scored_at=bindparam("b_at"),
        error=None,
    )
)
# SET expressions read the row as it was, so ``attempts + 1`` is the new count on every database.
_WRITE_ERROR = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_QUEUED)
    .values(
        attempts=_T.c.attempts + 1,
        error=bindparam("b_error"),
        status=case((_T.c.attempts + 1 >= bindparam("b_max"), STATUS_FAILED), else_=STATUS_QUEUED),
    )
)
_GIVE_UP = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_QUEUED)
    .values(status=STATUS_FAILED, error=bindparam("b_error"))
)


def write_scores(
    session: Session,
    scores: Iterable[tuple[int, float, bytes, bytes]],
    threshold: float,
    model_version: str,
    when: datetime,
) -> None:
    """Store (id, score, reconstruction, input bitmap) on queued rows, flagged when score > threshold."""
    params = [
        {
            "b_id": sketch_id,
            "b_score": score,
            "b_flagged": score > threshold,
            "b_threshold": threshold,
            "b_version": model_version,
            "b_recon": recon,
            "b_input": bitmap,
            "b_at": when,
        }
        for sketch_id, score, recon, bitmap in scores
    ]
    if params:
        session.execute(_WRITE_SCORE, params)


def write_errors(session: Session, errors: dict[int, str], max_attempts: int) -> None:
    """Charge each queued row an attempt with its error; a row out of attempts becomes failed."""
    if errors:
        session.execute(
            _WRITE_ERROR,
            [{"b_id": i, "b_error": msg[:MAX_ERROR_CHARS], "b_max": max_attempts} for i, msg in errors.items()],
        )


# --------------------------------------------------------------------------- lost deliveries, sweeps, giving up


def charge_lost_delivery(session: Session, ids: list[int], max_attempts: int) -> tuple[list[int], list[int]]:
    """Count a delivery that died mid-task as an attempt of each queued row; returns (alive, given up) ids."""
    rows = _lock_queued(session, select(Sketch.id, Sketch.attempts).where(Sketch.id.in_(ids))).all()
    exhausted = [r.id for r in rows if r.attempts + 1 >= max_attempts]
    alive = [r.id for r in rows if r.attempts + 1 < max_attempts]
    if alive:
        session.execute(
            update(Sketch)
            .where(Sketch.id.in_(alive), Sketch.status == STATUS_QUEUED)
            .values(attempts=Sketch.attempts + 1)
            .execution_options(synchronize_session=False)
        )
    if exhausted:
        session.execute(
            update(Sketch)
            .where(Sketch.id.in_(exhausted), Sketch.status == STATUS_QUEUED)
            .values(
                attempts=Sketch.attempts + 1,
                status=STATUS_FAILED,
                error=gave_up_message(max_attempts, "the worker died while scoring it"),
            )
            .execution_options(synchronize_session=False)
        )
    return alive, exhausted


def lock_stale(session: Session, after: int, stale_before: datetime, limit: int) -> list:
    """Up to ``limit`` queued rows with id > ``after`` enqueued (else submitted) before ``stale_before``."""
    stale_since = func.coalesce(Sketch.enqueued_at, Sketch.submitted_at)
    return _lock_queued(
        session,
        select(Sketch.id, Sketch.attempts, Sketch.error)
        .where(Sketch.id > after, stale_since < stale_before)
        .limit(limit),
    ).all()


def give_up(session: Session, rows: Sequence) -> None:
    """Mark queued rows (id, attempts, error) failed, keeping their last error in the message."""
    if rows:
        session.execute(_GIVE_UP, [{"b_id": r.id, "b_error": gave_up_message(r.attempts, r.error)} for r in rows])


def mark_resent(session: Session, ids: list[int], when: datetime) -> None:
    """Charge queued rows an attempt for a re-sent task and stamp when it was sent."""
    if ids:
        session.execute(
            update(Sketch)
            .where(Sketch.id.in_(ids), Sketch.status == STATUS_QUEUED)
            .values(attempts=Sketch.attempts + 1, enqueued_at=when)
            .execution_options(synchronize_session=False)
        )


def gave_up_message(attempts: int, reason: str | None) -> str:
    """The error stored on a sketch given up on, with the reason (its last error) when there is one."""
    text_ = f"gave up after {attempts} attempts"
    return (f"{text_}: {reason}" if reason else text_)[:MAX_ERROR_CHARS]


def _lock_queued(session: Session, stmt):
    """Run ``stmt`` restricted to queued rows, locking them on PostgreSQL (skipping rows others hold)."""
    stmt = stmt.where(Sketch.status == STATUS_QUEUED).order_by(Sketch.id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return session.execute(stmt)


# --------------------------------------------------------------------------- re-flag and verdicts


def reflag(session: Session, threshold: float) -> None:
    """Re-flag every scored sketch against ``threshold`` in one statement, without the model."""
    session.execute(
        update(Sketch)
        .where(Sketch.status == STATUS_SCORED)
        .values(flagged=Sketch.score > float(threshold))
        .execution_options(synchronize_session=False)
    )


def set_verdict(session: Session, ids: list[int], verdict: str) -> None:
    """Make ``verdict`` the current verdict of the sketches ``ids`` (the history is the reviews table)."""
    session.execute(update(Sketch).where(Sketch.id.in_(ids)).values(verdict=verdict))


def set_client_verdict(session: Session, ids: list[int], verdict: str) -> None:
    """Make ``verdict`` the submitting client's own label on the sketches ``ids`` (never the staff verdict)."""
    session.execute(update(Sketch).where(Sketch.id.in_(ids)).values(client_verdict=verdict))


def restore_verdicts(session: Session, ids: list[int]) -> None:
    """Set each sketch's verdict back to its latest remaining staff review (none left: unreviewed)."""
    latest = (
        select(Review.verdict)
        .where(Review.sketch_id == Sketch.id, Review.by_client.is_(False))
        .order_by(Review.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    session.execute(
        update(Sketch).where(Sketch.id.in_(ids)).values(verdict=latest).execution_options(synchronize_session=False)
    )
