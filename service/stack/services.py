"""The services a stack runs on: a throwaway PostgreSQL database, a Redis DB index, a private redis-server."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from service.stack.processes import free_port, signal_quietly, wait_for

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pg_admin(admin_url: str = PG_ADMIN_URL):
    """An autocommit psycopg connection to the server's maintenance database."""
    import psycopg

    try:
        return psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {admin_url} (start it, see .ci/run): {exc}") from None


def create_pg_database(prefix: str, admin_url: str = PG_ADMIN_URL, migrate: bool = True) -> str:
    """Create a uniquely named database (migrated to head unless told not to) and return its SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    name = f"{prefix}{os.getpid()}_{secrets.token_hex(4)}"
    with pg_admin(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    url_text = url.render_as_string(hide_password=False)
    if migrate:
        from service.core.migrate import upgrade

        upgrade(url_text)
    return url_text


def drop_pg_database(url: str, prefix: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop a database made by create_pg_database with ``prefix``, disconnecting its users."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database or ""
    if not name.startswith(prefix):
        raise ValueError(f"refusing to drop {name!r}: its name does not start with {prefix!r}")
    with pg_admin(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_pg_connections(url: str, admin_url: str = PG_ADMIN_URL) -> int:
    """Close every server connection to the database of ``url`` (as a restart would); how many were closed."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with pg_admin(admin_url) as conn:
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


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


class RedisServer:
    """A private, non-persistent redis-server on its own port, started and stopped by its pid (never the shared one)."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, binary: str = "redis-server") -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"sw-redis-{self.port}-"))
        self.binary = shutil.which(binary) or binary
        self.pidfile = self.workdir / f"redis-{self.port}.pid"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        """Broker URL of DB 0 of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server (daemonized, no persistence) and wait until it answers PING."""
        if self.port == 6379:
            raise ValueError("refusing to manage the shared Redis on 6379")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        subprocess.run(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "yes", "--pidfile", str(self.pidfile), "--dir", str(self.workdir),
                "--logfile", str(self.workdir / f"redis-{self.port}.log"),
            ],
            check=True, capture_output=True, timeout=timeout_s,
        )  # fmt: skip

        def up() -> bool:
            return self.pidfile.exists() and self.ping()

        wait_for(up, timeout_s, f"redis-server on port {self.port} did not start", poll_s=0.05)
        self.pid = int(self.pidfile.read_text().strip())

    def ping(self) -> bool:
        """True when the server answers (a raw RESP exchange: no client state to survive restarts)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Stop the server we started (by its pid); everything it held is lost (no persistence)."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        signal_quietly(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        if _pid_alive(pid):
            signal_quietly(pid, signal.SIGKILL)

    def restart(self, down_s: float, sig: int = signal.SIGTERM) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop(sig)
        time.sleep(down_s)
        self.start()

    def llen(self, key: str) -> int:
        """LLEN of ``key``."""
        return self._int_command(b"LLEN", key.encode())

    def hlen(self, key: str) -> int:
        """HLEN of ``key``."""
        return self._int_command(b"HLEN", key.encode())

    def _int_command(self, *parts: bytes) -> int:
        """Send one command and return its integer reply."""
        payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
            sock.sendall(payload)
            reply = sock.recv(64)
        if not reply.startswith(b":"):
            raise RuntimeError(f"unexpected Redis reply {reply!r}")
        return int(reply[1:].split(b"\r\n", 1)[0])
