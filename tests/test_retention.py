"""Retention on real databases: the right rows go, queued ones never, flagged and reviewed ones at the longer
limit with their reviews, and the hourly rollup keeps counting what was removed."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.core import retention, rollups
from service.core.schema import (
    AuditRound,
    AuditSample,
    Review,
    RetentionChange,
    RetentionRun,
    Sketch,
    StatsHourly,
    User,
    utcnow,
)
from service.core.settings import Settings
from stack_fixtures import migrated_engine

DRAWING = [[[10, 200, 120], [20, 30, 220]]]
BITMAP = np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1)).tobytes()
RECON = bytes(reversed(BITMAP))


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """A migrated database (a SQLite file, or a fresh PostgreSQL database)."""
    with migrated_engine(request.param, tmp_path) as eng:
        yield eng


def _settings(**limits) -> Settings:
    values = {"retention_images_days": 30, "retention_sketches_days": 60, "retention_kept_days": 200, **limits}
    return Settings(env="testing", **values)


def _sketch(ref: str, age_days: float, now, *, status="scored", flagged=False, verdict=None, client_verdict=None,
            image=False, recon=True) -> Sketch:  # fmt: skip
    scored = status == "scored"
    return Sketch(
        client="c1", client_ref=ref, submitted_at=now - timedelta(days=age_days),
        scored_at=now - timedelta(days=age_days) + timedelta(seconds=1) if scored else None,
        source_format="image" if image else "simplified", drawing=None if image else DRAWING, meta={"ref": ref},
        input_bitmap=BITMAP if image else None, reconstruction=RECON if scored and recon else None, status=status,
        score=(0.9 if flagged else 0.1) if scored else None, flagged=flagged if scored else None,
        threshold=0.5 if scored else None, model_version="m1" if scored else None, verdict=verdict,
        client_verdict=client_verdict, attempts=1,
    )  # fmt: skip


def _seed(engine, now) -> dict[str, int]:
    """One sketch per case; {client_ref: id}."""
    rows = [
        _sketch("old-plain", 300, now),
        _sketch("old-flagged", 300, now, flagged=True, verdict="anomaly"),
        _sketch("old-reviewed", 250, now, verdict="cat"),
        _sketch("stuck-queued", 100, now, status="queued"),
        _sketch("plain-150", 150, now),
        _sketch("flagged-150", 150, now, flagged=True),
        _sketch("labelled-120", 120, now, client_verdict="cat"),
        _sketch("audited-120", 120, now),
        _sketch("plain-80", 80, now),
        _sketch("image-40", 40, now, image=True),
        _sketch("flagged-image-40", 40, now, image=True, flagged=True),
        _sketch("failed-40", 40, now, status="failed"),
        _sketch("fresh", 1, now, image=True),
    ]
    with Session(engine) as session, session.begin():
        session.add_all(rows)
        session.flush()
        ids = {s.client_ref: s.id for s in rows}
        session.add_all([
            Review(sketch_id=ids["old-flagged"], verdict="anomaly", reviewer="rita", created_at=now),
            Review(sketch_id=ids["old-reviewed"], verdict="cat", reviewer="rita", created_at=now),
            Review(sketch_id=ids["labelled-120"], verdict="cat", reviewer="api:c1", by_client=True, created_at=now),
        ])  # fmt: skip
        audit = AuditRound(created_by="rita", threshold=0.5, frame_max_id=ids["fresh"], population_above=1,
                           population_below=1)  # fmt: skip
        session.add(audit)
        session.flush()
        session.add(AuditSample(round_id=audit.id, sketch_id=ids["audited-120"], stratum="below"))
    return ids


def _present(engine) -> dict[str, tuple]:
    with Session(engine) as session:
        return {
            r.client_ref: (r.input_bitmap is not None, r.reconstruction is not None, r.status)
            for r in session.execute(select(Sketch.client_ref, Sketch.input_bitmap, Sketch.reconstruction, Sketch.status))
        }


def _count(engine, model) -> int:
    with Session(engine) as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def _rolled_submitted(engine) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.coalesce(func.sum(StatsHourly.submitted), 0))).scalar_one())


def test_retention_removes_the_right_rows_never_queued_and_rollups_survive(engine):
    now = utcnow()
    settings = _settings()
    ids = _seed(engine, now)
    total = len(ids)

    dry = retention.run(engine, settings, now=now, dry_run=True, trigger="test")
    assert len(_present(engine)) == total  # a dry run removes nothing
    report = retention.run(engine, settings, now=now, trigger="test")
    assert report.removed == dry.removed  # and counts exactly what the run then removes
    present = _present(engine)

    # The queued sketch stays, and so does everything after its hour: the rollup cannot sum it yet.
    assert "stuck-queued" in present and "plain-80" in present
    for gone in ("old-plain", "plain-150", "old-flagged", "old-reviewed"):
        assert gone not in present, gone
    for kept in ("flagged-150", "labelled-120", "audited-120", "fresh", "failed-40"):
        assert kept in present, kept
    # Images: dropped for the unflagged, unreviewed image submission past 30 days, kept for the flagged one.
    assert present["image-40"][:2] == (False, False)
    assert present["flagged-image-40"][:2] == (True, True)
    assert present["fresh"][:2] == (True, True)
    assert present["flagged-150"][1] and present["labelled-120"][1]
    assert report.removed["sketches"] == 2 and report.removed["kept_sketches"] == 2
    assert report.removed["bitmaps"] == 1 and report.removed["reconstructions"] >= 1
    assert report.removed["reviews"] == 2 and _count(engine, Review) == 1  # the client's label on labelled-120
    assert _count(engine, AuditSample) == 1

    # The sweeper gives up on the stuck sketch: now the rollup passes it, and the next run removes the rest.
    with Session(engine) as session, session.begin():
        session.execute(update(Sketch).where(Sketch.id == ids["stuck-queued"]).values(status="failed"))
    second = retention.run(engine, settings, now=now, trigger="test")
    present = _present(engine)
    assert "stuck-queued" not in present and "plain-80" not in present
    assert second.removed["sketches"] == 2 and second.removed["kept_sketches"] == 0
    # Every sketch ever stored is still counted by the hourly rollup.
    assert _rolled_submitted(engine) == total
    with Session(engine) as session:
        hours = rollups.hourly_rows(session, now - timedelta(days=400), now)
    assert sum(h.submitted for h in hours) == total
    with Session(engine) as session:
        runs = retention.runs(session)
    assert [r.dry_run for r in runs] == [False, False, True]
    assert runs[0].removed["sketches"] == 2


def test_a_queued_sketch_is_never_removed_whatever_the_limits(engine):
    now = utcnow()
    with Session(engine) as session, session.begin():
        session.add_all([_sketch("queued-old", 400, now, status="queued"), _sketch("queued-new", 0.5, now, status="queued")])
    settings = _settings(retention_images_days=1, retention_sketches_days=1, retention_kept_days=1)
    # Even with the rollup already past them (an operator rebuilt it), the queued rows stay.
    report = retention.run(engine, settings, now=now + timedelta(days=3650), trigger="test")
    assert set(_present(engine)) == {"queued-old", "queued-new"}
    assert report.removed["sketches"] == report.removed["kept_sketches"] == 0


def test_nothing_is_removed_when_every_limit_is_for_ever(engine):
    now = utcnow()
    ids = _seed(engine, now)
    settings = _settings(retention_images_days=0, retention_sketches_days=0, retention_kept_days=0)
    report = retention.run(engine, settings, now=now, trigger="test")
    assert set(_present(engine)) == set(ids) and not any(report.removed.values())


def test_partitions_are_dropped_at_the_kept_limit_only(engine):
    calls = []

    def recorder(session, cutoff):
        calls.append(cutoff)
        return None

    now = utcnow()
    _seed(engine, now)
    with Session(engine) as session, session.begin():
        session.execute(update(Sketch).where(Sketch.status == "queued").values(status="failed"))
    retention.run(engine, _settings(), now=now, trigger="test", drop_partitions=recorder)
    if engine.dialect.name == "postgresql":
        assert len(calls) == 1 and abs((calls[0] - (now - timedelta(days=200))).total_seconds()) < 3600
    else:
        assert calls == []  # SQLite: rows are deleted, there are no partitions


def test_policy_is_validated_saved_and_audited(engine):
    settings = _settings()
    with Session(engine) as session, session.begin():
        assert retention.policy(session, settings).source == "settings"
        with pytest.raises(retention.PolicyError) as err:
            retention.set_policy(session, settings, "ann", images_days=7, sketches_days=90, kept_days=30)
        assert err.value.field == "kept_days"
        with pytest.raises(retention.PolicyError) as err:
            retention.set_policy(session, settings, "ann", images_days=-1, sketches_days=None, kept_days=None)
        assert err.value.field == "images_days"
        with pytest.raises(retention.PolicyError):
            retention.set_policy(session, settings, "ann", images_days=None, sketches_days=None, kept_days=30)
    with Session(engine) as session, session.begin():
        pol = retention.set_policy(session, settings, "ann", images_days=7, sketches_days=90, kept_days=0)
    assert (pol.images_days, pol.sketches_days, pol.kept_days, pol.source) == (7, 90, None, "dashboard")
    with Session(engine) as session:
        change = session.execute(select(RetentionChange)).scalar_one()
        assert change.changed_by == "ann"
        assert change.before == {"images_days": 30, "sketches_days": 60, "kept_days": 200}
        assert change.after == {"images_days": 7, "sketches_days": 90, "kept_days": None}


def test_cli_reports_per_kind_as_json(engine, monkeypatch):
    from service.cli import main

    now = utcnow()
    _seed(engine, now)
    monkeypatch.setenv("SKETCHWATCH_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SKETCHWATCH_RETENTION_IMAGES_DAYS", "30")
    monkeypatch.setenv("SKETCHWATCH_RETENTION_SKETCHES_DAYS", "60")
    monkeypatch.setenv("SKETCHWATCH_RETENTION_KEPT_DAYS", "200")
    runner = CliRunner()
    dry = runner.invoke(main, ["retention", "run", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    dry_report = json.loads(dry.output)
    assert dry_report["dry_run"] and dry_report["removed"]["sketches"] == 2
    real = runner.invoke(main, ["retention", "run", "--json"])
    assert real.exit_code == 0, real.output
    assert json.loads(real.output)["removed"] == dry_report["removed"]
    text = runner.invoke(main, ["retention", "run"])
    assert text.exit_code == 0 and "removed:" in text.output
    shown = runner.invoke(main, ["retention", "show", "--json"])
    assert json.loads(shown.output)["kept_days"] == 200
    assert _count(engine, RetentionRun) == 3


# --------------------------------------------------------------------------- the admin page


CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@pytest.fixture
def admin_client(sqlite_app):
    """The SQLite app's test client logged in as an admin (and a reviewer account beside it)."""
    from service.core.security import hash_password
    from service.extensions import db

    with sqlite_app.app_context():
        db.session.add_all([User(username="ann", password_hash=hash_password("a-long-password"), role="admin"),
                            User(username="rex", password_hash=hash_password("a-long-password"), role="reviewer")])  # fmt: skip
        db.session.commit()
    c = sqlite_app.test_client()
    page = c.get("/login")
    resp = c.post("/login", data={"username": "ann", "password": "a-long-password",
                                  "csrf_token": CSRF.search(page.text).group(1)})  # fmt: skip
    assert resp.status_code == 302
    return c


