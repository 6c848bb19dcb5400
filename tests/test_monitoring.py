"""Monitoring over time: the time series (minute buckets from the sketches, hour and day buckets from the hourly
rollup plus the live hours), its marks, the per-client breakdown, drift, worker heartbeats, the API's scoping
per client, and the pages. In-process, on SQLite and on a fresh PostgreSQL database; expected values are
computed here in Python (numpy) from the rows the test stored.
"""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from stack_fixtures import fresh_pg_database

from service.core import drift, heartbeats, monitoring, rollups
from service.core.db import make_engine
from service.core.migrate import upgrade
from service.core.model_info import model_meta
from service.core.rollups import floor_time
from service.core.schema import (
    ApiKey,
    Sketch,
    StatsHourly,
    StatsRollupState,
    ThresholdChange,
    User,
    WorkerHeartbeat,
    utcnow,
)
from service.core.security import hash_api_key, hash_password, new_api_key

SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
# A fixed moment a little after an hour began, so the buckets of a test never shift under it.
NOW = datetime(2026, 11, 30, 12, 7, 30, tzinfo=timezone.utc)
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|<meta name="csrf-token" content="([^"]+)"')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A migrated database: a temp SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('monitoring') / 'm.db'}"
        upgrade(url)
        yield url
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def engine(database_url):
    """An engine on the module's database, emptied for each test."""
    eng = make_engine(database_url)
    with Session(eng) as s, s.begin():
        for model in (StatsHourly, StatsRollupState, ThresholdChange, WorkerHeartbeat, Sketch, ApiKey, User):
            s.execute(delete(model))
    yield eng
    eng.dispose()


def row(client, at, status="scored", score=None, threshold=0.5, version="v1", lag_s=0.5):
    """One sketch row's values."""
    scored = status == "scored"
    return Sketch(
        client=client, source_format="simplified", drawing=SQUARE, submitted_at=at, status=status,
        score=score if scored else None, threshold=threshold if scored else None,
        flagged=(score > threshold) if scored else None, model_version=version if scored else None,
        scored_at=at + timedelta(seconds=lag_s) if scored else None, attempts=1,
    )  # fmt: skip


def seed(engine, n=1500, hours=50, seed_=7):
    """Random sketches of three clients over the last ``hours`` before NOW; returns them as plain dicts."""
    rnd = random.Random(seed_)
    rows = []
    for _ in range(n):
        at = NOW - timedelta(seconds=rnd.uniform(1, hours * 3600))
        status = rnd.choices(["scored", "failed"], [0.96, 0.04])[0]
        version = "v1" if at < NOW - timedelta(hours=20) else "v2"
        # Half the sketches were scored at a threshold of 0.5, the other half at 0.7 (a change in between).
        threshold = 0.5 if at < NOW - timedelta(hours=10) else 0.7
        rows.append(row(rnd.choice(["acme", "globex", "initech"]), at, status, round(rnd.betavariate(2, 5), 6),
                        threshold, version, round(rnd.uniform(0.05, 3.0), 3)))  # fmt: skip
    with Session(engine, expire_on_commit=False) as s, s.begin():
        s.add_all(rows)
    return [
        {"client": r.client, "at": r.submitted_at, "status": r.status, "score": r.score, "threshold": r.threshold,
         "lag": (r.scored_at - r.submitted_at).total_seconds() if r.scored_at else None}  # fmt: skip
        for r in rows
    ]


def expected_points(rows, bucket, since, until, client=None):
    """The time series computed in Python from the stored rows."""
    out = {}
    for r in rows:
        if not since <= r["at"] < until or (client and r["client"] != client):
            continue
        key = floor_time(r["at"], bucket)
        p = out.setdefault(key, {"submitted": 0, "scored": 0, "flagged": 0, "failed": 0, "lags": [], "scores": []})
        p["submitted"] += 1
        if r["status"] == "failed":
            p["failed"] += 1
        if r["status"] == "scored":
            p["scored"] += 1
            p["flagged"] += r["score"] > r["threshold"]
            p["lags"].append(r["lag"])
            p["scores"].append(r["score"])
    return out


