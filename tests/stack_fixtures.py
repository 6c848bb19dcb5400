"""Fixtures for tests against real services and real processes (loaded from tests/conftest.py).

Services (started by .ci/run on CI): PostgreSQL on 127.0.0.1:5432 (user ``postgres``, no password) and
Redis on 127.0.0.1:6379. Override with SKETCHWATCH_TEST_PG_ADMIN_URL / SKETCHWATCH_TEST_REDIS.

- ``pg_url`` (session): a fresh PostgreSQL database, migrated to head, dropped at the end.
- ``redis_url`` (session): Redis DB index 7, flushed before and after.
- ``sqlite_app`` / ``client``: an in-process app (env=testing) on a migrated temp SQLite file.
- ``stack`` (module): a factory of live stacks, ``stack(backend="postgres" | "sqlite", **options)``:

      s = stack()                        # granian web + Celery worker with embedded beat, on pg + Redis
      s.submit([{"drawing": ...}])       # POST /api/v1/sketches with s.api_key -> JSON answer
      s.wait_for(ids, {"scored"}, 60)    # polls the database; returns {id: row}
      s.kill_worker()                    # SIGKILL to the worker's process group (main + pool processes)
      s.start_worker()                   # a new worker; waits until every pool process has its model

  Same options -> the same running stack within a module. Options: ``env`` (extra SKETCHWATCH_*
  variables for every process), ``broker_url`` (e.g. a private Redis, see ``PrivateRedis``),
  ``model_dir`` (default: $SKETCHWATCH_MODEL_DIR, else the shipped model), ``concurrency``,
  ``beat``, ``web_workers``. Attributes: ``url``, ``api_key``, ``admin`` and ``reviewer``
  ((username, password)), ``database_url``, ``broker_url``, ``workdir`` (logs: ``log(name)``).
  Every process runs in its own process group and is killed with its group at teardown.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("SKETCHWATCH_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOSTPORT = os.environ.get("SKETCHWATCH_TEST_REDIS", "127.0.0.1:6379")
REDIS_TEST_DB = 7
# Stacks on the shared Redis take DB indexes from here (7 is redis_url's, 13 the bench's).
STACK_REDIS_DBS = (8, 9, 10, 11, 12)
DB_PREFIX = "sw_test_"
# A pool process imports TensorFlow and loads the model before it takes work: slow on a loaded 2-core box.
WORKER_READY_TIMEOUT_S = 240.0
WEB_READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
READY_LINE = "scoring process ready"


# --------------------------------------------------------------------------- services


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (start it, see .ci/run): {exc}") from None


def create_pg_database(migrate: bool = True) -> str:
    """Create a uniquely named PostgreSQL database (migrated to head) and return its SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    name = f"{DB_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    url_text = url.render_as_string(hide_password=False)
    if migrate:
        from service.core.migrate import upgrade

        upgrade(url_text)
    return url_text


def drop_pg_database(url: str) -> None:
    """Drop a database made by create_pg_database, disconnecting its users."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database or ""
    if not name.startswith(DB_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_pg_database(migrate: bool = True) -> Iterator[str]:
    """A new PostgreSQL database (migrated unless told not to) for the block, dropped afterwards."""
    url = create_pg_database(migrate)
    try:
        yield url
    finally:
        drop_pg_database(url)


def terminate_pg_connections(url: str) -> int:
    """Close every server connection to the database of ``url`` (as a restart would); how many were closed."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with _pg_admin() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def flush_redis(url: str) -> None:
    """FLUSHDB on the Redis database of ``url``."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


class PrivateRedis:
    """A redis-server of our own on ``port`` that a test may stop and start (never the shared one)."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"sw-redis-{self.port}-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server (no persistence) and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "yes", "--dir", str(self.workdir), "--pidfile", str(self.workdir / "redis.pid"),
             "--logfile", str(self.workdir / "redis.log")],
            check=True, timeout=timeout_s,
        )  # fmt: skip
        wait_for(lambda: self.ping(), timeout_s, f"redis-server on port {self.port} did not answer")

    def ping(self) -> bool:
        """True when the server answers."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retries: a refused connection must answer "down" at once.
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=1,
                             retry=Retry(NoBackoff(), 0))  # fmt: skip
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM; nothing to save) and wait until it no longer answers."""
        pidfile = self.workdir / "redis.pid"
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass  # not running
        wait_for(
            lambda: not self.ping() and not pidfile.exists(),
            timeout_s,
            f"redis-server on port {self.port} did not stop",
        )


