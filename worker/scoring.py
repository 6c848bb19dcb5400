"""The scoring task: score queued sketches in batches and store the results through the sketch store.

Delivery is at least once (``acks_late``, ``reject_on_worker_lost``, Redis' visibility timeout, the
sweeper); the store's writes are guarded by ``status = 'queued'``, so a re-delivered or duplicated task
can never score a sketch twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.exc import DBAPIError, OperationalError

from service.core import registry, sketches
from service.core.celery_app import SCORE_TASK, celery_app
from service.core.db import db
from service.core.schema import utcnow
from service.core.thresholds import current_threshold, lock_threshold
from worker import model_runtime
from worker.lifecycle import ensure_database, settings

log = logging.getLogger(__name__)

# A batch is scored again when a promote or rollback committed meanwhile; more switches than this is a bug.
MAX_MODEL_SWITCHES = 5


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


@celery_app.task(name=SCORE_TASK, bind=True, acks_late=True)
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
    ensure_database()
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
        raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from None
    except model_runtime.ModelUnavailable as exc:
        # The registry's active version cannot be loaded here (artifact unreachable?): the sketches stay
        # queued for a later try rather than being scored by another version.
        delay = retry_delay(self.request.retries)
        log.error("active model unavailable (%s); retrying in %.1f s", exc, delay, extra={"sketch_ids": wanted})
        raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from None


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
        rows = sketches.load_queued(session, ids)
    found = {row.id for row in rows}
    outcome.skipped = [i for i in ids if i not in found]
    if not rows:
        log.info("nothing to score: already scored, failed or unknown", extra={"sketch_ids": ids})
        return outcome

    bitmaps, input_errors = build_inputs(rows)
    # A scorer handed in by the caller is used as is; otherwise the registry decides.
    follow_registry = scorer is None
    models = model_runtime.serving(settings) if follow_registry else model_runtime.Serving(scorer)
    for _ in range(MAX_MODEL_SWITCHES):
        scorer, errors = models.active, dict(input_errors)
        results = run_model(scorer, bitmaps, errors)
        shadow_scores = run_shadow(models, bitmaps, results)
        now = utcnow()
        with db.session_scope() as session:
            lock_threshold(session)
            # Read under the lock a promote or rollback takes exclusively: a switch that committed since the
            # snapshot was taken is seen here, and the batch is scored again by the new active version.
            # An empty registry (None) leaves the configured model in charge.
            active = registry.active_version(session) if follow_registry else None
            if active is not None and active != scorer.version:
                session.rollback()
                models = model_runtime.serving(settings, force=True)
                continue
            threshold = current_threshold(session, settings)
            sketches.write_scores(
                session,
                (
                    (i, score, recon.tobytes(), bitmaps[i].tobytes(), logit)
                    for i, (score, recon, logit) in results.items()
                ),
                threshold,
                scorer.version,
                now,
            )
            sketches.write_errors(session, errors, settings.max_attempts)
            if shadow_scores:
                registry.write_shadow_scores(
                    session, shadow_scores, models.shadow.version, models.shadow_threshold, now
                )
        break
    else:
        raise RuntimeError(f"the active model changed {MAX_MODEL_SWITCHES} times while one batch was scored")
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


def run_shadow(models, bitmaps: dict[int, np.ndarray], results: dict) -> list[tuple[int, float]]:
    """The shadow version's (id, score) of the sketches the active one scored; none when it fails (logged)."""
    if models.shadow is None or not results:
        return []
    ids = list(results)
    try:
        scores = models.shadow.score_bitmaps(np.stack([bitmaps[i] for i in ids]))[0]
    except Exception:  # noqa: BLE001 - the shadow is a comparison: it must never fail the active scoring
        log.warning("shadow scoring failed", exc_info=True, extra={"model_version": models.shadow.version})
        return []
    return [(i, float(s)) for i, s in zip(ids, scores, strict=True) if np.isfinite(s)]


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


def run_model(scorer, bitmaps: dict[int, np.ndarray], errors: dict[int, str]) -> dict[int, tuple[float, np.ndarray, float]]:
    """Score all bitmaps in one model call: (score, reconstruction, log-odds) per id; failures go to ``errors``.

    Raises when the model fails for every sketch: that is the model or the process, not the input,
    and must not use up the sketches' attempts.
    """
    ids = list(bitmaps)
    if not ids:
        return {}
    try:
        scores, recons, logits = _score_with_logits(scorer, np.stack([bitmaps[i] for i in ids]))
        results = {i: (float(s), r, float(lg)) for i, s, r, lg in zip(ids, scores, recons, logits, strict=True)}
    except Exception:
        if len(ids) == 1:
            raise
        log.warning("batch scoring failed; scoring one by one", exc_info=True, extra={"sketch_ids": ids})
        results, failures = {}, {}
        for i in ids:
            try:
                s, r, lg = _score_with_logits(scorer, bitmaps[i][None])
                results[i] = (float(s[0]), r[0], float(lg[0]))
            except Exception as exc:  # noqa: BLE001
                failures[i] = f"scoring failed: {type(exc).__name__}: {exc}"
        if not results:
            raise
        errors.update(failures)
    bad = [i for i, (s, _, _) in results.items() if not np.isfinite(s)]
    if bad and len(bad) == len(results):
        raise RuntimeError(f"the model produced no finite score for {len(bad)} sketches")
    for i in bad:
        del results[i]
        errors[i] = "scoring failed: the model produced a non-finite score"
    return results


def _score_with_logits(scorer, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, reconstructions, log-odds); NaN log-odds (the store derives them) without ``score_result``."""
    if hasattr(scorer, "score_result"):
        result = scorer.score_result(batch)
        return result.scores, result.reconstructions, result.logits
    scores, recons = scorer.score_bitmaps(batch)
    return scores, recons, np.full(len(scores), np.nan)


def record_lost_delivery(ids: list[int]) -> list[int]:
    """Count a delivery that died mid-task as an attempt; fail sketches out of attempts; return the rest."""
    with db.session_scope() as session:
        alive, exhausted = sketches.charge_lost_delivery(session, ids, settings.max_attempts)
    if exhausted:
        log.error("gave up on sketches whose worker died while scoring them", extra={"sketch_ids": exhausted})
    return alive
