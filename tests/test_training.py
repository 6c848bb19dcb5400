"""Training from reviews with real PostgreSQL, Redis, a scoring worker and a training worker (issue 16).

The stack trains for two epochs (``SKETCHWATCH_TRAINING_EPOCHS``) on the shared Quick Draw files plus the
reviews: a real run of the retraining pipeline, export included, just short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from service.core.celery_app import TRAINING_QUEUE
from service.core.schema import ModelVersion, Sketch, TrainingRun
from tests.stack_fixtures import ROOT

DATA = ROOT.parent / "shared" / "data" / "quickdraw"
pytestmark = pytest.mark.skipif(not (DATA / "others.ndjson").is_file(), reason=f"no Quick Draw data in {DATA}")

ENV = {
    "SKETCHWATCH_TRAINING_EPOCHS": "2",
    "SKETCHWATCH_TRAINING_MIN_REVIEWS": "10",
    "SKETCHWATCH_TRAINING_DATA_DIR": str(DATA),
    # A killed training worker's task comes back to the next worker that starts after this long.
    "SKETCHWATCH_VISIBILITY_TIMEOUT_S": "15",
    # Background priority would starve the run on a test machine shared with other jobs.
    "SKETCHWATCH_WORKER_NICE": "0",
}
RUN_TIMEOUT_S = 420.0


def _drawings(path: Path, n: int) -> list[dict]:
    items = []
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            items.append({"drawing": row["drawing"], "format": row.get("format", "simplified"),
                          "metadata": {"word": row["word"]}})
            if len(items) == n:
                break
    return items


@pytest.fixture(scope="module")
def live(stack):
    """A PostgreSQL + Redis stack with a training worker and 16 scored sketches (10 cats, 6 non-cats)."""
    s = stack("postgres", env=ENV)
    if "training" not in s.procs or s.procs["training"].poll() is not None:
        s.start_training()
    items = _drawings(DATA / "cat.ndjson", 10) + _drawings(DATA / "others.ndjson", 6)
    resp = s.submit(items)
    assert resp.status_code == 202, resp.text
    ids = [i["id"] for i in resp.json()["items"]]
    s.wait_for(ids, timeout=120)
    s.sketch_ids = ids
    return s


def review(s, ids: list[int], verdict: str) -> None:
    from service.reviews import record_reviews

    with s.session() as session:
        record_reviews(session, ids, verdict, "reviewer")


def cli(s, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "models", "train", *args], env=s.environment(),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def queued_training_messages(s) -> int:
    client = redis.Redis.from_url(s.broker_url)
    try:
        return int(client.llen(TRAINING_QUEUE))
    finally:
        client.close()


def wait_run(s, run_id: int, done, timeout: float = RUN_TIMEOUT_S) -> TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with s.session() as session:
            run = session.get(TrainingRun, run_id)
            if done(run):
                return run
        time.sleep(0.25)
    raise AssertionError(f"training run {run_id} not done within {timeout:.0f} s\n{s.tail('training')}")


def test_too_few_reviews_is_a_clear_message_and_queues_nothing(live):
    ids = live.sketch_ids
    review(live, ids[:3], "cat")
    review(live, ids[10:12], "anomaly")
    out = cli(live, "--from-reviews", "--wait")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "needs at least 10 reviewed sketches" in out.stderr and "there are 5 (3 cats, 2 anomalies)" in out.stderr
    assert "nothing was queued" in out.stderr
    with live.session() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 0
    assert queued_training_messages(live) == 0


def test_train_from_reviews_registers_a_candidate(live):
    ids = live.sketch_ids
    review(live, ids[:10], "cat")  # a reviewed cat, flagged or not ("dismissed" flags included)
    review(live, ids[10:16], "anomaly")
    out = cli(live, "--from-reviews", "--wait", "--json")
    assert out.returncode == 0, out.stdout + out.stderr + live.tail("training")
    result = json.loads(out.stdout)
    run, candidate = result["run"], result["candidate"]
    assert run["status"] == "succeeded" and run["epoch"] == run["epochs"] == 2 and run["attempts"] == 1
    # Progress lines while waiting (stderr under --json, the JSON object alone on stdout).
    assert "epoch 1/2" in out.stderr and "succeeded" in out.stderr
    artifact = Path(candidate["artifact_path"])
    assert (artifact / "model.keras").is_file() and (artifact / "model.tflite").is_file()
    meta = json.loads((artifact / "model.json").read_text())
    assert meta["version"] == candidate["version"] and meta["litert"]["parity"]["passed"]
    with live.session() as session:
        mv = session.scalars(select(ModelVersion).where(ModelVersion.version == candidate["version"])).one()
        active = session.scalars(select(ModelVersion).where(ModelVersion.status == "active")).one()
        reviewed = set(session.scalars(select(Sketch.id).where(Sketch.verdict.is_not(None))))
    assert mv.status == "candidate" and mv.parent_version == active.version == run["parent_version"]
    assert mv.threshold == pytest.approx(meta["suggested_threshold"])
    used = mv.data_fingerprint["reviewed"]
    assert set(used["train_ids"]) | set(used["heldback_ids"]) == reviewed == set(ids)
    assert not set(used["train_ids"]) & set(used["heldback_ids"]) and used["heldback_ids"]
    assert set(mv.data_fingerprint["base_files"]) == {"cat_bitmaps_28.npy", "others.ndjson", "others_bitmaps_28.npy",
                                                      "cat.ndjson"}
    held = mv.metrics["reviewed_heldback"]
    assert held["n_cats"] == 2 and held["n_anomalies"] == 1 and 0.0 <= held["auroc"] <= 1.0
    assert mv.metrics["fixed_split"]["sets"]["heldout_categories"]["auroc"] > 0.8
    assert mv.metrics["parent"]["version"] == active.version
    # Without --wait: the run is shown, and a finished one with its candidate.
    shown = cli(live, "--run", str(run["id"]))
    assert shown.returncode == 0 and candidate["version"] in shown.stdout and str(artifact) in shown.stdout


def test_killed_training_worker_retries_and_never_half_registers(live):
    from service.core import training_runs
    from service.core.settings import get_settings

    review(live, live.sketch_ids[9:10], "anomaly")  # other data than the last run: another version
    with live.session() as session:
        versions_before = set(session.scalars(select(ModelVersion.version)))
        run = training_runs.start_from_reviews(session, get_settings({**_settings(live)}), "test")
        run_id = run.id
    training = wait_run(live, run_id, lambda r: r.status == "running" and (r.epoch or 0) >= 1)
    assert training.attempts == 1
    live.kill_process("training", signal.SIGKILL)
    with live.session() as session:
        assert session.get(TrainingRun, run_id).status == "running"
        assert set(session.scalars(select(ModelVersion.version))) == versions_before  # nothing registered yet
    # Redis hands an unacknowledged message to a worker that starts after the visibility timeout.
    since = time.time() - training.started_at.timestamp()
    time.sleep(max(0.0, int(ENV["SKETCHWATCH_VISIBILITY_TIMEOUT_S"]) + 1 - since))
    live.start_training()
    done = wait_run(live, run_id, training_runs.is_finished)
    with live.session() as session:
        made = [mv for mv in session.scalars(select(ModelVersion)) if mv.version not in versions_before]
    if done.status == "succeeded":
        assert done.attempts == 2 and [mv.version for mv in made] == [done.candidate_version]
        assert (Path(made[0].artifact_uri) / "model.tflite").is_file()
    else:
        assert training_runs.LOST_WORKER_ERROR in done.error and made == []
    assert "training run restarted after a lost worker" in live.log("training")


def _settings(s) -> dict:
    env = s.environment()
    return {k[len("SKETCHWATCH_"):].lower(): v for k, v in env.items() if k.startswith("SKETCHWATCH_")} | {
        "log_json": "false"}


def test_reviews_are_deduplicated_and_a_seeded_share_of_each_verdict_is_held_back():
    import numpy as np

    from models.retrain import ReviewedSketches, split_reviews

    rng = np.random.default_rng(0)
    bitmaps = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    bitmaps[5] = bitmaps[4]  # the same drawing reviewed twice, both "cat": counted once
    bitmaps[7] = bitmaps[6]  # one drawing, both verdicts: dropped
    anomalous = np.array([False] * 6 + [False, True] + [True] * 4)
    reviewed = ReviewedSketches(np.arange(100, 112), bitmaps, anomalous)
    split = split_reviews(reviewed, holdback=0.25, seed=3)
    assert split.duplicate_ids == [105] and split.conflicting_ids == [106, 107]
    used = set(split.train.ids) | set(split.held.ids)
    assert used == set(range(100, 112)) - {105, 106, 107} and not set(split.train.ids) & set(split.held.ids)
    # 5 cats and 4 anomalies left: one of each verdict held back (a quarter, at least one).
    assert sorted(split.held.anomalous.tolist()) == [False, True]
    again = split_reviews(reviewed, holdback=0.25, seed=3)
    assert again.held.ids.tolist() == split.held.ids.tolist()
