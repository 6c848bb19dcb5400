"""Fault injection on a live stack, and the operational surface (JSON logs, /metrics, graceful shutdown).

The promise: an accepted sketch is never lost. One stack for the module: granian web + Celery worker
(with the sweeper) on a fresh PostgreSQL database that the stack's processes reach through a TCP proxy
we can cut, and a private redis-server (never the shared one on 6379) we can stop. While a client
submits (re-sending a batch with the same client_refs after a 503 or a dropped connection, as the API
documents), the worker is SIGKILLed mid-batch, SIGTERMed, Redis goes down for 10 s and PostgreSQL
becomes unreachable. Afterwards every acknowledged sketch must be stored exactly once and be scored
(or failed with a reason), and a trigger on the test database proves none was scored twice.

The long version, with figures, is ``python -m bench.soak`` (docs/reliability.md).
"""

from __future__ import annotations

import http.client
import json
import signal
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text

from bench.soak import Ledger, RedisServer, Submitter, TcpProxy, account, install_audit, load_items, wait_until_done
from service.core.schema import ApiKey, Sketch, utcnow
from service.core.security import hash_api_key, new_api_key
from stack_fixtures import Stack, wait_for

pytestmark = pytest.mark.slow

# Recovery on a test's time scale: lost tasks are re-sent after a few seconds, unacked messages come
# back after 20 s, and a sketch may be tried 6 times before it is given up.
FAULT_ENV = {
    "SKETCHWATCH_SWEEP_INTERVAL_S": "1",
    "SKETCHWATCH_SWEEP_AFTER_S": "8",
    "SKETCHWATCH_VISIBILITY_TIMEOUT_S": "20",
    "SKETCHWATCH_MAX_ATTEMPTS": "6",
    "SKETCHWATCH_TASK_MAX_RETRIES": "8",
    "SKETCHWATCH_RATELIMIT_SUBMIT": "1000000 per minute",
}
EX_CONFIG = 78
DRAIN_TIMEOUT_S = 120.0


