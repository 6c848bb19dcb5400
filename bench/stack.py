"""The production stack for the benchmark: granian web + Celery prefork workers on PostgreSQL and Redis.

Every run gets a fresh PostgreSQL database (created, migrated, dropped) and a dedicated Redis DB index
(flushed before and after), so a bench never touches real data and leaves nothing behind. Processes
are started in their own sessions and stopped by process-group id with bounded waits.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PG_HOST = os.environ.get("SKETCHWATCH_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SKETCHWATCH_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("SKETCHWATCH_BENCH_PG_USER", "postgres")
REDIS_HOST = os.environ.get("SKETCHWATCH_BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("SKETCHWATCH_BENCH_REDIS_PORT", "6379"))
# A high index that the test fixtures and a default deployment (DB 0) do not use.
REDIS_DB = int(os.environ.get("SKETCHWATCH_BENCH_REDIS_DB", "13"))
DB_PREFIX = "sketchwatch_bench_"
API_CLIENT = "bench"
ADMIN_USER = "bench-admin"
STOP_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 90.0


class StackError(RuntimeError):
    """The stack could not be started or did not become ready in time."""


def wait_until_ready(url: str, proc: subprocess.Popen, timeout_s: float, log_tail) -> None:
    """Poll ``url``/readyz until it answers 200; StackError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"web exited with {proc.returncode}:\n{log_tail()}")
        try:
            resp = requests.get(url + "/readyz", timeout=2)
            if resp.status_code == 200:
                return
            last = resp.text
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.2)
    raise StackError(f"web not ready after {timeout_s:.0f} s ({last}):\n{log_tail()}")


@dataclass
class StackConfig:
    """How many processes of each kind, and the settings they share."""

    workers: int = 2
    web_workers: int = 2
    web_threads: int = 4
    tf_threads: int = 1
    worker_batch_size: int | None = None
    redis_db: int = REDIS_DB
    # Production's default: the per-request and per-task log lines are part of what is measured.
    log_level: str = "INFO"
    # The model to serve: SKETCHWATCH_MODEL_DIR as for the service itself, else the shipped one.
    model_dir: str | None = field(default_factory=lambda: os.environ.get("SKETCHWATCH_MODEL_DIR") or None)
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_url(dbname: str) -> str:
    """SQLAlchemy URL of a database on the local PostgreSQL server."""
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def _admin_connect():
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=5)


def create_database() -> str:
    """Create a fresh, uniquely named database and return its name."""
    name = f"{DB_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    """Drop a bench database, disconnecting whoever still uses it."""
    if not name.startswith(DB_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a bench database")
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis(db_index: int) -> None:
    """Empty the bench's Redis DB index."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db_index, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


