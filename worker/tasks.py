"""Celery tasks: score queued sketches in batches, and sweep up sketches whose task was lost.

Delivery is at least once (``acks_late``, ``reject_on_worker_lost``, Redis' visibility timeout, the
sweeper), so every write is guarded by ``status = 'queued'``: a re-delivered or duplicated task can
never score a sketch twice.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from celery.signals import setup_logging, task_postrun, worker_init, worker_process_init
from sqlalchemy import BigInteger, any_, bindparam, case, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from service.core.db import db
from service.core.logs import configure_logging
from service.core.schema import STATUS_FAILED, STATUS_QUEUED, STATUS_SCORED, Sketch, utcnow
from service.core.thresholds import current_threshold, lock_threshold
from worker import model_runtime
from worker.app import QUEUE, SCORE_TASK, SWEEP_TASK, celery_app

log = logging.getLogger(__name__)
settings = celery_app.conf.sketchwatch_settings

# Per-session CPU priority under autogroup scheduling (sched(7)).
AUTOGROUP_FILE = "/proc/self/autogroup"
MAX_ERROR_CHARS = 1000
# One sweep re-sends at most this many batches; the rest wait for the next run.
MAX_SWEEP_BATCHES = 200
# A pool process that starts above this share of its memory cap is reported: the cap leaves no room for work.
CAP_HEADROOM = 0.9
_main_pid: int | None = None

_T = Sketch.__table__
_WRITE_SCORE = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_QUEUED)
    .values(
        status=STATUS_SCORED,
        score=bindparam("b_score"),
        flagged=bindparam("b_flagged"),
        threshold=bindparam("b_threshold"),
        model_version=bindparam("b_version"),
        reconstruction=bindparam("b_recon"),
        input_bitmap=bindparam("b_input"),
        scored_at=bindparam("b_at"),
        error=None,
    )
)
# SET expressions read the row as it was, so ``attempts + 1`` is the new count on every database.
_WRITE_ERROR = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_QUEUED)
    .values(
        attempts=_T.c.attempts + 1,
        error=bindparam("b_error"),
        status=case((_T.c.attempts + 1 >= bindparam("b_max"), STATUS_FAILED), else_=STATUS_QUEUED),
    )
)
_GIVE_UP = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.status == STATUS_QUEUED)
    .values(status=STATUS_FAILED, error=bindparam("b_error"))
)


# --------------------------------------------------------------------------- process model


@setup_logging.connect
def _configure_logging(**_kwargs) -> None:
    """Use the service's structured logging in the worker, beat and pool processes instead of Celery's."""
    configure_logging(settings)


@worker_init.connect
def _check_model_before_fork(**_kwargs) -> None:
    """In the worker's main process: refuse to start (exit 78) when the model files are missing or corrupt."""
    global _main_pid
    _main_pid = os.getpid()
    configure_logging(settings)  # Celery sets up logging only after this signal
    try:
        path = model_runtime.check_artifact(settings.model_dir)
    except model_runtime.ModelUnavailable as exc:
        log.critical("worker not started: the scoring model is unavailable: %s", exc)
        raise SystemExit(model_runtime.EX_CONFIG) from None
    log.info("model artifact %s checked", path)
    if settings.worker_nice:
        # Before the pool forks, so every pool process inherits it.
        lower_priority(settings.worker_nice)
    # A pool process that cannot load the model signals this, and the worker stops with EX_CONFIG.
    signal.signal(signal.SIGUSR2, _on_model_failure)


def lower_priority(nice: int) -> None:
    """Score at a lower CPU priority than the intake sharing the machine: the 202 answers wait on no model."""
    os.nice(nice)
    # With autogroup scheduling (the default on most distribution kernels) nice only ranks processes of one
    # session: a worker started in a session of its own (sketchwatch up, systemd, the bench) otherwise gets
    # as much CPU as the whole web server. Niced there, its group yields too. Never another program's group.
    if os.getsid(0) != os.getpid() or autogroup_nice() is None:
        return
    try:
        with open(AUTOGROUP_FILE, "w") as fh:
            fh.write(str(nice))
    except OSError:  # no autogroup support (containers use cgroup CPU weights instead)
        log.debug("could not lower the session's autogroup priority", exc_info=True)


