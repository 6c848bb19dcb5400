"""The model registry: model versions and every change of their status (issue 16, docs/models.md).

A version is a ``candidate`` when registered, ``shadow`` while it scores new sketches alongside the active one
(into ``shadow_scores``; flags stay the active one's), ``active`` while it scores and flags new sketches, and
``retired`` once another version replaced it. At most one version is active and at most one is shadow.

Promote and rollback take the threshold lock exclusively (service.core.thresholds): workers write scores under
the same lock taken shared and re-read the active version inside it, so every sketch is scored and flagged by
exactly one active version and against that version's threshold. Each records a threshold change with the new
active version's own threshold (score scales differ between versions), re-flagging only that version's
sketches. Callers commit; whatever must reach the queue (a re-scoring job) is sent after the commit.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core import model_store
from service.core.schema import (
    MODEL_ACTIVE,
    MODEL_CANDIDATE,
    MODEL_RETIRED,
    MODEL_SHADOW,
    MODEL_STATUSES,
    RESCORE_CANCELLED,
    RESCORE_QUEUED,
    RESCORE_RUNNING,
    STATUS_SCORED,
    ModelEvent,
    ModelVersion,
    RescoreJob,
    ShadowScore,
    Sketch,
    utcnow,
)
from service.core.thresholds import apply_model_threshold, current_threshold, lock_threshold

EVENT_BOOTSTRAP = "bootstrap"
EVENT_SHADOW = "shadow"
EVENT_UNSHADOW = "unshadow"
EVENT_PROMOTE = "promote"
EVENT_ROLLBACK = "rollback"
BOOTSTRAP_ACTOR = "bootstrap"


class RegistryError(ValueError):
    """A registry action that cannot be done (unknown version, nothing to roll back...); the message says why."""


# --------------------------------------------------------------------------- reading


def get(session: Session, version: str) -> ModelVersion | None:
    """The registered version ``version``, or None."""
    return session.execute(select(ModelVersion).where(ModelVersion.version == version)).scalar_one_or_none()


def require(session: Session, version: str) -> ModelVersion:
    """The registered version ``version``; RegistryError naming it when unknown."""
    found = get(session, version)
    if found is None:
        raise RegistryError(f"unknown model version {version!r} (see: sketchwatch models list)")
    return found


def list_versions(session: Session) -> list[ModelVersion]:
    """Every registered version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())))


def active(session: Session) -> ModelVersion | None:
    """The active version, or None before the registry is bootstrapped."""
    return _with_status(session, MODEL_ACTIVE)


def shadow(session: Session) -> ModelVersion | None:
    """The shadow version, or None."""
    return _with_status(session, MODEL_SHADOW)


def _with_status(session: Session, status: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.status == status).limit(1)).first()


def serving(session: Session) -> dict[str, tuple[str, str, float] | None]:
    """What workers need to score: (version, artifact URI, threshold) of the active and the shadow version."""
    rows = session.execute(
        select(ModelVersion.status, ModelVersion.version, ModelVersion.artifact_uri, ModelVersion.threshold).where(
            ModelVersion.status.in_((MODEL_ACTIVE, MODEL_SHADOW))
        )
    ).all()
    found = {row.status: (row.version, row.artifact_uri, float(row.threshold)) for row in rows}
    return {MODEL_ACTIVE: found.get(MODEL_ACTIVE), MODEL_SHADOW: found.get(MODEL_SHADOW)}


def active_version(session: Session) -> str | None:
    """The active version's name only (the workers' check inside their write transaction)."""
    return session.execute(
        select(ModelVersion.version).where(ModelVersion.status == MODEL_ACTIVE).limit(1)
    ).scalar_one_or_none()


def to_dict(mv: ModelVersion) -> dict[str, Any]:
    """A version as JSON-ready data (CLI ``--json``, API)."""
    return {
        "version": mv.version,
        "status": mv.status,
        "parent_version": mv.parent_version,
        "created_at": _iso(mv.created_at),
        "created_by": mv.created_by,
        "threshold": mv.threshold,
        "last_threshold": mv.last_threshold,
        "artifact_uri": mv.artifact_uri,
        "promoted_at": _iso(mv.promoted_at),
        "promoted_by": mv.promoted_by,
        "data_fingerprint": mv.data_fingerprint,
        "metrics": mv.metrics,
    }