def test_admin_edits_the_limits_with_csrf_and_the_change_is_recorded(admin_client, sqlite_app):
    page = admin_client.get("/admin/retention")
    assert page.status_code == 200 and 'data-testid="retention-policy"' in page.text
    token = CSRF.search(page.text).group(1)
    assert admin_client.post("/admin/retention", data={"images_days": "7"}).status_code == 400  # no CSRF token
    bad = admin_client.post("/admin/retention", data={"csrf_token": token, "images_days": "7", "sketches_days": "90",
                                                      "kept_days": "30"})  # fmt: skip
    assert bad.status_code == 400 and "at least as long" in bad.text
    ok = admin_client.post("/admin/retention", data={"csrf_token": token, "images_days": "7", "sketches_days": "90",
                                                     "kept_days": ""})  # fmt: skip
    assert ok.status_code == 302
    page = admin_client.get("/admin/retention")
    assert 'data-testid="limit-images_days">7 days' in page.text
    assert "set by ann" in page.text and 'data-testid="retention-change-row"' in page.text


def test_reviewers_cannot_see_or_change_retention(sqlite_app, admin_client):
    c = sqlite_app.test_client()
    page = c.get("/login")
    c.post("/login", data={"username": "rex", "password": "a-long-password", "csrf_token": CSRF.search(page.text).group(1)})
    assert c.get("/admin/retention").status_code == 403


