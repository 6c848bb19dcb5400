"""The sweeper: a beat-scheduled task that re-sends sketches whose scoring task was lost and gives up on
sketches out of attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.exc import DBAPIError

from service.core import sketches
from service.core.celery_app import QUEUE, SCORE_TASK, SWEEP_TASK, celery_app
from service.core.db import db
from service.core.schema import utcnow
from worker.lifecycle import ensure_database, settings

log = logging.getLogger(__name__)

# One sweep re-sends at most this many batches; the rest wait for the next run.
MAX_SWEEP_BATCHES = 200


# Its messages expire after one sweep interval: see the beat schedule in service.core.celery_app.
@celery_app.task(name=SWEEP_TASK, bind=True)
def sweep_queued(self) -> dict:
    """Re-send sketches queued for longer than sweep_after_s; mark those out of attempts as failed."""
    ensure_database()
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
    resent: list[int] = []
    gave_up: list[int] = []
    after = 0
    for _ in range(MAX_SWEEP_BATCHES):
        retry: list[int] = []
        exhausted: list = []
        try:
            with db.session_scope() as session:
                rows = sketches.lock_stale(session, after, cutoff, size)
                if not rows:
                    break
                after = rows[-1].id
                exhausted = [r for r in rows if r.attempts >= settings.max_attempts]
                retry = [r.id for r in rows if r.attempts < settings.max_attempts]
                sketches.give_up(session, exhausted)
                if retry:
                    sketches.mark_resent(session, retry, now)
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
