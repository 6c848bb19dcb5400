"""Training runs from reviews: request one, follow its progress, record its outcome (issue 16).

A run is requested by an admin (CLI, dashboard, API) with :func:`start_from_reviews`: with too few usable
staff-reviewed sketches it raises :class:`NotEnoughReviews` and nothing is queued; otherwise the run row is
committed and then its task is sent on the ``training`` queue, consumed only by the training worker
(``sketchwatch worker --training``), so scoring never waits behind a training.

The training worker (``worker/training.py``) calls :func:`begin`, :func:`record_progress` each epoch,
:func:`load_reviewed`, :func:`parent_artifact`, then :func:`succeed` or :func:`fail`. A delivery that finds
its run already ``running`` comes after a lost worker (the task is acknowledged only at its end): it starts
the run over, or marks it failed once ``training_max_attempts`` deliveries have started it. The candidate is
registered only after its artifact is fully in the model store, in the same transaction that marks the run
succeeded, so a run is never half-registered.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.core import model_store, registry
from service.core.schema import (
    STATUS_SCORED,
    TRAINING_FAILED,
    TRAINING_QUEUED,
    TRAINING_RUNNING,
    TRAINING_SUCCEEDED,
    VERDICT_ANOMALY,
    VERDICT_CAT,
    Sketch,
    TrainingRun,
    utcnow,
)

log = logging.getLogger(__name__)

LOST_WORKER_ERROR = "the training worker was lost mid-training"


class NotEnoughReviews(ValueError):
    """Too few staff-reviewed sketches to train from; nothing was queued. The message says how many are needed."""


class Superseded(RuntimeError):
    """This delivery of a run's task no longer owns the run (a newer delivery restarted it, or it ended)."""


# --------------------------------------------------------------------------- requesting


def _usable_reviews():
    """Staff verdicts on scored sketches (the model saw them, so they render); clients' own labels never count."""
    return (Sketch.verdict.in_((VERDICT_CAT, VERDICT_ANOMALY)), Sketch.status == STATUS_SCORED)


def review_counts(session: Session) -> dict[str, int]:
    """How many usable reviewed sketches there are: {"cats": ..., "anomalies": ..., "total": ...}."""
    rows = session.execute(
        select(Sketch.verdict, func.count()).where(*_usable_reviews()).group_by(Sketch.verdict)
    ).all()
    counts = {verdict: int(n) for verdict, n in rows}
    cats, anomalies = counts.get(VERDICT_CAT, 0), counts.get(VERDICT_ANOMALY, 0)
    return {"cats": cats, "anomalies": anomalies, "total": cats + anomalies}


def start_from_reviews(session: Session, settings, actor: str, app=None) -> TrainingRun:
    """Queue a training run from the reviews; NotEnoughReviews (nothing queued) when there are too few.

    Commits the run, then sends its task on the training queue (``app``: a configured Celery app, else one
    is made from ``settings``). A broker that cannot be reached marks the run failed and raises.
    """
    counts = review_counts(session)
    needed = settings.training_min_reviews
    if counts["total"] < needed:
        raise NotEnoughReviews(
            f"training from reviews needs at least {needed} reviewed sketches (SKETCHWATCH_TRAINING_MIN_REVIEWS); "
            f"there are {counts['total']} ({counts['cats']} cats, {counts['anomalies']} anomalies). Review more "
            "flagged or unflagged sketches first; nothing was queued."
        )
    run = TrainingRun(status=TRAINING_QUEUED, requested_by=actor, created_at=utcnow(), attempts=0,
                      data_summary={"requested": counts, "min_reviews": needed})
    session.add(run)
    session.commit()
    try:
        enqueue(settings, run.id, app)
    except Exception as exc:
        fail(session, run.id, f"could not queue the training task: {type(exc).__name__}: {exc}")
        session.commit()
        raise
    return run


def enqueue(settings, run_id: int, app=None) -> None:
    """Send the run's task to the training queue (after the commit that made the run)."""
    from service.core.celery_app import TRAINING_QUEUE, TRAIN_TASK, make_celery, prepare_broker

    if app is None:
        prepare_broker(settings)
        app = make_celery(settings)
    app.send_task(TRAIN_TASK, args=[int(run_id)], queue=TRAINING_QUEUE)


# --------------------------------------------------------------------------- reading


def get(session: Session, run_id: int) -> TrainingRun | None:
    """The run ``run_id``, or None."""
    return session.get(TrainingRun, int(run_id))


def latest(session: Session) -> TrainingRun | None:
    """The most recently requested run, or None."""
    return session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1)).first()


def list_runs(session: Session, limit: int = 20) -> list[TrainingRun]:
    """The latest runs, newest first."""
    return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def to_dict(run: TrainingRun) -> dict[str, Any]:
    """A run as JSON-ready data (the API, the dashboard and ``--json`` print this)."""
    return {
        "id": run.id, "status": run.status, "requested_by": run.requested_by,
        "created_at": _iso(run.created_at), "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at), "updated_at": _iso(run.updated_at), "attempts": run.attempts,
        "epoch": run.epoch, "epochs": run.epochs, "loss": run.loss, "eta_s": run.eta_s,
        "parent_version": run.parent_version, "candidate_version": run.candidate_version, "error": run.error,
        "data_summary": run.data_summary or {},
    }  # fmt: skip


def is_finished(run: TrainingRun) -> bool:
    """True once the run succeeded or failed."""
    return run.status in (TRAINING_SUCCEEDED, TRAINING_FAILED)


# --------------------------------------------------------------------------- the training worker's side


