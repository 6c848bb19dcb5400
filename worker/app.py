"""The worker's entry point: ``celery -A worker.app worker`` (and ``beat``) loads this module.

Like ``service.wsgi`` for the web, importing it is the worker's start-up: it configures the shared
``celery_app`` from the ``SKETCHWATCH_*`` settings and names the modules Celery imports when the worker
or beat starts (the tasks and the process signal handlers). Nothing else imports it.
"""

from __future__ import annotations

from service.core.celery_app import celery_app, configure
from service.core.settings import get_settings

# Imported by Celery at start-up, before the worker or beat sets up logging or connects to the broker.
TASK_MODULES = (
    "worker.lifecycle", "worker.scoring", "worker.rescoring", "worker.sweeper", "worker.alerts", "worker.heartbeat",
    "worker.training", "worker.retention", "worker.partitions",
)

configure(celery_app, get_settings())
celery_app.conf.include = list(TASK_MODULES)

__all__ = ["celery_app"]