def autogroup_nice() -> int | None:
    """This process's autogroup nice, or None when the kernel does not schedule it by autogroup."""
    try:
        with open(AUTOGROUP_FILE) as fh:
            fields = fh.read().split()
    except OSError:
        return None
    # Empty for a task in a non-root cgroup (containers, CI runners): its cgroup's CPU weight applies instead.
    return int(fields[-1]) if fields else None


def _on_model_failure(_signum, _frame) -> None:
    """Warm shutdown of the worker with exit status 78, the way Celery's own SIGTERM handler stops it."""
    from celery.worker import state

    state.should_stop = model_runtime.EX_CONFIG


@worker_process_init.connect
def _init_pool_process(**_kwargs) -> None:
    """In each pool process after fork: its own database engine, then TensorFlow and the model."""
    bind_database()
    try:
        scorer = model_runtime.load(settings.model_dir, settings.tf_threads)
    except model_runtime.ModelUnavailable as exc:
        log.critical("the scoring model could not be loaded; stopping the worker: %s", exc)
        _stop_worker()
        return
    # TensorFlow and the model leave ~480k long-lived objects (a full collection: ~270 ms); stop walking them.
    gc.freeze()
    peak_mb = _peak_rss_mb()
    log.info(
        "scoring process ready", extra={"pid": os.getpid(), "model_version": scorer.version, "rss_mb": round(peak_mb)}
    )
    cap_mb = settings.worker_max_memory_mb
    if cap_mb and peak_mb > CAP_HEADROOM * cap_mb:
        # Over the cap, the pool would replace this process after every task and reload the model each time.
        log.error(
            "pool process %d needs %.0f MB with its model, too close to the %d MB cap; raise "
            "SKETCHWATCH_WORKER_MAX_MEMORY_MB", os.getpid(), peak_mb, cap_mb,
            extra={"pid": os.getpid(), "rss_mb": round(peak_mb), "cap_mb": cap_mb},
        )


def _peak_rss_mb() -> float:
    """This process's peak resident size in MB (the figure Celery's memory cap compares)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@task_postrun.connect
def _report_memory_cap(**_kwargs) -> None:
    """Log that this pool process passed its memory cap: the pool replaces it after this task."""
    cap_mb = settings.worker_max_memory_mb
    if not cap_mb or _main_pid is None or os.getpid() == _main_pid:  # a solo pool is never replaced
        return
    # Billiard compares the same figure after each task, but logs nothing we keep.
    peak_mb = _peak_rss_mb()
    if peak_mb > cap_mb:
        log.warning(
            "pool process %d is replaced: peak RSS %.0f MB is over the %d MB cap", os.getpid(), peak_mb, cap_mb,
            extra={"pid": os.getpid(), "peak_rss_mb": round(peak_mb), "cap_mb": cap_mb},
        )


def _stop_worker() -> None:
    """Take the whole worker down so it takes no task (a bare child exit would just be respawned)."""
    if _main_pid is None or os.getpid() == _main_pid:
        raise SystemExit(model_runtime.EX_CONFIG)  # solo pool: this process is the worker
    if os.getppid() == _main_pid:
        os.kill(_main_pid, signal.SIGUSR2)
    os._exit(model_runtime.EX_CONFIG)


def bind_database() -> None:
    """Give this process its own engine: pooled connections must never be shared across a fork."""
    if db.engine is not None:
        # close=False: the sockets belong to the parent, closing them here would break its connections.
        db.engine.dispose(close=False)
    db.dispose()
    kwargs = {} if settings.database_url.startswith("sqlite") else {"pool_size": 2, "max_overflow": 2}
    db.configure(settings.database_url, **kwargs)


def _ensure_database() -> None:
    if db.engine is None:
        bind_database()


# --------------------------------------------------------------------------- scoring


@dataclass
class BatchOutcome:
    """What one scoring run did with its ids."""

    scored: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Counts, for the task result and logs."""
        return {
            "scored": len(self.scored),
            "skipped": len(self.skipped),
            "errors": len(self.errors),
            "failed": len(self.failed),
        }


def clean_ids(ids) -> list[int]:
    """Validate a task payload: a list of positive integer ids, de-duplicated in order."""
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"expected a list of sketch ids, got {type(ids).__name__}")
    out: list[int] = []
    seen: set[int] = set()
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"invalid sketch id {value!r}")
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def retry_delay(retries: int) -> float:
    """Exponential backoff with jitter (1, 2, 4 ... 60 s, halved at random) for database outages."""
    return min(60.0, 2.0**retries) * (0.5 + random.random() / 2)


