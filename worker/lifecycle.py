"""The worker's processes: the broker's folders, logging, the model check before the fork, the model load
after it, the memory cap, the CPU priority, and each process's database engine.

TensorFlow is loaded in each pool process after the fork (``worker_process_init``), never in the
Celery parent: its thread pools and runtime state do not survive ``fork``. The parent only checks the
model files, so a missing or corrupt model stops the worker before it takes a task.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal

from celery.local import Proxy
from celery.signals import beat_init, celeryd_init, setup_logging, task_postrun, worker_init, worker_process_init
from sqlalchemy.orm import configure_mappers

from service.core.celery_app import celery_app, configured_settings, prepare_broker
from service.core.db import db
from service.core.logs import configure_logging
from service.core.settings import Settings
from worker import model_runtime

log = logging.getLogger(__name__)

# The settings the worker's Celery app was configured with at start-up, read at each use (never at import).
settings: Settings = Proxy(lambda: configured_settings(celery_app))

# Per-session CPU priority under autogroup scheduling (sched(7)).
AUTOGROUP_FILE = "/proc/self/autogroup"
# A pool process that starts above this share of its memory cap is reported: the cap leaves no room for work.
CAP_HEADROOM = 0.9
_main_pid: int | None = None


@celeryd_init.connect
@beat_init.connect
def _prepare_broker(**_kwargs) -> None:
    """Before the worker or beat connects: the serverless filesystem broker needs its folders."""
    prepare_broker(settings)


@setup_logging.connect
def _configure_logging(**_kwargs) -> None:
    """Use the service's structured logging in the worker, beat and pool processes instead of Celery's."""
    configure_logging(settings)


@worker_init.connect
def _check_model_before_fork(**_kwargs) -> None:
    """In the worker's main process: exit 78 when the model files are missing or corrupt, then prepare the fork."""
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
    _build_cffi_parser()
    # The ORM sets its mappers up on the first query; done here, the pool processes inherit them instead of
    # each paying for it before its first task (the model registry is read at load).
    configure_mappers()
    # Celery runs a full gc.collect() before forking each pool process; with the imports above (SQLAlchemy,
    # numpy, Celery itself) each one walked every object. Frozen, they are skipped there and in the pool
    # processes' own collections, and the children do not dirty the pages they share with this process.
    gc.freeze()


def _build_cffi_parser() -> None:
    """Build cffi's C parser once, before the fork, instead of in every pool process."""
    # Each new pool process sets its parent-death signal through cffi when it is installed (billiard's
    # set_pdeathsig declares prctl with ffi.cdef), and cffi builds its pycparser parser on the first
    # declaration: the largest step of a pool process's start after the model. It is cached per process.
    try:
        import cffi
    except ImportError:  # billiard then uses ctypes, which needs no parser
        return
    cffi.FFI().cdef("int prctl (int __option, ...);")


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
        scorer = model_runtime.load_serving(settings)
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
    cap_mb = settings.memory_cap_mb
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
    cap_mb = settings.memory_cap_mb
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


def ensure_database() -> None:
    """Bind this process's engine if nothing has yet (solo and thread pools, in-process calls)."""
    if db.engine is None:
        bind_database()
