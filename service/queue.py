"""Enqueue scoring tasks by name, so the web process never imports the model."""

from __future__ import annotations

import logging

from flask import current_app

from worker.app import SCORE_TASK

log = logging.getLogger(__name__)


def init_app(app, settings) -> None:
    """Attach a producer-side Celery app to the Flask app."""
    from worker.app import make_celery

    app.extensions["celery"] = make_celery(settings)


def enqueue_scoring(ids: list[int]) -> bool:
    """Send one scoring task for ``ids``; False when the broker is unreachable (the sweeper retries)."""
    if not ids:
        return True
    celery = current_app.extensions["celery"]
    try:
        celery.send_task(
            SCORE_TASK,
            args=[list(ids)],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.05, "interval_step": 0.2, "interval_max": 0.5},
        )
        return True
    except Exception:  # noqa: BLE001 - any broker failure: the sketch is stored, the sweeper re-sends
        log.warning("broker unreachable; %d sketches left for the sweeper", len(ids), exc_info=True)
        return False
