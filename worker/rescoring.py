"""Re-scoring stored sketches with the newly active model, in the background, one batch per task.

A promote with re-scoring makes a job (service.core.registry.start_rescore) and sends its first task. Each task
scores the next ``rescore_batch`` stored sketches another version scored (keyset on id, up to the job's last id)
and sends the next one, so live scoring tasks on the same queue interleave with it. The previous scores go to
score_history. A job whose version is no longer active (another promote, a rollback) stops.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from service.core import registry, sketches
from service.core.celery_app import RESCORE_TASK, celery_app
from service.core.db import db
from service.core.schema import (
    RESCORE_CANCELLED,
    RESCORE_DONE,
    RESCORE_QUEUED,
    RESCORE_RUNNING,
    RescoreJob,
    utcnow,
)
from service.core.thresholds import current_threshold, lock_threshold
from worker import model_runtime
from worker.lifecycle import ensure_database, settings
from worker.scoring import build_inputs, retry_delay, run_model

log = logging.getLogger(__name__)


@celery_app.task(name=RESCORE_TASK, bind=True, acks_late=True)
def rescore_sketches(self, job_id: int) -> dict:
    """Re-score the next batch of job ``job_id``'s sketches with the active model, then send the next batch."""
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        log.error("dropped a re-scoring task with a malformed payload: %r", job_id)
        return {"error": "job_id must be an integer"}
    ensure_database()
    try:
        result = rescore_batch(job_id)
    except (DBAPIError, model_runtime.ModelUnavailable) as exc:
        delay = retry_delay(self.request.retries)
        log.warning("re-scoring batch failed (%s); retrying in %.1f s", exc, delay, extra={"job_id": job_id})
        raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from None
    if result.get("more"):
        self.app.send_task(RESCORE_TASK, args=[job_id])
    return result


def rescore_batch(job_id: int) -> dict:
    """One batch of a job; ``more`` says whether another batch is due. Idempotent for a re-delivered task."""
    with db.session_scope() as session:
        job = session.get(RescoreJob, job_id)
        if job is None or job.status not in (RESCORE_QUEUED, RESCORE_RUNNING):
            return {"job": job_id, "status": getattr(job, "status", "unknown"), "more": False}
        version, after, up_to = job.model_version, job.last_id, job.max_id
        rows = sketches.rescore_candidates(session, version, after, up_to, settings.rescore_batch)
    models = model_runtime.serving(settings, force=True)
    if models.active.version != version:
        return _finish(job_id, RESCORE_CANCELLED, f"model {version} is no longer active")
    if not rows:
        return _finish(job_id, RESCORE_DONE, None)
    bitmaps, errors = build_inputs(rows)
    results = run_model(models.active, bitmaps, errors)
    batch_last = rows[-1].id
    now = utcnow()
    with db.session_scope() as session:
        lock_threshold(session)
        job = session.execute(select(RescoreJob).where(RescoreJob.id == job_id).with_for_update()).scalar_one()
        if job.status not in (RESCORE_QUEUED, RESCORE_RUNNING) or job.last_id >= batch_last:
            # Cancelled meanwhile, or a duplicate of this task got here first and sent the next batch.
            return {"job": job_id, "status": job.status, "more": False}
        if registry.active_version(session) != version:
            job.status, job.finished_at, job.error = RESCORE_CANCELLED, now, f"model {version} is no longer active"
            return {"job": job_id, "status": job.status, "more": False}
        threshold = current_threshold(session, settings)
        changed = sketches.replace_scores(
            session,
            [(i, score, recon.tobytes(), *rest) for i, (score, recon, *rest) in results.items()],
            threshold,
            version,
            now,
            job_id,
        )
        job.status = RESCORE_RUNNING
        job.started_at = job.started_at or now
        job.last_id = batch_last
        job.done = job.done + changed
    log.info("re-scored %d stored sketches", changed,
             extra={"job_id": job_id, "model_version": version, "last_id": batch_last, "errors": len(errors)})
    return {"job": job_id, "status": RESCORE_RUNNING, "rescored": changed, "more": True}


def _finish(job_id: int, status: str, error: str | None) -> dict:
    """Close the job (done or cancelled) unless it was closed already."""
    with db.session_scope() as session:
        job = session.execute(select(RescoreJob).where(RescoreJob.id == job_id).with_for_update()).scalar_one()
        if job.status in (RESCORE_QUEUED, RESCORE_RUNNING):
            job.status, job.error, job.finished_at = status, error, utcnow()
            job.started_at = job.started_at or job.finished_at
        log.info("re-scoring job %s", job.status, extra={"job_id": job_id, "model_version": job.model_version})
        return {"job": job_id, "status": job.status, "more": False}
