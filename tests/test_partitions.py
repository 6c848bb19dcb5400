"""Partitioned sketches (PostgreSQL), client_refs apart, and the score-bucket rollup (issue 20).

Real PostgreSQL (and SQLite where both backends behave alike): partitions are made ahead and dropped whole with
what hangs off their sketches; the rollup matches a full recount after threshold changes, promotions, reviews
and drops; migrating an unpartitioned database keeps every row.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service.core import partitions, score_rollup, sketches
from service.core.db import make_engine
from service.core.migrate import upgrade
from service.core.schema import STATUS_QUEUED, STATUS_SCORED, Review, Sketch, SketchRef
from service.stats import StatsFilter, counts, flag_changes, histogram, preview
from stack_fixtures import fresh_pg_database, migrated_engine

T0 = datetime(2026, 11, 2, 12, tzinfo=timezone.utc)  # a Monday


def _add_scored(session: Session, n: int, seed: int = 0, version: str = "m1", start: datetime = T0, days: int = 21) -> list[int]:
    """n scored sketches spread over ``days`` from ``start``, scores from two modes, flagged at 0.5."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        score = min(1.0, max(0.0, rng.gauss(0.2, 0.05) if rng.random() < 0.9 else rng.uniform(0.5, 1.0)))
        if i % 37 == 0:
            score = round(score, 2)  # exact edge values, as tests and humans pick them
        rows.append(
            Sketch(
                client=f"c{i % 3}", client_ref=None, source_format="simplified", status=STATUS_SCORED,
                submitted_at=start + timedelta(seconds=rng.uniform(0, days * 86400)), score=score,
                flagged=score > 0.5, threshold=0.5, model_version=version, attempts=0,
            )
        )
    session.add_all(rows)
    session.flush()
    return [r.id for r in rows]


def _check_rollup(session: Session) -> None:
    assert score_rollup.snapshot(session) == score_rollup.recount(session)
    # The every-client rows the dashboard reads sum the clients' rows.
    clients = session.scalars(select(Sketch.client).distinct()).all()
    per_client = sum((score_rollup.read(session, c).counts for c in clients), np.zeros((2, 4, 10000), dtype=np.int64))
    assert (score_rollup.read(session).counts == per_client).all()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    with migrated_engine(request.param, tmp_path) as eng:
        yield eng


def test_rollup_matches_recount_after_threshold_promotion_reviews_and_deletes(engine):
    with Session(engine) as s:
        ids = _add_scored(s, 600)
        s.commit()
        _check_rollup(s)
        # A threshold change re-flags only the rows between the two thresholds.
        changed = sketches.reflag(s, 0.3)
        assert changed == s.scalar(select(func.count()).select_from(Sketch).where(Sketch.score > 0.3, Sketch.score <= 0.5))
        s.commit()
        _check_rollup(s)
        assert score_rollup.fold(s) > 0
        s.commit()
        _check_rollup(s)
        # Reviews, and their undoing.
        sketches.set_verdict(s, ids[:40], "anomaly")
        sketches.set_verdict(s, ids[40:60], "cat")
        s.add_all([Review(sketch_id=i, verdict="anomaly", reviewer="r") for i in ids[:5]])
        s.commit()
        _check_rollup(s)
        # A promotion: another model version re-scores some stored sketches.
        s.execute(
            update(Sketch).where(Sketch.id.in_(ids[100:300])).values(model_version="m2", score=Sketch.score * 0.9)
        )
        sketches.reflag(s, 0.25, "m2")
        s.commit()
        _check_rollup(s)
        s.execute(Sketch.__table__.delete().where(Sketch.id.in_(ids[500:])))
        s.commit()
        score_rollup.fold(s)
        s.commit()
        _check_rollup(s)
        # New scores written by the worker's path.
        [(_, new_id, _)] = sketches.insert_queued(
            s.connection(), "c9", [(0, {"client_ref": None, "source_format": "simplified", "drawing": [[[0, 1], [0, 1]]], "meta": None})]
        )
        sketches.write_scores(s, [(new_id, 0.77, b"\0" * 784, b"\0" * 784)], 0.25, "m2", T0)
        s.commit()
        _check_rollup(s)


