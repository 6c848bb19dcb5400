"""The training task: train a candidate model from the reviews (``sketchwatch.train_from_reviews(run_id)``).

Thin glue. The run's state lives in ``service.core.training_runs``; the data comes from there too (the
reviewed sketches, the parent version's artifact); the training is ``models.retrain``; the artifact goes
through ``models.export`` (model.tflite, parity-checked) into ``service.core.model_store``; only then is the
candidate registered, in the transaction that marks the run succeeded.

The task runs on the ``training`` queue, consumed only by the training worker (``sketchwatch worker
--training``: one thread, no scoring model loaded). It is acknowledged at its end (``acks_late``), so a
worker killed mid-training leaves the message to be delivered again (Redis' visibility timeout, or at once
when a pool process dies: ``reject_on_worker_lost``); that delivery restarts the run or, past
``SKETCHWATCH_TRAINING_MAX_ATTEMPTS``, marks it failed (``training_runs.begin``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from celery.signals import worker_ready

from service.core import model_store, training_runs
from service.core.celery_app import TRAIN_TASK, TRAINING_QUEUE, celery_app
from service.core.db import db
from worker.lifecycle import ensure_database, settings
from worker.scoring import build_inputs

log = logging.getLogger(__name__)

# Logged by the training worker once it consumes its queue (the stack harness waits for it).
READY_LINE = "training worker ready"


@worker_ready.connect
def _announce(sender=None, **_kwargs) -> None:
    """Say that this worker consumes the training queue, once it does."""
    try:
        queues = {q.name for q in sender.task_consumer.queues}
    except Exception:  # noqa: BLE001 - only descriptive
        return
    if TRAINING_QUEUE in queues:
        log.info(READY_LINE, extra={"queues": ",".join(sorted(queues))})


@celery_app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train_from_reviews(run_id: int) -> dict:
    """Train, export, store and register a candidate for training run ``run_id``; failures mark the run failed."""
    ensure_database()
    with db.session_scope() as session:
        attempt = training_runs.begin(session, int(run_id), settings.training_max_attempts)
    if attempt is None:
        return {"run": run_id, "skipped": True}
    log.info("training run started", extra={"run_id": run_id, "attempt": attempt})
    try:
        version = _train(int(run_id), attempt)
    except training_runs.Superseded as exc:
        log.warning("training run left to a newer attempt: %s", exc, extra={"run_id": run_id})
        return {"run": run_id, "superseded": True}
    except Exception as exc:  # noqa: BLE001 - any failure ends the run with its reason, never a half result
        log.exception("training run failed", extra={"run_id": run_id})
        with db.session_scope() as session:
            training_runs.fail(session, int(run_id), f"{type(exc).__name__}: {exc}", attempt)
        return {"run": run_id, "failed": str(exc)}
    log.info("training run succeeded", extra={"run_id": run_id, "model_version": version})
    return {"run": run_id, "candidate": version}


def _train(run_id: int, attempt: int) -> str:
    """The run's work; returns the registered candidate's version."""
    from models.export import export_artifact
    from models.retrain import RetrainSpec, ReviewedSketches, retrain

    with db.session_scope() as session:
        parent_version, parent_dir = training_runs.parent_artifact(session, settings)
        rows = training_runs.load_reviewed(session)
    # The model's input as the scorer made it: the stored bitmap, else the rendered strokes.
    bitmaps, errors = build_inputs(rows)
    reviewed = ReviewedSketches.from_rows([(r.id, bitmaps[r.id].tobytes(), bool(r.anomalous))
                                           for r in rows if r.id in bitmaps])  # fmt: skip
    with db.session_scope() as session:
        training_runs.set_summary(session, run_id, attempt, parent_version=parent_version,
                                  loaded={"cats": int((~reviewed.anomalous).sum()),
                                          "anomalies": int(reviewed.anomalous.sum()), "unreadable": len(errors)})

    def on_epoch(progress) -> None:
        with db.session_scope() as session:
            training_runs.record_progress(session, run_id, attempt, epoch=progress.epoch, epochs=progress.epochs,
                                          loss=progress.loss, eta_s=progress.eta_s)

    work = Path(settings.data_dir) / "training" / f"run-{run_id}-attempt-{attempt}"
    shutil.rmtree(work, ignore_errors=True)
    spec = RetrainSpec(
        parent_dir=Path(parent_dir), data_dir=settings.training_data_path, epochs=settings.training_epochs,
        holdback=settings.training_holdback, review_weight=settings.training_review_weight,
        warm_start=settings.training_warm_start, max_minutes=settings.training_max_minutes,
        seed=settings.training_seed,
    )  # fmt: skip
    try:
        meta = retrain(spec, reviewed, work, on_epoch=on_epoch, report=lambda line: log.info(line))
        export_artifact(work, data_dir=settings.training_data_path)
        version = meta["version"]
        # The artifact is complete in the store before anything names it.
        uri = model_store.put(settings, work, version)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = meta["retraining"]
    with db.session_scope() as session:
        training_runs.succeed(
            session, run_id, attempt, settings=settings, version=version, artifact_uri=uri,
            parent_version=parent_version, threshold=float(meta["suggested_threshold"]),
            data_fingerprint={"parent_version": parent_version, "base_files": info["base_files"],
                              "reviewed": info["reviewed"]},
            metrics=registry_metrics(meta["metrics"]),
            summary={"used": info["summary"], "history": meta["training"]["history"]},
        )  # fmt: skip
    return version


def registry_metrics(metrics: dict) -> dict:
    """The registry's metrics: the fixed split, the held-back reviews, the parent's, the worst categories."""
    out = {k: metrics[k] for k in ("fixed_split", "reviewed_heldback", "parent") if k in metrics}
    per_category = (metrics.get("heldout_categories") or {}).get("per_category") or []
    out["worst_heldout_categories"] = per_category[:15]
    return out
