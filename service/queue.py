"""Enqueue scoring tasks by name (the web process never imports the model), coalesced per process.

A single-sketch request would otherwise send one task per sketch, and a worker pays a fixed cost per
task (Celery, three SQL round trips) that is many times its cost per sketch. So each web process hands
committed ids to an :class:`Enqueuer`, whose background thread sends at most one task per *window*
(more only when ``chunk_size`` ids are waiting). The window adapts to the load. While the workers keep
up, it grows with the ids waiting (:func:`coalescing_window`): an id that arrives while the process is
quiet goes out at once, single sketches at a modest rate wait milliseconds. When the workers fall
behind (tasks wait in the Redis queue, read before each send), ids gather for the whole ``linger_s``, so
the workers catch up on fewer, larger tasks. Rows are committed before their ids get here, so nothing
is lost if the process dies first: the sweeper re-sends sketches left ``queued``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable

from flask import current_app

from service.core import sketches
from service.core.celery_app import QUEUE, SCORE_TASK, make_celery, prepare_broker

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
        backlog=broker_backlog(settings),
    )


def broker_backlog(settings) -> Callable[[], int] | None:
    """A function that counts scoring tasks no worker has taken yet (Redis brokers); None for other brokers."""
    if not settings.uses_redis:
        return None
    import redis

    # Short timeouts: the enqueuer's thread asks before each send, and a slow answer only delays that send.
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    # Workers take tasks one at a time (prefetch multiplier 1), so the list holds only tasks none is free for.
    return lambda: int(client.llen(QUEUE))


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


def coalescing_window(pending: int, chunk_size: int, linger_s: float) -> float:
    """Seconds after the last send that ``pending`` ids wait for more: ``linger_s * sqrt(pending / chunk_size)``.

    Ids arriving at a rate ``r`` are then sent every ``linger_s**2 * r / chunk_size`` seconds: ids per task
    grow with the square of the rate, so a busy process sends few large tasks (the workers' fixed cost per
    task stays small), while single sketches at a modest rate wait milliseconds, not the whole linger. A
    lone id waits at most ``linger_s / sqrt(chunk_size)`` (16 ms with 256 ids and 250 ms), an id after a
    quiet spell not at all, and a process sends at most ``sqrt(chunk_size) / linger_s`` tasks a second (64).
    """
    return linger_s * math.sqrt(min(pending, chunk_size) / chunk_size)


class Enqueuer:
    """Coalesces ids from many requests into scoring tasks of up to ``chunk_size`` ids.

    ``linger_s`` is the longest an id waits for others (under load); ``linger_s <= 0`` sends in the
    caller's thread instead (no coalescing). ``backlog``, when given, counts the tasks waiting for a
    worker: above zero, the next ids gather for the whole ``linger_s``.
    """

    def __init__(
        self,
        send: Callable[[list[int]], None],
        mark_unsent: Callable[[list[int]], None],
        chunk_size: int,
        linger_s: float,
        backlog: Callable[[], int] | None = None,
    ) -> None:
        self._send = send
        self._mark_unsent = mark_unsent
        self._backlog = backlog
        self._workers_behind = False  # as read before the last send
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
        """Under the lock: wait until a chunk is full or the window has passed since the last send; False when idle."""
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            if self._pending:
                since_send = now - self._last_send
                window = (
                    self.linger_s if self._workers_behind
                    else coalescing_window(len(self._pending), self.chunk_size, self.linger_s)
                )
                if len(self._pending) >= self.chunk_size or since_send >= window:
                    self._last_send = now
                    return True
                self._cond.wait(window - since_send)
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
                ids = self._take()
                # Read before this send, so the task about to go out is not counted; off the condition's lock.
                self._workers_behind = self._read_backlog() > 0
                self._send_chunks(ids)

    def _read_backlog(self) -> int:
        """Tasks waiting for a worker, or 0 when unknown (no backlog function, broker unreachable)."""
        if self._backlog is None:
            return 0
        try:
            return self._backlog()
        except Exception:  # noqa: BLE001 - only the window depends on it; the send reports a broker outage
            log.debug("could not read the broker backlog", exc_info=True)
            return 0

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