def check_series(series, rows, quantile_tolerance):
    expected = expected_points(rows, series.bucket, series.since, series.until, series.client)
    assert sum(p.submitted for p in series.points) == sum(e["submitted"] for e in expected.values())
    for p in series.points:
        e = expected.get(p.start)
        if e is None:
            assert (p.submitted, p.scored, p.p50, p.flag_rate) == (0, 0, None, None), p
            continue
        assert (p.submitted, p.scored, p.flagged, p.failed) == (e["submitted"], e["scored"], e["flagged"], e["failed"]), p.start
        if e["scores"]:
            assert p.flag_rate == pytest.approx(e["flagged"] / e["scored"])
            assert p.lag_avg_s == pytest.approx(np.mean(e["lags"]), abs=1e-3)
            assert p.lag_max_s == pytest.approx(max(e["lags"]), abs=1e-3)
            for q, got in ((50, p.p50), (95, p.p95)):
                assert got == pytest.approx(np.percentile(e["scores"], q), abs=quantile_tolerance), (p.start, q)


# --------------------------------------------------------------------------- the time series


def test_minute_buckets_are_exact_percentile_cont(engine):
    rows = seed(engine, n=2500, hours=3)
    with Session(engine) as s:
        series = monitoring.timeseries(s, "minute", NOW - timedelta(hours=2), NOW, now=NOW)
    assert len(series.points) == 121 and series.points[0].start == NOW.replace(second=0) - timedelta(hours=2)
    assert sum(1 for p in series.points if p.scored >= 2) > 100
    check_series(series, rows, quantile_tolerance=1e-9)


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_hour_and_day_buckets_match_python_live_and_rolled_up(engine, bucket):
    rows = seed(engine, n=3000, hours=60)
    since = NOW - timedelta(hours=55)
    with Session(engine) as s:
        live = monitoring.timeseries(s, bucket, since, NOW, now=NOW)
        assert rollups.rolled_until(s) is None
    check_series(live, rows, quantile_tolerance=0.01)
    with Session(engine) as s, s.begin():
        done = rollups.refresh(s, NOW)
    assert done.rolled_until == floor_time(NOW, "hour") and done.hours_rolled == 60 and done.rows_written > 0
    with Session(engine) as s:
        rolled = monitoring.timeseries(s, bucket, since, NOW, now=NOW)
        for client in ("acme", "initech"):
            check_series(monitoring.timeseries(s, bucket, since, NOW, client, now=NOW), rows, quantile_tolerance=0.01)
    check_series(rolled, rows, quantile_tolerance=0.01)
    assert [p.to_dict() for p in rolled.points] == [p.to_dict() for p in live.points]


def test_the_rollup_waits_for_queued_sketches_and_rerolls_late_rows(engine):
    seed(engine, n=400, hours=10)
    queued_at = NOW - timedelta(hours=3, minutes=20)
    with Session(engine) as s, s.begin():
        s.add(row("acme", queued_at, status="queued"))
    with Session(engine) as s, s.begin():
        first = rollups.refresh(s, NOW)
    # Nothing at or after the queued sketch's hour is final yet.
    assert first.rolled_until == floor_time(queued_at, "hour")
    with Session(engine) as s, s.begin():
        s.execute(Sketch.__table__.update().where(Sketch.status == "queued").values(status="failed"))
    with Session(engine) as s, s.begin():
        assert rollups.refresh(s, NOW).rolled_until == floor_time(NOW, "hour")
    # Rows inserted later with old times (an import): their hours are rolled again.
    old = NOW - timedelta(hours=6, minutes=30)
    with Session(engine) as s, s.begin():
        s.add_all([row("late", old, score=0.9) for _ in range(7)])
    with Session(engine) as s, s.begin():
        again = rollups.refresh(s, NOW)
    assert again.hours_rerolled == 1
    with Session(engine) as s:
        hour = s.execute(select(func.sum(StatsHourly.submitted)).where(StatsHourly.client == "late")).scalar_one()
        assert hour == 7
        series = monitoring.timeseries(s, "hour", NOW - timedelta(hours=12), NOW, "late", now=NOW)
        assert [(p.start, p.submitted, p.flagged) for p in series.points if p.submitted] == [(floor_time(old, "hour"), 7, 7)]


def test_a_first_refresh_can_commit_a_week_at_a_time(engine):
    rows = seed(engine, n=800, hours=20 * 24)
    with Session(engine) as s:
        live = monitoring.timeseries(s, "day", NOW - timedelta(days=21), NOW, now=NOW)
    calls = []
    while True:
        with Session(engine) as s, s.begin():
            calls.append(rollups.refresh(s, NOW, max_chunks=1))
        if calls[-1].complete:
            break
    assert [c.complete for c in calls] == [False, False, True]
    assert calls[1].rolled_until - calls[0].rolled_until == rollups.CHUNK
    with Session(engine) as s:
        rolled = monitoring.timeseries(s, "day", NOW - timedelta(days=21), NOW, now=NOW)
    assert [p.to_dict() for p in rolled.points] == [p.to_dict() for p in live.points]
    check_series(rolled, rows, quantile_tolerance=0.01)


