"""The production stack for the benchmark, on the shared harness (``service.stack``), and what the bench measures.

Every run gets a fresh PostgreSQL database (created, migrated, dropped) and a dedicated Redis DB index
(flushed before and after), so a bench never touches real data and leaves nothing behind. Starting and
stopping the processes is the harness's; this module adds the production settings, the database and
broker figures the phases difference, and the resource sampler.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from service import stack as harness

log = logging.getLogger(__name__)

PG_HOST = os.environ.get("SKETCHWATCH_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SKETCHWATCH_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("SKETCHWATCH_BENCH_PG_USER", "postgres")
PG_ADMIN_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
REDIS_HOST = os.environ.get("SKETCHWATCH_BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("SKETCHWATCH_BENCH_REDIS_PORT", "6379"))
# A high index that the test fixtures and a default deployment (DB 0) do not use.
REDIS_DB = int(os.environ.get("SKETCHWATCH_BENCH_REDIS_DB", "13"))
DB_PREFIX = "sketchwatch_bench_"
API_CLIENT = "bench"
ADMIN_USER = "bench-admin"
READY_TIMEOUT_S = 90.0


@dataclass
class StackConfig(harness.StackConfig):
    """How many processes of each kind, and the settings they share (production's, two of each by default)."""

    workers: int = 2
    web_workers: int = 2
    web_threads: int = 4
    web_args: tuple[str, ...] = ("--backlog", "2048")
    worker_args: tuple[str, ...] = ("--pool", "prefork")
    # No sweeper: the bench measures the path of a submitted sketch, and nothing is left queued.
    beat: str | None = None
    tf_threads: int = 1
    worker_batch_size: int | None = None
    redis_db: int = REDIS_DB
    client: str = API_CLIENT
    admin: str = ADMIN_USER
    web_ready_timeout_s: float = READY_TIMEOUT_S


class Stack(harness.Stack):
    """A running web + worker stack on a fresh database, in a temporary work directory; use as a context manager.

    The worker is not waited for at start: the bench's warm-up phase does that, and reports how long it took.
    """

    def __init__(self, config: StackConfig | None = None, broker_url: str | None = None) -> None:
        config = config or StackConfig()
        super().__init__(
            Path(tempfile.mkdtemp(prefix="sketchwatch-bench-")),
            broker_url or f"redis://{REDIS_HOST}:{REDIS_PORT}/{config.redis_db}",
            config,
            pg_admin_url=PG_ADMIN_URL,
            db_prefix=DB_PREFIX,
            owns_broker=True,
        )

    def start(self, wait_worker: bool = False) -> Stack:
        """Create and migrate the database, seed credentials, start web and workers; wait for the web only."""
        return super().start(wait_worker)

    def close(self) -> None:
        """Stop everything, drop the database, flush Redis, remove the work directory."""
        try:
            super().close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def settings_env(self) -> dict[str, str]:
        """Production settings from SKETCHWATCH_* variables."""
        env = {
            "SKETCHWATCH_ENV": "production",
            "SKETCHWATCH_TF_THREADS": str(self.config.tf_threads),
            # Production keeps the limiter on, its counters in Redis; the bench raises the budget
            # above its offered load so that the limiter's cost is measured, not its refusals.
            "SKETCHWATCH_RATELIMIT_SUBMIT": "1000000 per minute",
            "SKETCHWATCH_RATELIMIT_STORAGE_URI": self.broker_url,
        }
        if self.config.worker_batch_size:
            env["SKETCHWATCH_WORKER_BATCH_SIZE"] = str(self.config.worker_batch_size)
        return env

    # ------------------------------------------------------------------ processes

    def start_workers(self, n: int) -> None:
        """Start one Celery worker with ``n`` prefork processes (after stopping the running one), as ``sketchwatch worker -c n`` does."""
        self.stop_workers()
        self.config.workers = n
        self.start_worker(wait=False)

    def stop_workers(self) -> None:
        """Warm-stop the Celery worker: running tasks finish, bounded by the harness's stop timeout, then SIGKILL."""
        self.stop_process("worker")

    def process_roles(self) -> dict[str, list[psutil.Process]]:
        """The live processes of each role: 'web' (granian main + workers), 'worker' (Celery main + children)."""
        return {"web": self.processes("web"), "worker": self.processes("worker")}

    # ------------------------------------------------------------------ figures

    def counters(self) -> dict[str, float]:
        """Server-wide totals to difference over a phase: WAL bytes written, Redis commands processed."""
        import redis
        from sqlalchemy import text

        with self.engine.connect() as conn:
            wal = float(conn.execute(text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")).scalar_one())
        client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
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
            with harness.pg_admin(self.pg_admin_url) as conn:
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
