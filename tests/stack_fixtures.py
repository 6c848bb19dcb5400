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
  ``beat``, ``web_workers``, ``alerts`` (also run the alerts worker, ``sketchwatch worker --alerts``). Attributes: ``url``, ``api_key``, ``admin`` and ``reviewer``
  ((username, password)), ``database_url``, ``broker_url``, ``workdir`` (logs: ``log(name)``).
  Every process runs in its own process group and is killed with its group at teardown.

The machinery (databases, Redis, processes, readiness, stopping) is the shared stack harness,
``service.stack``, also used by the bench and the soak; this module binds it to the test services and
adds the pytest fixtures and the test-side helpers (``submit``, ``statuses``, ``wait_for``).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pytest
import requests

from service import stack as harness
from service.stack import READY_LINE, ROOT, StackConfig, free_port, wait_for  # noqa: F401 - imported by the tests
from service.stack import RedisServer as PrivateRedis  # noqa: F401 - a redis-server a test may stop and start

PG_ADMIN_URL = os.environ.get("SKETCHWATCH_TEST_PG_ADMIN_URL", harness.PG_ADMIN_URL)
REDIS_HOSTPORT = os.environ.get("SKETCHWATCH_TEST_REDIS", "127.0.0.1:6379")
REDIS_TEST_DB = 7
# Stacks on the shared Redis take DB indexes from here (7 is redis_url's, 13 the bench's).
STACK_REDIS_DBS = (8, 9, 10, 11, 12)
DB_PREFIX = "sw_test_"
flush_redis = harness.flush_redis


# --------------------------------------------------------------------------- services


def create_pg_database(migrate: bool = True) -> str:
    """Create a uniquely named PostgreSQL database (migrated to head) and return its SQLAlchemy URL."""
    return harness.create_pg_database(DB_PREFIX, PG_ADMIN_URL, migrate)


def drop_pg_database(url: str) -> None:
    """Drop a database made by create_pg_database, disconnecting its users."""
    harness.drop_pg_database(url, DB_PREFIX, PG_ADMIN_URL)


@contextmanager
def fresh_pg_database(migrate: bool = True) -> Iterator[str]:
    """A new PostgreSQL database (migrated unless told not to) for the block, dropped afterwards."""
    url = create_pg_database(migrate)
    try:
        yield url
    finally:
        drop_pg_database(url)


@contextmanager
def migrated_url(backend: str, sqlite_dir: Path) -> Iterator[str]:
    """The URL of a migrated database for the block: a SQLite file in ``sqlite_dir``, or a fresh PostgreSQL one."""
    from service.core.migrate import upgrade

    if backend == "sqlite":
        url = f"sqlite:///{sqlite_dir / 'test.db'}"
        upgrade(url)
        yield url
        return
    with fresh_pg_database() as url:
        yield url


@contextmanager
def migrated_engine(backend: str, sqlite_dir: Path) -> Iterator:
    """An engine on a migrated database for the block: a SQLite file in ``sqlite_dir``, or a fresh PostgreSQL one."""
    from service.core.db import make_engine

    with migrated_url(backend, sqlite_dir) as url:
        eng = make_engine(url)
        try:
            yield eng
        finally:
            eng.dispose()


def terminate_pg_connections(url: str) -> int:
    """Close every server connection to the database of ``url`` (as a restart would); how many were closed."""
    return harness.terminate_pg_connections(url, PG_ADMIN_URL)


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


class Stack(harness.Stack):
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
        alerts: bool = False,
    ) -> None:
        if backend not in ("postgres", "sqlite"):
            raise ValueError(f"backend must be 'postgres' or 'sqlite', not {backend!r}")
        workdir = Path(workdir)
        self.backend = backend
        self.redis_db: int | None = None
        database_url = None
        if backend == "sqlite":
            database_url = f"sqlite:///{workdir / 'sketchwatch.db'}"
            broker_url = broker_url or f"sqla+sqlite:///{workdir / 'broker.db'}"
        elif broker_url is None:
            self.redis_db = next(iter(free_redis_dbs))
            broker_url = f"redis://{REDIS_HOSTPORT}/{self.redis_db}"
        config = StackConfig(
            workers=concurrency, web_workers=web_workers, web_threads=8, beat="embedded" if beat else None,
            alerts=alerts, env=dict(env or {}), client="test-client", admin="admin", reviewer="reviewer",
        )  # fmt: skip
        if model_dir:
            config.model_dir = model_dir
        super().__init__(
            workdir, broker_url, config, database_url,
            pg_admin_url=PG_ADMIN_URL, db_prefix=DB_PREFIX, owns_broker=self.redis_db is not None,
        )  # fmt: skip
        self._http = requests.Session()

    @property
    def concurrency(self) -> int:
        """Pool processes of each worker."""
        return self.config.workers

    @property
    def model_dir(self) -> str | None:
        """The model the workers load (None: the shipped one)."""
        return self.config.model_dir

    def settings_env(self) -> dict[str, str]:
        """Development settings, JSON logs, and short sweeps so lost tasks are re-sent within a test's time budget."""
        return {
            "SKETCHWATCH_ENV": "development",
            "SKETCHWATCH_TF_THREADS": "1",
            "SKETCHWATCH_LOG_JSON": "true",
            "SKETCHWATCH_SWEEP_INTERVAL_S": "2",
            "SKETCHWATCH_SWEEP_AFTER_S": "15",
            "PYTHONUNBUFFERED": "1",
        }

    def close(self) -> None:
        """Kill every process group, drop the database, flush the stack's Redis DB."""
        self._http.close()
        super().close()

    def _tail(self, name: str, lines: int = 40) -> str:
        """The last lines of a process log (for assertion messages)."""
        return self.tail(name, lines)

    # ------------------------------------------------------------------ worker

    def worker_pids(self, name: str = "worker") -> list[int]:
        """Pids of the worker's process group: its main process and its pool (and beat) processes."""
        return [p.pid for p in self.processes(name)]

    def kill_worker(self, sig: int = signal.SIGKILL, name: str = "worker") -> None:
        """Send ``sig`` to the worker's whole process group and reap its main process."""
        self.kill_process(name, sig)

    # ------------------------------------------------------------------ data

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
        import time

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
