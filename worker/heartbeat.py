"""Worker heartbeats: every worker's main process records itself every few seconds (``service.core.heartbeats``).

A thread started when the worker is ready writes through an engine of its own without pooled connections,
so nothing it holds is shared with pool processes the worker forks later.
"""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_ready, worker_shutdown

from service.core import heartbeats
from service.core.celery_app import ALERTS_QUEUE
from service.core.schema import utcnow
from worker.lifecycle import settings

log = logging.getLogger(__name__)

_stop = threading.Event()
_thread: threading.Thread | None = None
_name: str | None = None


def _engine():
    from sqlalchemy.pool import NullPool

    from service.core.db import make_engine

    return make_engine(settings.database_url, poolclass=NullPool)


def _describe(consumer) -> tuple[str, str, int | None]:
    """(name, queues, concurrency) of the worker a consumer belongs to."""
    name = getattr(consumer, "hostname", None) or f"worker@{os.uname().nodename}"
    try:
        queues = ",".join(sorted(q.name for q in consumer.task_consumer.queues))
    except Exception:  # noqa: BLE001 - only descriptive
        queues = ""
    concurrency = getattr(getattr(consumer, "controller", None), "concurrency", None)
    return name, queues, concurrency


@worker_ready.connect
def _start(sender=None, **_kwargs) -> None:
    """In the worker's main process, once it consumes: beat every INTERVAL_S seconds until shutdown."""
    global _thread, _name
    name, queues, concurrency = _describe(sender)
    _name = name
    started = utcnow()
    pid = os.getpid()
    engine = _engine()

    def run() -> None:
        while True:
            try:
                with engine.begin() as conn:
                    heartbeats.record(conn, name, queues, concurrency, pid, started)
            except Exception as exc:  # noqa: BLE001 - a database outage must not stop the worker
                log.warning("worker heartbeat not recorded: %s", type(exc).__name__)
            if _stop.wait(heartbeats.INTERVAL_S):
                break
        engine.dispose()

    if ALERTS_QUEUE in queues.split(","):
        log.info("alerts worker ready", extra={"worker": name, "queues": queues})
    _stop.clear()
    _thread = threading.Thread(target=run, name="sketchwatch-heartbeat", daemon=True)
    _thread.start()


@worker_shutdown.connect
def _shutdown(**_kwargs) -> None:
    """Stop beating and record the clean shutdown."""
    _stop.set()
    if _thread is not None:
        _thread.join(timeout=5)
    if _name is None:
        return
    engine = _engine()
    try:
        with engine.begin() as conn:
            heartbeats.stopped(conn, _name)
    except Exception as exc:  # noqa: BLE001
        log.warning("worker shutdown not recorded: %s", type(exc).__name__)
    finally:
        engine.dispose()
