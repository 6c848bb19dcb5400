"""The model registry: status changes and thresholds (SQL), the model store (paths and http URLs), and live
shadow scoring, promote, rollback and re-scoring with real Celery workers on PostgreSQL and Redis.

The second model version is the shipped artifact copied under another version name and threshold: the scores
are the same, so what the tests check is which version scored each sketch and which threshold flagged it.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.artifact import check_artifact, read_meta, shipped_model_dir
from service.cli import main
from service.core import model_store, registry, sketches
from service.core.schema import (
    ModelVersion,
    ScoreHistory,
    ShadowScore,
    Sketch,
    ThresholdChange,
)
from service.core.settings import get_settings
from service.core.thresholds import apply_threshold, current_threshold
from stack_fixtures import migrated_engine

SHIPPED_VERSION = read_meta(shipped_model_dir())["version"]
SHIPPED_THRESHOLD = read_meta(shipped_model_dir())["suggested_threshold"]
V2, V2_THRESHOLD = "test-v2", 0.5
V3, V3_THRESHOLD = "test-v3", 0.6
CAT = {"drawing": [[[10, 60, 110, 160, 210], [40, 20, 10, 20, 40]], [[30, 128, 226], [200, 240, 200]]]}


def copy_model(where: Path, version: str, threshold: float) -> Path:
    """The shipped artifact under another version name and suggested threshold (check_artifact still passes)."""
    out = where / version
    shutil.copytree(shipped_model_dir(), out)
    meta = json.loads((out / "model.json").read_text())
    meta["version"], meta["suggested_threshold"] = version, threshold
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    check_artifact(out)
    return out


def drawing(i: int) -> dict:
    """A different small drawing per i (so no two are the same sketch)."""
    return {"drawing": [[[0, 40 + i % 200, 255], [0, 255 - i % 200, 128]]], "client_ref": f"r{time.time_ns()}-{i}"}


# --------------------------------------------------------------------------- registry in SQL (no workers)


@pytest.fixture(params=["sqlite", "postgres"])
def sql(request, tmp_path):
    """A session on a migrated database and settings with the shipped model; the model store in tmp_path."""
    with migrated_engine(request.param, tmp_path) as engine:
        settings = get_settings({"database_url": str(engine.url), "data_dir": tmp_path})
        with Session(engine, expire_on_commit=False) as session:
            yield session, settings


def test_bootstrap_registers_the_shipped_model_as_active_once(sql):
    session, settings = sql
    mv = registry.ensure_bootstrapped(session, settings)
    assert (mv.version, mv.status, mv.artifact_uri) == (SHIPPED_VERSION, "active", "shipped")
    assert mv.threshold == pytest.approx(SHIPPED_THRESHOLD)
    assert registry.ensure_bootstrapped(session, settings).id == mv.id
    assert len(registry.list_versions(session)) == 1
    assert session.scalar(select(func.count()).select_from(ThresholdChange)) == 0  # nothing changed


def test_shadow_promote_and_rollback_keep_one_active_and_the_threshold_history(sql, tmp_path):
    session, settings = sql
    registry.ensure_bootstrapped(session, settings)
    uri = model_store.put(settings, copy_model(tmp_path / "src", V2, V2_THRESHOLD), V2)
    assert Path(uri) == settings.model_store_dir / V2
    registry.register(session, version=V2, artifact_uri=uri, parent_version=SHIPPED_VERSION, created_by="test",
                      data_fingerprint={"reviews": [1, 2]}, metrics={"auroc": 0.9}, threshold=V2_THRESHOLD)
    registry.set_shadow(session, V2, "alice")
    assert registry.shadow(session).version == V2 and registry.active(session).version == SHIPPED_VERSION

    # A threshold retune while the shipped model is active is remembered for the rollback.
    apply_threshold(session, settings, 0.75, "bob", "retune")
    registry.promote(session, V2, "alice", settings=settings)
    assert registry.active(session).version == V2 and registry.shadow(session) is None
    assert registry.get(session, SHIPPED_VERSION).status == "retired"
    assert registry.get(session, SHIPPED_VERSION).last_threshold == pytest.approx(0.75)
    promoted = registry.get(session, V2)
    assert promoted.promoted_by == "alice" and promoted.promoted_at is not None
    assert current_threshold(session, settings) == pytest.approx(V2_THRESHOLD)

    back = registry.rollback(session, "carol", settings=settings)
    assert back.version == SHIPPED_VERSION and registry.active(session).version == SHIPPED_VERSION
    assert registry.get(session, V2).status == "retired"
    assert current_threshold(session, settings) == pytest.approx(0.75)
    history = session.scalars(select(ThresholdChange).order_by(ThresholdChange.id)).all()
    assert [(c.value, c.changed_by) for c in history] == [(0.75, "bob"), (V2_THRESHOLD, "alice"), (0.75, "carol")]
    assert [e.action for e in reversed(registry.events(session))] == ["bootstrap", "shadow", "promote", "rollback"]
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(session, "carol", settings=settings)


def test_rollback_walks_back_through_several_promotes(sql, tmp_path):
    session, settings = sql
    registry.ensure_bootstrapped(session, settings)
    for version, threshold in ((V2, V2_THRESHOLD), (V3, V3_THRESHOLD)):
        uri = str(copy_model(tmp_path / "src", version, threshold))
        registry.register(session, version=version, artifact_uri=uri, created_by="t", threshold=threshold)
        registry.promote(session, version, "t", settings=settings)
    assert registry.rollback(session, "t", settings=settings).version == V2
    assert current_threshold(session, settings) == pytest.approx(V2_THRESHOLD)
    assert registry.rollback(session, "t", settings=settings).version == SHIPPED_VERSION
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(session, "t", settings=settings)


def test_registry_errors_name_the_version(sql, tmp_path):
    session, settings = sql
    registry.ensure_bootstrapped(session, settings)
    with pytest.raises(registry.RegistryError, match="unknown model version 'nope'"):
        registry.promote(session, "nope", "t", settings=settings)
    with pytest.raises(registry.RegistryError, match="already active"):
        registry.promote(session, SHIPPED_VERSION, "t", settings=settings)
    with pytest.raises(registry.RegistryError, match="is active"):
        registry.set_shadow(session, SHIPPED_VERSION, "t")
    with pytest.raises(registry.RegistryError, match="already registered"):
        registry.register(session, version=SHIPPED_VERSION, artifact_uri="shipped", created_by="t", threshold=0.5)
    # The artifact's model.json must carry the version it is registered as.
    with pytest.raises(registry.RegistryError, match="model.json has version"):
        registry.register(session, version="other", artifact_uri="shipped", created_by="t", threshold=0.5)
    with pytest.raises(registry.RegistryError, match="invalid model version"):
        registry.register(session, version="../x", artifact_uri="shipped", created_by="t", threshold=0.5)
    with pytest.raises(registry.RegistryError, match="finite"):
        registry.register(session, version=V2, artifact_uri=str(copy_model(tmp_path, V2, 0.5)), created_by="t",
                          threshold=float("nan"))


def test_a_threshold_change_reflags_only_the_active_versions_sketches(sql, tmp_path):
    session, settings = sql
    registry.ensure_bootstrapped(session, settings)
    registry.register(session, version=V2, artifact_uri=str(copy_model(tmp_path, V2, V2_THRESHOLD)),
                      created_by="t", threshold=V2_THRESHOLD)
    now = sketches.utcnow()
    old = Sketch(client="c", source_format="strokes", status="scored", score=0.7, flagged=False,
                 threshold=SHIPPED_THRESHOLD, model_version=SHIPPED_VERSION, scored_at=now)
    session.add(old)
    session.flush()
    registry.promote(session, V2, "t", settings=settings)
    new = Sketch(client="c", source_format="strokes", status="scored", score=0.7, flagged=True,
                 threshold=V2_THRESHOLD, model_version=V2, scored_at=now)
    session.add(new)
    session.flush()
    apply_threshold(session, settings, 0.9, "bob")
    session.refresh(old)
    session.refresh(new)
    assert (old.flagged, new.flagged) == (False, False)
    apply_threshold(session, settings, 0.6, "bob")
    session.refresh(old)
    session.refresh(new)
    # The shipped model's sketch keeps the flag of its own threshold (0.8) whatever the new version's is.
    assert (old.flagged, new.flagged) == (False, True)


# --------------------------------------------------------------------------- model store


class Quiet(http.server.SimpleHTTPRequestHandler):
    """A static file handler that does not log each request to stderr."""

    def log_message(self, *_args) -> None:
        """Say nothing."""


def serve_folder(folder: Path) -> http.server.ThreadingHTTPServer:
    """An HTTP server on a free local port serving ``folder``, in a daemon thread (shut it down after)."""
    folder.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_model_store_serves_artifacts_over_http_to_other_hosts(tmp_path):
    store = tmp_path / "store"
    server = serve_folder(store)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/models"
        writer = get_settings({"data_dir": tmp_path / "a", "model_store": store / "models", "model_store_url": base})
        uri = model_store.put(writer, copy_model(tmp_path / "src", V2, V2_THRESHOLD), V2)
        assert uri == f"{base}/{V2}.tar.gz"
        # Another host: its own data dir, the artifact only reachable by URL.
        reader = get_settings({"data_dir": tmp_path / "b"})
        path = model_store.local_path(reader, uri)
        assert path.is_relative_to(reader.model_cache_path)
        assert read_meta(check_artifact(path))["version"] == V2
        assert model_store.local_path(reader, uri) == path  # cached: no second download
        with pytest.raises(model_store.StoreError, match="download failed"):
            model_store.local_path(reader, f"{base}/missing.tar.gz")
        with pytest.raises(model_store.StoreError, match="must end in"):
            model_store.local_path(reader, f"{base}/{V2}")
    finally:
        server.shutdown()
        server.server_close()
    assert model_store.local_path(reader, "shipped") == shipped_model_dir()
    assert model_store.local_path(reader, f"file://{path}") == path
    with pytest.raises(model_store.StoreError, match="version is"):
        model_store.put(writer, shipped_model_dir(), V3)


# --------------------------------------------------------------------------- live: real workers, PostgreSQL, Redis


@pytest.fixture(scope="module")
def live(stack, tmp_path_factory):
    """A stack whose workers poll the registry every second, and the second version's artifact folder."""
    s = stack(concurrency=2, env={"SKETCHWATCH_MODEL_POLL_S": "1"})
    models = tmp_path_factory.mktemp("models")
    return s, copy_model(models, V2, V2_THRESHOLD)


