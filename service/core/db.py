"""Engine and session handling shared by the web app, the worker and the CLI."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

import orjson
from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker


def json_dumps(value: Any) -> str:
    """JSON for JSON columns: orjson (drawings are most of every row), the stdlib for what orjson refuses."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: integers beyond 64 bits, non-str keys
        return json.dumps(value)


def make_engine(url: str, **kwargs) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so web and worker can share it."""
    kwargs.setdefault("json_serializer", json_dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    ping_idle_s = kwargs.pop("ping_idle_s", PING_IDLE_S)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 10)
        kwargs.setdefault("pool_timeout", 5)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine, ping_idle_s)
    return engine


# A pooled connection idle this long is pinged before use. pool_pre_ping pinged on every checkout: one
# more round trip per request, a quarter of a single submission's time waiting on PostgreSQL. A busy
# connection that dies anyway fails its statement, invalidates the pool, and callers retry (intake.store).
PING_IDLE_S = 1.0


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Ping connections that sat in the pool for ``idle_s`` or more; a dead one is replaced, not handed out."""

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_conn, record) -> None:
        record.info["sketchwatch_used"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn, record) -> None:
        if record is not None:
            record.info["sketchwatch_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn, record, _proxy) -> None:
        if time.monotonic() - record.info.get("sketchwatch_used", 0.0) < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as err:
            # The pool drops this connection and checks out another (SQLAlchemy's documented protocol).
            raise exc.DisconnectionError(str(err)) from err


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    """An unbound engine + scoped session holder, bound by ``init_app`` or ``configure``."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.session: scoped_session[Session] | None = None
        self.url: str | None = None

    def configure(self, url: str, **engine_kwargs) -> None:
        """Bind to a database URL (idempotent for the same URL)."""
        if self.engine is not None and self.url == url:
            return
        self.dispose()
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.session = scoped_session(sessionmaker(bind=self.engine, expire_on_commit=False))

    def init_app(self, app) -> None:
        """Bind to the Flask app's database and close the session after each request."""
        self.configure(app.config["DATABASE_URL"])

        @app.teardown_appcontext
        def _remove_session(_exc=None) -> None:
            if self.session is not None:
                self.session.remove()

    def dispose(self) -> None:
        """Drop pooled connections (after fork, or on shutdown)."""
        if self.session is not None:
            self.session.remove()
        if self.engine is not None:
            self.engine.dispose()
        self.engine = None
        self.session = None

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """A fresh session committed on success and rolled back on error."""
        if self.engine is None:
            raise RuntimeError("database is not configured")
        session = Session(self.engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


# The one process-wide holder: the web binds it in ``create_app``, the worker after each fork.
db = Database()