# --------------------------------------------------------------------------- the beat task, on a live stack


def test_the_beat_task_applies_retention_on_the_alerts_worker(stack):
    """Real web, scoring and alerts workers on PostgreSQL and Redis: the beat's task, sent now, removes the old rows."""
    import time

    from celery import Celery

    from service.core.celery_app import ALERTS_QUEUE, RETENTION_TASK

    s = stack("postgres", alerts=True, env={"SKETCHWATCH_RETENTION_IMAGES_DAYS": "30",
                                            "SKETCHWATCH_RETENTION_SKETCHES_DAYS": "60",
                                            "SKETCHWATCH_RETENTION_KEPT_DAYS": "200"})  # fmt: skip
    # A sketch scored unflagged (no reconstruction kept), then flagged by a lowered threshold.
    resp = s.submit([{"drawing": [[[0, 120, 250, 10], [0, 250, 30, 200]], [[60, 200], [128, 128]]], "client_ref": "beat-x"}])
    assert resp.status_code == 202, resp.text
    [late] = [item["id"] for item in resp.json()["items"]]
    s.wait_for([late], {"scored"}, timeout=90)
    now = utcnow()
    with s.session() as session:
        session.execute(update(Sketch).where(Sketch.id == late).values(flagged=True, reconstruction=None))
        session.add_all([_sketch("beat-old", 90, now), _sketch("beat-flagged", 90, now, flagged=True),
                         _sketch("beat-image", 40, now, image=True), _sketch("beat-new", 1, now, image=True)])  # fmt: skip
        session.commit()
    producer = Celery("test-producer", broker=s.broker_url)
    try:
        producer.send_task(RETENTION_TASK, queue=ALERTS_QUEUE)
    finally:
        producer.close()
    deadline = time.monotonic() + 90
    while True:
        with s.session() as session:
            run = session.execute(select(RetentionRun).where(RetentionRun.trigger == "beat")).scalars().first()
        if run is not None:
            break
        assert time.monotonic() < deadline, "the alerts worker did not run the retention task"
        time.sleep(0.5)
    assert run.removed["sketches"] == 1 and run.removed["bitmaps"] == 1 and not run.dry_run
    with s.session() as session:
        left = {r.client_ref: r for r in session.execute(select(Sketch).where(Sketch.client_ref.like("beat-%"))).scalars()}
    assert set(left) == {"beat-flagged", "beat-image", "beat-new", "beat-x"}
    assert left["beat-image"].input_bitmap is None and left["beat-new"].input_bitmap is not None
    # The task also had the scoring worker compute the late-flagged sketch's reconstruction.
    while True:
        with s.session() as session:
            recon = session.execute(select(Sketch.reconstruction).where(Sketch.id == late)).scalar_one()
        if recon is not None:
            break
        assert time.monotonic() < deadline + 60, "the late-flagged sketch got no reconstruction"
        time.sleep(0.5)
    assert len(recon) == 784