def _locked(session: Session, run_id: int) -> TrainingRun | None:
    """The run, locked for this transaction (PostgreSQL; SQLite serialises writers anyway)."""
    return session.execute(
        select(TrainingRun).where(TrainingRun.id == int(run_id)).with_for_update()
    ).scalar_one_or_none()


def begin(session: Session, run_id: int, max_attempts: int) -> int | None:
    """Start (or, after a lost worker, restart) the run; returns this delivery's attempt number, or None to stop.

    None when the run is unknown or already finished (a duplicate delivery), or when it has been started
    ``max_attempts`` times already: it is then marked failed.
    """
    run = _locked(session, run_id)
    if run is None or is_finished(run):
        return None
    now = utcnow()
    if run.status == TRAINING_RUNNING and run.attempts >= max_attempts:
        run.status, run.finished_at, run.updated_at = TRAINING_FAILED, now, now
        run.error = f"{LOST_WORKER_ERROR} ({run.attempts} attempts started, the limit is {max_attempts})"
        log.error("training run failed: its worker was lost", extra={"run_id": run.id, "attempts": run.attempts})
        return None
    if run.status == TRAINING_RUNNING:
        log.warning("training run restarted after a lost worker", extra={"run_id": run.id, "attempt": run.attempts + 1})
    run.status = TRAINING_RUNNING
    run.attempts += 1
    run.started_at = run.started_at or now
    run.updated_at = now
    run.epoch, run.loss, run.eta_s, run.error = 0, None, None, None
    return run.attempts


def record_progress(session: Session, run_id: int, attempt: int, *, epoch: int, epochs: int, loss: float,
                    eta_s: float) -> None:
    """Store one epoch's progress; Superseded when this attempt no longer owns the run."""
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == int(run_id), TrainingRun.status == TRAINING_RUNNING, TrainingRun.attempts == attempt)
        .values(epoch=int(epoch), epochs=int(epochs), loss=float(loss), eta_s=float(eta_s), updated_at=utcnow())
    )
    if result.rowcount != 1:
        raise Superseded(f"training run {run_id}: attempt {attempt} no longer owns it")


def set_summary(session: Session, run_id: int, attempt: int, parent_version: str | None = None, **fields: Any) -> None:
    """Merge ``fields`` into the run's data summary (what was loaded, how it was split); record the parent."""
    run = _locked(session, run_id)
    if run is None or run.status != TRAINING_RUNNING or run.attempts != attempt:
        raise Superseded(f"training run {run_id}: attempt {attempt} no longer owns it")
    if parent_version is not None:
        run.parent_version = parent_version
    run.data_summary = {**(run.data_summary or {}), **fields}
    run.updated_at = utcnow()


def load_reviewed(session: Session) -> list:
    """Every usable staff-reviewed sketch, by id: rows of (id, drawing, input_bitmap, anomalous).

    A stroke submission keeps no bitmap: the caller renders its drawing as the scorer does.
    """
    anomalous = (Sketch.verdict == VERDICT_ANOMALY).label("anomalous")
    return list(session.execute(
        select(Sketch.id, Sketch.drawing, Sketch.input_bitmap, anomalous).where(*_usable_reviews()).order_by(Sketch.id)
    ).all())


def parent_artifact(session: Session, settings) -> tuple[str, Path]:
    """(version, local folder) of the model a new candidate starts from: the registry's active version."""
    active = registry.ensure_bootstrapped(session, settings) or registry.active(session)
    if active is None:
        raise registry.RegistryError("no active model version to train from")
    return active.version, model_store.local_path(settings, active.artifact_uri)


def succeed(session: Session, run_id: int, attempt: int, *, settings, version: str, artifact_uri: str,
            parent_version: str | None, data_fingerprint: dict, metrics: dict, threshold: float,
            summary: dict | None = None) -> TrainingRun:
    """Register the stored candidate and mark the run succeeded, in the caller's one transaction.

    Superseded (nothing registered) when this attempt no longer owns the run. A version is named by its
    weights: the same data and seed train the same weights, and a run that made an already registered
    version succeeds with it (noted in its summary) instead of registering it twice.
    """
    run = _locked(session, run_id)
    if run is None or run.status != TRAINING_RUNNING or run.attempts != attempt:
        raise Superseded(f"training run {run_id}: attempt {attempt} no longer owns it")
    if registry.get(session, version) is not None:
        summary = {**(summary or {}), "note": f"the same weights as the registered version {version}"}
    else:
        registry.register(
            session, version=version, artifact_uri=artifact_uri, parent_version=parent_version,
            created_by=f"training run {run.id} ({run.requested_by})", data_fingerprint=data_fingerprint,
            metrics=metrics, threshold=threshold, status="candidate", settings=settings,
        )  # fmt: skip
    now = utcnow()
    run.status, run.finished_at, run.updated_at = TRAINING_SUCCEEDED, now, now
    run.candidate_version, run.eta_s, run.error = version, 0.0, None
    if summary:
        run.data_summary = {**(run.data_summary or {}), **summary}
    return run


def fail(session: Session, run_id: int, error: str, attempt: int | None = None) -> bool:
    """Mark the run failed with ``error`` (only the attempt that owns it, when given); True if it was marked."""
    conditions = [TrainingRun.id == int(run_id), TrainingRun.status.in_((TRAINING_QUEUED, TRAINING_RUNNING))]
    if attempt is not None:
        conditions.append(TrainingRun.attempts == attempt)
    now = utcnow()
    result = session.execute(
        update(TrainingRun).where(*conditions).values(status=TRAINING_FAILED, error=error[:4000], finished_at=now,
                                                      updated_at=now)
    )
    return result.rowcount == 1