def events(session: Session, limit: int = 50) -> list[ModelEvent]:
    """The latest registry actions, newest first."""
    return list(session.scalars(select(ModelEvent).order_by(ModelEvent.id.desc()).limit(limit)))


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


# --------------------------------------------------------------------------- registering


def register(
    session: Session,
    *,
    version: str,
    artifact_uri: str,
    parent_version: str | None = None,
    created_by: str,
    data_fingerprint: dict | None = None,
    metrics: dict | None = None,
    threshold: float,
    status: str = MODEL_CANDIDATE,
    settings=None,
) -> ModelVersion:
    """Add a version (a candidate unless told otherwise); RegistryError for a duplicate, bad threshold or artifact.

    A local artifact (path, file://, shipped) is checked now and must carry ``version`` in its model.json; an
    http(s) one is checked by the first worker that downloads it. ``status`` "shadow" or "active" registers the
    candidate and then makes it so, as :func:`set_shadow` and :func:`promote` would.
    """
    try:
        model_store.check_version(version)
    except model_store.StoreError as exc:
        raise RegistryError(str(exc)) from None
    if status not in MODEL_STATUSES:
        raise RegistryError(f"invalid status {status!r}: one of {', '.join(MODEL_STATUSES)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise RegistryError(f"threshold must be a finite number, not {threshold!r}")
    if get(session, version) is not None:
        raise RegistryError(f"model version {version!r} is already registered")
    if parent_version is not None and get(session, parent_version) is None:
        raise RegistryError(f"unknown parent version {parent_version!r}")
    check_local_artifact(artifact_uri, version)
    mv = ModelVersion(
        version=version,
        artifact_uri=artifact_uri,
        parent_version=parent_version,
        created_by=created_by,
        data_fingerprint=data_fingerprint,
        metrics=metrics,
        threshold=float(threshold),
        status=MODEL_RETIRED if status == MODEL_RETIRED else MODEL_CANDIDATE,
    )
    session.add(mv)
    session.flush()
    if status == MODEL_SHADOW:
        set_shadow(session, version, created_by)
    elif status == MODEL_ACTIVE:
        promote(session, version, created_by, settings=settings)
    return mv


def check_local_artifact(uri: str, version: str) -> None:
    """For a local URI: the artifact's files are sound and its model.json names ``version``; RegistryError if not."""
    from models.artifact import ArtifactError, check_artifact, read_meta

    if model_store.is_url(uri):
        return
    try:
        path = model_store.local_path(None, uri)
        check_artifact(path)
        found = read_meta(path)["version"]
    except (ArtifactError, model_store.StoreError) as exc:
        raise RegistryError(str(exc)) from None
    if found != version:
        raise RegistryError(f"{uri}: model.json has version {found!r}, not {version!r}")


def fingerprint_from_meta(meta: dict) -> dict | None:
    """The training-data fingerprint a model.json records: per data set, its files, size and SHA-256 (no row lists)."""
    data = meta.get("data")
    if not isinstance(data, dict):
        return None
    keep = ("files", "n_train", "sha256_train", "n_heldout", "sha256_heldout")
    return {name: {k: v for k, v in part.items() if k in keep} for name, part in data.items() if isinstance(part, dict)}


def ensure_bootstrapped(session: Session, settings) -> ModelVersion | None:
    """With an empty registry, register the configured (else shipped) model as active; return the active version.

    Its threshold is the one in force, so bootstrapping changes no flag. Safe when several processes race.
    """
    if session.execute(select(ModelVersion.id).limit(1)).first() is not None:
        return active(session)
    from models.artifact import ArtifactError, read_meta, resolve_model_dir

    try:
        meta = read_meta(resolve_model_dir(settings.model_dir))
    except ArtifactError as exc:
        raise RegistryError(f"cannot bootstrap the model registry: {exc}") from None
    now = utcnow()
    mv = ModelVersion(
        version=meta["version"],
        artifact_uri=model_store.uri_for_dir(settings.model_dir),
        created_by=BOOTSTRAP_ACTOR,
        created_at=now,
        data_fingerprint=fingerprint_from_meta(meta),
        metrics=meta.get("metrics") if isinstance(meta.get("metrics"), dict) else None,
        threshold=current_threshold(session, settings),
        status=MODEL_ACTIVE,
        promoted_at=now,
        promoted_by=BOOTSTRAP_ACTOR,
    )
    try:
        with session.begin_nested():
            session.add(mv)
            session.add(ModelEvent(action=EVENT_BOOTSTRAP, version=mv.version, actor=BOOTSTRAP_ACTOR,
                                   threshold=mv.threshold))
    except IntegrityError:
        # Another process bootstrapped it between our check and our insert.
        pass
    return active(session)


# --------------------------------------------------------------------------- status changes


def set_shadow(session: Session, version: str | None, actor: str) -> ModelVersion | None:
    """Make ``version`` the shadow (the previous shadow becomes a candidate); None stops shadow scoring."""
    lock_threshold(session, exclusive=True)
    current = shadow(session)
    target = require(session, version) if version is not None else None
    if target is not None and target.status == MODEL_ACTIVE:
        raise RegistryError(f"model version {version!r} is active; only another version can be its shadow")
    if target is not None and current is not None and current.id == target.id:
        return target
    if current is None and target is None:
        raise RegistryError("no model version is in shadow")
    if current is not None:
        current.status = MODEL_CANDIDATE
    if target is not None:
        check_local_artifact(target.artifact_uri, target.version)
        session.flush()
        target.status = MODEL_SHADOW
    session.add(ModelEvent(
        action=EVENT_SHADOW if target is not None else EVENT_UNSHADOW,
        version=target.version if target is not None else None,
        previous_version=current.version if current is not None else None,
        actor=actor,
    ))
    session.flush()
    return target


def promote(session: Session, version: str, actor: str, *, settings=None) -> ModelVersion:
    """Make ``version`` active (the active one retires) and apply its own threshold; record who and when."""
    lock_threshold(session, exclusive=True)
    target = require(session, version)
    if target.status == MODEL_ACTIVE:
        raise RegistryError(f"model version {version!r} is already active")
    check_local_artifact(target.artifact_uri, target.version)
    _switch(session, target, target.threshold, actor, EVENT_PROMOTE, settings)
    return target


def rollback(session: Session, actor: str, *, settings=None) -> ModelVersion:
    """Make the version active before the current one active again, with the threshold it had then."""
    lock_threshold(session, exclusive=True)
    target = previous_active(session)
    check_local_artifact(target.artifact_uri, target.version)
    threshold = target.last_threshold if target.last_threshold is not None else target.threshold
    _switch(session, target, threshold, actor, EVENT_ROLLBACK, settings)
    return target


def _switch(session: Session, target: ModelVersion, threshold: float, actor: str, action: str, settings):
    """Retire the active version (remembering its threshold), activate ``target`` and apply ``threshold``."""
    settings = settings or _settings()
    previous = active(session)
    in_force = current_threshold(session, settings)
    if previous is not None:
        previous.status = MODEL_RETIRED
        previous.last_threshold = in_force
        # The unique "one active" rule is ours, not the database's: flush the retirement first.
        session.flush()
    target.status = MODEL_ACTIVE
    target.promoted_at = utcnow()
    target.promoted_by = actor
    verb = "promoted" if action == EVENT_PROMOTE else "rolled back to"
    apply_model_threshold(
        session, settings, threshold, actor, f"model {target.version} {verb} by {actor}", target.version
    )
    session.add(ModelEvent(
        action=action, version=target.version, previous_version=previous.version if previous is not None else None,
        actor=actor, threshold=float(threshold),
    ))
    session.flush()
    return previous


def previous_active(session: Session) -> ModelVersion:
    """The version a rollback would make active; RegistryError when there is none."""
    current = active(session)
    stack = _activation_stack(session)
    if current is not None and stack and stack[-1] != current.version:
        stack.append(current.version)
    if current is None or len(stack) < 2:
        raise RegistryError("nothing to roll back: no version was active before the current one")
    return require(session, stack[-2])


def _activation_stack(session: Session) -> list[str]:
    """Replay bootstrap, promote and rollback events: the versions made active, the current one last."""
    stack: list[str] = []
    for action, version in session.execute(
        select(ModelEvent.action, ModelEvent.version)
        .where(ModelEvent.action.in_((EVENT_BOOTSTRAP, EVENT_PROMOTE, EVENT_ROLLBACK)))
        .order_by(ModelEvent.id)
    ):
        if action == EVENT_BOOTSTRAP:
            stack = [version]
        elif action == EVENT_PROMOTE:
            stack.append(version)
        elif stack:
            stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
    return stack


def _settings():
    from service.core.settings import get_settings

    return get_settings()


# --------------------------------------------------------------------------- re-scoring stored sketches


def start_rescore(session: Session, version: str, actor: str) -> RescoreJob:
    """A job re-scoring every stored sketch scored by another version with ``version`` (it must be active).

    Earlier unfinished jobs are cancelled. The caller commits, then sends the job with :func:`enqueue_rescore`.
    """
    mv = require(session, version)
    if mv.status != MODEL_ACTIVE:
        raise RegistryError(f"model version {version!r} is not active: only the active version re-scores")
    session.execute(
        update(RescoreJob)
        .where(RescoreJob.status.in_((RESCORE_QUEUED, RESCORE_RUNNING)))
        .values(status=RESCORE_CANCELLED, finished_at=utcnow())
    )
    max_id = session.execute(select(func.max(Sketch.id))).scalar_one_or_none() or 0
    total = session.execute(
        select(func.count()).select_from(Sketch).where(
            Sketch.status == STATUS_SCORED, Sketch.id <= max_id, Sketch.model_version.is_distinct_from(version)
        )
    ).scalar_one()
    job = RescoreJob(model_version=version, requested_by=actor, status=RESCORE_QUEUED, total=int(total),
                     done=0, max_id=int(max_id), last_id=0)
    session.add(job)
    session.flush()
    return job


def enqueue_rescore(settings, job_id: int, app=None) -> None:
    """Send the job's first batch to the workers (after the commit that made the job)."""
    from service.core.celery_app import RESCORE_TASK, make_celery

    (app or make_celery(settings)).send_task(RESCORE_TASK, args=[int(job_id)])


def rescore_progress(session: Session) -> dict[str, Any] | None:
    """The latest re-scoring job's progress (None when there never was one)."""
    job = session.scalars(select(RescoreJob).order_by(RescoreJob.id.desc()).limit(1)).first()
    if job is None:
        return None
    return rescore_dict(job)


def rescore_dict(job: RescoreJob) -> dict[str, Any]:
    """A re-scoring job as JSON-ready data."""
    return {
        "id": job.id,
        "model_version": job.model_version,
        "status": job.status,
        "requested_by": job.requested_by,
        "total": job.total,
        "done": job.done,
        "fraction": (min(1.0, job.done / job.total) if job.total else 1.0),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "error": job.error,
    }


# --------------------------------------------------------------------------- shadow scores


def write_shadow_scores(
    session: Session, scores: list[tuple[int, float]], version: str, threshold: float, when
) -> None:
    """Store the shadow version's (sketch id, score) pairs, flagged against its own threshold; repeats are ignored."""
    if not scores:
        return
    rows = [
        {"sketch_id": i, "model_version": version, "score": float(s), "flagged": float(s) > threshold,
         "scored_at": when}
        for i, s in scores
    ]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - the service runs on PostgreSQL or SQLite
        raise RuntimeError(f"shadow scores need PostgreSQL or SQLite, not {dialect}")
    # A re-delivered task scores the same sketch again: the first shadow score stands.
    session.execute(dialect_insert(ShadowScore).on_conflict_do_nothing(), rows)
