"""The scoring pipeline end to end: real granian web server, real Celery worker processes, PostgreSQL and Redis.

One stack serves the module: pg + a private redis-server (so one test can stop the broker without
touching the shared one on 6379). A trigger in the stack's database records every write that marks a
sketch scored, so "scored exactly once" is checked on the database itself. The last test runs the
zero-setup mode (`sketchwatch up`: SQLite + the SQLAlchemy broker) in a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib
import requests
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from stack_fixtures import READY_LINE, ROOT, PrivateRedis, free_port, wait_for

from service.core.schema import (
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_SCORED,
    Sketch,
    ThresholdChange,
    utcnow,
)

pytestmark = pytest.mark.timeout(300)

# Redis hands an unacknowledged message to another worker after this long. Production keeps an hour
# (longer than any task); the test makes it short so a message held by a SIGKILLed worker comes back
# within the test's budget. A task running longer than this would be delivered twice: harmless, as
# every write is guarded by status = 'queued' (which the audit trigger checks).
VISIBILITY_TIMEOUT_S = 8
SWEEP_AFTER_S = 20
MAX_ATTEMPTS = 5

AUDIT_SQL = """
CREATE TABLE score_audit (sketch_id bigint NOT NULL, scored_at timestamptz, logged_at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION score_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO score_audit (sketch_id, scored_at) VALUES (NEW.id, NEW.scored_at);
  RETURN NEW;
END $$;
CREATE TRIGGER score_audit_trg AFTER UPDATE ON sketches FOR EACH ROW
  WHEN (NEW.status = 'scored' AND NEW.scored_at IS DISTINCT FROM OLD.scored_at)
  EXECUTE FUNCTION score_audit_fn();
"""


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A private redis-server this module may stop and start."""
    server = PrivateRedis(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live(broker, stack):
    """The module's stack: web + one worker (1 pool process, embedded beat) on pg + the private Redis."""
    s = stack(
        broker_url=broker.url,
        env={
            "SKETCHWATCH_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "SKETCHWATCH_SWEEP_INTERVAL_S": "2",
            "SKETCHWATCH_SWEEP_AFTER_S": str(SWEEP_AFTER_S),
            "SKETCHWATCH_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "SKETCHWATCH_RATELIMIT_ENABLED": "false",
        },
    )
    with s.engine.begin() as conn:
        conn.exec_driver_sql(AUDIT_SQL)
    return s


@pytest.fixture(scope="module")
def producer(live):
    """A Celery app in the test process that sends tasks to the stack's broker."""
    from service.core.settings import get_settings
    from service.core.celery_app import make_celery

    app = make_celery(get_settings({"broker_url": live.broker_url, "database_url": live.database_url}))
    yield app
    app.close()


@pytest.fixture(scope="module")
def drawings(shared_data) -> list[dict]:
    """API items from the shared Quick Draw files: the 25 cats, then non-cats (simplified and raw)."""
    items = []
    for name in ("cat.ndjson", "others.ndjson"):
        with open(shared_data / name, encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                items.append({"drawing": obj["drawing"], "format": obj.get("format", "simplified")})
                if len(items) >= 3000:
                    return items
    return items


_ref_counter = iter(range(10**9))


def with_refs(items: list[dict], tag: str) -> list[dict]:
    """Copies of ``items`` with unique client_refs (sketches are idempotent per client_ref)."""
    return [{**item, "client_ref": f"{tag}-{next(_ref_counter)}"} for item in items]


def submit_all(live, items: list[dict], batch: int = 500) -> list[int]:
    """Submit in batches; every item must be accepted; returns ids in order."""
    ids: list[int] = []
    for start in range(0, len(items), batch):
        resp = live.submit(items[start : start + batch])
        assert resp.status_code == 202, resp.text[:500]
        body = resp.json()
        assert body["rejected"] == 0, body
        ids += [item["id"] for item in body["items"]]
    return ids


def audit_counts(live, ids: list[int]) -> dict[int, int]:
    """How many times each sketch was written as scored."""
    with live.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT sketch_id, count(*) FROM score_audit WHERE sketch_id = ANY(:ids) GROUP BY sketch_id"),
            {"ids": ids},
        ).all()
    return {sketch_id: n for sketch_id, n in rows}


def assert_scored_exactly_once(live, ids: list[int], timeout: float) -> dict:
    """Wait for every id to be scored, then check the audit trail shows one scoring write each."""
    rows = live.wait_for(ids, {STATUS_SCORED}, timeout=timeout)
    counts = audit_counts(live, ids)
    twice = {i: n for i, n in counts.items() if n != 1}
    assert not twice, f"sketches written as scored more than once: {dict(list(twice.items())[:10])}"
    assert set(counts) == set(ids)
    return rows


def pool_pids(live, name: str = "worker") -> list[int]:
    """Pids of the worker's pool processes, from their 'scoring process ready' log lines."""
    pids = []
    for line in live.log(name).splitlines():
        if READY_LINE in line and line.startswith("{"):
            pids.append(json.loads(line)["pid"])
    return pids


def model_dir() -> Path:
    """The model directory the stack uses."""
    from worker.model_runtime import model_path

    return model_path(os.environ.get("SKETCHWATCH_MODEL_DIR") or None)


# --------------------------------------------------------------------------- happy path


def test_submitted_sketches_are_scored_end_to_end(live, drawings):
    from models.artifact import read_meta
    from models.raster import rasterize

    meta = read_meta(model_dir())
    items = with_refs(drawings[:40], "e2e")
    ids = submit_all(live, items)
    assert len(set(ids)) == 40

    rows = assert_scored_exactly_once(live, ids, timeout=90)
    for sketch_id in ids:
        row = rows[sketch_id]
        assert row.model_version == meta["version"]
        assert row.threshold == pytest.approx(meta["suggested_threshold"])
        assert np.isfinite(row.score) and row.score >= 0
        assert row.flagged == (row.score > row.threshold)
        assert row.scored_at is not None and row.scored_at >= row.submitted_at
        assert row.error is None and row.attempts == 0
        # Only the flagged keep their reconstruction, and a stroke submission's input bitmap is not stored: it
        # is its rasterized drawing, rendered again where it is shown (migration 0010).
        assert (row.reconstruction is not None) == row.flagged
        assert row.reconstruction is None or len(row.reconstruction) == 784
        assert row.input_bitmap is None
        assert rasterize(row.drawing).shape == (28, 28)

    # The public status resource reports the same result.
    resp = requests.get(
        f"{live.url}/api/v1/sketches/{ids[0]}", headers={"Authorization": f"Bearer {live.api_key}"}, timeout=10
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "scored" and body["score"] == pytest.approx(rows[ids[0]].score)


def test_scoring_uses_the_threshold_in_force(live, drawings):
    from service.core.settings import get_settings
    from service.core.thresholds import apply_threshold

    with live.session() as s:
        previous = s.scalar(select(ThresholdChange.value).order_by(ThresholdChange.id.desc()).limit(1))
        apply_threshold(s, get_settings({"database_url": live.database_url}), 0.123, "test", "pipeline test")
    try:
        ids = submit_all(live, with_refs(drawings[40:60], "thr"))
        rows = assert_scored_exactly_once(live, ids, timeout=60)
        assert all(row.threshold == pytest.approx(0.123) for row in rows.values())
        assert all(row.flagged == (row.score > 0.123) for row in rows.values())
    finally:
        if previous is not None:
            with live.session() as s:
                apply_threshold(s, get_settings({"database_url": live.database_url}), previous, "test", "restore")
        else:
            with live.session() as s:
                s.execute(ThresholdChange.__table__.delete())


def test_resubmission_is_idempotent(live, drawings):
    item = {**drawings[60], "client_ref": "idempotent-1"}
    first = live.submit(item)
    assert first.status_code == 202 and first.json()["duplicate"] is False
    sketch_id = first.json()["id"]
    row = live.wait_for([sketch_id], {STATUS_SCORED}, timeout=60)[sketch_id]

    again = live.submit(item)
    assert again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    time.sleep(2)  # give a (wrongly) re-sent task time to run
    with live.session() as s:
        assert s.scalar(select(func.count()).select_from(Sketch).where(Sketch.client_ref == "idempotent-1")) == 1
        assert s.get(Sketch, sketch_id).scored_at == row.scored_at
    assert audit_counts(live, [sketch_id]) == {sketch_id: 1}


def test_mixed_valid_and_invalid_batch(live, drawings):
    good = with_refs(drawings[61:64], "mixed")
    batch = [
        good[0],
        {"drawing": [[[1, 2, 3], [4, 5]]], "client_ref": "mixed-bad-rows"},  # x and y rows differ in length
        good[1],
        {"format": "simplified", "client_ref": "mixed-no-drawing"},
        {"drawing": [[[0, 300], [0, 10]]], "client_ref": "mixed-out-of-box"},  # simplified is 0..255
        good[2],
    ]
    resp = live.submit(batch)
    assert resp.status_code == 202
    body = resp.json()
    assert body["accepted"] == 3 and body["rejected"] == 3
    by_index = {item["index"]: item for item in body["items"]}
    assert sorted(i for i, item in by_index.items() if "id" in item) == [0, 2, 5]
    for index in (1, 3, 4):
        assert by_index[index]["error"]["field"].startswith("drawing")
    ids = [by_index[i]["id"] for i in (0, 2, 5)]
    assert_scored_exactly_once(live, ids, timeout=60)
    with live.session() as s:
        refs = set(s.scalars(select(Sketch.client_ref).where(Sketch.client_ref.like("mixed-%"))))
    assert refs == {item["client_ref"] for item in good}


# --------------------------------------------------------------------------- poison and sweeper


def _insert(live, rows: list[dict]) -> list[int]:
    now = utcnow()
    with live.session() as s:
        defaults = {
            "client": "pipeline-test",
            "source_format": "simplified",
            "submitted_at": now,
            "status": STATUS_QUEUED,
            "attempts": 0,
        }
        sketches = [Sketch(**{**defaults, **row}) for row in rows]
        s.add_all(sketches)
        s.flush()
        return [sk.id for sk in sketches]


def test_a_poison_sketch_does_not_take_its_batch_down(live, drawings, producer):
    from service.core.celery_app import SCORE_TASK

    good = [{"drawing": d["drawing"]} for d in drawings[0:3]]  # cats: simplified strokes, stored as they are
    ids = _insert(
        live,
        [
            *good,
            {"drawing": [[[1, 2, 3], [4, 5]]]},  # ragged stroke: the rasterizer raises
            {"drawing": [[[1, 2], [3, 4]]], "attempts": MAX_ATTEMPTS - 1},  # fine, but on its last attempt
            {"drawing": None, "input_bitmap": b"\x00" * 100, "source_format": "image", "attempts": MAX_ATTEMPTS - 1},
        ],
    )
    good_ids, poison, fine_last, bad_bitmap = ids[: len(good)], ids[-3], ids[-2], ids[-1]
    producer.send_task(SCORE_TASK, args=[ids])

    assert_scored_exactly_once(live, [*good_ids, fine_last], timeout=60)
    rows = live.wait_for([bad_bitmap], {STATUS_FAILED}, timeout=30)
    assert "784" in rows[bad_bitmap].error and rows[bad_bitmap].attempts == MAX_ATTEMPTS
    with live.session() as s:
        row = s.get(Sketch, poison)
        # Still queued for another try (the sweeper re-sends it), with the reason and one attempt used.
        assert row.status == STATUS_QUEUED and row.attempts >= 1
        assert row.error.startswith("rasterization failed")
        assert row.score is None


def test_sweeper_resends_lost_tasks_and_gives_up_on_exhausted_ones(live, drawings):
    old = utcnow() - timedelta(hours=1)
    lost, exhausted = _insert(
        live,
        [
            {"drawing": drawings[3]["drawing"]},
            {"drawing": [[[0, 9], [0, 9]]], "attempts": MAX_ATTEMPTS, "error": "rasterization failed: boom"},
        ],
    )
    with live.session() as s:
        s.execute(Sketch.__table__.update().where(Sketch.id.in_([lost, exhausted])).values(submitted_at=old))
    # Nothing was ever sent for these two: only the sweeper (beat, every 2 s) can pick them up.
    rows = live.wait_for([lost], {STATUS_SCORED}, timeout=60)
    assert rows[lost].attempts == 1 and rows[lost].enqueued_at is not None
    rows = live.wait_for([exhausted], {STATUS_FAILED}, timeout=30)
    assert rows[exhausted].error == f"gave up after {MAX_ATTEMPTS} attempts: rasterization failed: boom"


# --------------------------------------------------------------------------- worker failures


def _unacked(broker) -> int:
    client = redis_lib.Redis(host="127.0.0.1", port=broker.port, socket_timeout=2)
    try:
        return client.hlen("unacked")
    finally:
        client.close()


def _kill_mid_batch(live, broker, ids: list[int], kill) -> None:
    """Run ``kill()`` while the worker holds an unacknowledged task and some sketches are still queued."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = live.statuses(ids)
        scored = sum(1 for v in statuses.values() if v == STATUS_SCORED)
        if scored and scored < len(ids) and _unacked(broker):
            kill()
            return
        time.sleep(0.02)
    pytest.fail("never saw the worker mid-batch")


def test_pool_process_killed_mid_batch_its_task_is_redelivered(live, broker, drawings):
    ids = submit_all(live, with_refs(drawings[100:1600], "kill-child"))
    pids = pool_pids(live)
    assert len(pids) == 1, pids
    _kill_mid_batch(live, broker, ids, lambda: os.kill(pids[0], signal.SIGKILL))
    # reject_on_worker_lost: the main process requeues the lost task and forks a new pool process.
    assert_scored_exactly_once(live, ids, timeout=240)
    assert "WorkerLostError" in live.log("worker")


def test_a_pool_process_over_its_memory_cap_is_replaced_and_nothing_is_lost(live, drawings):
    live.stop_process("worker")
    try:
        # With TensorFlow loaded every pool process is far above 1 MB: each task ends in a replacement.
        live.start_worker(env={"SKETCHWATCH_WORKER_MAX_MEMORY_MB": "1"}, name="capped")
        first = submit_all(live, with_refs(drawings[:20], "memcap-a"))
        assert_scored_exactly_once(live, first, timeout=90)
        wait_for(lambda: len(pool_pids(live, "capped")) >= 2, 120, "a replacement pool process with its model")
        second = submit_all(live, with_refs(drawings[20:40], "memcap-b"))
        assert_scored_exactly_once(live, second, timeout=90)
        assert re.search(r'"level": "WARNING".*pool process \d+ is replaced: peak RSS \d+ MB is over the 1 MB cap',
                         live.log("capped"))
        assert len(set(pool_pids(live, "capped"))) >= 2
        # An operator is told at start that this cap cannot work.
        assert "too close to the 1 MB cap; raise SKETCHWATCH_WORKER_MAX_MEMORY_MB" in live.log("capped")
        assert "too close to" not in live.log("worker")
    finally:
        live.stop_process("capped")
        live.start_worker()


def _damaged_model(tmp_path: Path, kind: str) -> Path:
    dst = tmp_path / f"model-{kind}"
    shutil.copytree(model_dir(), dst)
    # Without model.tflite the pool process loads model.keras (the Keras fallback): that is the file damaged here.
    (dst / "model.tflite").unlink(missing_ok=True)
    meta = json.loads((dst / "model.json").read_text())
    meta.pop("litert", None)
    (dst / "model.json").write_text(json.dumps(meta))
    keras_file = dst / "model.keras"
    if kind == "missing":
        keras_file.unlink()
    elif kind == "truncated":
        keras_file.write_bytes(keras_file.read_bytes()[:2000])
    else:  # an intact archive whose content Keras cannot build: only loading it finds out
        with zipfile.ZipFile(keras_file) as zf:
            members = {name: zf.read(name) for name in zf.namelist()}
        members["config.json"] = b'{"class_name": "NoSuchLayer", "config": {}}'
        with zipfile.ZipFile(keras_file, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    return dst


def _run_bad_worker(live, model: Path, name: str) -> str:
    """Start a worker on a damaged model; it must exit with 78 and a clear error; returns its log."""
    proc = live.start_worker(env={"SKETCHWATCH_MODEL_DIR": str(model)}, wait=False, name=name)
    try:
        code = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: worker still running\n{live.log(name)[-3000:]}")
    log = live.log(name)
    assert code == 78, f"{name}: exit {code}\n{log[-3000:]}"
    assert re.search(r'"level": "CRITICAL".*(model is unavailable|model could not be loaded)', log), log[-3000:]
    assert f"{model}/model.keras" in log
    return log


def test_worker_refuses_to_start_with_a_missing_or_corrupt_model_file(live, tmp_path):
    for kind in ("missing", "truncated"):
        log = _run_bad_worker(live, _damaged_model(tmp_path, kind), f"bad-{kind}")
        # Checked in the main process before the pool forks: TensorFlow never loads, no broker connection.
        assert "Connected to" not in log and READY_LINE not in log


def test_worker_killed_mid_batch_every_sketch_is_scored_exactly_once(live, broker, drawings, tmp_path):
    ids = submit_all(live, with_refs(drawings[1600:3000], "kill-all"))
    _kill_mid_batch(live, broker, ids, lambda: live.kill_worker(signal.SIGKILL))
    # The killed worker could not ack: its message waits in Redis' unacked set for the visibility timeout.
    assert _unacked(broker) >= 1
    before = live.statuses(ids)
    assert STATUS_QUEUED in before.values()

    # A worker whose pool cannot load the model (the archive is intact, its content is not) must stop
    # without scoring anything: whatever it fetched goes back to Redis.
    _run_bad_worker(live, _damaged_model(tmp_path, "unloadable"), "bad-unloadable")
    assert live.statuses(ids) == before

    live.start_worker()
    assert_scored_exactly_once(live, ids, timeout=240)


# --------------------------------------------------------------------------- broker outage


def test_broker_outage_sketches_are_stored_then_scored(live, broker, drawings):
    broker.stop()
    try:
        started = time.monotonic()
        resp = live.submit(with_refs(drawings[200:230], "outage"), timeout=60)
        elapsed = time.monotonic() - started
        assert resp.status_code == 202, resp.text[:300]
        assert elapsed < 20, f"intake blocked {elapsed:.1f} s on the dead broker"
        ids = [item["id"] for item in resp.json()["items"]]

        def unsent_rows():
            with live.session() as s:
                rows = s.execute(select(Sketch.status, Sketch.enqueued_at).where(Sketch.id.in_(ids))).all()
            return rows if all(r.enqueued_at is None for r in rows) else None

        # The web process's sender thread fails to publish and clears enqueued_at: left for the sweeper.
        rows = wait_for(unsent_rows, 20, "failed sends were not marked unsent")
        assert {r.status for r in rows} == {STATUS_QUEUED}
        time.sleep(3)  # the worker and beat see the outage and start reconnecting
    finally:
        broker.start()
    # The worker and beat reconnect; the sweeper re-sends what was stored while Redis was down.
    assert_scored_exactly_once(live, ids, timeout=SWEEP_AFTER_S + 120)


# --------------------------------------------------------------------------- zero-setup mode


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_up_zero_setup_round_trip(tmp_path, drawings):
    import psutil

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHWATCH_")}
    env.update(
        SKETCHWATCH_DATA_DIR=str(tmp_path / "data"),
        SKETCHWATCH_TF_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    if os.environ.get("SKETCHWATCH_MODEL_DIR"):  # a developer's model under test; CI uses the shipped one
        env["SKETCHWATCH_MODEL_DIR"] = os.environ["SKETCHWATCH_MODEL_DIR"]
    stderr = open(tmp_path / "up.stderr", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    out: list[str] = []
    descendants: list = []
    try:
        deadline = time.monotonic() + 240
        while not any("is running at" in line for line in out):
            assert time.monotonic() < deadline, "".join(out) + (tmp_path / "up.stderr").read_text()[-3000:]
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            assert line is not None, "up exited early:\n" + "".join(out) + (tmp_path / "up.stderr").read_text()[-3000:]
            out.append(line)
        text_out = "".join(out)
        username = re.search(r"username: (\S+)", text_out).group(1)
        password = re.search(r"password: (\S+)", text_out).group(1)
        api_key = re.search(r"API key:\s+(\S+)", text_out).group(1)
        assert f"http://127.0.0.1:{port}/" in text_out

        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session

        from service.core.schema import ApiKey, User
        from service.core.security import hash_api_key, verify_password

        engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'sketchwatch.db'}")
        with Session(engine) as s:
            user = s.scalars(select(User).where(User.username == username)).one()
            assert user.is_admin and verify_password(user.password_hash, password)
            assert (
                s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.key_hash == hash_api_key(api_key))) == 1
            )

        resp = requests.post(
            f"http://127.0.0.1:{port}/api/v1/sketches",
            json=[{"drawing": d["drawing"], "format": d["format"]} for d in drawings[:5]],
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        assert resp.status_code == 202, resp.text
        ids = [item["id"] for item in resp.json()["items"]]
        deadline = time.monotonic() + 180
        while True:
            with Session(engine) as s:
                statuses = set(s.scalars(select(Sketch.status).where(Sketch.id.in_(ids))))
            if statuses == {STATUS_SCORED}:
                break
            assert time.monotonic() < deadline, (
                f"not scored: {statuses}\n" + (tmp_path / "up.stderr").read_text()[-3000:]
            )
            time.sleep(0.5)
        engine.dispose()

        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 3  # granian main + worker, celery main + pool (+ beat)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, (tmp_path / "up.stderr").read_text()[-3000:]
        gone, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, f"orphans left behind: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for child in descendants:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        stderr.close()


# --------------------------------------------------------------------------- in-process units


def test_task_payload_is_validated():
    from worker.scoring import clean_ids

    assert clean_ids([3, 1, 3, 2]) == [3, 1, 2]
    for bad in ([0], [-1], ["1"], [True], [1.5]):
        with pytest.raises(ValueError):
            clean_ids(bad)
    with pytest.raises(TypeError):
        clean_ids(7)


def test_database_outage_is_retried_with_backoff(caplog, monkeypatch):
    from service.extensions import db
    from worker import app as _start_up  # noqa: F401 - configures the worker's Celery app, as `celery -A` does
    from worker import scoring as tasks

    # A closed port: every connection attempt fails with OperationalError.
    db.configure(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none", connect_args={"connect_timeout": 1})
    monkeypatch.setattr(tasks, "retry_delay", lambda retries: 0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="worker.scoring"):
            result = tasks.score_sketches.apply(args=[[1, 2]])
        # The first run plus task_max_retries retries, each logged; then the error surfaces.
        assert result.failed()
        assert isinstance(result.result, OperationalError)
        retries = [r for r in caplog.records if r.getMessage().startswith("database unavailable")]
        assert len(retries) == tasks.settings.task_max_retries + 1
        assert retries[0].sketch_ids == [1, 2]
    finally:
        db.dispose()


def test_retry_delay_grows_and_is_capped():
    from worker.scoring import retry_delay

    assert all(0.5 <= retry_delay(0) <= 1.0 for _ in range(20))
    assert all(4.0 <= retry_delay(3) <= 8.0 for _ in range(20))
    assert all(30.0 <= retry_delay(20) <= 60.0 for _ in range(20))


def test_sweep_counts_attempts_only_when_the_task_was_sent(sqlite_app):
    from service.extensions import db
    from worker import app as _start_up  # noqa: F401 - configures the worker's Celery app, as `celery -A` does
    from worker import sweeper as tasks

    old = utcnow() - timedelta(hours=1)
    max_attempts = tasks.settings.max_attempts
    with db.session_scope() as s:
        base = {"client": "c", "source_format": "simplified", "drawing": [[[0, 1], [0, 1]]]}
        rows = [
            Sketch(**base, submitted_at=old, attempts=0),
            Sketch(**base, submitted_at=old, attempts=2, enqueued_at=old),
            Sketch(**base, submitted_at=utcnow(), attempts=0),
            Sketch(
                **{**base, "drawing": None}, submitted_at=old, attempts=max_attempts, error="rasterization failed: x"
            ),
        ]
        s.add_all(rows)
        s.flush()
        stale, stale_retried, fresh, exhausted = (r.id for r in rows)

    def broker_down(ids):
        raise ConnectionError("broker down")

    assert tasks.sweep(broker_down) == {"resent": 0, "failed": 0}
    with db.session_scope() as s:
        assert [s.get(Sketch, i).attempts for i in (stale, stale_retried)] == [0, 2]
        assert s.get(Sketch, exhausted).status == STATUS_QUEUED

    sent: list[list[int]] = []
    assert tasks.sweep(sent.append) == {"resent": 2, "failed": 1}
    assert sent == [[stale, stale_retried]]
    with db.session_scope() as s:
        assert [s.get(Sketch, i).attempts for i in (stale, stale_retried, fresh)] == [1, 3, 0]
        assert s.get(Sketch, stale).enqueued_at is not None and s.get(Sketch, fresh).enqueued_at is None
        row = s.get(Sketch, exhausted)
        assert row.status == STATUS_FAILED
        assert row.error == f"gave up after {tasks.settings.max_attempts} attempts: rasterization failed: x"
    # Just re-sent: nothing is stale any more.
    assert tasks.sweep(sent.append) == {"resent": 0, "failed": 0}