class ProxiedStack(Stack):
    """The test stack, with every stack process reaching PostgreSQL through ``proxy`` (the test itself goes direct)."""

    def __init__(self, *args, proxy: TcpProxy, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proxy = proxy

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Stack environment with the database URL rewritten to the proxy's port."""
        env = super().environment(extra)
        parts = urlsplit(self.database_url)
        env["SKETCHWATCH_DATABASE_URL"] = self.database_url.replace(
            f"@{parts.hostname}:{parts.port}/", f"@127.0.0.1:{self.proxy.port}/"
        )
        return env


class Faulty:
    """The module's stack and the two things we break: the private Redis and the PostgreSQL proxy."""

    def __init__(self, stack: ProxiedStack, redis: RedisServer, proxy: TcpProxy) -> None:
        self.stack = stack
        self.redis = redis
        self.proxy = proxy

    def new_client(self) -> tuple[str, str]:
        """A fresh API key, so each test accounts only for its own sketches."""
        name, key = f"fault-{uuid.uuid4().hex[:8]}", new_api_key()
        with self.stack.session() as s:
            s.add(ApiKey(name=name, prefix=key[:12], key_hash=hash_api_key(key)))
        return name, key

    def wait_busy(self, timeout: float = 30.0) -> bool:
        """Wait until the worker holds a delivered, unacknowledged task (it is mid-batch)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.redis.hlen("unacked") > 0:
                    return True
            except (OSError, RuntimeError):
                pass
            time.sleep(0.02)
        return False

    def ensure_worker(self) -> None:
        """A ready worker, whatever the previous test did to it."""
        proc = self.stack.procs.get("worker")
        if proc is None or proc.poll() is not None:
            self.stack.procs.pop("worker", None)
            self.stack.start_worker()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    redis = RedisServer(workdir / "redis")
    redis.start()
    from sqlalchemy.engine import make_url

    from stack_fixtures import PG_ADMIN_URL

    pg = make_url(PG_ADMIN_URL)
    proxy = TcpProxy(pg.host or "127.0.0.1", pg.port or 5432).start()
    stack = ProxiedStack(workdir / "stack", broker_url=redis.url, env=FAULT_ENV, proxy=proxy)
    stack.workdir.mkdir(parents=True, exist_ok=True)
    try:
        stack.start()
        install_audit(stack.engine)
        yield Faulty(stack, redis, proxy)
    finally:
        stack.close()
        proxy.close()
        redis.stop()


@pytest.fixture
def fresh(faulty):
    """Before each test: proxy forwarding, Redis up, a worker running."""
    if not faulty.proxy.is_up:
        faulty.proxy.restore()
    if not faulty.redis.ping():
        faulty.redis.start()
    faulty.ensure_worker()
    return faulty


@pytest.fixture(scope="module")
def items():
    return load_items(400)


def settle(faulty: Faulty, client: str, ledger: Ledger, expected: int):
    """Wait for every acknowledged sketch to finish, then return the accounting (asserting it is clean)."""
    assert len(ledger.ids) == expected, f"{len(ledger.ids)} of {expected} acknowledged; rejected: {list(ledger.rejected.items())[:3]}"
    took = wait_until_done(faulty.stack.engine, client, expected, DRAIN_TIMEOUT_S)
    acc = account(faulty.stack.engine, client, ledger)
    assert acc.ok, f"{acc.problems()} (done after {took:.1f} s)\n" + faulty.stack._tail("worker")
    assert not ledger.server_errors, ledger.server_errors[:5]
    assert ledger.retry_after_missing == 0
    return acc


# --------------------------------------------------------------------------- worker crashes


def test_worker_sigkilled_mid_batch_repeatedly_loses_nothing(fresh, items):
    client, key = fresh.new_client()
    ledger = Ledger()
    total = 240
    submitter = Submitter(fresh.stack.url, key, ledger, items, total, batch=8, concurrency=2, pace_s=0.05).start()
    mid_batch = 0
    for _ in range(2):
        mid_batch += fresh.wait_busy()
        fresh.stack.kill_worker(signal.SIGKILL)
        fresh.stack.start_worker()
    assert submitter.join(timeout=180)
    acc = settle(fresh, client, ledger, total)
    assert mid_batch == 2, "the worker was not caught holding a task"
    assert acc.by_status == {"scored": total}, acc.by_status


def test_worker_sigterm_mid_batch_finishes_or_requeues(fresh, items):
    client, key = fresh.new_client()
    ledger = Ledger()
    total = 160
    submitter = Submitter(fresh.stack.url, key, ledger, items, total, batch=20, concurrency=2, pace_s=0.05).start()
    assert fresh.wait_busy()
    worker = fresh.stack.procs["worker"]
    worker.send_signal(signal.SIGTERM)  # to the main process, as an orchestrator does
    assert worker.wait(timeout=60) == 0, fresh.stack._tail("worker")
    assert "warm shutdown" in fresh.stack.log("worker").lower()
    fresh.stack.procs.pop("worker")
    fresh.stack.start_worker()
    assert submitter.join(timeout=120)
    acc = settle(fresh, client, ledger, total)
    assert acc.by_status == {"scored": total}
    # A warm shutdown is not a crash: the task in hand finished, and a message it had prefetched went
    # back to the queue flagged "redelivered", which the worker counts as one attempt at most.
    with fresh.stack.session() as s:
        assert s.scalar(select(func.max(Sketch.attempts)).where(Sketch.client == client)) <= 1


# --------------------------------------------------------------------------- broker and database outages


def test_redis_down_for_10_seconds_during_submission(fresh, items):
    client, key = fresh.new_client()
    ledger = Ledger()
    total = 160
    submitter = Submitter(fresh.stack.url, key, ledger, items, total, batch=4, concurrency=2, pace_s=0.1).start()
    time.sleep(2)
    fresh.redis.stop(signal.SIGKILL)  # a crash: every queued message is gone
    down_since = time.monotonic()
    time.sleep(10)
    acknowledged_while_down = len(ledger.ids)
    fresh.redis.start()
    assert submitter.join(timeout=180)
    assert time.monotonic() - down_since >= 10
    # Intake either stored the sketch (202, scored later via the sweeper) or said 503 with Retry-After.
    assert set(ledger.statuses) <= {202, 503}, (ledger.statuses, ledger.connection_errors)
    assert acknowledged_while_down > 0
    acc = settle(fresh, client, ledger, total)
    assert acc.by_status == {"scored": total}, acc.by_status


def test_postgres_unreachable_during_submission(fresh, items):
    client, key = fresh.new_client()
    ledger = Ledger()
    total = 160
    submitter = Submitter(fresh.stack.url, key, ledger, items, total, batch=4, concurrency=2, pace_s=0.1).start()
    time.sleep(2)
    fresh.proxy.cut()
    time.sleep(5)
    fresh.proxy.restore()
    assert submitter.join(timeout=180)
    assert ledger.statuses.get(503, 0) > 0, f"the outage was never seen: {ledger.statuses}"
    assert set(ledger.statuses) <= {200, 202, 503}, (ledger.statuses, ledger.connection_errors)
    # Nothing half-written: a batch is stored whole or not at all, and re-sending it stored nothing twice.
    acc = settle(fresh, client, ledger, total)
    assert acc.by_status == {"scored": total}, acc.by_status


def test_worker_retries_while_postgres_is_unreachable(fresh, items):
    client, key = fresh.new_client()
    resp = requests.post(
        fresh.stack.url + "/api/v1/sketches",
        json=[{**item, "client_ref": f"pg-{i}"} for i, item in enumerate(items[:30])],
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 202
    ids = [item["id"] for item in resp.json()["items"]]
    # Cut as soon as the worker picks the batch up, so it meets the outage mid-task.
    fresh.proxy.cut()
    time.sleep(6)
    fresh.proxy.restore()
    rows = fresh.stack.wait_for(ids, {"scored"}, timeout=DRAIN_TIMEOUT_S)
    assert all(row.scored_at is not None and row.score is not None for row in rows.values())
    with fresh.stack.engine.connect() as conn:
        twice = conn.execute(
            text("SELECT count(*) FROM soak_audit WHERE new_status = 'scored' AND sketch_id = ANY(:ids) "
                 "GROUP BY sketch_id HAVING count(*) > 1"), {"ids": ids}
        ).all()  # fmt: skip
    assert twice == []


# --------------------------------------------------------------------------- poison input


def test_a_poison_sketch_fails_with_its_error_and_blocks_nothing(fresh):
    from celery import Celery

    from service.core.celery_app import QUEUE, SCORE_TASK

    client = f"poison-{uuid.uuid4().hex[:8]}"
    good = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
    rows = [
        {"drawing": [[["x", "y"], ["a", "b"]]], "input_bitmap": None},  # strings: the rasterizer raises
        {"drawing": [[[0, 1]]], "input_bitmap": None},  # a stroke with one row
        {"drawing": None, "input_bitmap": b"\x00" * 10},  # a truncated bitmap
    ] + [{"drawing": good, "input_bitmap": None}] * 5
    with fresh.stack.session() as s:
        sketches = [
            Sketch(client=client, client_ref=f"p{i}", source_format="simplified", status="queued", attempts=0,
                   submitted_at=utcnow(), enqueued_at=utcnow(), **row)
            for i, row in enumerate(rows)
        ]  # fmt: skip
        s.add_all(sketches)
        s.flush()
        ids = [sk.id for sk in sketches]
    poison, healthy = ids[:3], ids[3:]
    sender = Celery(broker=fresh.redis.url)
    sender.conf.task_default_queue = QUEUE
    sender.send_task(SCORE_TASK, args=[ids])  # poison and healthy in one batch
    started = time.monotonic()
    fresh.stack.wait_for(healthy, {"scored"}, timeout=60)
    healthy_after = time.monotonic() - started
    done = fresh.stack.wait_for(poison, {"failed"}, timeout=DRAIN_TIMEOUT_S)
    max_attempts = int(FAULT_ENV["SKETCHWATCH_MAX_ATTEMPTS"])
    for sketch_id, expected in zip(poison, ("rasterization failed", "rasterization failed", "784")):
        row = done[sketch_id]
        assert expected in (row.error or ""), row.error
        assert max_attempts <= row.attempts <= max_attempts + 1, row.attempts
        assert row.score is None and row.scored_at is None
    assert healthy_after < 30, f"healthy sketches waited {healthy_after:.0f} s behind the poison"


# --------------------------------------------------------------------------- the model


def _bad_model_dirs(root: Path, good: Path | None) -> dict[str, Path]:
    dirs = {"missing": root / "does-not-exist"}
    empty = root / "empty"
    empty.mkdir()
    dirs["empty"] = empty
    if good is not None and (good / "model.json").is_file():
        corrupt = root / "corrupt-keras"
        corrupt.mkdir()
        (corrupt / "model.json").write_bytes((good / "model.json").read_bytes())
        (corrupt / "model.keras").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
        dirs["corrupt keras"] = corrupt
        truncated = root / "truncated-keras"
        truncated.mkdir()
        (truncated / "model.json").write_bytes((good / "model.json").read_bytes())
        data = (good / "model.keras").read_bytes()
        (truncated / "model.keras").write_bytes(data[: len(data) // 2])
        dirs["truncated keras"] = truncated
        bad_json = root / "bad-json"
        bad_json.mkdir()
        (bad_json / "model.json").write_text("{not json")
        (bad_json / "model.keras").write_bytes(data)
        dirs["bad model.json"] = bad_json
        wrong = root / "wrong-archive"
        wrong.mkdir()
        (wrong / "model.json").write_bytes((good / "model.json").read_bytes())
        with zipfile.ZipFile(wrong / "model.keras", "w") as archive:
            archive.writestr("config.json", "{}")
            archive.writestr("metadata.json", "{}")
        dirs["valid zip, not a model"] = wrong
    return dirs


def _good_model_dir(stack) -> Path | None:
    from models.artifact import shipped_model_dir

    path = Path(stack.model_dir) if stack.model_dir else shipped_model_dir()
    return path if path.is_dir() else None


def test_a_missing_or_corrupt_model_stops_the_worker_before_it_takes_a_task(fresh, tmp_path):
    stack = fresh.stack
    stack.stop_process("worker")
    client, key = fresh.new_client()
    resp = requests.post(stack.url + "/api/v1/sketches", json={"drawing": [[[0, 9], [0, 9]]]},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    assert resp.status_code == 202
    sketch_id = resp.json()["id"]
    # The web process's sender thread publishes the task just after the 202.
    wait_for(lambda: fresh.redis.llen("sketchwatch") >= 1, 10, "the scoring task never reached Redis")
    for i, (label, path) in enumerate(_bad_model_dirs(tmp_path, _good_model_dir(stack)).items()):
        name = f"badmodel{i}"
        proc = stack.start_worker(env={"SKETCHWATCH_MODEL_DIR": str(path)}, wait=False, name=name)
        try:
            code = proc.wait(timeout=180)
        except Exception:  # noqa: BLE001 - report the log, then fail
            stack.stop_process(name)
            raise AssertionError(f"{label}: the worker kept running\n{stack._tail(name)}") from None
        log = stack.log(name)
        stack.stop_process(name)
        assert code == EX_CONFIG, f"{label}: exit status {code}\n{log[-2000:]}"
        assert str(path) in log and "model" in log.lower(), f"{label}: the error does not name the model\n{log[-2000:]}"
        # It took nothing: the sketch is still queued and its message still waits in Redis.
        assert stack.statuses([sketch_id]) == {sketch_id: "queued"}, label
        assert fresh.redis.llen("sketchwatch") >= 1, label
    stack.start_worker()
    stack.wait_for([sketch_id], {"scored"}, timeout=60)


# --------------------------------------------------------------------------- operations


def _json_lines(text_: str) -> list[dict]:
    out = []
    for line in text_.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _mentions(record: dict, sketch_id: int) -> bool:
    for key in ("sketch_id", "sketch_ids"):
        value = record.get(key)
        if value == sketch_id or (isinstance(value, list) and sketch_id in value):
            return True
    return False


def test_logs_are_json_and_follow_a_sketch_through_intake_and_worker(fresh):
    client, key = fresh.new_client()
    resp = requests.post(fresh.stack.url + "/api/v1/sketches", json={"drawing": [[[0, 80], [0, 80]]]},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    sketch_id = resp.json()["id"]
    fresh.stack.wait_for([sketch_id], {"scored"}, timeout=60)
    time.sleep(0.5)
    worker_records = _json_lines(fresh.stack.log("worker"))
    web_records = _json_lines(fresh.stack.log("web"))
    assert worker_records and all({"ts", "level", "logger", "msg"} <= set(r) for r in worker_records)
    assert any(_mentions(r, sketch_id) for r in worker_records), "no worker log line names the sketch"
    assert any(_mentions(r, sketch_id) for r in web_records), "no intake log line names the sketch"


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    resp = requests.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200, resp.status_code
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_endpoint_reports_the_pipeline_from_sql(fresh):
    stack = fresh.stack
    time.sleep(6)  # past the collector's cache
    values = _metrics(stack.url)
    with stack.session() as s:
        counts = dict(s.execute(select(Sketch.status, func.count()).group_by(Sketch.status)).all())
        flagged = s.scalar(select(func.count()).where(Sketch.flagged.is_(True)))
    assert values[("sketchwatch_submissions_total", ())] == sum(counts.values())
    assert values[("sketchwatch_scored_total", ())] == counts.get("scored", 0)
    assert values[("sketchwatch_failures_total", ())] == counts.get("failed", 0)
    assert values[("sketchwatch_flagged", ())] == flagged
    assert values[("sketchwatch_metrics_source_up", (("source", "database"),))] == 1.0
    assert values[("sketchwatch_metrics_source_up", (("source", "broker"),))] == 1.0
    assert ("sketchwatch_queue_depth", (("source", "broker"),)) in values
    assert any(name == "sketchwatch_http_requests_total" for name, _ in values)


def test_web_sigterm_lets_an_in_flight_request_finish(fresh, items):
    stack = fresh.stack
    client, key = fresh.new_client()
    body = json.dumps([{**item, "client_ref": f"term-{i}"} for i, item in enumerate(items[:50])]).encode()
    host, port = "127.0.0.1", stack.port
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.putrequest("POST", "/api/v1/sketches")
    conn.putheader("Authorization", f"Bearer {key}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])  # the request is now in flight: the server is reading its body
    time.sleep(0.5)
    web = stack.procs["web"]
    web.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    conn.send(body[len(body) // 2 :])
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    assert resp.status == 202 and answer["accepted"] == 50
    assert web.wait(timeout=60) == 0
    stack.procs.pop("web")
    ids = [item["id"] for item in answer["items"]]
    stack.wait_for(ids, {"scored"}, timeout=DRAIN_TIMEOUT_S)
    stack.start_web()
    assert requests.get(stack.url + "/healthz", timeout=5).status_code == 200


# --------------------------------------------------------------------------- /metrics in-process (no stack)


@pytest.fixture(params=["sqlite", "postgresql"])
def metrics_engine(request, tmp_path):
    """A migrated database with a known mix of sketches, on SQLite and on PostgreSQL."""
    from datetime import timedelta

    from service.core.db import make_engine
    from service.core.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metrics.db'}"
        upgrade(url)
        drop = None
    else:
        from stack_fixtures import create_pg_database, drop_pg_database

        url = create_pg_database()
        drop = drop_pg_database
    engine = make_engine(url)
    now = utcnow()
    rows = []
    for i, latency in enumerate((0.3, 1.5, 4.0, 40.0)):
        rows.append(Sketch(client="m", client_ref=f"s{i}", source_format="simplified", status="scored", attempts=0,
                           submitted_at=now - timedelta(seconds=100), scored_at=now - timedelta(seconds=100 - latency),
                           score=float(i), flagged=i >= 2, threshold=1.5, model_version="v"))  # fmt: skip
    rows.append(Sketch(client="m", client_ref="old", source_format="simplified", status="scored", attempts=0,
                       submitted_at=now - timedelta(hours=2), scored_at=now - timedelta(hours=1), score=0.0,
                       flagged=False, threshold=1.5, model_version="v"))  # fmt: skip
    rows.append(Sketch(client="m", client_ref="f", source_format="simplified", status="failed", attempts=5, error="x",
                       submitted_at=now))  # fmt: skip
    rows.append(Sketch(client="m", client_ref="q1", source_format="simplified", status="queued", attempts=0,
                       submitted_at=now - timedelta(seconds=30), enqueued_at=now))  # fmt: skip
    rows.append(Sketch(client="m", client_ref="q2", source_format="simplified", status="queued", attempts=0, submitted_at=now))
    rows.append(Sketch(client="m", client_ref="q3", source_format="simplified", status="queued", attempts=0, submitted_at=now))
    from sqlalchemy.orm import Session

    with Session(engine) as s:
        s.add_all(rows)
        s.commit()
    yield engine
    engine.dispose()
    if drop:
        drop(url)


def _collect(collector) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in collector.collect():
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_pipeline_collector_counts_from_sql(metrics_engine):
    from service.metrics import PipelineCollector

    values = _collect(PipelineCollector(lambda: metrics_engine, cache_s=0))
    assert values[("sketchwatch_submissions_total", ())] == 9
    assert values[("sketchwatch_scored_total", ())] == 5
    assert values[("sketchwatch_failures_total", ())] == 1
    assert values[("sketchwatch_sketches", (("status", "queued"),))] == 3
    assert values[("sketchwatch_flagged", ())] == 2
    assert values[("sketchwatch_unsent", ())] == 2
    assert values[("sketchwatch_queue_depth", (("source", "database"),))] == 3
    assert 25 <= values[("sketchwatch_oldest_queued_age_seconds", ())] < 120
    # The latency histogram covers the recent window only (the 2-hour-old sketch is outside it).
    bucket = lambda le: values[("sketchwatch_scoring_latency_seconds_bucket", (("le", le),))]  # noqa: E731
    assert (bucket("0.25"), bucket("0.5"), bucket("2.5"), bucket("5.0"), bucket("30.0"), bucket("60.0"), bucket("+Inf")) == (0, 1, 2, 3, 3, 4, 4)
    assert values[("sketchwatch_scoring_latency_seconds_gsum", ())] == pytest.approx(45.8, abs=0.05)
    assert values[("sketchwatch_metrics_source_up", (("source", "database"),))] == 1


def test_pipeline_collector_reports_outages_instead_of_failing(tmp_path):
    from service.core.db import make_engine
    from service.metrics import PipelineCollector

    dead_db = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        import redis as redis_lib

        r = redis_lib.Redis(port=redis.port)
        r.rpush("sketchwatch", "a", "b", "c")
        r.rpush("sketchwatch\x06\x163", "d")
        r.hset("unacked", "tag", "x")
        r.close()
        collector = PipelineCollector(lambda: dead_db, broker_url=redis.url, cache_s=0)
        started = time.monotonic()
        values = _collect(collector)
        assert time.monotonic() - started < 5
        assert values[("sketchwatch_metrics_source_up", (("source", "database"),))] == 0
        assert values[("sketchwatch_metrics_source_up", (("source", "broker"),))] == 1
        assert values[("sketchwatch_queue_depth", (("source", "broker"),))] == 4
        assert values[("sketchwatch_broker_unacked", ())] == 1
        assert ("sketchwatch_submissions_total", ()) not in values
        redis.stop()
        values = _collect(collector)
        assert values[("sketchwatch_metrics_source_up", (("source", "broker"),))] == 0
    finally:
        redis.stop()
        dead_db.dispose()


def test_metrics_endpoint_in_process_counts_requests_and_caches(tmp_path):
    from service.app import create_app
    from service import metrics
    from service.extensions import db
    from service.core.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    app = create_app({"env": "testing", "data_dir": tmp_path, "database_url": url, "log_json": False,
                      "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}", "ratelimit_enabled": False})  # fmt: skip
    if "metrics" not in app.view_functions:
        metrics.init_app(app, cache_s=60)
    client = app.test_client()
    try:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        client.get("/api/v1/sketches/1")  # 401
        first = client.get("/metrics")
        assert first.status_code == 200 and first.headers["Content-Type"].startswith("text/plain")
        values = {}
        for family in text_string_to_metric_families(first.get_data(as_text=True)):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        key = ("sketchwatch_http_requests_total", (("endpoint", "health.healthz"), ("method", "GET"), ("status", "200")))
        assert values[key] == 3
        assert values[("sketchwatch_http_requests_total", (("endpoint", "api.get_sketch"), ("method", "GET"), ("status", "401")))] == 1
        assert values[("sketchwatch_submissions_total", ())] == 0
        # Raw paths never become labels: unknown URLs share one series.
        for path in ("/nope/1", "/nope/2", "/nope/3"):
            client.get(path)
        text_ = client.get("/metrics").get_data(as_text=True)
        assert "/nope" not in text_ and 'endpoint="unmatched"' in text_
        # Cached: a new row is not seen until the cache expires.
        with app.app_context(), db.session_scope() as s:
            s.add(Sketch(client="c", client_ref="x", source_format="simplified", status="queued", attempts=0, submitted_at=utcnow()))
        assert "sketchwatch_submissions_total 0.0" in client.get("/metrics").get_data(as_text=True)
    finally:
        db.dispose()