def wait_for(condition, timeout_s: float, message: str, poll_s: float = 0.1):
    """Poll ``condition`` until it returns something truthy, and return that; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{message} within {timeout_s:.0f} s")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, dropped after the session."""
    url = create_pg_database()
    try:
        yield url
    finally:
        from service.extensions import db

        db.dispose()
        drop_pg_database(url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Redis DB 7 on the shared server, flushed before and after the session."""
    url = f"redis://{REDIS_HOSTPORT}/{REDIS_TEST_DB}"
    try:
        flush_redis(url)
    except Exception as exc:  # noqa: BLE001 - name the missing service
        raise RuntimeError(f"Redis is not reachable at {url} (start it, see .ci/run): {exc}") from None
    yield url
    flush_redis(url)


def build_testing_app(database_url: str, data_dir: Path):
    """An in-process app (env=testing, no rate limits) on ``database_url`` with a throwaway file broker."""
    from service.app import create_app

    return create_app(
        {
            "env": "testing",
            "data_dir": data_dir,
            "database_url": database_url,
            "broker_url": f"sqla+sqlite:///{data_dir / 'broker.db'}",
            "ratelimit_enabled": False,
            "log_json": False,
            "log_level": "WARNING",
        }
    )


@pytest.fixture
def sqlite_app(tmp_path):
    """An in-process app (env=testing) on a migrated temp SQLite file and a throwaway file broker."""
    from service.extensions import db
    from service.core.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    yield build_testing_app(url, tmp_path)
    db.dispose()


@pytest.fixture
def client(sqlite_app):
    """Flask test client of ``sqlite_app``."""
    return sqlite_app.test_client()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator:
    """Factory of live stacks (see the module docstring); all are stopped at the end of the module."""
    running: dict[tuple, Stack] = {}

    def make(backend: str = "postgres", **options) -> Stack:
        key = (backend, repr(sorted(options.items())))
        current = running.get(key)
        if current is not None and current.web_alive():
            return current
        if current is not None:
            current.close()
        used = {s.redis_db for s in running.values() if s.redis_db is not None}
        workdir = tmp_path_factory.mktemp(f"stack-{backend}")
        made = Stack(workdir, backend=backend, free_redis_dbs=[d for d in STACK_REDIS_DBS if d not in used], **options)
        try:
            made.start()
        except BaseException:
            made.close()
            raise
        running[key] = made
        return made

    try:
        yield make
    finally:
        for made in running.values():
            made.close()


# --------------------------------------------------------------------------- live stack


class Stack:
    """A web server (granian) and a Celery worker (with embedded beat) on a real database and broker."""

    def __init__(
        self,
        workdir: Path,
        backend: str = "postgres",
        broker_url: str | None = None,
        env: dict[str, str] | None = None,
        model_dir: str | None = None,
        concurrency: int = 1,
        beat: bool = True,
        web_workers: int = 1,
        free_redis_dbs: Iterable[int] = STACK_REDIS_DBS,
    ) -> None:
        if backend not in ("postgres", "sqlite"):
            raise ValueError(f"backend must be 'postgres' or 'sqlite', not {backend!r}")
        self.workdir = Path(workdir)
        self.backend = backend
        self.concurrency = concurrency
        self.beat = beat
        self.web_workers = web_workers
        self.extra_env = dict(env or {})
        self.model_dir = model_dir or os.environ.get("SKETCHWATCH_MODEL_DIR") or None
        self.redis_db: int | None = None
        self.owns_database = False
        if backend == "sqlite":
            self.database_url = f"sqlite:///{self.workdir / 'sketchwatch.db'}"
            self.broker_url = broker_url or f"sqla+sqlite:///{self.workdir / 'broker.db'}"
        else:
            self.database_url = ""
            if broker_url is None:
                self.redis_db = next(iter(free_redis_dbs))
                broker_url = f"redis://{REDIS_HOSTPORT}/{self.redis_db}"
            self.broker_url = broker_url
        self.port = 0
        self.url = ""
        self.api_key = ""
        self.admin: tuple[str, str] = ("admin", secrets.token_urlsafe(12))
        self.reviewer: tuple[str, str] = ("reviewer", secrets.token_urlsafe(12))
        self.secret_key = secrets.token_hex(32)
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, Path] = {}
        self._starts = 0
        self._engine = None
        self._http = requests.Session()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Stack:
        """Create the database, seed credentials, start web and worker, and wait until both are ready."""
        from service.core.migrate import upgrade

        if self.backend == "postgres":
            self.database_url = create_pg_database()
            self.owns_database = True
        else:
            upgrade(self.database_url)
        if self.broker_url.startswith("redis://"):
            flush_redis(self.broker_url)
        self._seed_credentials()
        self.start_web()
        self.start_worker()
        return self

    def close(self) -> None:
        """Kill every process group, drop the database, flush the stack's Redis DB."""
        self._http.close()
        for name in list(self.procs):
            self.stop_process(name)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self.owns_database:
            try:
                drop_pg_database(self.database_url)
            finally:
                self.owns_database = False
        if self.redis_db is not None:
            try:
                flush_redis(self.broker_url)
            except Exception:  # noqa: BLE001 - a stopped private server needs no flush
                pass

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of the stack's processes: our SKETCHWATCH_* settings, nothing inherited."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHWATCH_")}
        env.update(
            {
                "SKETCHWATCH_ENV": "development",
                "SKETCHWATCH_SECRET_KEY": self.secret_key,
                "SKETCHWATCH_DATA_DIR": str(self.workdir / "data"),
                "SKETCHWATCH_DATABASE_URL": self.database_url,
                "SKETCHWATCH_BROKER_URL": self.broker_url,
                "SKETCHWATCH_TF_THREADS": "1",
                "SKETCHWATCH_LOG_LEVEL": "INFO",
                "SKETCHWATCH_LOG_JSON": "true",
                # Short sweeps so lost tasks are re-sent within a test's time budget.
                "SKETCHWATCH_SWEEP_INTERVAL_S": "2",
                "SKETCHWATCH_SWEEP_AFTER_S": "15",
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "PYTHONUNBUFFERED": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        if self.model_dir:
            env["SKETCHWATCH_MODEL_DIR"] = str(self.model_dir)
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        self._starts += 1
        log_path = self.workdir / f"{name}-{self._starts}.log"
        self._logs[name] = log_path
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str = "worker") -> str:
        """The current log of process ``name`` (web, worker, ...)."""
        path = self._logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _tail(self, name: str, lines: int = 40) -> str:
        return f"--- last lines of {name} log ---\n" + "\n".join(self.log(name).splitlines()[-lines:])

    # ------------------------------------------------------------------ web

    def start_web(self) -> None:
        """Start ``sketchwatch serve`` (granian) on a free port and wait for /readyz."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.web_workers), "--threads", "8"]  # fmt: skip
        proc = self._spawn("web", argv, self.environment())
        from bench.stack import wait_until_ready

        wait_until_ready(self.url, proc, WEB_READY_TIMEOUT_S, lambda: self._tail("web"))

    def web_alive(self) -> bool:
        """True while the web process runs."""
        proc = self.procs.get("web")
        return proc is not None and proc.poll() is None

    # ------------------------------------------------------------------ worker

    def start_worker(
        self, env: dict[str, str] | None = None, wait: bool = True, name: str = "worker"
    ) -> subprocess.Popen:
        """Start ``sketchwatch worker`` (+ beat); with ``wait``, block until every pool process loaded the model."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running; stop or kill it first")
        argv = [sys.executable, "-m", "service.cli", "worker", "--concurrency", str(self.concurrency)]
        if self.beat and name == "worker":
            argv.append("--beat")
        argv += ["-n", f"{name}-{secrets.token_hex(3)}@%h"]
        proc = self._spawn(name, argv, self.environment(env))
        if wait:
            self.wait_worker_ready(name)
        return proc

    def wait_worker_ready(self, name: str = "worker", timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Wait until the worker's log shows every pool process ready (model loaded)."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self._tail(name)}")
            if self.log(name).count(READY_LINE) >= self.concurrency:
                return
            time.sleep(0.25)
        raise TimeoutError(f"{name} not ready within {timeout_s:.0f} s\n{self._tail(name)}")

    def worker_pids(self, name: str = "worker") -> list[int]:
        """Pids of the worker's process group: its main process and its pool (and beat) processes."""
        import psutil

        proc = self.procs[name]
        try:
            root = psutil.Process(proc.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_worker(self, sig: int = signal.SIGKILL, name: str = "worker") -> None:
        """Send ``sig`` to the worker's whole process group and reap its main process."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if sig == signal.SIGKILL:
            _wait_group_gone(proc.pid)

    def stop_process(self, name: str) -> int | None:
        """Graceful stop (SIGTERM, then SIGKILL of the group after STOP_TIMEOUT_S); returns the exit status."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _wait_group_gone(proc.pid)
        return proc.returncode

    # ------------------------------------------------------------------ data

    def _seed_credentials(self) -> None:
        from service.core.schema import ROLE_ADMIN, ROLE_REVIEWER, ApiKey, User
        from service.core.security import hash_api_key, hash_password, new_api_key

        self.api_key = new_api_key()
        with self.session() as s:
            s.add(User(username=self.admin[0], password_hash=hash_password(self.admin[1]), role=ROLE_ADMIN))
            s.add(User(username=self.reviewer[0], password_hash=hash_password(self.reviewer[1]), role=ROLE_REVIEWER))
            s.add(ApiKey(name="test-client", prefix=self.api_key[:12], key_hash=hash_api_key(self.api_key)))

    @property
    def engine(self):
        """An engine of the test process on the stack's database."""
        if self._engine is None:
            from service.core.db import make_engine

            kwargs = {} if self.backend == "sqlite" else {"pool_size": 2, "max_overflow": 2}
            self._engine = make_engine(self.database_url, **kwargs)
        return self._engine

    @contextmanager
    def session(self):
        """A session on the stack's database, committed on success."""
        from sqlalchemy.orm import Session

        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def submit(self, items: list[dict] | dict, timeout: float = 30.0, api_key: str | None = None) -> requests.Response:
        """POST a sketch or a batch to /api/v1/sketches with the stack's API key."""
        return self._http.post(
            self.url + "/api/v1/sketches",
            json=items,
            headers={"Authorization": f"Bearer {api_key or self.api_key}"},
            timeout=timeout,
        )

    def statuses(self, ids: Iterable[int]) -> dict[int, str]:
        """Current status per id."""
        from sqlalchemy import select

        from service.core.schema import Sketch

        ids = list(ids)
        with self.session() as s:
            return dict(s.execute(select(Sketch.id, Sketch.status).where(Sketch.id.in_(ids))).all())

    def wait_for(self, ids: Iterable[int], statuses: Iterable[str] = ("scored",), timeout: float = 60.0) -> dict:
        """Poll until every id has one of ``statuses``; return {id: Sketch}; AssertionError on timeout."""
        from sqlalchemy import select

        from service.core.schema import Sketch

        ids, wanted = list(ids), set(statuses)
        deadline = time.monotonic() + timeout
        current: dict[int, str] = {}
        while True:
            current = self.statuses(ids)
            if len(current) == len(set(ids)) and all(v in wanted for v in current.values()):
                with self.session() as s:
                    return {row.id: row for row in s.scalars(select(Sketch).where(Sketch.id.in_(ids)))}
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        waiting = {i: current.get(i, "missing") for i in ids if current.get(i) not in wanted}
        sample = dict(list(waiting.items())[:10])
        raise AssertionError(
            f"{len(waiting)} of {len(ids)} sketches not in {sorted(wanted)} after {timeout:.0f} s, e.g. {sample}\n"
            + self._tail("worker")
        )


def _wait_group_gone(pgid: int, timeout_s: float = 10.0) -> None:
    """Wait until no process of group ``pgid`` is left (pool processes die a moment after their parent)."""
    import psutil

    def gone() -> bool:
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    return False
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return True

    try:
        wait_for(gone, timeout_s, f"processes of group {pgid} still alive")
    except TimeoutError:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