def test_stats_from_the_rollup_equal_numpy_and_plain_counts(engine):
    with Session(engine) as s:
        _add_scored(s, 800, seed=3)
        _add_scored(s, 200, seed=4, version="m2")
        s.commit()
        scores = np.array(s.scalars(select(Sketch.score)).all())
        for bins, lo, hi in ((40, None, None), (7, 0.2, 0.5), (100, 0.0, 1.0)):
            h = histogram(s, StatsFilter(), bins, lo, hi)
            expected, _ = np.histogram(scores, bins=bins, range=(h.lo, h.hi))
            assert h.counts == expected.tolist()
        m2 = np.array(s.scalars(select(Sketch.score).where(Sketch.model_version == "m2")).all())
        h = histogram(s, StatsFilter(model_version="m2"), 20)
        assert h.counts == np.histogram(m2, bins=20, range=(h.lo, h.hi))[0].tolist()
        c1 = np.array(s.scalars(select(Sketch.score).where(Sketch.client == "c1")).all())
        h = histogram(s, StatsFilter(client="c1"), 30)
        assert h.counts == np.histogram(c1, bins=30, range=(h.lo, h.hi))[0].tolist()
        c = counts(s)
        assert c.scored == len(scores) and c.flagged == int((scores > 0.5).sum())
        for t in (0.2, 0.25, 0.5, 0.61):
            assert preview(s, t).flagged == int((scores > t).sum())
            fc = flag_changes(s, t)
            assert fc.to_flagged == int(((scores > t) & (scores <= 0.5)).sum())
            assert fc.to_unflagged == int(((scores <= t) & (scores > 0.5)).sum())


def test_client_ref_stays_unique_per_client(engine):
    row = {"client_ref": "order-1", "source_format": "simplified", "drawing": [[[0, 1], [0, 1]]], "meta": None}
    with Session(engine) as s:
        [(_, first, dup)] = sketches.insert_queued(s.connection(), "acme", [(0, row)])
        s.commit()
        assert not dup
        again = sketches.insert_queued(s.connection(), "acme", [(0, row), (1, {**row, "client_ref": "order-2"}), (2, row)])
        s.commit()
        assert again[0] == (0, first, True) and again[2] == (2, first, True) and not again[1][2]
        [(_, other, dup)] = sketches.insert_queued(s.connection(), "globex", [(0, row)])
        s.commit()
        assert other != first and not dup
        assert s.scalar(select(func.count()).select_from(Sketch)) == 3
        assert s.scalar(select(func.count()).select_from(SketchRef)) == 3


# --------------------------------------------------------------------------- PostgreSQL partitions


@pytest.fixture
def pg_engine():
    with fresh_pg_database() as url:
        eng = make_engine(url)
        yield eng
        eng.dispose()


def test_partitions_are_made_ahead_and_rows_land_in_them(pg_engine):
    with Session(pg_engine) as s:
        assert partitions.partitioned(s)
        future = datetime.now(timezone.utc) + timedelta(days=60)
        # A sketch of a period nobody made yet waits in the default partition...
        [sid] = _add_scored(s, 1, start=future, days=0)
        s.commit()
        assert s.execute(text("SELECT count(*) FROM sketches_default")).scalar() == 1
        made = partitions.ensure_partitions(s, future, days=7, ahead=2)
        s.commit()
        assert len(made) == 3 and all(partitions.is_partition_name(n) for n in made)
        # ...and moves into its partition when it is made; the rollup saw it leave and come back.
        assert s.execute(text("SELECT count(*) FROM sketches_default")).scalar() == 0
        assert s.execute(text(f"SELECT count(*) FROM {made[0]}")).scalar() == 1
        assert s.get(Sketch, sid).score is not None
        _check_rollup(s)
        assert partitions.ensure_partitions(s, future, days=7, ahead=2) == []
        names = [p.name for p in partitions.list_partitions(s)]
        assert names[-1] == partitions.DEFAULT_PARTITION and set(made) <= set(names)