def test_marks_show_threshold_changes_and_model_versions_first_seen(engine):
    seed(engine, n=600, hours=40)
    changed = NOW - timedelta(hours=10)
    with Session(engine) as s, s.begin():
        s.add(ThresholdChange(value=0.7, previous=0.5, changed_by="ada", reason="fewer alarms", created_at=changed))
        s.add(ThresholdChange(value=0.4, previous=0.3, changed_by="ada", reason="long ago", created_at=NOW - timedelta(days=9)))
        s.add(row("globex", NOW - timedelta(minutes=30), score=0.3, version="v3"))
    for refreshed in (False, True):
        if refreshed:
            with Session(engine) as s, s.begin():
                rollups.refresh(s, NOW)
        with Session(engine) as s:
            marks = monitoring.timeseries(s, "hour", NOW - timedelta(hours=30), NOW, now=NOW).marks
            first_v2 = s.execute(select(func.min(Sketch.submitted_at)).where(Sketch.model_version == "v2")).scalar_one()
            acme = monitoring.timeseries(s, "hour", NOW - timedelta(hours=30), NOW, "acme", now=NOW).marks
        assert [(m.kind, m.label) for m in marks] == [
            ("model", "model v2"), ("threshold", "threshold 0.5 → 0.7"), ("model", "model v3")
        ]
        assert marks[0].at == rollups.as_datetime(first_v2) and marks[1].at == changed
        assert [m.label for m in acme if m.kind == "model"] == ["model v2"]  # v3 scored only globex's


def test_bad_requests_name_their_field(engine):
    with Session(engine) as s:
        for args, field in (({"bucket": "week"}, "bucket"), ({"bucket": "minute", "since": NOW - timedelta(days=2)}, "since"),
                            ({"bucket": "hour", "since": NOW, "until": NOW - timedelta(hours=1)}, "since")):  # fmt: skip
            with pytest.raises(monitoring.SeriesError) as err:
                monitoring.timeseries(s, now=NOW, **args)
            assert err.value.field == field


# --------------------------------------------------------------------------- per client


def test_the_client_breakdown_compares_each_client_with_its_own_week(engine):
    rnd = random.Random(3)
    rows = []
    for h in range(1, 24 * 8):
        at = NOW - timedelta(hours=h, minutes=rnd.uniform(0, 59))
        # acme: a steady 10% flag rate, jumping to 60% in the last 24 hours; globex steady at 10%, half the volume.
        rate = 0.6 if h < 24 else 0.1
        rows += [row("acme", at + timedelta(seconds=k), score=0.9 if rnd.random() < rate else 0.1) for k in range(4)]
        rows += [row("globex", at + timedelta(seconds=k), score=0.9 if rnd.random() < 0.1 else 0.1) for k in range(2)]
    rows.append(row("newbie", NOW - timedelta(minutes=5), score=0.2))
    with Session(engine, expire_on_commit=False) as s, s.begin():
        s.add_all(rows)
        rollups.refresh(s, NOW)
    with Session(engine) as s:
        out = {r.client: r for r in monitoring.client_breakdown(s, NOW)}
    acme, globex, newbie = out["acme"], out["globex"], out["newbie"]
    recent_start = floor_time(NOW, "hour") - timedelta(hours=23)
    assert acme.submitted == sum(1 for r in rows if r.client == "acme" and r.submitted_at >= recent_start)
    assert acme.flag_rate > 0.45 and acme.base_flag_rate < 0.2 and acme.rate_change > 0.3 and acme.rate_z > 3 and acme.unusual
    assert abs(globex.rate_change) < 0.1 and abs(globex.volume_change) < 0.2
    assert newbie.submitted == 1 and newbie.base_flag_rate is None and newbie.volume_change is None
    last = max(r.submitted_at for r in rows if r.client == "acme")
    assert acme.last_seen == rollups.as_datetime(last)
    assert list(out) == ["acme", "globex", "newbie"]  # busiest first


# --------------------------------------------------------------------------- drift