def _transient(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError) or bool(getattr(exc, "connection_invalidated", False))


@celery_app.task(name=SCORE_TASK, bind=True, acks_late=True, max_retries=settings.task_max_retries)
def score_sketches(self, ids: list[int]) -> dict:
    """Score the still-queued sketches among ``ids`` in one batch and store the results in one transaction."""
    try:
        wanted = clean_ids(ids)
    except (TypeError, ValueError) as exc:
        # Retrying cannot fix a malformed message; the sweeper re-sends whatever it was about.
        log.error("dropped a scoring task with a malformed payload: %s", exc)
        return {"error": str(exc)}
    if not wanted:
        return BatchOutcome().as_dict()
    _ensure_database()
    try:
        if (self.request.delivery_info or {}).get("redelivered"):
            wanted = record_lost_delivery(wanted)
            if len(wanted) > 1:
                # The last delivery died mid-task, maybe killed by one of these sketches: score each on its
                # own, so such a sketch uses up only its own attempts instead of failing the whole batch.
                for sketch_id in wanted:
                    self.app.send_task(SCORE_TASK, args=[[sketch_id]])
                log.warning("redelivered batch split into single tasks", extra={"sketch_ids": wanted})
                return {"split": len(wanted)}
        return score_ids(wanted).as_dict()
    except DBAPIError as exc:
        if not _transient(exc):
            raise
        delay = retry_delay(self.request.retries)
        log.warning(
            "database unavailable (%s); retrying in %.1f s",
            type(exc.orig).__name__,
            delay,
            extra={"sketch_ids": wanted, "retry": self.request.retries + 1},
        )
        raise self.retry(exc=exc, countdown=delay) from None


def score_ids(ids: Sequence[int], scorer=None) -> BatchOutcome:
    """Score the queued sketches among ``ids`` (in chunks of worker_batch_size) and store the results."""
    total = BatchOutcome()
    size = max(1, settings.worker_batch_size)
    for start in range(0, len(ids), size):
        part = _score_chunk(list(ids[start : start + size]), scorer)
        total.scored += part.scored
        total.skipped += part.skipped
        total.errors.update(part.errors)
        total.failed += part.failed
    return total


