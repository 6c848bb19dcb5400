"""The sketch store: every state change of a sketch row, in one place.

A row is inserted ``queued`` by the intake, marked unsent by the web's enqueuer when its task cannot be
sent, loaded, scored, charged an attempt, re-sent or given up on by the worker, re-flagged by a threshold
change, and given a verdict by a reviewer. Callers pass a connection or session and commit.

Delivery is at least once, so every write of the worker is guarded by ``status = 'queued'``: a
re-delivered or duplicated task can never score a sketch twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from models.formulas import SATURATED_LOGIT, logit_of_stored_score as score_logit_of  # noqa: F401 (re-exported)
from service.core.db import json_dumps
from service.core.packing import PackedBitmap, pack_bitmap, pack_drawing
from service.core.schema import (
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_SCORED,
    ReflagState,
    Review,
    ScoreHistory,
    Sketch,
    SketchRef,
    utcnow,
)

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
        stmt = select(SketchRef.client_ref, SketchRef.sketch_id).where(
            SketchRef.client == client, SketchRef.client_ref.in_(chunk)
        )
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
        # SQLite holds its write lock to the end of the transaction: the rows go in, then their refs are
        # claimed in sketch_refs, and the rows whose ref was already taken come out again.
        stmt = insert(_T).returning(_T.c.client_ref, _T.c.id, sort_by_parameter_order=True)
        inserted = {ref: sketch_id for ref, sketch_id in conn.execute(stmt, with_ref)}
        claim = sqlite_insert(SketchRef.__table__).on_conflict_do_nothing().returning(SketchRef.client_ref)
        claims = [
            {"client": v["client"], "client_ref": v["client_ref"], "sketch_id": inserted[v["client_ref"]]}
            for v in with_ref
        ]
        claimed = set(conn.execute(claim, claims).scalars())
        taken = [i for ref, i in inserted.items() if ref not in claimed]
        if taken:
            conn.execute(_T.delete().where(_T.c.id.in_(taken)))
        fresh = {ref: i for ref, i in inserted.items() if ref in claimed}
    return ids, fresh


# (client, client_ref) is unique through sketch_refs (a partitioned table's unique keys must hold submitted_at):
# each row takes its id from the sequence first, its ref is claimed in sketch_refs, and only rows whose ref was
# free (or that have none) are inserted; a taken ref is looked up afterwards, as before.
# One short statement whatever the batch size: psycopg and PostgreSQL parse it once, where a multi-row
# VALUES list of 10 parameters per row cost the web process a fifth of its CPU per sketch to build and convert.
# ORDER BY the ordinality makes the serial ids follow the input order (as SQLAlchemy's own sorted
# insertmanyvalues relies on), so the rows without a client_ref map back by sorting their ids.
_INSERT_PG = text(
    f"""
    WITH v AS (
        SELECT nextval('sketches_id_seq') AS id, u.*
        FROM (SELECT * FROM unnest(CAST(:refs AS text[]), CAST(:fmts AS text[]), CAST(:drawings AS bytea[]), CAST(:metas AS text[]),
                CAST(:bitmaps AS bytea[])) WITH ORDINALITY AS u(ref, fmt, drawing, meta, bitmap, n)
              ORDER BY n) u
    ), refs AS (
        INSERT INTO sketch_refs (client, client_ref, sketch_id)
        SELECT :client, v.ref, v.id FROM v WHERE v.ref IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING sketch_id
    )
    INSERT INTO sketches (id, client, client_ref, submitted_at, enqueued_at, source_format, drawing, metadata,
                          input_bitmap, status, attempts)
    SELECT v.id, :client, v.ref, :now, :now, v.fmt, v.drawing, CAST(v.meta AS json), v.bitmap,
           '{STATUS_QUEUED}', 0
    FROM v WHERE v.ref IS NULL OR v.id IN (SELECT sketch_id FROM refs)
    ORDER BY v.n
    RETURNING id, client_ref
    """
).bindparams(bindparam("now", type_=DateTime(timezone=True)))


def _insert_rows_pg(conn: Connection, values: list[dict]) -> tuple[list[int], dict[str, int]]:
    params = {
        "client": values[0]["client"],
        "now": values[0]["submitted_at"],
        "refs": [v["client_ref"] for v in values],
        "fmts": [v["source_format"] for v in values],
        "drawings": [pack_drawing(v["drawing"]) for v in values],
        "metas": [None if v["metadata"] is None else json_dumps(v["metadata"]) for v in values],
        "bitmaps": [pack_bitmap(v["input_bitmap"]) for v in values],
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


# Sketches drawn on the dashboard's drawing page ("dashboard:<username>", service.dashboard.draw) show their
# reconstruction at once: they keep it like the flagged ones.
DASHBOARD_CLIENT_PREFIX = "dashboard:"


def _kept_reconstruction():
    """The reconstruction ``b_recon`` where a reviewer will look (flagged, reviewed, drawn on the dashboard), else NULL.

    The others' is not kept (768 of a row's ~2,300 bytes); the dashboard has a worker compute it on request.
    """
    return case(
        (
            or_(
                bindparam("b_flagged", type_=Boolean),
                _T.c.verdict.is_not(None),
                _T.c.client_verdict.is_not(None),
                _T.c.client.startswith(DASHBOARD_CLIENT_PREFIX, autoescape=True),
            ),
            # A NULL parameter would reach PostgreSQL untyped and turn the CASE into text: say bytea.
            cast(bindparam("b_recon", type_=PackedBitmap()), PackedBitmap()),
        ),
        else_=None,
    )


_WRITE_SCORE = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_QUEUED)
    .values(
        status=STATUS_SCORED,
        score=bindparam("b_score"),
        score_logit=bindparam("b_logit"),
        flagged=bindparam("b_flagged"),
        threshold=bindparam("b_threshold"),
        model_version=bindparam("b_version"),
        # The input bitmap is not written: an image submission's was stored at intake, and a stroke
        # submission's is its rasterized drawing (models.raster), derived again wherever it is shown.
        reconstruction=_kept_reconstruction(),
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
    scores: Iterable[tuple],
    threshold: float,
    model_version: str,
    when: datetime,
) -> None:
    """Store (id, score, reconstruction, input bitmap[, log-odds]) on queued rows, flagged when score > threshold.

    Without the model's log-odds (or a NaN one) the stored log-odds are those of the score itself.
    """
    params = [
        {
            "b_id": sketch_id,
            "b_score": score,
            "b_logit": _stored_logit(score, logit[0] if logit else None),
            "b_flagged": score > threshold,
            "b_threshold": threshold,
            "b_version": model_version,
            "b_recon": recon,
            "b_at": when,
        }
        for sketch_id, score, recon, bitmap, *logit in scores
    ]
    if params:
        session.execute(_WRITE_SCORE, params)


def _stored_logit(score: float, logit: float | None) -> float | None:
    """The log-odds to store: the model's when finite, else those of the score itself (its resolution)."""
    if logit is not None and math.isfinite(logit):
        return float(logit)
    return score_logit_of(score)


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