class Stack:
    """A running web + worker stack on a fresh database; use as a context manager."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.dbname: str | None = None
        self.database_url = ""
        self.broker_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.config.redis_db}"
        self.port = 0
        self.url = ""
        self.api_key = ""
        self.admin = (ADMIN_USER, secrets.token_urlsafe(12))
        self.secret_key = secrets.token_hex(32)
        self.workdir = Path(tempfile.mkdtemp(prefix="sketchwatch-bench-"))
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.engine = None
        self._logs: list = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Stack:
        """Create and migrate the database, seed credentials, start web and workers, wait until ready."""
        from service.core.db import make_engine
        from service.core.migrate import upgrade

        flush_redis(self.config.redis_db)
        self.dbname = create_database()
        self.database_url = pg_url(self.dbname)
        upgrade(self.database_url)
        self.engine = make_engine(self.database_url, pool_size=2, max_overflow=2)
        self._seed_credentials()
        self.start_web()
        if self.config.workers > 0:
            self.start_workers(self.config.workers)
        return self

    def stop(self) -> None:
        """Stop every process, drop the database, flush Redis (each step bounded, errors logged)."""
        self.stop_workers()
        _stop(self.web, "web")
        self.web = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        if self.dbname:
            try:
                drop_database(self.dbname)
            except Exception:  # noqa: BLE001 - cleanup must go on; the name is logged for manual removal
                log.warning("could not drop bench database %s", self.dbname, exc_info=True)
            self.dbname = None
        try:
            flush_redis(self.config.redis_db)
        except Exception:  # noqa: BLE001
            log.warning("could not flush Redis DB %d", self.config.redis_db, exc_info=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ processes

    def environment(self) -> dict[str, str]:
        """Environment of every stack process: production settings from SKETCHWATCH_* variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHWATCH_")}
        env.update(
            {
                "SKETCHWATCH_ENV": "production",
                "SKETCHWATCH_SECRET_KEY": self.secret_key,
                "SKETCHWATCH_DATABASE_URL": self.database_url,
                "SKETCHWATCH_BROKER_URL": self.broker_url,
                "SKETCHWATCH_DATA_DIR": str(self.workdir / "data"),
                "SKETCHWATCH_TF_THREADS": str(self.config.tf_threads),
                "SKETCHWATCH_LOG_LEVEL": self.config.log_level,
                # Production keeps the limiter on, its counters in Redis; the bench raises the budget
                # above its offered load so that the limiter's cost is measured, not its refusals.
                "SKETCHWATCH_RATELIMIT_SUBMIT": "1000000 per minute",
                "SKETCHWATCH_RATELIMIT_STORAGE_URI": self.broker_url,
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        if self.config.model_dir:
            env["SKETCHWATCH_MODEL_DIR"] = self.config.model_dir
        if self.config.worker_batch_size:
            env["SKETCHWATCH_WORKER_BATCH_SIZE"] = str(self.config.worker_batch_size)
        env.update(self.config.env)
        return env

    def _log_file(self, name: str):
        fh = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(fh)
        return fh

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a process log (web, worker), for error messages."""
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def start_web(self) -> None:
        """Start granian with the production command line (``sketchwatch serve``) and wait for /readyz."""
        from service.cli import serve_argv

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = serve_argv("127.0.0.1", self.port, self.config.web_workers, self.config.web_threads, ("--backlog", "2048"))
        out = self._log_file("web")
        self.web = subprocess.Popen(cmd, cwd=ROOT, env=self.environment(), stdout=out, stderr=out, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        wait_until_ready(self.url, self.web, READY_TIMEOUT_S, lambda: self.log_tail("web"))

    def start_workers(self, n: int) -> None:
        """Start one Celery worker with ``n`` prefork processes, as ``sketchwatch worker -c n`` does."""
        from service.cli import worker_argv

        self.stop_workers()
        cmd = worker_argv(n, False, self.config.log_level, self.workdir / "data", ("--pool", "prefork", "-n", f"bench-{n}@%h"))
        out = self._log_file("worker")
        self.worker = subprocess.Popen(cmd, cwd=ROOT, env=self.environment(), stdout=out, stderr=out, start_new_session=True)
        self.config.workers = n

    def stop_workers(self) -> None:
        """Warm-stop the Celery worker: running tasks finish, bounded by STOP_TIMEOUT_S, then SIGKILL."""
        if self.worker is None:
            return
        _stop(self.worker, "worker")
        self.worker = None

    def check_alive(self) -> None:
        """Raise StackError if the web or the worker process has died."""
        for name, proc in (("web", self.web), ("worker", self.worker)):
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def process_roles(self) -> dict[str, list[psutil.Process]]:
        """The live processes of each role: 'web' (granian main + workers), 'worker' (Celery main + children)."""
        out: dict[str, list[psutil.Process]] = {"web": [], "worker": []}
        for role, proc in (("web", self.web), ("worker", self.worker)):
            if proc is None or proc.poll() is not None:
                continue
            try:
                root = psutil.Process(proc.pid)
                out[role] = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    # ------------------------------------------------------------------ data

    def _seed_credentials(self) -> None:
        from sqlalchemy.orm import Session

        from service.core.schema import ROLE_ADMIN, ApiKey, User
        from service.core.security import hash_api_key, hash_password, new_api_key

        self.api_key = new_api_key()
        with Session(self.engine) as session:
            session.add(ApiKey(name=API_CLIENT, prefix=self.api_key[:10], key_hash=hash_api_key(self.api_key)))
            session.add(User(username=self.admin[0], password_hash=hash_password(self.admin[1]), role=ROLE_ADMIN))
            session.commit()

    def counters(self) -> dict[str, float]:
        """Server-wide totals to difference over a phase: WAL bytes written, Redis commands processed."""
        import redis
        from sqlalchemy import text

        with self.engine.connect() as conn:
            wal = float(conn.execute(text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")).scalar_one())
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.config.redis_db, socket_timeout=5)
        try:
            cmds = float(client.info("stats")["total_commands_processed"])
        finally:
            client.close()
        return {"wal_bytes": wal, "redis_commands": cmds}

    def analyze(self) -> None:
        """Give the planner statistics, as autovacuum has on any database that has run for a minute.

        A fresh table has none, and PostgreSQL then reads the worker's ``id = ? AND status = 'queued'``
        through the (status, submitted_at) index, scanning every dead 'queued' entry: five times the
        database CPU per sketch. A long-running deployment never measures like that.
        """
        from sqlalchemy import text

        with self.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()

    def settle(self) -> float | None:
        """Write the previous phase's dirty data to disk (CHECKPOINT); seconds taken, None when not allowed.

        A 60-s burst of batches leaves hundreds of MB of table and index pages for the kernel to write
        back. While that write-back runs, every WAL fsync queues behind it, and a steady 200/s measured
        right after the burst pays for the burst (intake p99 75-207 ms instead of 17-25 ms, see
        docs/performance.md). A CHECKPOINT flushes PostgreSQL's buffers and fsyncs its files, so each
        phase measures its own load.
        """
        import psycopg

        started = time.monotonic()
        try:
            with _admin_connect() as conn:
                conn.execute("CHECKPOINT")
        except psycopg.Error as exc:  # CHECKPOINT needs a superuser or pg_checkpoint
            log.warning("could not run CHECKPOINT between phases (%s): phases may pay for earlier ones", exc)
            return None
        return time.monotonic() - started

    def max_id(self) -> int:
        """The highest sketch id so far (0 when empty): phases select their rows as id > watermark."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM sketches")).scalar_one())

    def progress(self, after_id: int) -> tuple[int, int, int]:
        """(total, scored, failed) sketches with id > after_id."""
        from sqlalchemy import text

        sql = text(
            "SELECT count(*), count(*) FILTER (WHERE status = 'scored'), count(*) FILTER (WHERE status = 'failed') "
            "FROM sketches WHERE id > :a"
        )
        with self.engine.connect() as conn:
            total, scored, failed = conn.execute(sql, {"a": after_id}).one()
        return int(total), int(scored), int(failed)

    def wait_scored(self, after_id: int, expected: int, timeout: float, poll: float = 0.5) -> bool:
        """Wait until ``expected`` sketches with id > after_id are scored or failed; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            _total, scored, failed = self.progress(after_id)
            if scored + failed >= expected:
                return True
            if time.monotonic() >= deadline:
                log.warning("timeout: %d of %d sketches done after %.0f s", scored + failed, expected, timeout)
                return False
            self.check_alive()
            time.sleep(poll)


def _stop(proc: subprocess.Popen | None, name: str) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it outlives the bound."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name, STOP_TIMEOUT_S)
    # Pool children can outlive their parent briefly; the group id reaches them too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("%s (pid %d) is still running", name, proc.pid)


class ResourceSampler:
    """Samples memory and CPU time of the stack, the database, the broker and the load generator.

    Runs in a background thread (one sample per ``interval``). Keeps the peak RSS per process and the
    CPU seconds each role used since the sampler started, plus the whole machine's busy CPU seconds,
    so a phase can report CPU milliseconds per sketch per role and how much CPU other programs took.
    PostgreSQL counts its shared background processes and the backends of this stack's database only.
    """

    # "postgres" is the backends serving this stack's database; "pg-shared" the server's own processes
    # (WAL writer, checkpointer, autovacuum), which also work for other databases on the server.
    ROLES = ("web", "worker", "postgres", "pg-shared", "redis", "loadgen")

    # Walking every process on the machine costs ~13 ms of CPU: done each sample, the sampler itself
    # stalled the intake it measures. PostgreSQL backends and Redis live for the whole phase.
    SCAN_EVERY_S = 5.0

    def __init__(self, stack: Stack, interval: float = 0.5) -> None:
        self.stack = stack
        self._servers: list[tuple[str, psutil.Process]] = []
        self._next_scan = 0.0
        self.interval = interval
        self.peaks: dict[int, tuple[str, float]] = {}  # pid -> (role, peak MB)
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}
        self._extra: dict[int, str] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._machine0 = psutil.cpu_times()
        self._machine1 = self._machine0
        self._wall0 = time.monotonic()
        self._wall1 = self._wall0
        self._epoch0 = time.time()
        self.load_before = os.getloadavg()[0]
        self._timeline: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def __enter__(self) -> ResourceSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def track(self, role: str, pid: int) -> None:
        """Also account a process the stack does not own (the load generator)."""
        self._extra[pid] = role

    def _targets(self) -> list[tuple[str, psutil.Process]]:
        out = [(role, p) for role, procs in self.stack.process_roles().items() for p in procs]
        for pid, role in list(self._extra.items()):
            out.append((role, self._process(pid)))
        now = time.monotonic()
        if now >= self._next_scan:
            self._servers = self._scan_servers()
            self._next_scan = now + self.SCAN_EVERY_S
        return out + self._servers

    def _scan_servers(self) -> list[tuple[str, psutil.Process]]:
        out = []
        for proc in psutil.process_iter(["name", "cmdline", "username"]):
            info = proc.info
            if info["name"] == "redis-server" or (info["cmdline"] or [""])[0].startswith("redis-server"):
                out.append(("redis", self._process(proc.pid)))
            elif info["username"] == "postgres":
                kind = _pg_kind(info["cmdline"], self.stack.dbname)
                if kind is not None:
                    out.append((kind, self._process(proc.pid)))
        return out

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def sample(self) -> None:
        """Take one sample now."""
        for role, proc in self._targets():
            try:
                with proc.oneshot():
                    mb = proc.memory_info().rss / 2**20
                    times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            cpu = times.user + times.system
            self._cpu_first.setdefault(proc.pid, cpu)
            self._cpu_last[proc.pid] = (role, cpu)
            if role in ("web", "worker"):
                old = self.peaks.get(proc.pid)
                if old is None or mb > old[1]:
                    self.peaks[proc.pid] = (role, mb)
        self._machine1 = psutil.cpu_times()
        self._wall1 = time.monotonic()
        ours = sum(cpu - self._cpu_first.get(pid, cpu) for pid, (_, cpu) in self._cpu_last.items())
        self._timeline.append((self._wall1, _busy(self._machine1), ours))

    def timeline(self) -> list[tuple[float, float, float]]:
        """Per sampling interval: (seconds since start, cores used by the bench's roles, cores used by others)."""
        out = []
        for (t0, m0, o0), (t1, m1, o1) in zip(self._timeline, self._timeline[1:]):
            dt = t1 - t0
            if dt <= 0:
                continue
            ours = max(0.0, (o1 - o0) / dt)
            out.append((round(t1 - self._wall0, 2), round(ours, 3), round(max(0.0, (m1 - m0) / dt - ours), 3)))
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a sampling hiccup must not end the bench
                log.debug("resource sample failed", exc_info=True)

    def peak_mb(self, role: str) -> float | None:
        """Largest peak RSS of any single process of a role (MB), None if none was seen."""
        values = self.per_process(role)
        return values[0] if values else None

    def per_process(self, role: str) -> list[float]:
        """Peak RSS of each process of a role (MB), largest first."""
        return sorted((mb for r, mb in self.peaks.values() if r == role), reverse=True)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per role since the start, plus 'machine' (all CPUs busy) and 'other' (the rest)."""
        out = dict.fromkeys(self.ROLES, 0.0)
        for pid, (role, cpu) in self._cpu_last.items():
            out[role] += cpu - self._cpu_first.get(pid, cpu)
        out["machine"] = _busy(self._machine1) - _busy(self._machine0)
        out["other"] = max(0.0, out["machine"] - sum(out[r] for r in self.ROLES))
        out["wall"] = self._wall1 - self._wall0
        out["capacity"] = (self._wall1 - self._wall0) * (psutil.cpu_count() or 1)
        return out

    def report(self, sketches: int) -> dict:
        """CPU seconds and CPU ms per sketch by role, peak RSS by role, machine load before and after."""
        cpu = self.cpu_seconds()
        per = {r: (cpu[r] * 1000.0 / sketches if sketches else None) for r in self.ROLES}
        per["total"] = sum(v for v in per.values() if v is not None) if sketches else None
        return {
            "started_at": self._epoch0,
            "timeline": self.timeline(),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_ms_per_sketch": {k: (round(v, 3) if v is not None else None) for k, v in per.items()},
            "load_before": self.load_before,
            "load_after": os.getloadavg()[0],
        }


def _busy(times) -> float:
    """Busy CPU seconds of the whole machine (everything but idle and iowait)."""
    return times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0) + getattr(times, "steal", 0.0)


def _pg_kind(cmdline: list[str] | None, dbname: str | None) -> str | None:
    """'postgres' for a backend of our database, 'pg-shared' for a server process, None for other clients."""
    title = " ".join(cmdline or [])
    if not title.startswith("postgres:"):
        return None  # the postmaster itself, idle
    if dbname and dbname in title:
        return "postgres"
    # Backends read "postgres: <user> <db> <host>(...) <state>"; background workers name no client address.
    return "pg-shared" if "(" not in title and "[local]" not in title else None