def _score_chunk(ids: list[int], scorer) -> BatchOutcome:
    started = time.perf_counter()
    outcome = BatchOutcome()
    with db.session_scope() as session:
        rows = session.execute(
            select(Sketch.id, Sketch.drawing, Sketch.input_bitmap, Sketch.attempts)
            .where(_id_among(session, ids), Sketch.status == STATUS_QUEUED)
            .order_by(Sketch.id)
        ).all()
    found = {row.id for row in rows}
    outcome.skipped = [i for i in ids if i not in found]
    if not rows:
        log.info("nothing to score: already scored, failed or unknown", extra={"sketch_ids": ids})
        return outcome

    scorer = scorer or model_runtime.get_scorer(settings.model_dir, settings.tf_threads)
    bitmaps, errors = build_inputs(rows)
    results = run_model(scorer, bitmaps, errors)
    now = utcnow()
    with db.session_scope() as session:
        lock_threshold(session)
        threshold = current_threshold(session, settings)
        if results:
            session.execute(
                _WRITE_SCORE,
                [
                    {
                        "b_id": sketch_id,
                        "b_score": score,
                        "b_flagged": score > threshold,
                        "b_threshold": threshold,
                        "b_version": scorer.version,
                        "b_recon": recon.tobytes(),
                        "b_input": bitmaps[sketch_id].tobytes(),
                        "b_at": now,
                    }
                    for sketch_id, (score, recon) in results.items()
                ],
            )
        if errors:
            session.execute(
                _WRITE_ERROR,
                [
                    {"b_id": i, "b_error": msg[:MAX_ERROR_CHARS], "b_max": settings.max_attempts}
                    for i, msg in errors.items()
                ],
            )
    attempts = {row.id: row.attempts for row in rows}
    outcome.scored = list(results)
    outcome.errors = errors
    outcome.failed = [i for i in errors if attempts[i] + 1 >= settings.max_attempts]
    for sketch_id, message in errors.items():
        log.warning(
            "sketch could not be scored: %s",
            message,
            extra={
                "sketch_ids": [sketch_id],
                "attempt": attempts[sketch_id] + 1,
                "failed": sketch_id in outcome.failed,
            },
        )
    log.info(
        "scored %d sketches",
        len(results),
        extra={
            "sketch_ids": outcome.scored,
            "model_version": scorer.version,
            "threshold": threshold,
            "skipped": len(outcome.skipped),
            "errors": len(errors),
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return outcome


def _id_among(session: Session, ids: list[int]):
    """``id IN ids``; on PostgreSQL one array parameter, so the statement text is the same for every batch."""
    if session.get_bind().dialect.name == "postgresql":
        return Sketch.id == any_(bindparam("ids", ids, type_=ARRAY(BigInteger)))
    return Sketch.id.in_(ids)


def build_inputs(rows) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """28x28 model inputs per sketch id (stored bitmap, else rasterized strokes) and per-id errors."""
    from models.raster import rasterize_batch

    bitmaps: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    to_render = []
    for row in rows:
        if row.input_bitmap is not None:
            raw = bytes(row.input_bitmap)
            if len(raw) == 28 * 28:
                bitmaps[row.id] = np.frombuffer(raw, dtype=np.uint8).reshape(28, 28)
            else:
                errors[row.id] = f"stored input bitmap has {len(raw)} bytes, expected 784"
        elif row.drawing is None:
            errors[row.id] = "nothing to score: no drawing and no input bitmap stored"
        else:
            to_render.append(row)
    if to_render:
        try:
            rendered = rasterize_batch([row.drawing for row in to_render])
            bitmaps.update({row.id: bitmap for row, bitmap in zip(to_render, rendered, strict=True)})
        except Exception:  # noqa: BLE001 - one bad drawing fails the batch call: render one by one to find it
            for row in to_render:
                try:
                    bitmaps[row.id] = rasterize_batch([row.drawing])[0]
                except Exception as exc:  # noqa: BLE001
                    errors[row.id] = f"rasterization failed: {type(exc).__name__}: {exc}"
    return bitmaps, errors


def run_model(scorer, bitmaps: dict[int, np.ndarray], errors: dict[int, str]) -> dict[int, tuple[float, np.ndarray]]:
    """Score all bitmaps in one model call; isolate per-sketch failures into ``errors``.

    Raises when the model fails for every sketch: that is the model or the process, not the input,
    and must not use up the sketches' attempts.
    """
    ids = list(bitmaps)
    if not ids:
        return {}
    try:
        scores, recons = scorer.score_bitmaps(np.stack([bitmaps[i] for i in ids]))
        results = {i: (float(s), r) for i, s, r in zip(ids, scores, recons, strict=True)}
    except Exception:
        if len(ids) == 1:
            raise
        log.warning("batch scoring failed; scoring one by one", exc_info=True, extra={"sketch_ids": ids})
        results, failures = {}, {}
        for i in ids:
            try:
                s, r = scorer.score_bitmaps(bitmaps[i][None])
                results[i] = (float(s[0]), r[0])
            except Exception as exc:  # noqa: BLE001
                failures[i] = f"scoring failed: {type(exc).__name__}: {exc}"
        if not results:
            raise
        errors.update(failures)
    bad = [i for i, (s, _) in results.items() if not np.isfinite(s)]
    if bad and len(bad) == len(results):
        raise RuntimeError(f"the model produced no finite score for {len(bad)} sketches")
    for i in bad:
        del results[i]
        errors[i] = "scoring failed: the model produced a non-finite score"
    return results


def record_lost_delivery(ids: list[int]) -> list[int]:
    """Count a delivery that died mid-task as an attempt; fail sketches out of attempts; return the rest."""
    with db.session_scope() as session:
        rows = _lock_queued(session, select(Sketch.id, Sketch.attempts).where(Sketch.id.in_(ids))).all()
        exhausted = [r for r in rows if r.attempts + 1 >= settings.max_attempts]
        alive = [r.id for r in rows if r.attempts + 1 < settings.max_attempts]
        if alive:
            session.execute(
                update(Sketch)
                .where(Sketch.id.in_(alive), Sketch.status == STATUS_QUEUED)
                .values(attempts=Sketch.attempts + 1)
                .execution_options(synchronize_session=False)
            )
        if exhausted:
            session.execute(
                update(Sketch)
                .where(Sketch.id.in_([r.id for r in exhausted]), Sketch.status == STATUS_QUEUED)
                .values(
                    attempts=Sketch.attempts + 1,
                    status=STATUS_FAILED,
                    error=_gave_up(settings.max_attempts, "the worker died while scoring it"),
                )
                .execution_options(synchronize_session=False)
            )
    if exhausted:
        log.error(
            "gave up on sketches whose worker died while scoring them", extra={"sketch_ids": [r.id for r in exhausted]}
        )
    return alive


def _lock_queued(session: Session, stmt):
    """Run ``stmt`` restricted to queued rows, locking them on PostgreSQL (skipping rows others hold)."""
    stmt = stmt.where(Sketch.status == STATUS_QUEUED).order_by(Sketch.id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return session.execute(stmt)


def _gave_up(attempts: int, reason: str | None) -> str:
    text = f"gave up after {attempts} attempts"
    return (f"{text}: {reason}" if reason else text)[:MAX_ERROR_CHARS]


# --------------------------------------------------------------------------- sweeper


@celery_app.task(name=SWEEP_TASK, bind=True, expires=max(settings.sweep_interval_s, 1.0))
def sweep_queued(self) -> dict:
    """Re-send sketches queued for longer than sweep_after_s; mark those out of attempts as failed."""
    _ensure_database()
    backlog = queue_backlog(self.app)
    if backlog:
        # Those sketches are waiting in the queue, not lost: re-sending would only duplicate work.
        log.info("sweep deferred: %d scoring tasks still waiting in the queue", backlog)
        return {"deferred": backlog}
    return sweep(lambda ids: self.app.send_task(SCORE_TASK, args=[ids]))


def queue_backlog(app) -> int:
    """Messages waiting in the scoring queue (0 when empty or when the broker cannot say)."""
    try:
        with app.connection_for_read() as conn:
            _name, count, _consumers = conn.default_channel.queue_declare(queue=QUEUE, passive=True)
            return int(count or 0)
    except Exception:  # noqa: BLE001 - Redis reports an empty queue as "not found"; unknown means sweep
        return 0


def sweep(publish: Callable[[list[int]], object]) -> dict:
    """One sweep over stale queued sketches in batches; ``publish(ids)`` sends one scoring task."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.sweep_after_s)
    size = max(1, settings.worker_batch_size)
    stale_since = func.coalesce(Sketch.enqueued_at, Sketch.submitted_at)
    resent: list[int] = []
    gave_up: list[int] = []
    after = 0
    for _ in range(MAX_SWEEP_BATCHES):
        retry: list[int] = []
        exhausted: list = []
        try:
            with db.session_scope() as session:
                rows = _lock_queued(
                    session,
                    select(Sketch.id, Sketch.attempts, Sketch.error)
                    .where(Sketch.id > after, stale_since < cutoff)
                    .limit(size),
                ).all()
                if not rows:
                    break
                after = rows[-1].id
                exhausted = [r for r in rows if r.attempts >= settings.max_attempts]
                retry = [r.id for r in rows if r.attempts < settings.max_attempts]
                if exhausted:
                    session.execute(
                        _GIVE_UP, [{"b_id": r.id, "b_error": _gave_up(r.attempts, r.error)} for r in exhausted]
                    )
                if retry:
                    session.execute(
                        update(Sketch)
                        .where(Sketch.id.in_(retry), Sketch.status == STATUS_QUEUED)
                        .values(attempts=Sketch.attempts + 1, enqueued_at=now)
                        .execution_options(synchronize_session=False)
                    )
                    # Sent before the commit: if the broker is down, nothing is counted as an attempt.
                    publish(retry)
        except DBAPIError:
            raise  # the task fails and beat runs the next sweep; only broker errors end a sweep quietly
        except Exception as exc:  # noqa: BLE001 - broker errors come in many types
            log.warning("sweep stopped: cannot send scoring tasks (%s)", exc, extra={"sketch_ids": retry})
            break
        resent += retry
        gave_up += [r.id for r in exhausted]
    if gave_up:
        log.error("gave up on sketches out of attempts", extra={"sketch_ids": gave_up})
    if resent:
        log.warning("re-sent stale queued sketches", extra={"sketch_ids": resent})
    return {"resent": len(resent), "failed": len(gave_up)}