def test_drop_partitions_before_drops_whole_periods_with_their_reviews(pg_engine):
    with Session(pg_engine) as s:
        partitions.ensure_partitions(s, T0, days=7, ahead=4)
        old = _add_scored(s, 50, start=T0, days=6)  # the week of T0
        kept = _add_scored(s, 50, start=T0 + timedelta(days=14), days=6)
        queued_week = _add_scored(s, 5, start=T0 + timedelta(days=7), days=6)
        s.execute(update(Sketch).where(Sketch.id == queued_week[0]).values(status=STATUS_QUEUED, score=None, flagged=None))
        s.add_all([Review(sketch_id=i, verdict="cat", reviewer="r") for i in old[:10] + kept[:10]])
        s.commit()
        result = partitions.drop_partitions_before(s, T0 + timedelta(days=14))
        s.commit()
        week0 = partitions.partition_name(partitions.period_start(T0, 7))
        week1 = partitions.partition_name(partitions.period_start(T0 + timedelta(days=7), 7))
        assert week0 in result.dropped and week1 in result.skipped_queued
        assert result.rows == 50
        remaining = set(s.scalars(select(Sketch.id)))
        assert not remaining & set(old) and set(kept) <= remaining and set(queued_week) <= remaining
        assert s.scalar(select(func.count()).select_from(Review)) == 10
        assert not s.execute(text("SELECT to_regclass(:t)"), {"t": week0}).scalar()
        _check_rollup(s)


def test_migrating_an_unpartitioned_database_keeps_every_row():
    with fresh_pg_database(migrate=False) as url:
        upgrade(url, "0010")
        eng = make_engine(url)
        rng = random.Random(7)
        with eng.begin() as conn:
            conn.execute(
                text(
                    """
                    INSERT INTO sketches (client, client_ref, submitted_at, source_format, status, attempts, score,
                                          flagged, model_version, verdict)
                    SELECT 'c' || (g % 4), CASE WHEN g % 3 = 0 THEN 'ref-' || g END,
                           :t0 - (g || ' hours')::interval, 'simplified',
                           CASE WHEN g % 50 = 0 THEN 'queued' ELSE 'scored' END, 0,
                           CASE WHEN g % 50 = 0 THEN NULL ELSE (g % 997) / 997.0 END,
                           CASE WHEN g % 50 = 0 THEN NULL ELSE (g % 997) / 997.0 > 0.5 END,
                           'm1', CASE WHEN g % 11 = 0 THEN 'cat' END
                    FROM generate_series(1, 3000) g
                    """
                ),
                {"t0": T0},
            )
            conn.execute(text("INSERT INTO reviews (sketch_id, verdict, reviewer, created_at, by_client) "
                              "SELECT id, 'cat', 'r', now(), false FROM sketches WHERE verdict = 'cat'"))
            before = conn.execute(text("SELECT id, client, client_ref, submitted_at, score, status FROM sketches ORDER BY id")).all()
            reviews = conn.execute(text("SELECT count(*) FROM reviews")).scalar()
        assert len(before) == 3000 and reviews > 0 and rng
        upgrade(url)
        with Session(eng) as s:
            after = s.execute(text("SELECT id, client, client_ref, submitted_at, score, status FROM sketches ORDER BY id")).all()
            assert after == before
            assert partitions.partitioned(s)
            parts = partitions.list_partitions(s)
            assert len(parts) >= 2 and s.execute(text("SELECT count(*) FROM sketches_default")).scalar() == 0
            assert s.scalar(select(func.count()).select_from(Review)) == reviews
            assert s.scalar(select(func.count()).select_from(SketchRef)) == 1000
            _check_rollup(s)
            # Ids go on from the same sequence; a used client_ref still answers with its stored id.
            row = {"client_ref": "ref-3", "source_format": "simplified", "drawing": [[[0, 1], [0, 1]]], "meta": None}
            fresh = {"client_ref": None, "source_format": "simplified", "drawing": [[[0, 1], [0, 1]]], "meta": None}
            got = sketches.insert_queued(s.connection(), "c3", [(0, row), (1, fresh)])
            s.commit()
            ref3 = next(r.id for r in before if r.client_ref == "ref-3")
            assert got[0] == (0, ref3, True) and got[1][1] > max(r.id for r in before)
        # And back: one plain table with every row.
        from alembic import command

        from service.core.migrate import alembic_config

        command.downgrade(alembic_config(url), "0010")
        with eng.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sketches")).scalar() == 3001
            kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = 'sketches'::regclass")).scalar()
            assert kind == "r"
        upgrade(url)
        eng.dispose()


