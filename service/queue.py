"""Enqueue scoring tasks by name (the web process never imports the model), coalesced per process.

A single-sketch request would otherwise send one task per sketch, and a worker pays a fixed ~10 ms per
task (Celery, a TF call, three SQL round trips) against ~0.4 ms per sketch. So each web process hands
committed ids to an :class:`Enqueuer`, whose background thread sends at most one task per ``linger_s``
(more only when ``chunk_size`` ids are waiting). An id that arrives after a quiet spell goes out at once;
under load, ids gather for up to ``linger_s``. Rows are committed before their ids get here, so nothing
is lost if the process dies first: the sweeper re-sends sketches left ``queued``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

from flask import current_app

from service.core import sketches
from service.core.celery_app import SCORE_TASK, make_celery, prepare_broker

log = logging.getLogger(__name__)

EXTENSION = "sketchwatch_enqueuer"
# An idle sender thread exits after this long; the next submission starts a new one (also after fork).
IDLE_EXIT_S = 5.0
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.05, "interval_step": 0.2, "interval_max": 0.5}


def init_app(app, settings) -> None:
    """Attach a producer-side Celery app and this process's coalescing enqueuer to the Flask app."""
    from service.extensions import db

    prepare_broker(settings)
    celery = app.extensions["celery"] = make_celery(settings)
    app.extensions[EXTENSION] = Enqueuer(
        send=lambda ids: send_scoring_task(celery, ids),
        mark_unsent=lambda ids: mark_unsent(db.engine, ids),
        chunk_size=settings.worker_batch_size,
        linger_s=settings.enqueue_linger_ms / 1000.0,
    )


def send_scoring_task(celery, ids: list[int]) -> None:
    """Publish one scoring task for ``ids``; raises when the broker is unreachable."""
    celery.send_task(SCORE_TASK, args=[list(ids)], retry=True, retry_policy=RETRY_POLICY)


def mark_unsent(engine, ids: list[int]) -> None:
    """Clear ``enqueued_at`` on still-queued ``ids`` whose task could not be sent (shown as unsent in metrics)."""
    if engine is None or not ids:
        return
    try:
        with engine.begin() as conn:
            sketches.mark_unsent(conn, ids)
    except Exception:  # noqa: BLE001 - the sweeper re-sends them either way; the mark is only for metrics
        log.warning("could not mark %d unsent sketches", len(ids), exc_info=True)


def enqueue_scoring(ids: list[int]) -> None:
    """Hand committed sketch ids to this process's enqueuer (inside a Flask app context)."""
    current_app.extensions[EXTENSION].submit(ids)


def flush(app=None) -> None:
    """Send everything the app's enqueuer still holds, now (tests, shutdown)."""
    (app or current_app).extensions[EXTENSION].flush()


class Enqueuer:
    """Coalesces ids from many requests into scoring tasks of up to ``chunk_size`` ids.

    ``linger_s <= 0`` sends in the caller's thread instead (no coalescing).
    """

    def __init__(
        self,
        send: Callable[[list[int]], None],
        mark_unsent: Callable[[list[int]], None],
        chunk_size: int,
        linger_s: float,
    ) -> None:
        self._send = send
        self._mark_unsent = mark_unsent
        self.chunk_size = max(1, chunk_size)
        self.linger_s = linger_s
        self._cond = threading.Condition()
        self._pending: list[int] = []
        self._last_send = float("-inf")  # monotonic time the thread last took ids to send
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._atexit_pid = 0
        self._send_lock = threading.Lock()  # flush() and the thread never publish the same ids twice
        self.tasks_sent = 0

    def submit(self, ids: list[int]) -> None:
        """Queue ids for sending; returns at once unless coalescing is off."""
        if not ids:
            return
        if self.linger_s <= 0:
            with self._send_lock:
                self._send_chunks(list(ids))
            return
        with self._cond:
            self._pending.extend(ids)
            self._ensure_thread()
            self._cond.notify()

    def flush(self) -> None:
        """Send all pending ids in the caller's thread, after any send already under way."""
        with self._send_lock:
            self._send_chunks(self._take())

    @property
    def pending(self) -> int:
        """Ids received and not yet handed to the broker."""
        with self._cond:
            return len(self._pending)

    def _take(self) -> list[int]:
        with self._cond:
            ids, self._pending = self._pending, []
            return ids

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._thread is not None and self._thread.is_alive() and self._pid == pid:
            return
        if self._pid != pid:
            # After fork the parent's lock state and thread are meaningless here.
            self._send_lock = threading.Lock()
        self._pid = pid
        if self._atexit_pid != pid:
            atexit.register(self.flush)
            self._atexit_pid = pid
        self._thread = threading.Thread(target=self._run, name="sketchwatch-enqueuer", daemon=True)
        self._thread.start()

    def _wait_due(self) -> bool:
        """Under the lock: wait until a chunk is full or linger_s has passed since the last send; False when idle."""
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            if self._pending:
                since_send = now - self._last_send
                if len(self._pending) >= self.chunk_size or since_send >= self.linger_s:
                    self._last_send = now
                    return True
                self._cond.wait(self.linger_s - since_send)
            elif now - idle_since >= IDLE_EXIT_S:
                self._thread = None
                return False
            else:
                self._cond.wait(IDLE_EXIT_S - (now - idle_since))
                if self._pending:
                    idle_since = time.monotonic()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wait_due():
                    return
            # Taken under the send lock, so flush() returns only after these ids are sent.
            with self._send_lock:
                self._send_chunks(self._take())

    def _send_chunks(self, ids: list[int]) -> None:
        for start in range(0, len(ids), self.chunk_size):
            chunk = ids[start : start + self.chunk_size]
            try:
                self._send(chunk)
                self.tasks_sent += 1
            except Exception:  # noqa: BLE001 - any broker failure: the sketches are stored, the sweeper re-sends
                rest = ids[start:]
                log.warning("broker unreachable; %d sketches left for the sweeper", len(rest), exc_info=True)
                self._mark_unsent(rest)
                return