# Rows a threshold change re-flags in its own transaction; the rest is the beat task's, in batches
# (SKETCHWATCH_REFLAG_BATCH), so neither the change nor the workers' shared threshold lock waits on 10^7 rows.
REFLAG_INLINE_ROWS = 10_000


def reflag(session: Session, threshold: float, model_version: str | None = None) -> int:
    """Re-flag scored sketches (of ``model_version`` only, when given) against ``threshold``, without the model.

    Only rows whose flag changes are written (those between the old and the new threshold, found through
    (flagged, score)). Up to REFLAG_INLINE_ROWS are done here; when more remain, ``reflag_state`` records the
    job and the beat task finishes it (:func:`continue_reflag`). Returns the rows re-flagged here.
    """
    changed = 0
    while changed < REFLAG_INLINE_ROWS:
        limit = REFLAG_INLINE_ROWS - changed
        n = reflag_batch(session, threshold, limit, model_version)
        changed += n
        if n < limit:
            _record_reflag(session, threshold, model_version, changed, finished=True)
            return changed
    _record_reflag(session, threshold, model_version, changed, finished=False)
    return changed


def reflag_batch(session: Session, threshold: float, limit: int | None, model_version: str | None = None) -> int:
    """Re-flag up to ``limit`` scored sketches whose flag disagrees with ``threshold``; returns how many."""
    t = float(threshold)
    wrong = or_(and_(Sketch.flagged == false(), Sketch.score > t), and_(Sketch.flagged == true(), Sketch.score <= t))
    where = [Sketch.status == STATUS_SCORED, wrong]
    if model_version is not None:
        where.append(Sketch.model_version == model_version)
    stmt = update(Sketch).values(flagged=Sketch.score > t).execution_options(synchronize_session=False)
    if limit is None:
        return session.execute(stmt.where(*where)).rowcount
    batch = select(Sketch.id).where(*where).limit(limit).scalar_subquery()
    return session.execute(stmt.where(Sketch.id.in_(batch), *where)).rowcount


def _record_reflag(session: Session, threshold: float, model_version: str | None, done: int, finished: bool) -> None:
    state = session.get(ReflagState, 1)
    if state is None:
        if finished:
            return
        state = ReflagState(id=1)
        session.add(state)
    state.threshold = float(threshold)
    state.model_version = model_version
    state.started_at = utcnow()
    state.done = done
    state.finished_at = utcnow() if finished else None


def continue_reflag(session: Session, batch: int) -> dict | None:
    """One batch of the pending re-flag (the caller holds the threshold lock shared); None when none is pending."""
    state = session.get(ReflagState, 1, with_for_update=True)
    if state is None or state.finished_at is not None:
        return None
    n = reflag_batch(session, state.threshold, batch, state.model_version)
    state.done += n
    if n < batch:
        state.finished_at = utcnow()
    return {"threshold": state.threshold, "reflagged": n, "done": state.done, "finished": state.finished_at is not None}


