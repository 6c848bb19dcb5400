"""Data lifecycle tasks: apply the retention limits (beat), and compute reconstructions not kept at scoring.

``sketchwatch.apply_retention`` is database work without the model: it runs on the alerts queue, every
``SKETCHWATCH_RETENTION_INTERVAL_S`` (service.core.celery_app's beat schedule), and also backfills the
reconstructions of sketches flagged after they were scored (a lowered threshold) by sending them to the
scoring workers. ``sketchwatch.reconstruct_sketches(ids)`` runs there: it renders the input again, runs the
model, and stores the reconstruction when the model is the one that scored the sketch.
"""

from __future__ import annotations

import logging

import numpy as np

from service.core import retention, sketches
from service.core.celery_app import RECONSTRUCT_TASK, RETENTION_TASK, celery_app
from service.core.db import db
from worker.lifecycle import ensure_database, settings

log = logging.getLogger(__name__)

# Flagged sketches lacking a reconstruction handed to the scoring workers per retention run, per task.
BACKFILL_MAX = 5000
BACKFILL_CHUNK = 256


@celery_app.task(name=RETENTION_TASK)
def apply_retention() -> dict:
    """Apply the retention limits once; then queue reconstructions for flagged sketches that have none."""
    ensure_database()
    report = retention.run(db.engine, settings, trigger="beat")
    with db.session_scope() as session:
        missing = sketches.flagged_missing_reconstruction(session, BACKFILL_MAX)
    for start in range(0, len(missing), BACKFILL_CHUNK):
        celery_app.send_task(RECONSTRUCT_TASK, args=[missing[start : start + BACKFILL_CHUNK]])
    return {**report.to_dict(), "reconstructions_queued": len(missing)}


@celery_app.task(name=RECONSTRUCT_TASK, acks_late=True)
def reconstruct_sketches(ids: list[int]) -> dict:
    """Compute and store the reconstructions of the scored sketches among ``ids`` that have none."""
    from worker import model_runtime
    from worker.scoring import build_inputs, clean_ids

    ensure_database()
    wanted = clean_ids(ids)
    with db.session_scope() as session:
        rows = sketches.load_missing_reconstructions(session, wanted)
    if not rows:
        return {"stored": 0}
    scorer = model_runtime.serving(settings).active
    # Only the model that scored a sketch explains its score: rows of other versions stay without one.
    rows = [r for r in rows if r.model_version == scorer.version]
    bitmaps, errors = build_inputs(rows)
    if errors:
        log.warning("could not render sketches for their reconstruction", extra={"sketch_ids": sorted(errors)})
    ids_ok = list(bitmaps)
    if not ids_ok:
        return {"stored": 0, "other_version": len(wanted) - len(rows)}
    recons = scorer.score_bitmaps(np.stack([bitmaps[i] for i in ids_ok]))[1]
    # The same bytes the scoring task stores (uint8 28x28).
    as_bytes = {i: r.tobytes() for i, r in zip(ids_ok, recons, strict=True)}
    with db.session_scope() as session:
        stored = sketches.store_reconstructions(session, as_bytes, scorer.version)
    return {"stored": stored}