def test_drift_against_the_model_and_against_a_period(engine):
    meta = model_meta(None)
    ref = drift.model_reference(meta)
    assert ref.cuts == sorted(ref.cuts) and sum(ref.shares) == pytest.approx(1.0) and ref.model_version == meta["version"]
    rnd = random.Random(5)
    edges = [0.0, *ref.cuts, 1.0]

    def like_reference(n):
        out = []
        for share, lo, hi in zip(ref.shares, edges, edges[1:]):
            out += [rnd.uniform(lo, hi - 1e-9) for _ in range(round(n * share))]
        return out

    version = meta["version"]
    stable = [row("acme", NOW - timedelta(minutes=50, seconds=i), score=sc, version=version)
              for i, sc in enumerate(like_reference(400))]  # fmt: skip
    shifted = [row("globex", NOW - timedelta(minutes=20, seconds=i), score=rnd.uniform(0.85, 1.0), version=version)
               for i in range(200)]  # fmt: skip
    other_model = [row("acme", NOW - timedelta(minutes=10, seconds=i), score=0.99, version="old") for i in range(100)]
    with Session(engine) as s, s.begin():
        s.add_all(stable + shifted + other_model)
    with Session(engine) as s:
        calm = drift.measure(s, ref, NOW - timedelta(hours=1), NOW, "acme")
        hot = drift.measure(s, ref, NOW - timedelta(hours=1), NOW, "globex")
        few = drift.measure(s, ref, NOW - timedelta(minutes=21), NOW - timedelta(minutes=20, seconds=170), "globex")
        period = drift.period_reference(s, NOW - timedelta(hours=1), NOW, "acme")
        against_period = drift.measure(s, period, NOW - timedelta(hours=1), NOW, "globex")
    assert calm.n == 400 and calm.status == "stable" and calm.psi < 0.1  # the other model's sketches are left out
    assert hot.status == "drift" and hot.psi > 1.0
    assert few.status == "insufficient" and few.n < drift.MIN_COUNT
    assert period.kind == "period" and period.n == 500, period
    assert len(period.shares) == len(period.cuts) + 1 >= 6 and sum(period.shares) == pytest.approx(1.0)
    assert against_period.status == "drift"
    # PSI itself: scipy's entropy both ways, floored shares.
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx((0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5))


# --------------------------------------------------------------------------- queue and workers


def test_queue_health_and_worker_heartbeats(engine):
    with Session(engine) as s, s.begin():
        s.add_all([row("acme", utcnow() - timedelta(seconds=40), status="queued"), row("acme", utcnow(), status="queued")])
    with engine.begin() as conn:
        heartbeats.record(conn, "celery@a", "sketchwatch", 2, 100, utcnow())
        heartbeats.record(conn, "alerts@a", "sketchwatch.alerts", 4, 101, utcnow())
        heartbeats.record(conn, "celery@b", "sketchwatch", 1, 102, utcnow())
        heartbeats.stopped(conn, "celery@b")
        conn.execute(WorkerHeartbeat.__table__.update().where(WorkerHeartbeat.name == "celery@a")
                     .values(seen_at=utcnow() - timedelta(minutes=5)))  # fmt: skip
    with Session(engine) as s:
        health = monitoring.queue_health(s)
    assert health.queued == 2 and health.unsent == 2 and 39 <= health.oldest_age_s < 90
    states = {w.name: (w.state, w.runs_alerts) for w in health.workers}
    assert states == {"celery@a": ("missing", False), "alerts@a": ("alive", True), "celery@b": ("stopped", False)}


# --------------------------------------------------------------------------- the API and the pages


def _app(database_url, tmp_path):
    from service.app import create_app

    return create_app({"env": "testing", "data_dir": tmp_path, "database_url": database_url, "ratelimit_enabled": False,
                       "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}", "secret_key": "m" * 40,
                       "log_json": False, "log_level": "WARNING"})  # fmt: skip


def _keys(engine) -> dict[str, str]:
    keys = {name: new_api_key() for name in ("acme", "globex", "ops")}
    with Session(engine) as s, s.begin():
        for name, key in keys.items():
            s.add(ApiKey(name=name, prefix=key[:12], key_hash=hash_api_key(key), admin=name == "ops"))
        s.add(User(username="rev", password_hash=hash_password("rev-password-1"), role="reviewer"))
    return keys