def test_a_large_threshold_change_reflags_in_batches_with_progress(engine, monkeypatch):
    monkeypatch.setattr(sketches, "REFLAG_INLINE_ROWS", 50)
    with Session(engine) as s:
        _add_scored(s, 600, seed=5)
        s.commit()
        to_change = flag_changes(s, 0.22).total
        assert to_change > 150
        assert sketches.reflag(s, 0.22) == 50
        s.commit()
        progress = sketches.reflag_progress(s)
        assert progress["running"] and progress["done"] == 50 and progress["threshold"] == 0.22
        assert flag_changes(s, 0.22).total == to_change - 50
        steps = 0
        while (step := sketches.continue_reflag(s, 40)) is not None:
            s.commit()
            steps += 1
            _check_rollup(s)
            if step["finished"]:
                break
        assert steps >= (to_change - 50) // 40
        assert flag_changes(s, 0.22).total == 0
        assert not sketches.reflag_progress(s)["running"] and sketches.continue_reflag(s, 40) is None
        wrong = select(func.count()).select_from(Sketch).where(Sketch.flagged != (Sketch.score > 0.22))
        assert s.scalar(wrong) == 0


def test_beat_keeps_partitions_and_the_rollup_on_the_alerts_queue():
    from service.core.celery_app import (
        ALERTS_QUEUE,
        FOLD_SCORE_ROLLUP_TASK,
        MAINTAIN_PARTITIONS_TASK,
        celery_config,
    )
    from service.core.settings import get_settings

    config = celery_config(get_settings({"env": "testing"}))
    scheduled = {entry["task"] for entry in config["beat_schedule"].values()}
    assert {MAINTAIN_PARTITIONS_TASK, FOLD_SCORE_ROLLUP_TASK} <= scheduled
    assert config["task_routes"][MAINTAIN_PARTITIONS_TASK] == {"queue": ALERTS_QUEUE}


def test_the_threshold_page_shows_a_reflag_left_to_beat(tmp_path, monkeypatch):
    from test_dashboard import csrf_token, login, make_app, seed_sketches

    from service.core.score_rollup import fold
    from service.extensions import db

    monkeypatch.setattr(sketches, "REFLAG_INLINE_ROWS", 3)
    template = tmp_path / "template.db"
    upgrade(f"sqlite:///{template}")
    app = make_app(tmp_path, template)
    try:
        seed_sketches(app, [0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.6], threshold=0.5, images=False)
        admin = app.test_client()
        assert login(admin, "admin").status_code == 302
        page = admin.get("/threshold")
        resp = admin.post("/threshold", data={"value": "0.15", "reason": "more", "csrf_token": csrf_token(page.text), "confirm": "yes"})
        assert resp.status_code == 302
        html = admin.get("/threshold").text
        assert 'data-testid="reflag-progress"' in html and "3 done, 2 to go" in html
        assert admin.get("/threshold/preview?t=0.15").json["reflag"]["remaining"] == 2
        with app.app_context():
            while sketches.continue_reflag(db.session, 10):
                db.session.commit()
            fold(db.session)
            db.session.commit()
        assert 'data-testid="reflag-progress"' not in admin.get("/threshold").text
        assert admin.get("/threshold/preview?t=0.15").json["changes"]["to_flagged"] == 0
    finally:
        db.dispose()