def reflag_progress(session: Session) -> dict | None:
    """The latest re-flag job: threshold, rows done, whether it finished (None before the first large one)."""
    state = session.get(ReflagState, 1)
    if state is None:
        return None
    return {
        "threshold": state.threshold,
        "model_version": state.model_version,
        "started_at": state.started_at.isoformat() if state.started_at else None,
        "finished_at": state.finished_at.isoformat() if state.finished_at else None,
        "done": int(state.done),
        "running": state.finished_at is None,
    }


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


# --------------------------------------------------------------------------- re-scoring by a newer model version


def replace_scores(
    session: Session,
    scores: Iterable[tuple],
    threshold: float,
    model_version: str,
    when: datetime,
    job_id: int | None = None,
) -> int:
    """Re-score scored rows with (id, score, reconstruction[, log-odds]) of ``model_version``; how many changed.

    Each row's previous score, flag, threshold, version and time go to score_history first. Rows already
    scored by ``model_version`` (a duplicated task, a sketch scored after the promote) are left alone.
    """
    by_id = {row[0]: row for row in scores}
    if not by_id:
        return 0
    stmt = select(
        Sketch.id, Sketch.model_version, Sketch.score, Sketch.flagged, Sketch.threshold, Sketch.scored_at
    ).where(
        Sketch.id.in_(list(by_id)), Sketch.status == STATUS_SCORED, Sketch.model_version.is_distinct_from(model_version)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    old = session.execute(stmt.order_by(Sketch.id)).all()
    if not old:
        return 0
    session.execute(
        insert(ScoreHistory),
        [
            {"sketch_id": r.id, "model_version": r.model_version, "score": r.score, "flagged": r.flagged,
             "threshold": r.threshold, "scored_at": r.scored_at, "replaced_at": when, "replaced_by": model_version,
             "rescore_job_id": job_id}
            for r in old
        ],
    )
    params = []
    for r in old:
        _, score, recon, *logit = by_id[r.id]
        params.append({
            "b_id": r.id, "b_score": score, "b_logit": _stored_logit(score, logit[0] if logit else None),
            "b_flagged": score > threshold, "b_threshold": threshold, "b_version": model_version,
            # Like write_scores: a reconstruction is kept only for a flagged sketch.
            "b_recon": recon if score > threshold else None,
        })
    session.execute(_REPLACE_SCORE, params)
    return len(old)


_REPLACE_SCORE = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_SCORED)
    .values(
        score=bindparam("b_score"),
        score_logit=bindparam("b_logit"),
        flagged=bindparam("b_flagged"),
        threshold=bindparam("b_threshold"),
        model_version=bindparam("b_version"),
        reconstruction=_kept_reconstruction(),
    )
)


def rescore_candidates(session: Session, model_version: str, after: int, up_to: int, limit: int) -> list:
    """Up to ``limit`` scored rows (id, drawing, input_bitmap), ``after`` < id <= ``up_to``, another version scored."""
    return session.execute(
        select(Sketch.id, Sketch.drawing, Sketch.input_bitmap)
        .where(
            Sketch.id > after, Sketch.id <= up_to, Sketch.status == STATUS_SCORED,
            Sketch.model_version.is_distinct_from(model_version),
        )
        .order_by(Sketch.id)
        .limit(limit)
    ).all()


# --------------------------------------------------------------------------- reconstructions computed later


def load_missing_reconstructions(session: Session, ids: list[int]) -> list:
    """Scored rows among ``ids`` without a stored reconstruction (id, drawing, input_bitmap, model_version)."""
    return session.execute(
        select(Sketch.id, Sketch.drawing, Sketch.input_bitmap, Sketch.model_version)
        .where(_id_among(session, ids), Sketch.status == STATUS_SCORED, Sketch.reconstruction.is_(None))
        .order_by(Sketch.id)
    ).all()


def flagged_missing_reconstruction(session: Session, limit: int) -> list[int]:
    """Up to ``limit`` ids of scored sketches a reviewer will look at without a reconstruction, newest first.

    Those flagged after scoring (a lowered threshold) and those drawn into an audit sample below the threshold.
    """
    from service.core.schema import AuditSample

    missing = [Sketch.status == STATUS_SCORED, Sketch.reconstruction.is_(None)]
    ids: list[int] = []
    for which in (Sketch.flagged == true(), Sketch.id.in_(select(AuditSample.sketch_id))):
        if len(ids) >= limit:
            break
        ids += session.execute(
            select(Sketch.id).where(which, *missing).order_by(Sketch.id.desc()).limit(limit - len(ids))
        ).scalars()
    return list(dict.fromkeys(ids))


def store_reconstructions(session: Session, recons: dict[int, bytes], model_version: str) -> int:
    """Store reconstructions made by ``model_version`` on rows it scored that still have none; rows written."""
    if not recons:
        return 0
    stmt = (
        update(_T)
        .where(
            _T.c.id == bindparam("b_id"),
            _T.c.model_version == bindparam("b_version"),
            _T.c.reconstruction.is_(None),
        )
        .values(reconstruction=bindparam("b_recon"))
    )
    result = session.execute(stmt, [{"b_id": i, "b_version": model_version, "b_recon": r} for i, r in recons.items()])
    return result.rowcount or 0