def test_the_api_time_series_is_scoped_per_client(engine, database_url, tmp_path):
    from service.extensions import db

    now = utcnow()
    with Session(engine) as s, s.begin():
        s.add_all([row("acme", now - timedelta(hours=h, minutes=1), score=0.9) for h in range(5)])
        s.add_all([row("globex", now - timedelta(hours=h, minutes=2), score=0.1) for h in range(3)])
    keys = _keys(engine)
    app = _app(database_url, tmp_path)
    api = app.test_client()

    def get(key, **query):
        return api.get("/api/v1/stats/timeseries", query_string=query, headers={"Authorization": f"Bearer {keys[key]}"})

    def total(resp):
        return sum(p["submitted"] for p in resp.json["points"])

    try:
        acme = get("acme", bucket="hour")
        assert acme.status_code == 200 and acme.json["client"] == "acme" and total(acme) == 5
        assert {p["flag_rate"] for p in acme.json["points"] if p["scored"]} == {1.0}
        assert total(get("globex", bucket="hour")) == 3 and total(get("globex", bucket="day")) == 3
        # A client key never sees another client's numbers: naming one is a 403.
        refused = get("globex", bucket="hour", client="acme")
        assert refused.status_code == 403 and refused.json["error"]["field"] == "client"
        assert get("acme", client="acme").status_code == 200
        everyone = get("ops", bucket="hour")
        assert everyone.json["client"] is None and total(everyone) == 8
        assert total(get("ops", bucket="hour", client="globex")) == 3
        assert api.get("/api/v1/stats/timeseries").status_code == 401
        for query, field in (({"bucket": "week"}, "bucket"), ({"since": "yesterday"}, "since"),
                             ({"bucket": "minute", "since": (now - timedelta(days=3)).isoformat()}, "since")):  # fmt: skip
            bad = get("acme", **query)
            assert bad.status_code == 400 and bad.json["error"]["field"] == field, (query, bad.json)
        minute = get("acme", bucket="minute", since=(now - timedelta(minutes=90)).isoformat())
        assert len(minute.json["points"]) in (90, 91) and total(minute) == 2
    finally:
        db.dispose()


def _login(app, username, password):
    client = app.test_client()
    match = CSRF.search(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": match.group(1) or match.group(2)})
    assert r.status_code == 302
    return client


def test_monitoring_pages_render_for_staff(engine, database_url, tmp_path):
    from service.extensions import db

    now = utcnow()
    with Session(engine) as s, s.begin():
        s.add_all([row("acme", now - timedelta(hours=h, minutes=3), score=0.9 if h % 2 else 0.2) for h in range(30)])
        s.add_all([row("globex", now - timedelta(minutes=m), score=0.3) for m in range(1, 40)])
        s.add(ThresholdChange(value=0.6, previous=0.5, changed_by="ada", reason="", created_at=now - timedelta(hours=5)))
    with engine.begin() as conn:
        heartbeats.record(conn, "alerts@x", "sketchwatch.alerts", 4, 1, now)
    _keys(engine)
    app = _app(database_url, tmp_path)
    try:
        staff = _login(app, "rev", "rev-password-1")
        page = staff.get("/").get_data(as_text=True)
        assert 'data-testid="trend-volume"' in page and 'data-testid="trend-rates"' in page
        assert page.count('data-testid="trend-bucket"') == 48  # default: hour buckets over 48 hours
        assert 'data-kind="threshold"' in page and 'data-testid="trend-line-flag_rate"' in page
        minute = staff.get("/?range=1h").get_data(as_text=True)
        assert minute.count('data-testid="trend-bucket"') in (60, 61) and '<option value="minute" selected>' in minute
        one = staff.get("/?client=globex&bucket=hour")
        assert one.status_code == 200 and "client globex" in one.get_data(as_text=True)
        assert '<option value="globex" selected>' in one.get_data(as_text=True)
        bad = staff.get("/?range=30d&bucket=minute")
        assert bad.status_code == 400 and 'data-testid="trend"' in bad.get_data(as_text=True)
        clients = staff.get("/monitoring/clients").get_data(as_text=True)
        assert re.findall(r'data-testid="client-row" data-client="([^"]+)"', clients) == ["globex", "acme"]
        health = staff.get("/monitoring")
        text = health.get_data(as_text=True)
        assert health.status_code == 200 and 'data-testid="drift-status"' in text and "alerts@x" in text
        assert 'data-testid="no-alerts-worker"' not in text
        period = staff.get("/monitoring", query_string={"ref": "period", "ref_since": (now - timedelta(days=2)).isoformat(),
                                                        "ref_until": now.isoformat(), "window": 3600})  # fmt: skip
        assert period.status_code == 200 and "to" in period.get_data(as_text=True)
        assert staff.get("/monitoring?ref=nonsense").status_code == 400
        timeseries = staff.get("/api/v1/stats/timeseries?bucket=day")  # a dashboard session sees every client
        assert sum(p["submitted"] for p in timeseries.json["points"]) == 69
    finally:
        db.dispose()


def test_api_timeseries_is_in_the_openapi_document():
    from service.api.openapi import build_document
    from service.core.settings import get_settings

    op = build_document(get_settings({"env": "testing"}))["paths"]["/stats/timeseries"]["get"]
    assert op["operationId"] == "statsTimeseries" and {"400", "401", "403", "429", "503"} <= set(op["responses"])
    assert [p["name"] for p in op["parameters"]] == ["bucket", "since", "until", "client"]
    json.dumps(op)
