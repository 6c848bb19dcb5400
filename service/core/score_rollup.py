"""The score-bucket rollup: stored scored sketches per client, model version, fine score bucket, flag and verdict.

Triggers on ``sketches`` (migration 0011) append a +1/-1 row to ``score_bucket_deltas`` for every change of a
scored row: scoring, re-flagging after a threshold change, a verdict, re-scoring by a promoted model, a delete.
:func:`fold` (beat) moves the deltas into ``score_buckets``; readers add both tables up in one statement, so
they see exactly the committed rows whether or not the fold has run. The histogram, the flagged, reviewed and
scored counts and the threshold preview then read a few thousand rollup rows instead of every sketch.

Each fold also adds the deltas to the rows of client '' (ALL_CLIENTS): the dashboard's views over every client
read those, a few thousand rows per model version however many clients there are.

Counts over any score range stay exact: whole buckets come from the rollup, and for each edge the one bucket it
falls in is counted from the score index (about 1/SCORE_BUCKETS of the scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Float, bindparam, func, literal, literal_column, select, text, union_all
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Integer

from service.core.schema import SCORE_BUCKETS, VERDICT_ANOMALY, VERDICT_CAT, ScoreBucket, Sketch, score_bucket_deltas

# Verdict slots of the rollup array: none, anomaly, cat, anything else.
VERDICT_SLOTS = {"": 0, VERDICT_ANOMALY: 1, VERDICT_CAT: 2}
OTHER_VERDICT = 3
_LOCK_KEY = 0x5C0B5
# The client of the rollup rows that sum every client (no API key is named '').
ALL_CLIENTS = ""


def bucket_of(score: float) -> int:
    """The rollup bucket of ``score``, exactly as the triggers compute it."""
    return min(max(math.floor(score * SCORE_BUCKETS), 0), SCORE_BUCKETS - 1)


def bucket_start(b: int) -> float:
    """The smallest double in bucket ``b`` (-inf for bucket 0): bucket b is [bucket_start(b), bucket_start(b + 1)).

    Python's and the database's float8 products round alike (IEEE 754), so a plain index range over the score
    then holds exactly the rows the triggers counted in the bucket.
    """
    if b <= 0:
        return -math.inf
    x = b / SCORE_BUCKETS
    while bucket_of(x) >= b:
        x = math.nextafter(x, -math.inf)
    while bucket_of(x) < b:
        x = math.nextafter(x, math.inf)
    return x


class BucketOf(FunctionElement):
    """SQL: the rollup bucket of a score column (the triggers' expression)."""

    inherit_cache = True
    type = Integer()


@compiles(BucketOf)
def _bucket_pg(element, compiler, **kw) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"least(greatest(floor({arg} * {SCORE_BUCKETS}), 0), {SCORE_BUCKETS - 1})"


@compiles(BucketOf, "sqlite")
def _bucket_sqlite(element, compiler, **kw) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"min(max(CAST({arg} * {SCORE_BUCKETS} AS INTEGER), 0), {SCORE_BUCKETS - 1})"


@dataclass
class Rollup:
    """Counts per flag (0 no, 1 yes), verdict slot and bucket, for one client / model version (or all)."""

    counts: np.ndarray  # int64, shape (2, 4, SCORE_BUCKETS)
    client: str | None = None
    model_version: str | None = None

    def select(self, flagged: bool | None = None, verdicts: tuple[int, ...] | None = None) -> np.ndarray:
        """Counts per bucket of the rows with that flag and verdict slots (None: any)."""
        arr = self.counts if flagged is None else self.counts[[int(flagged)]]
        if verdicts is not None:
            arr = arr[:, list(verdicts)]
        return arr.sum(axis=(0, 1))

    def total(self, flagged: bool | None = None, verdicts: tuple[int, ...] | None = None) -> int:
        """Number of rows with that flag and verdict slots."""
        return int(self.select(flagged, verdicts).sum())


def read(session: Session, client: str | None = None, model_version: str | None = None) -> Rollup:
    """The rollup (folded rows plus pending deltas) for a client and model version (None: all)."""
    parts = []
    for table in (ScoreBucket.__table__, score_bucket_deltas):
        where = []
        if client is not None:
            where.append(table.c.client == client)
        elif table is not score_bucket_deltas:
            where.append(table.c.client == ALL_CLIENTS)
        if model_version is not None:
            where.append(table.c.model_version == model_version)
        parts.append(select(table.c.bucket, table.c.flagged, table.c.verdict, table.c.n).where(*where))
    u = union_all(*parts).subquery()
    stmt = select(u.c.bucket, u.c.flagged, u.c.verdict, func.sum(u.c.n)).group_by(u.c.bucket, u.c.flagged, u.c.verdict)
    counts = np.zeros((2, 4, SCORE_BUCKETS), dtype=np.int64)
    rows = session.execute(stmt).all()
    if rows:
        bucket, flagged, verdict, n = zip(*rows)
        slots = [VERDICT_SLOTS.get(v, OTHER_VERDICT) for v in verdict]
        np.add.at(counts, (np.array(flagged, dtype=np.int64), np.array(slots), np.array(bucket, dtype=np.int64)),
                  np.array(n, dtype=np.int64))
    return Rollup(counts, client, model_version)


def _partials(
    session: Session, rollup: Rollup, edges: list[tuple[float, bool]], flagged: bool | None
) -> list[int]:
    """Per (edge, inclusive): rows in the edge's bucket with score < edge (<= when inclusive), from the index."""
    if not edges:
        return []
    # score <= e is score < the next double above e: every edge becomes one half-open index range.
    ranges = [(bucket_start(bucket_of(e)), math.nextafter(e, math.inf) if inclusive else e) for e, inclusive in edges]
    where = []
    if rollup.client is not None:
        where.append(Sketch.client == rollup.client)
    if rollup.model_version is not None:
        where.append(Sketch.model_version == rollup.model_version)
    if flagged is not None:
        where.append(Sketch.flagged == flagged)
    if session.get_bind().dialect.name == "postgresql":
        return _partials_pg(session, ranges, where)
    parts = [
        select(literal(i).label("i"), func.count().label("n")).where(Sketch.score >= lo, Sketch.score < hi, *where)
        for i, (lo, hi) in enumerate(ranges)
    ]
    out = [0] * len(edges)
    for i, n in session.execute(union_all(*parts)):
        out[int(i)] = int(n)
    return out


def _partials_pg(session: Session, ranges: list[tuple[float, float]], where: list) -> list[int]:
    """One statement whose per-edge count is a subquery planned once and run per edge (a UNION of one count
    per edge would plan every partition's index scan once per edge)."""
    edge = (
        select(
            func.unnest(bindparam("los", [r[0] for r in ranges], type_=ARRAY(Float))).label("lo"),
            func.unnest(bindparam("his", [r[1] for r in ranges], type_=ARRAY(Float))).label("hi"),
            func.unnest(bindparam("ix", list(range(len(ranges))), type_=ARRAY(Integer))).label("i"),
        )
    ).subquery("edge")
    count = (
        select(func.count())
        .where(Sketch.score >= edge.c.lo, Sketch.score < edge.c.hi, *where)
        .scalar_subquery()
    )
    # The ranges are narrow (a bucket), but planned without their values the planner expects many rows: it
    # would read them through the heap (bitmap scans) and JIT-compile the statement (seconds on a busy host);
    # an index-only range scan reads only the index.
    session.execute(text("SET LOCAL enable_bitmapscan = off"))
    session.execute(text("SET LOCAL jit = off"))
    try:
        return [int(n) for n in session.execute(select(count).select_from(edge).order_by(edge.c.i)).scalars()]
    finally:
        session.execute(text("RESET enable_bitmapscan"))
        session.execute(text("RESET jit"))


def cumulative(
    session: Session, rollup: Rollup, edges: list[tuple[float, bool]], flagged: bool | None = None
) -> list[int]:
    """Per (edge, inclusive): scored rows with score < edge (<= edge when inclusive), exactly."""
    per_bucket = rollup.select(flagged)
    below = np.concatenate([[0], np.cumsum(per_bucket)])  # below[b]: rows in buckets < b
    partial = _partials(session, rollup, edges, flagged)
    return [int(below[bucket_of(e)]) + p for (e, _), p in zip(edges, partial)]


def histogram_counts(
    session: Session, edges: list[float], client: str | None = None, model_version: str | None = None
) -> list[int]:
    """Counts per bin, numpy.histogram semantics (half-open bins, the last one closed), from the rollup."""
    rollup = read(session, client, model_version)
    points = [(e, False) for e in edges] + [(edges[-1], True)]
    cum = cumulative(session, rollup, points)
    below, last = cum[:-1], cum[-1]
    counts = [below[i + 1] - below[i] for i in range(len(edges) - 1)]
    counts[-1] = last - below[-2]
    return counts


def count_above(
    session: Session, t: float, client: str | None = None, model_version: str | None = None, flagged: bool | None = None
) -> int:
    """Scored rows with score > t (and that flag, when given)."""
    rollup = read(session, client, model_version)
    return rollup.total(flagged) - cumulative(session, rollup, [(t, True)], flagged)[0]


def count_at_most(
    session: Session, t: float, client: str | None = None, model_version: str | None = None, flagged: bool | None = None
) -> int:
    """Scored rows with score <= t (and that flag, when given)."""
    rollup = read(session, client, model_version)
    return cumulative(session, rollup, [(t, True)], flagged)[0]


def flag_changes(session: Session, t: float) -> tuple[int, int]:
    """(unflagged rows with score > t, flagged rows with score <= t), from one read of the rollup."""
    rollup = read(session)
    to_flagged = rollup.total(False) - cumulative(session, rollup, [(t, True)], False)[0]
    return to_flagged, cumulative(session, rollup, [(t, True)], True)[0]


def totals(session: Session, client: str | None = None, model_version: str | None = None) -> dict[str, int]:
    """Scored, flagged, reviewed (staff verdict anomaly or cat) and flagged-unreviewed counts."""
    r = read(session, client, model_version)
    reviewed = (VERDICT_SLOTS[VERDICT_ANOMALY], VERDICT_SLOTS[VERDICT_CAT])
    return {
        "scored": r.total(),
        "flagged": r.total(True),
        "reviewed": r.total(None, reviewed),
        "flagged_unreviewed": r.total(True, (VERDICT_SLOTS[""],)),
    }


_FOLD_PG = text(
    """
    WITH moved AS (DELETE FROM score_bucket_deltas RETURNING client, model_version, bucket, flagged, verdict, n),
    summed AS (SELECT client, model_version, bucket, flagged, verdict, sum(n) AS n, count(*) AS k
               FROM moved
               GROUP BY GROUPING SETS ((client, model_version, bucket, flagged, verdict),
                                       (model_version, bucket, flagged, verdict))),
    upserted AS (INSERT INTO score_buckets (client, model_version, bucket, flagged, verdict, n)
                 SELECT coalesce(client, ''), model_version, bucket, flagged, verdict, n FROM summed
                 ORDER BY 1, 2, 3, 4, 5
                 ON CONFLICT (client, model_version, bucket, flagged, verdict)
                 DO UPDATE SET n = score_buckets.n + excluded.n)
    SELECT coalesce(sum(k), 0) FROM summed WHERE client IS NOT NULL
    """
)
# SQLite's rowid of the key-less deltas table: a fold takes the deltas up to the rowid it read first, so the
# ones committed meanwhile (WAL) stay for the next fold.
_ROWID = literal_column("score_bucket_deltas.rowid", Integer())


def fold(session: Session) -> int:
    """Move the pending deltas into score_buckets (one folder at a time); returns the deltas folded."""
    b = ScoreBucket.__table__
    if session.get_bind().dialect.name == "postgresql":
        if not session.execute(select(func.pg_try_advisory_xact_lock(_LOCK_KEY))).scalar():
            return 0
        folded = int(session.execute(_FOLD_PG).scalar_one())
    else:
        t = score_bucket_deltas
        key = (t.c.client, t.c.model_version, t.c.bucket, t.c.flagged, t.c.verdict)
        top = session.execute(select(func.max(_ROWID)).select_from(t)).scalar()
        if top is None:
            return 0
        rows = session.execute(
            select(*key, func.sum(t.c.n), func.count()).where(_ROWID <= top).group_by(*key)
        ).all()
        folded = sum(int(r[6]) for r in rows)
        merged: dict[tuple, int] = {}
        for r in rows:
            for client in (r[0], ALL_CLIENTS):
                merged[(client, *r[1:5])] = merged.get((client, *r[1:5]), 0) + int(r[5])
        ins = sqlite_insert(b)
        ins = ins.on_conflict_do_update(index_elements=list(b.primary_key.columns), set_={"n": b.c.n + ins.excluded.n})
        if merged:
            cols = ("client", "model_version", "bucket", "flagged", "verdict", "n")
            session.execute(ins, [dict(zip(cols, (*k, n))) for k, n in merged.items()])
        session.execute(t.delete().where(_ROWID <= top))
    session.execute(b.delete().where(b.c.n == 0))
    return folded


def recount(session: Session) -> dict[tuple, int]:
    """A full recount from sketches, keyed like the rollup (for tests and checks; reads every row)."""
    key = (
        Sketch.client,
        func.coalesce(Sketch.model_version, ""),
        BucketOf(Sketch.score),
        func.coalesce(Sketch.flagged, False),
        func.coalesce(Sketch.verdict, ""),
    )
    rows = session.execute(select(*key, func.count()).where(Sketch.score.is_not(None)).group_by(*key))
    return {(c, mv, int(b), bool(f), v): int(n) for c, mv, b, f, v, n in rows}


def snapshot(session: Session) -> dict[tuple, int]:
    """The rollup (folded plus pending), keyed like :func:`recount`, without zero entries."""
    b = ScoreBucket.__table__
    parts = [
        select(b.c.client, b.c.model_version, b.c.bucket, b.c.flagged, b.c.verdict, b.c.n).where(
            b.c.client != ALL_CLIENTS
        ),
        select(*score_bucket_deltas.c),
    ]
    u = union_all(*parts).subquery()
    key = (u.c.client, u.c.model_version, u.c.bucket, u.c.flagged, u.c.verdict)
    rows = session.execute(select(*key, func.sum(u.c.n)).group_by(*key))
    return {(c, mv, int(b), bool(f), v): int(n) for c, mv, b, f, v, n in rows if int(n) != 0}


def rebuild(session: Session) -> int:
    """Recount the rollup from every stored sketch (after a bulk import made with triggers off); rows written."""
    session.execute(score_bucket_deltas.delete())
    session.execute(ScoreBucket.__table__.delete())
    key = (
        Sketch.client,
        func.coalesce(Sketch.model_version, ""),
        BucketOf(Sketch.score),
        func.coalesce(Sketch.flagged, False),
        func.coalesce(Sketch.verdict, ""),
    )
    counted = select(*key, func.count()).where(Sketch.score.is_not(None)).group_by(*key)
    cols = ["client", "model_version", "bucket", "flagged", "verdict", "n"]
    b = ScoreBucket.__table__
    written = session.execute(b.insert().from_select(cols, counted)).rowcount
    every = (
        select(literal(ALL_CLIENTS), b.c.model_version, b.c.bucket, b.c.flagged, b.c.verdict, func.sum(b.c.n))
        .group_by(b.c.model_version, b.c.bucket, b.c.flagged, b.c.verdict)
    )
    return written + session.execute(b.insert().from_select(cols, every)).rowcount
