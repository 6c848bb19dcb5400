"""The stack: web, worker and beat processes on a database and a broker, started and stopped as one."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from service.stack.commands import alerts_worker_argv, beat_argv, serve_argv, training_worker_argv, worker_argv
from service.stack.processes import STOP_TIMEOUT_S, free_port, kill_group, spawn, stop_processes, wait_http
from service.stack.services import PG_ADMIN_URL, create_pg_database, drop_pg_database, flush_redis

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# Logged by each worker pool process once its model is loaded: the worker's readiness, read from its log.
READY_LINE = "scoring process ready"
# Logged by the alerts worker once it consumes its queue.
ALERTS_READY_LINE = "alerts worker ready"
# Logged by the training worker once it consumes its queue (worker/training.py).
TRAINING_READY_LINE = "training worker ready"
WEB_READY_TIMEOUT_S = 60.0
# A pool process imports TensorFlow and loads the model before it takes work: slow on a loaded 2-core box.
WORKER_READY_TIMEOUT_S = 240.0


class StackError(RuntimeError):
    """A stack process could not be started, died, or did not become ready in time."""


BEAT_MODES = ("embedded", "separate", None)


@dataclass
class StackConfig:
    """What a stack runs and with which settings: the tests, the bench and the soak differ only here."""

    # Pool processes of the Celery worker; 0 starts no worker.
    workers: int = 1
    web_workers: int = 1
    web_threads: int = 8
    web_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    # The sweeper's scheduler: inside the worker, in a process of its own ("separate"), or not at all.
    beat: str | None = "embedded"
    # Also run the alerts worker (alert evaluation, webhooks, the hourly rollup: `sketchwatch worker --alerts`).
    alerts: bool = False
    # Also run the training worker (training from reviews: `sketchwatch worker --training`).
    training: bool = False
    log_level: str = "INFO"
    # The model to serve: SKETCHWATCH_MODEL_DIR as for the service itself, else the shipped one.
    model_dir: str | None = field(default_factory=lambda: os.environ.get("SKETCHWATCH_MODEL_DIR") or None)
    # More variables for every process, applied after the stack's own.
    env: dict[str, str] = field(default_factory=dict)
    # Seeded credentials: the API key's name (the client of what it submits), the admin, an optional reviewer.
    client: str = "stack"
    admin: str = "admin"
    reviewer: str | None = None
    web_ready_timeout_s: float = WEB_READY_TIMEOUT_S


class Stack:
    """A web server, a Celery worker and optionally beat, on a database and a broker; usable as a context manager.

    ``database_url=None`` makes a fresh PostgreSQL database at start (dropped at close); any other URL
    is migrated and kept. A ``redis://`` broker is flushed at start, and at close too when the stack
    owns it (``owns_broker``). Subclasses give their processes' settings in ``settings_env``.
    """

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        config: StackConfig | None = None,
        database_url: str | None = None,
        *,
        pg_admin_url: str = PG_ADMIN_URL,
        db_prefix: str = "sketchwatch_stack_",
        owns_broker: bool = False,
    ) -> None:
        self.config = config or StackConfig()
        if self.config.beat not in BEAT_MODES:
            raise ValueError(f"beat must be one of {BEAT_MODES}, not {self.config.beat!r}")
        self.workdir = Path(workdir)
        self.broker_url = broker_url
        self.database_url = database_url or ""
        self.owns_database = False
        self.owns_broker = owns_broker
        self.pg_admin_url = pg_admin_url
        self.db_prefix = db_prefix
        self.port = 0
        self.url = ""
        self.api_key = ""
        self.admin: tuple[str, str] = (self.config.admin, secrets.token_urlsafe(12))
        self.reviewer: tuple[str, str] | None = (
            (self.config.reviewer, secrets.token_urlsafe(12)) if self.config.reviewer else None
        )
        self.secret_key = secrets.token_hex(32)
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, Path] = {}
        self._starts = 0
        self._engine = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def data_dir(self) -> Path:
        """SKETCHWATCH_DATA_DIR of the stack's processes (the beat schedule lives there)."""
        return self.workdir / "data"

    @property
    def dbname(self) -> str | None:
        """The database's name (None before start)."""
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).database if self.database_url else None

    def start(self, wait_worker: bool = True) -> Stack:
        """Create or migrate the database, seed credentials, start web, worker (waiting with ``wait_worker``) and beat."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self.database_url = create_pg_database(self.db_prefix, self.pg_admin_url)
            self.owns_database = True
        else:
            from service.core.migrate import upgrade

            upgrade(self.database_url)
        if self.broker_url.startswith("redis://"):
            flush_redis(self.broker_url)
        self._seed_credentials()
        self.start_web()
        if self.config.workers > 0:
            self.start_worker(wait=wait_worker)
        if self.config.beat == "separate":
            self.start_beat()
        if self.config.alerts:
            self.start_alerts()
        if self.config.training:
            self.start_training()
        return self

    def close(self) -> None:
        """Stop every process group, drop the database the stack made, flush the broker it owns.

        Every step runs; the first failure to drop the database is raised at the end (a leak to see).
        """
        stop_processes(list(self.procs.items()))
        self.procs.clear()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self.owns_broker and self.broker_url.startswith("redis://"):
            try:
                flush_redis(self.broker_url)
            except Exception:  # noqa: BLE001 - a stopped private server needs no flush
                log.debug("could not flush %s at close", self.broker_url, exc_info=True)
        if self.owns_database:
            self.owns_database = False
            drop_pg_database(self.database_url, self.db_prefix, self.pg_admin_url)

    # ------------------------------------------------------------------ processes

    def settings_env(self) -> dict[str, str]:
        """SKETCHWATCH_* settings of this kind of stack (subclasses: development for tests, production for the bench)."""
        return {}

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of the stack's processes: the stack's SKETCHWATCH_* settings, none inherited."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHWATCH_")}
        env.update(self.settings_env())
        env.update(
            {
                "SKETCHWATCH_SECRET_KEY": self.secret_key,
                "SKETCHWATCH_DATA_DIR": str(self.data_dir),
                "SKETCHWATCH_DATABASE_URL": self.database_url,
                "SKETCHWATCH_BROKER_URL": self.broker_url,
                "SKETCHWATCH_LOG_LEVEL": self.config.log_level,
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        if self.config.model_dir:
            env["SKETCHWATCH_MODEL_DIR"] = str(self.config.model_dir)
        env.update(self.config.env)
        env.update(extra or {})
        return env

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        """Start a process named ``name`` in its own group, its output in a new log file of the work directory."""
        self._starts += 1
        path = self.workdir / f"{name}-{self._starts}.log"
        self._logs[name] = path
        proc = spawn(argv, env, log_path=path, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path | None:
        """The log file of the latest process named ``name``."""
        return self._logs.get(name)

    def log(self, name: str = "worker") -> str:
        """The log of the latest process named ``name`` (web, worker, beat, ...)."""
        path = self._logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def tail(self, name: str, lines: int = 40) -> str:
        """The last lines of a process log, for error messages."""
        return f"--- last lines of {name} log ---\n" + "\n".join(self.log(name).splitlines()[-lines:])

    def start_web(self) -> None:
        """Start granian with the command line of ``sketchwatch serve`` on a free port and wait for /readyz."""
        c = self.config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        proc = self.spawn("web", serve_argv("127.0.0.1", self.port, c.web_workers, c.web_threads, c.web_args), self.environment())
        ok, last = wait_http(self.url + "/readyz", c.web_ready_timeout_s, keep_waiting=lambda: proc.poll() is None)
        if ok:
            return
        if proc.poll() is not None:
            raise StackError(f"web exited with {proc.returncode}:\n{self.tail('web')}")
        raise StackError(f"web not ready after {c.web_ready_timeout_s:.0f} s ({last}):\n{self.tail('web')}")

    def web_alive(self) -> bool:
        """True while the web process runs."""
        proc = self.procs.get("web")
        return proc is not None and proc.poll() is None

    def start_worker(
        self, env: Mapping[str, str] | None = None, wait: bool = True, name: str = "worker"
    ) -> subprocess.Popen:
        """Start the command line of ``sketchwatch worker``; with ``wait``, block until every pool process has its model.

        Only the worker named "worker" embeds beat (when the config says so): one scheduler per stack.
        """
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running; stop or kill it first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        proc_env = self.environment(env)
        beat = self.config.beat == "embedded" and name == "worker"
        extra = (*self.config.worker_args, "-n", f"{name}-{secrets.token_hex(3)}@%h")
        argv = worker_argv(self.config.workers, beat, proc_env["SKETCHWATCH_LOG_LEVEL"], self.data_dir, extra)
        proc = self.spawn(name, argv, proc_env)
        if wait:
            self.wait_worker_ready(name)
        return proc

    def wait_worker_ready(self, name: str = "worker", timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Wait until the worker's log shows every pool process ready; StackError if it exits, TimeoutError."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}\n{self.tail(name)}")
            if self.log(name).count(READY_LINE) >= self.config.workers:
                return
            time.sleep(0.25)
        raise TimeoutError(f"{name} not ready within {timeout_s:.0f} s\n{self.tail(name)}")

    def start_alerts(self, wait: bool = True, name: str = "alerts") -> subprocess.Popen:
        """Start the command line of ``sketchwatch worker --alerts``; with ``wait``, block until it consumes."""
        return self._start_consumer(name, alerts_worker_argv, ALERTS_READY_LINE, None, wait)

    def start_training(self, env: Mapping[str, str] | None = None, wait: bool = True,
                       name: str = "training") -> subprocess.Popen:
        """Start the command line of ``sketchwatch worker --training``; with ``wait``, block until it consumes."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running; stop or kill it first")
        return self._start_consumer(name, training_worker_argv, TRAINING_READY_LINE, env, wait)

    def _start_consumer(self, name: str, argv_of, ready_line: str, env: Mapping[str, str] | None,
                        wait: bool) -> subprocess.Popen:
        """Spawn a one-queue worker from ``argv_of(log_level, extra=...)``; with ``wait``, block until ``ready_line``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        proc_env = self.environment(env)
        extra = ("-n", f"{name}-{secrets.token_hex(3)}@%h")
        proc = self.spawn(name, argv_of(proc_env["SKETCHWATCH_LOG_LEVEL"], extra=extra), proc_env)
        deadline = time.monotonic() + WEB_READY_TIMEOUT_S
        while wait and ready_line not in self.log(name):
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready within {WEB_READY_TIMEOUT_S:.0f} s\n{self.tail(name)}")
            time.sleep(0.25)
        return proc

    def start_beat(self) -> subprocess.Popen:
        """Start Celery beat in a process of its own, so that killing the worker leaves the sweeper running."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # WARNING: at INFO beat logs every sweep it sends.
        return self.spawn("beat", beat_argv("WARNING", self.data_dir / "beat-schedule"), self.environment())

    def stop_process(self, name: str, grace_s: float = STOP_TIMEOUT_S) -> int | None:
        """Graceful stop (SIGTERM, then SIGKILL of the group after ``grace_s``); returns the exit status."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        stop_processes([(name, proc)], grace_s)
        return proc.returncode

    def kill_process(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send ``sig`` to the whole process group of ``name`` and reap its main process."""
        kill_group(self.procs[name], sig, timeout_s)

    def processes(self, name: str) -> list:
        """The live psutil processes of ``name``: its main process and all its descendants."""
        import psutil

        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return []
        try:
            root = psutil.Process(proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def check_alive(self) -> None:
        """Raise StackError if a process of the stack has died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    # ------------------------------------------------------------------ data

    def _seed_credentials(self) -> None:
        """The admin (and reviewer) login and the API key the stack's users share."""
        from service.core.accounts import create_api_key, create_user
        from service.core.schema import ROLE_ADMIN, ROLE_REVIEWER

        with self.session() as s:
            create_user(s, *self.admin, ROLE_ADMIN)
            if self.reviewer:
                create_user(s, *self.reviewer, ROLE_REVIEWER)
            self.api_key = create_api_key(s, self.config.client)

    @property
    def engine(self):
        """An engine of this process on the stack's database (a small pool: it only checks and seeds)."""
        if self._engine is None:
            from service.core.db import make_engine

            kwargs = {} if self.database_url.startswith("sqlite") else {"pool_size": 2, "max_overflow": 2}
            self._engine = make_engine(self.database_url, **kwargs)
        return self._engine

    @contextmanager
    def session(self) -> Iterator:
        """A session on the stack's database, committed on success."""
        from sqlalchemy.orm import Session

        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