def cli(s, *args: str):
    """Run ``sketchwatch ARGS`` against the stack's database and broker; the click result."""
    env = {k: v for k, v in s.environment().items() if k.startswith("SKETCHWATCH_")}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def cli_json(s, *args: str) -> dict:
    """Run ``sketchwatch ARGS --json``; its parsed output (the command must succeed)."""
    result = cli(s, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def submit_ids(s, items: list[dict]) -> list[int]:
    """Submit a batch through the stack's API; the new sketches' ids."""
    answer = s.submit(items)
    assert answer.status_code == 202, answer.text
    return [item["id"] for item in answer.json()["items"]]


def test_live_shadow_scores_every_new_sketch_apart_and_leaves_flags_alone(live):
    s, v2_dir = live
    listed = cli_json(s, "models", "list")
    assert [v["version"] for v in listed["versions"]] == [SHIPPED_VERSION]
    registered = cli_json(s, "models", "register", str(v2_dir), "--parent", SHIPPED_VERSION)
    assert (registered["version"], registered["status"]) == (V2, "candidate")
    assert cli_json(s, "models", "shadow", V2)["shadow"]["status"] == "shadow"
    time.sleep(1.5)  # past the workers' poll interval

    ids = submit_ids(s, [drawing(i) for i in range(30)] + [CAT])
    rows = s.wait_for(ids, {"scored"}, 90)
    with s.session() as session:
        shadow = {r.sketch_id: r for r in session.scalars(select(ShadowScore).where(ShadowScore.sketch_id.in_(ids)))}
    assert set(shadow) == set(ids)
    for i, row in rows.items():
        assert row.model_version == SHIPPED_VERSION and row.threshold == pytest.approx(SHIPPED_THRESHOLD)
        assert row.flagged == (row.score > SHIPPED_THRESHOLD)
        assert shadow[i].model_version == V2
        assert shadow[i].score == pytest.approx(row.score, abs=1e-5)  # same weights
        assert shadow[i].flagged == (shadow[i].score > V2_THRESHOLD)
    assert cli_json(s, "models", "shadow", "--stop")["shadow"] is None


def test_live_promote_while_sketches_stream_in_switches_every_worker_without_a_restart(live):
    s, _ = live
    with s.session() as session:
        if registry.get(session, V2) is None:
            pytest.skip("needs the shadow test's registration")
    pids = sorted(s.worker_pids())
    submitted: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            submitted.extend(submit_ids(s, [drawing(1000 + i + k) for k in range(5)]))
            i += 5
            time.sleep(0.05)

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        time.sleep(3)
        no = cli(s, "models", "promote", V2)  # no --yes: asks, and "n" aborts
        assert no.exit_code != 0 and "Aborted" in no.output
        promoted = cli_json(s, "models", "promote", V2, "--yes")
        promoted_at = time.time()
        assert (promoted["active"]["version"], promoted["previous"]) == (V2, SHIPPED_VERSION)
        time.sleep(4)
    finally:
        stop.set()
        streamer.join()
    after = submit_ids(s, [drawing(5000 + k) for k in range(10)])
    rows = s.wait_for(submitted + after, {"scored"}, 120)
    assert len(rows) == len(set(submitted + after))  # none lost
    by_version: dict[str, list] = {}
    for row in rows.values():
        by_version.setdefault(row.model_version, []).append(row)
        own = V2_THRESHOLD if row.model_version == V2 else SHIPPED_THRESHOLD
        assert row.threshold == pytest.approx(own), (row.id, row.model_version, row.threshold)
        assert row.flagged == (row.score > own)
    assert set(by_version) == {SHIPPED_VERSION, V2}, {k: len(v) for k, v in by_version.items()}
    assert all(rows[i].model_version == V2 for i in after)
    with s.session() as session:
        promoted_row = registry.get(session, V2)
    assert all(r.scored_at > promoted_row.promoted_at for r in by_version[V2])
    # Every worker switched: sketches scored more than the poll interval after the promote are all V2.
    late = [r for r in by_version[SHIPPED_VERSION] if r.scored_at.timestamp() > promoted_at + 2]
    assert late == []
    assert sorted(s.worker_pids()) == pids  # no restart
    assert f'"model_version": "{V2}"' in s.log("worker")


def test_live_rollback_restores_the_previous_version_and_its_threshold(live):
    s, _ = live
    with s.session() as session:
        if registry.active(session) is None or registry.active(session).version != V2:
            pytest.skip("needs the promote test's state")
    back = cli_json(s, "models", "rollback", "--yes")
    assert (back["active"]["version"], back["previous"]) == (SHIPPED_VERSION, V2)
    ids = submit_ids(s, [drawing(7000 + k) for k in range(10)])
    rows = s.wait_for(ids, {"scored"}, 60)
    assert {r.model_version for r in rows.values()} == {SHIPPED_VERSION}
    assert all(r.threshold == pytest.approx(SHIPPED_THRESHOLD) for r in rows.values())
    with s.session() as session:
        assert registry.active(session).version == SHIPPED_VERSION
        last = session.scalars(select(ThresholdChange).order_by(ThresholdChange.id.desc()).limit(1)).one()
        assert last.value == pytest.approx(SHIPPED_THRESHOLD) and last.changed_by == "cli"
    again = cli(s, "models", "rollback", "--yes", "--json")
    assert again.exit_code != 0 and "nothing to roll back" in again.output
    unknown = cli(s, "models", "promote", "nope", "--yes", "--json")
    assert unknown.exit_code != 0 and "unknown model version 'nope'" in unknown.output


def test_live_promote_with_rescore_rescores_stored_sketches_and_keeps_the_old_scores(live):
    s, _ = live
    with s.session() as session:
        if registry.get(session, V2) is None:
            pytest.skip("needs the shadow test's registration")
        before = dict(session.execute(
            select(Sketch.id, Sketch.score).where(Sketch.status == "scored", Sketch.model_version != V2)
        ).all())  # fmt: skip
    assert before
    out = cli_json(s, "models", "promote", V2, "--yes", "--rescore")
    assert out["rescore"]["total"] == len(before)
    deadline = time.monotonic() + 120
    while True:
        progress = cli_json(s, "models", "list")["rescore"]
        if progress["status"] == "done" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert progress["status"] == "done" and progress["done"] == len(before), progress
    with s.session() as session:
        versions = set(session.scalars(select(Sketch.model_version).where(Sketch.id.in_(list(before)))))
        history = session.scalars(select(ScoreHistory).where(ScoreHistory.sketch_id.in_(list(before)))).all()
        flags = session.execute(
            select(Sketch.score, Sketch.flagged, Sketch.threshold).where(Sketch.id.in_(list(before)))
        )
        assert versions == {V2}
        assert {h.sketch_id for h in history} == set(before)
        assert all(h.replaced_by == V2 and h.model_version != V2 for h in history)
        assert all(h.score == pytest.approx(before[h.sketch_id]) for h in history)
        for score, flagged, threshold in flags:
            assert threshold == pytest.approx(V2_THRESHOLD) and flagged == (score > V2_THRESHOLD)
        assert session.scalar(select(ModelVersion.status).where(ModelVersion.version == V2)) == "active"


def test_live_workers_load_a_promoted_version_by_http_url(live, tmp_path):
    s, _ = live
    store = tmp_path / "store"
    server = serve_folder(store)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        writer = get_settings({"data_dir": tmp_path, "model_store": store, "model_store_url": base})
        uri = model_store.put(writer, copy_model(tmp_path / "src", V3, V3_THRESHOLD), V3)
        shutil.rmtree(store / V3)  # only the archive is left: the workers must download it
        stack_settings = get_settings({"database_url": s.database_url, "data_dir": s.data_dir})
        with s.session() as session:
            registry.ensure_bootstrapped(session, stack_settings)
            registry.register(session, version=V3, artifact_uri=uri, created_by="test", threshold=V3_THRESHOLD)
            registry.promote(session, V3, "test", settings=stack_settings)
        ids = submit_ids(s, [drawing(9000 + k) for k in range(10)])
        rows = s.wait_for(ids, {"scored"}, 90)
    finally:
        server.shutdown()
        server.server_close()
    assert {r.model_version for r in rows.values()} == {V3}
    assert all(r.threshold == pytest.approx(V3_THRESHOLD) for r in rows.values())
    cached = [p for p in (s.data_dir / "model-cache").iterdir() if not p.name.startswith(".")]
    assert len(cached) == 1 and read_meta(cached[0])["version"] == V3


@pytest.mark.parametrize("bootstrapped", [True, False], ids=["registry", "empty-registry"])
def test_a_batch_scored_before_a_promote_is_scored_again_by_the_new_version(bootstrapped, tmp_path, monkeypatch):
    """The write-time check, in-process: a worker whose snapshot is stale never writes the old version's scores.

    Also when the snapshot was taken while the registry was still empty (bootstrap and promote in one go).
    """
    from service.core.db import db
    from service.core.migrate import upgrade
    from worker import app as _start_up  # noqa: F401 - configures the worker's Celery app, as `celery -A` does
    from worker import model_runtime
    from worker import scoring as tasks

    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    db.configure(url)
    model_runtime.reset()
    try:
        settings = tasks.settings
        with db.session_scope() as session:
            session.add_all([Sketch(client="c", source_format="simplified", drawing=CAT["drawing"]) for _ in range(3)])
            if bootstrapped:
                registry.ensure_bootstrapped(session, settings)
        stale = model_runtime.serving(settings, force=True)
        assert stale.active.version == SHIPPED_VERSION
        with db.session_scope() as session:
            registry.ensure_bootstrapped(session, settings)
            registry.register(session, version=V2, artifact_uri=str(copy_model(tmp_path, V2, V2_THRESHOLD)),
                              created_by="t", threshold=V2_THRESHOLD)
            registry.promote(session, V2, "t", settings=settings)
        # Within the poll interval the snapshot is still the shipped model's ...
        real_serving, real_run = model_runtime.serving, tasks.run_model
        monkeypatch.setattr(
            model_runtime, "serving", lambda st, force=False: real_serving(st, True) if force else stale
        )
        used: list[str] = []
        monkeypatch.setattr(tasks, "run_model", lambda scorer, *a: used.append(scorer.version) or real_run(scorer, *a))
        outcome = tasks.score_ids([1, 2, 3])
        assert used == [SHIPPED_VERSION, V2]
        assert outcome.scored == [1, 2, 3]
        with db.session_scope() as session:
            rows = session.scalars(select(Sketch).order_by(Sketch.id)).all()
        # ... but what was written is the new version's, at its threshold.
        assert {(r.model_version, r.threshold) for r in rows} == {(V2, V2_THRESHOLD)}
        assert real_serving(settings).active.version == V2
    finally:
        model_runtime.reset()
        db.dispose()
