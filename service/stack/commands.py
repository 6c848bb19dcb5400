"""The command lines of SketchWatch's processes: the web server (granian), the Celery worker and Celery beat.

``sketchwatch serve``/``worker``/``up`` exec or supervise them, and the stack harness starts the same
ones, so a test, the bench and production run one command line each.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

WSGI_TARGET = "service.wsgi:app"
# The worker's Celery app, named by module path so that nothing here imports the worker.
CELERY_APP = "worker.app:celery_app"
# On SIGTERM granian lets in-flight requests finish; a process still busy after this long is killed.
GRACEFUL_TIMEOUT_S = 30


def serve_argv(host: str, port: int, workers: int, threads: int, extra: Sequence[str] = ()) -> list[str]:
    """The granian command line of the web server (WSGI, HTTP/1.1)."""
    return [
        sys.executable, "-m", "granian", "--interface", "wsgi",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
        # Request threads per process; connections and HTTP parsing live in granian's Rust runtime.
        "--blocking-threads", str(threads),
        "--http", "1",
        "--no-ws",
        "--access-log",
        "--respawn-failed-workers",
        "--workers-kill-timeout", str(GRACEFUL_TIMEOUT_S),
        *extra,
        WSGI_TARGET,
    ]  # fmt: skip


def worker_argv(
    concurrency: int | None, beat: bool, loglevel: str, data_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The Celery worker command line (optionally with the embedded beat scheduler that runs the sweeper)."""
    from service.core.celery_app import QUEUE

    argv = [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "-Q", QUEUE, "--loglevel", loglevel,
        # Scoring workers never need each other's state; skipping this saves broker round trips.
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if beat:
        argv += ["--beat", "--schedule", str(Path(data_dir) / "celerybeat-schedule")]
    return argv + list(extra)


# Threads of the alerts worker: deliveries wait on the network, not the CPU.
ALERTS_THREADS = 4


def alerts_worker_argv(
    loglevel: str, beat: bool = False, data_dir: Path | None = None, extra: Sequence[str] = (), threads: int = ALERTS_THREADS
) -> list[str]:
    """The alerts worker's command line: the alerts queue only, a thread pool, no model (``sketchwatch worker --alerts``)."""
    from service.core.celery_app import ALERTS_QUEUE

    argv = [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "-Q", ALERTS_QUEUE, "--pool", "threads", "--concurrency", str(threads), "--loglevel", loglevel,
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if "-n" not in extra and "--hostname" not in extra:
        argv += ["-n", "alerts@%h"]
    if beat:
        argv += ["--beat", "--schedule", str(Path(data_dir or ".") / "celerybeat-schedule")]
    return argv + list(extra)


# The training worker runs one training at a time, in a thread: no pool process loads the scoring model for it.
TRAINING_THREADS = 1


def training_worker_argv(loglevel: str, extra: Sequence[str] = ()) -> list[str]:
    """The training worker's command line: the training queue only, one thread (``sketchwatch worker --training``)."""
    from service.core.celery_app import TRAINING_QUEUE

    argv = [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "-Q", TRAINING_QUEUE, "--pool", "threads", "--concurrency", str(TRAINING_THREADS), "--loglevel", loglevel,
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if "-n" not in extra and "--hostname" not in extra:
        argv += ["-n", "training@%h"]
    return argv + list(extra)


def beat_argv(loglevel: str, schedule: Path) -> list[str]:
    """The command line of Celery beat on its own (the sweeper's scheduler, outside any worker)."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, "beat", "--loglevel", loglevel, "--schedule", str(schedule)]
