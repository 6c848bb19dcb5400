"""The alerts worker's tasks: evaluate the alert rules, deliver their webhooks, refresh the hourly rollup.

They run on their own queue (``sketchwatch.alerts``), consumed by the alerts worker (``sketchwatch worker
--alerts``: a thread pool without the model), never by a scoring worker: a receiver that hangs or fails
holds one alerts thread for at most the webhook timeout, and a retry waits in the broker (a task with a
countdown), not in any process. Beat sends the evaluation every ``SKETCHWATCH_ALERT_INTERVAL_S`` and the
rollup refresh every minute (see the schedule in ``service.core.celery_app``).
"""

from __future__ import annotations

import logging

from service.core import alerts, rollups
from service.core.celery_app import DELIVER_WEBHOOK_TASK, EVALUATE_ALERTS_TASK, REFRESH_ROLLUP_TASK, celery_app
from service.core.db import db
from service.core.schema import utcnow
from worker.lifecycle import ensure_database, settings

log = logging.getLogger(__name__)


@celery_app.task(name=EVALUATE_ALERTS_TASK)
def evaluate_alerts() -> dict:
    """Evaluate every enabled rule once, then send the new deliveries and re-send the lost ones."""
    ensure_database()
    now = utcnow()
    with db.session_scope() as session:
        transitions = alerts.evaluate(session, settings, now)
    sends = [(delivery_id, 0) for t in transitions for delivery_id in t.deliveries]
    with db.session_scope() as session:
        lost = alerts.overdue(session, settings, now)
    if lost:
        log.warning("re-sending %d webhook deliveries whose task was lost", len(lost))
    for delivery_id, attempts in sends + lost:
        send_delivery(delivery_id, attempts)
    return {"transitions": len(transitions), "sent": len(sends), "resent": len(lost)}


def send_delivery(delivery_id: int, attempts: int, countdown: float | None = None) -> None:
    """Queue one delivery attempt; a broker error leaves it pending for the overdue scan to re-send."""
    try:
        deliver_webhook.apply_async(args=[delivery_id, attempts], countdown=countdown)
    except Exception as exc:  # noqa: BLE001 - broker errors come in many types
        log.warning("could not queue webhook delivery %d (%s); it will be re-sent", delivery_id, exc)


@celery_app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True)
def deliver_webhook(delivery_id: int, attempts: int) -> dict:
    """One attempt of a delivery; on failure the next one is queued with a countdown (exponential backoff)."""
    ensure_database()
    outcome = alerts.deliver(db.session_scope, settings, int(delivery_id), int(attempts))
    if outcome is None:
        return {"skipped": delivery_id}
    if outcome.retry_in is not None:
        send_delivery(outcome.delivery_id, outcome.attempts, countdown=outcome.retry_in)
    return {"delivery": outcome.delivery_id, "attempts": outcome.attempts, "status": outcome.status}


@celery_app.task(name=REFRESH_ROLLUP_TASK)
def refresh_rollup() -> dict:
    """Roll up the hours that became final (see ``service.core.rollups``)."""
    ensure_database()
    now = utcnow()
    rolled = rerolled = 0
    while True:
        # A week per transaction: a first refresh of a large database never holds the writers back for long.
        with db.session_scope() as session:
            result = rollups.refresh(session, now, max_chunks=1)
        rolled += result.hours_rolled
        rerolled += result.hours_rerolled
        if result.complete:
            break
    if rolled or rerolled:
        log.info("hourly rollup refreshed", extra={**result.as_dict(), "hours_rolled": rolled, "hours_rerolled": rerolled})
    return {**result.as_dict(), "hours_rolled": rolled, "hours_rerolled": rerolled}
