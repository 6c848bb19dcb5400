"""The long soak: N sketches submitted while M faults are injected; every accepted sketch must be accounted for.

The stack is the production one (granian web, Celery prefork worker, Celery beat running the sweeper)
on a fresh PostgreSQL database, but with two things in between that this script controls:

* a private ``redis-server`` on its own port (the shared Redis on 6379 is never touched), which is
  stopped and restarted, losing every queued message (no persistence), and
* a TCP proxy in front of PostgreSQL, which is cut (connections reset, new ones refused) and restored.

The worker is also SIGKILLed while it holds a task, and SIGTERMed (warm shutdown) mid-batch. A client
with the behaviour the API documents (re-send the same batch with the same ``client_ref`` after a 503,
429 or a dropped connection) submits throughout. At the end every acknowledged sketch must be stored
exactly once and be ``scored`` (or ``failed`` with a reason), and a PostgreSQL trigger installed for the
run proves that no sketch was scored twice. The figures are printed (``--json`` for machine use);
the exit status is 0 only when everything is accounted for.

The stack, the private ``RedisServer`` and the HTTP client are the shared ones (``service.stack``,
``service.client``); the fault tools and the accounting are here. The classes here (``RedisServer``,
``TcpProxy``, ``Ledger``/``Submitter``, ``account``) are also used by ``tests/test_faults.py``. Run
``python -m bench.soak --help``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import orjson

from service.client import RETRY_STATUSES as SERVER_RETRY_STATUSES
from service.client import Answer, RetryPolicy, SubmitClient, post_with_retries
from service.stack import RedisServer, free_port  # noqa: F401 - RedisServer is part of this module's API

log = logging.getLogger("bench.soak")

ROOT = Path(__file__).resolve().parents[1]
QUICKDRAW = ROOT.parent / "shared" / "data" / "quickdraw"
REDIS_PORTS = range(6380, 6400)
# Status 0 is a request that got no answer (a dropped connection); every one of these is re-sent.
RETRY_STATUSES = frozenset({0}) | SERVER_RETRY_STATUSES
MAX_RETRY_SLEEP_S = 2.0
RETRY_SLEEP_S = 0.2
REQUEST_TIMEOUT_S = 30.0
AUDIT_TABLE = "soak_audit"


# --------------------------------------------------------------------------- infrastructure we control


class TcpProxy:
    """A TCP forwarder 127.0.0.1:``port`` -> upstream that can be cut (reset + refuse) and restored.

    Cutting closes the listening socket, so new connections are refused at once, and resets every
    forwarded connection, so clients see the server vanish mid-conversation.
    """

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._thread: threading.Thread | None = None
        self.cuts = 0
        self.connections = 0

    def start(self) -> "TcpProxy":
        """Listen and forward (also used to restore after a cut)."""
        with self._lock:
            if self._listener is not None:
                return self
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(256)
            self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    restore = start

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
            self.cuts += 1
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            _close(listener)
            if self._thread is not None:
                self._thread.join(timeout=2)
        for a, b in pairs:
            for sock in (a, b):
                try:
                    # SO_LINGER 0: close with RST, the way a crashed host or a dropped link looks.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
                _close(sock)

    close = cut

    @property
    def is_up(self) -> bool:
        """True while forwarding."""
        return self._listener is not None

    def _accept_loop(self, listener: socket.socket) -> None:
        # A short accept timeout: close() from another thread does not wake a blocked accept() on Linux.
        listener.settimeout(0.1)
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # cut or closed
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(upstream)
                    return
                self._pairs.add((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in sel.select(timeout=1.0):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
                if a.fileno() < 0 or b.fileno() < 0:
                    return
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            with self._lock:
                self._pairs.discard((a, b))
            _close(a)
            _close(b)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# --------------------------------------------------------------------------- a well-behaved client and its ledger


def load_items(limit: int, seed: int = 0) -> list[dict]:
    """Real Quick Draw drawings (cats and others, both formats) from the shared data, else synthetic squares."""
    items: list[dict] = []
    for name in ("cat.ndjson", "others.ndjson"):
        path = QUICKDRAW / name
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    rec = orjson.loads(line)
                    items.append({"drawing": rec["drawing"], "format": rec.get("format", "simplified"), "metadata": {"word": rec.get("word")}})
                if len(items) >= limit:
                    break
        if len(items) >= limit:
            break
    if not items:
        rng = random.Random(seed)
        for _ in range(min(limit, 500)):
            a, b = rng.randrange(0, 128), rng.randrange(128, 256)
            items.append({"drawing": [[[a, b, b, a, a], [a, a, b, b, a]]], "format": "simplified", "metadata": {"word": "square"}})
    return items


@dataclass
class Ledger:
    """What the client was told: the id of every acknowledged client_ref, and every answer it got."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    connection_errors: list[str] = field(default_factory=list)
    retry_after_missing: int = 0
    retries: int = 0
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def record(self, answer: Answer, refs: list[str]) -> bool:
        """Account one answer to a request (counted as sent); True when the batch is settled (stored or refused for good)."""
        status, body = answer.status, answer.body
        with self.lock:
            self.sent += 1
            self.statuses[status] += 1
            self.latencies_s.append(answer.seconds)
            if status in (200, 202, 400) and body[:1] == b"{":
                parsed = orjson.loads(body)
                if "items" in parsed:
                    for item in parsed["items"]:
                        ref = refs[item["index"]]
                        if "id" in item and item["id"] is not None:
                            self._ack(ref, int(item["id"]))
                        else:
                            self.rejected[ref] = str(item.get("error"))
                    return True
                if "id" in parsed and len(refs) == 1:
                    self._ack(refs[0], int(parsed["id"]))
                    return True
            if status in RETRY_STATUSES:
                if status == 0 and len(self.connection_errors) < 20:
                    self.connection_errors.append(answer.message())
                if status in (429, 503) and "retry-after" not in answer.headers:
                    self.retry_after_missing += 1
                self.retries += 1
                return False
            if status >= 500:
                self.server_errors.append(f"{status}: {body[:200]!r}")
                self.retries += 1
                return False
            for ref in refs:
                self.rejected[ref] = f"{status}: {body[:200]!r}"
            return True

    def _ack(self, ref: str, sketch_id: int) -> None:
        old = self.ids.setdefault(ref, sketch_id)
        if old != sketch_id:
            # The same client_ref answered with two ids would mean it was stored twice.
            self.server_errors.append(f"client_ref {ref} acknowledged as {old} and {sketch_id}")


class Submitter:
    """Threads that POST batches with unique client_refs and re-send a batch until it is settled.

    Sent through the shared client: every answer goes to the ledger, which decides whether the batch is
    settled; otherwise it is re-sent after what Retry-After asks (at most MAX_RETRY_SLEEP_S), else after
    RETRY_SLEEP_S, for up to ``give_up_s`` seconds.
    """

    def __init__(self, url: str, api_key: str, ledger: Ledger, items: list[dict], total: int, batch: int = 10,
                 concurrency: int = 2, prefix: str | None = None, pace_s: float = 0.0, give_up_s: float = 600.0) -> None:
        self.client = SubmitClient(url, api_key, timeout_s=REQUEST_TIMEOUT_S)
        self.policy = RetryPolicy(max_attempts=None, give_up_s=give_up_s, first_delay_s=RETRY_SLEEP_S, backoff=1.0,
                                  max_delay_s=MAX_RETRY_SLEEP_S)  # fmt: skip
        self.ledger = ledger
        self.items = items
        self.total = total
        self.batch = max(1, batch)
        self.prefix = prefix or f"soak-{os.getpid()}-{random.randrange(16**6):06x}"
        self.pace_s = pace_s
        self._next = itertools.count()
        self._counter_lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, name=f"submit-{i}", daemon=True) for i in range(concurrency)]

    def start(self) -> "Submitter":
        """Start sending."""
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every batch to be settled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self.threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not any(t.is_alive() for t in self.threads)
        if done:
            self.client.close()
        return done

    def stop(self) -> None:
        """Ask the threads to stop after their current batch."""
        self._stop.set()

    def _claim(self) -> list[int]:
        """The next batch's item numbers (empty when all are claimed)."""
        with self._counter_lock:
            start = next(self._next) * self.batch
        return list(range(start, min(start + self.batch, self.total)))

    def _run(self) -> None:
        """One sending thread: claim a batch, send it until settled, pace, repeat."""
        while not self._stop.is_set():
            numbers = self._claim()
            if not numbers:
                break
            refs = [f"{self.prefix}-{n}" for n in numbers]
            body = orjson.dumps([{**self.items[n % len(self.items)], "client_ref": ref} for n, ref in zip(numbers, refs)])
            post_with_retries(self.client, self.policy, lambda answer, refs=refs: self.ledger.record(answer, refs),
                              data=body, content_type="application/json")  # fmt: skip
            if self.pace_s:
                time.sleep(self.pace_s)


# --------------------------------------------------------------------------- accounting


def install_audit(engine) -> None:
    """A PostgreSQL trigger recording every change of a sketch's status, score or scored_at (soak/test DBs only)."""
    from sqlalchemy import text

    statements = [
        f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (sketch_id bigint, old_status text, new_status text, "
        "old_scored_at timestamptz, new_scored_at timestamptz, at timestamptz DEFAULT clock_timestamp())",
        f"""CREATE OR REPLACE FUNCTION {AUDIT_TABLE}_fn() RETURNS trigger AS $$
        BEGIN
          IF NEW.status IS DISTINCT FROM OLD.status OR NEW.scored_at IS DISTINCT FROM OLD.scored_at
             OR NEW.score IS DISTINCT FROM OLD.score THEN
            INSERT INTO {AUDIT_TABLE} (sketch_id, old_status, new_status, old_scored_at, new_scored_at)
            VALUES (OLD.id, OLD.status, NEW.status, OLD.scored_at, NEW.scored_at);
          END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql""",
        f"DROP TRIGGER IF EXISTS {AUDIT_TABLE}_trg ON sketches",
        f"CREATE TRIGGER {AUDIT_TABLE}_trg AFTER UPDATE ON sketches FOR EACH ROW EXECUTE FUNCTION {AUDIT_TABLE}_fn()",
    ]
    with engine.begin() as conn:
        for stmt in statements:
            conn.execute(text(stmt))


@dataclass
class Accounting:
    """Every acknowledged sketch checked against the database."""

    acknowledged: int = 0
    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    id_mismatch: list[str] = field(default_factory=list)
    unacknowledged_rows: list[str] = field(default_factory=list)
    duplicate_refs: list[str] = field(default_factory=list)
    stuck: list[int] = field(default_factory=list)
    failed_without_reason: list[int] = field(default_factory=list)
    scored_incomplete: list[int] = field(default_factory=list)
    scored_twice: list[int] = field(default_factory=list)
    rescored: list[int] = field(default_factory=list)
    failed_errors: dict[str, int] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every acknowledged sketch is stored once and finished (scored, or failed with a reason)."""
        return not (
            self.missing or self.id_mismatch or self.unacknowledged_rows or self.duplicate_refs or self.stuck
            or self.failed_without_reason or self.scored_incomplete or self.scored_twice or self.rescored
            or self.acknowledged != self.rows
        )

    def problems(self) -> dict[str, list]:
        """The non-empty problem lists (first 10 entries each)."""
        names = ("missing", "id_mismatch", "unacknowledged_rows", "duplicate_refs", "stuck",
                 "failed_without_reason", "scored_incomplete", "scored_twice", "rescored")  # fmt: skip
        return {n: getattr(self, n)[:10] for n in names if getattr(self, n)}

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "acknowledged": self.acknowledged, "rows": self.rows, "by_status": self.by_status,
            "failed_errors": self.failed_errors, "latency_s": self.latency_s, "ok": self.ok,
            "problems": self.problems(),
        }  # fmt: skip


def account(engine, client: str, ledger: Ledger, audit: bool = True) -> Accounting:
    """Check the ledger against the sketches of ``client`` (and the audit trail when installed)."""
    from sqlalchemy import text

    out = Accounting(acknowledged=len(ledger.ids))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, client_ref, status, error, scored_at, score, model_version, "
                "extract(epoch FROM scored_at - submitted_at) AS latency FROM sketches WHERE client = :c"
            ),
            {"c": client},
        ).all()
        twice: list[int] = []
        rescored: list[int] = []
        if audit:
            twice = [r[0] for r in conn.execute(text(
                f"SELECT sketch_id FROM {AUDIT_TABLE} WHERE new_status = 'scored' GROUP BY sketch_id HAVING count(*) > 1"
            ))]  # fmt: skip
            rescored = [r[0] for r in conn.execute(text(
                f"SELECT DISTINCT sketch_id FROM {AUDIT_TABLE} WHERE old_scored_at IS NOT NULL "
                "AND new_scored_at IS DISTINCT FROM old_scored_at"
            ))]  # fmt: skip
    out.rows = len(rows)
    by_ref: dict[str, list] = {}
    for row in rows:
        by_ref.setdefault(row.client_ref, []).append(row)
    out.duplicate_refs = sorted(ref for ref, group in by_ref.items() if len(group) > 1)
    out.by_status = dict(Counter(row.status for row in rows))
    for ref, sketch_id in ledger.ids.items():
        group = by_ref.get(ref)
        if not group:
            out.missing.append(ref)
        elif group[0].id != sketch_id:
            out.id_mismatch.append(ref)
    out.unacknowledged_rows = sorted(ref for ref in by_ref if ref not in ledger.ids)
    latencies = []
    for row in rows:
        if row.status == "queued":
            out.stuck.append(row.id)
        elif row.status == "failed":
            if not (row.error or "").strip():
                out.failed_without_reason.append(row.id)
            key = (row.error or "").split(":")[0][:80]
            out.failed_errors[key] = out.failed_errors.get(key, 0) + 1
        elif row.scored_at is None or row.score is None or row.model_version is None:
            out.scored_incomplete.append(row.id)
        elif row.latency is not None:
            latencies.append(float(row.latency))
    ids = {row.id for row in rows}
    out.scored_twice = [i for i in twice if i in ids]
    out.rescored = [i for i in rescored if i in ids]
    if latencies:
        latencies.sort()
        out.latency_s = {f"p{p}": round(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))], 3) for p in (50, 95, 99)}
        out.latency_s["max"] = round(latencies[-1], 3)
    return out


def wait_until_done(engine, client: str, expected: int, timeout: float, poll: float = 0.5,
                    on_poll: Callable[[], None] | None = None) -> float:
    """Wait until ``expected`` sketches of ``client`` are scored or failed; the seconds it took (inf on timeout)."""
    from sqlalchemy import text

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with engine.connect() as conn:
            done = conn.execute(
                text("SELECT count(*) FROM sketches WHERE client = :c AND status IN ('scored', 'failed')"), {"c": client}
            ).scalar_one()
        if done >= expected:
            return time.monotonic() - started
        if on_poll:
            on_poll()
        time.sleep(poll)
    return float("inf")


# --------------------------------------------------------------------------- the stack under test


def soak_settings(sweep_interval_s: float, sweep_after_s: float, visibility_timeout_s: int, max_attempts: int) -> dict[str, str]:
    """SKETCHWATCH_* overrides that make recovery happen within a soak's time scale."""
    return {
        "SKETCHWATCH_SWEEP_INTERVAL_S": str(sweep_interval_s),
        "SKETCHWATCH_SWEEP_AFTER_S": str(sweep_after_s),
        "SKETCHWATCH_VISIBILITY_TIMEOUT_S": str(visibility_timeout_s),
        "SKETCHWATCH_MAX_ATTEMPTS": str(max_attempts),
        "SKETCHWATCH_RATELIMIT_SUBMIT": "1000000 per minute",
    }


def make_stack(redis: RedisServer, proxy: TcpProxy, args):
    """The bench stack on the private Redis, with Celery beat on its own and every process reaching PostgreSQL through ``proxy``."""
    from bench.stack import Stack, StackConfig

    class SoakStack(Stack):
        """The bench stack, with the database URL of every process pointing at the proxy."""

        def environment(self, extra=None) -> dict[str, str]:
            """Stack environment with the database URL rewritten to the proxy's port."""
            env = super().environment(extra)
            parts = urlsplit(self.database_url)
            env["SKETCHWATCH_DATABASE_URL"] = self.database_url.replace(
                f"@{parts.hostname}:{parts.port}/", f"@127.0.0.1:{proxy.port}/"
            )
            return env

    config = StackConfig(
        workers=args.workers, web_workers=args.web_workers, web_threads=4, log_level="INFO", beat="separate",
        env=soak_settings(args.sweep_interval, args.sweep_after, args.visibility_timeout, args.max_attempts),
    )  # fmt: skip
    return SoakStack(config, broker_url=redis.url)


@dataclass
class FaultLog:
    """What was injected, when, and for how long."""

    events: list[dict] = field(default_factory=list)

    def add(self, kind: str, started: float, duration: float, **extra) -> None:
        """Record one fault."""
        self.events.append({"kind": kind, "at_s": round(started, 2), "duration_s": round(duration, 2), **extra})

    def counts(self) -> dict[str, int]:
        """Faults per kind."""
        return dict(Counter(e["kind"] for e in self.events))


FAULT_KINDS = ("worker-kill", "worker-term", "redis-down", "pg-cut")


def inject(kind: str, stack, redis: RedisServer, proxy: TcpProxy, args, faults: FaultLog, t0: float) -> None:
    """Inject one fault of ``kind`` and restore service."""
    started = time.monotonic()
    if kind in ("worker-kill", "worker-term"):
        # Mid-batch: wait (bounded) until the worker holds an unacknowledged task.
        busy = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.hlen("unacked") > 0:
                    busy = True
                    break
            except (OSError, RuntimeError):
                pass
            time.sleep(0.05)
        sig = signal.SIGKILL if kind == "worker-kill" else signal.SIGTERM
        # A warm shutdown finishes the batch in hand first.
        stack.kill_process("worker", sig, timeout_s=60 if sig == signal.SIGTERM else 10)
        stopped = time.monotonic() - started
        stack.start_workers(args.workers)
        try:
            stack.wait_worker_ready()
            ready = True
        except TimeoutError:
            ready = False
        faults.add(kind, started - t0, time.monotonic() - started, mid_task=busy, stop_s=round(stopped, 2), ready=ready)
    elif kind == "redis-down":
        redis.stop(signal.SIGKILL)
        time.sleep(args.redis_down)
        redis.start()
        faults.add(kind, started - t0, time.monotonic() - started)
    elif kind == "pg-cut":
        proxy.cut()
        time.sleep(args.pg_down)
        proxy.restore()
        faults.add(kind, started - t0, time.monotonic() - started)
    else:
        raise ValueError(f"unknown fault {kind!r}")


# A worker restart (TensorFlow import and model load) takes about this long on a 2-core machine.
WORKER_RESTART_S = 15.0


def expected_schedule_s(order: list[str], args) -> float:
    """Rough length of a fault schedule, so the submissions can be spread over all of it."""
    per_kind = {"worker-kill": WORKER_RESTART_S, "worker-term": WORKER_RESTART_S, "redis-down": args.redis_down, "pg-cut": args.pg_down}
    return sum(args.gap + per_kind[k] for k in order) or 10.0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Submit N sketches while injecting M faults (worker SIGKILL/SIGTERM, Redis down, PostgreSQL cut); "
        "check that every acknowledged sketch is stored once and ends scored (or failed with a reason), scored once.",
    )
    p.add_argument("--sketches", type=int, default=3000, help="sketches to submit (N)")
    p.add_argument("--faults", type=int, default=8, help="faults to inject while submitting (M)")
    p.add_argument("--kinds", default=",".join(FAULT_KINDS), help=f"comma-separated fault kinds, cycled ({', '.join(FAULT_KINDS)})")
    p.add_argument("--batch", type=int, default=10, help="sketches per request")
    p.add_argument("--concurrency", type=int, default=2, help="client threads")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds over which to spread the submissions (default: the expected length of the fault schedule)")
    p.add_argument("--workers", type=int, default=1, help="Celery prefork processes")
    p.add_argument("--web-workers", type=int, default=2, help="web server processes")
    p.add_argument("--redis-down", type=float, default=10.0, help="seconds Redis stays down per fault")
    p.add_argument("--pg-down", type=float, default=5.0, help="seconds PostgreSQL stays unreachable per fault")
    p.add_argument("--gap", type=float, default=4.0, help="minimum seconds between faults")
    p.add_argument("--sweep-interval", type=float, default=3.0, help="SKETCHWATCH_SWEEP_INTERVAL_S")
    p.add_argument("--sweep-after", type=float, default=20.0, help="SKETCHWATCH_SWEEP_AFTER_S")
    p.add_argument("--visibility-timeout", type=int, default=60, help="SKETCHWATCH_VISIBILITY_TIMEOUT_S")
    p.add_argument("--max-attempts", type=int, default=5, help="SKETCHWATCH_MAX_ATTEMPTS")
    p.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for the backlog after the last fault")
    p.add_argument("--seed", type=int, default=0, help="fault order seed")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the process logs to this folder")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Run one soak and return its figures."""
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise SystemExit(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    from bench.stack import PG_HOST, PG_PORT

    workdir = Path(tempfile.mkdtemp(prefix="sketchwatch-soak-"))
    redis = RedisServer(workdir / "redis", port=free_port(REDIS_PORTS))
    redis.start()
    proxy = TcpProxy(PG_HOST, PG_PORT).start()
    stack = make_stack(redis, proxy, args)
    faults = FaultLog()
    ledger = Ledger()
    result: dict = {}
    try:
        stack.start()
        install_audit(stack.engine)
        try:
            stack.wait_worker_ready()
        except TimeoutError as exc:
            raise RuntimeError(f"the worker did not load its model: {exc}") from None
        items = load_items(min(args.sketches, 5000))
        rng = random.Random(args.seed)
        order = [kinds[i % len(kinds)] for i in range(args.faults)]
        rng.shuffle(order)
        duration = args.duration if args.duration is not None else expected_schedule_s(order, args)
        requests_per_thread = max(1, -(-args.sketches // args.batch) // max(1, args.concurrency))
        submitter = Submitter(stack.url, stack.api_key, ledger, items, args.sketches, args.batch, args.concurrency,
                              pace_s=duration / requests_per_thread)  # fmt: skip
        t0 = time.monotonic()
        submitter.start()
        for kind in order:
            time.sleep(args.gap)
            log.info("fault: %s", kind)
            inject(kind, stack, redis, proxy, args, faults, t0)
        submitted = submitter.join(timeout=args.drain_timeout)
        submit_s = time.monotonic() - t0
        drain_s = wait_until_done(stack.engine, bench_client(), len(ledger.ids), args.drain_timeout,
                                  on_poll=lambda: stack.check_alive())  # fmt: skip
        acc = account(stack.engine, bench_client(), ledger)
        result = {
            "sketches": args.sketches,
            "faults": faults.counts(),
            "fault_events": faults.events,
            "submitted_all": submitted,
            "requests": ledger.sent,
            "http_statuses": {str(k): v for k, v in sorted(ledger.statuses.items())},
            "client_retries": ledger.retries,
            "server_errors": ledger.server_errors[:10],
            "retry_after_missing": ledger.retry_after_missing,
            "rejected": len(ledger.rejected),
            "submit_s": round(submit_s, 1),
            "drain_after_submit_s": round(drain_s, 1) if drain_s != float("inf") else None,
            "accounting": acc.as_dict(),
            "ok": acc.ok and not ledger.server_errors and not ledger.rejected and submitted and acc.acknowledged == args.sketches,
        }
    finally:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in stack.workdir.glob("*.log"):
                shutil.copy(path, args.keep_logs / path.name)
        stack.close()
        proxy.close()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def bench_client() -> str:
    """The client name bench.stack gives its API key."""
    from bench.stack import API_CLIENT

    return API_CLIENT


def print_figures(result: dict) -> None:
    """Human-readable figures."""
    acc = result["accounting"]
    print(f"soak: {result['sketches']} sketches, faults {result['faults']}")
    for event in result["fault_events"]:
        extra = {k: v for k, v in event.items() if k not in ("kind", "at_s", "duration_s")}
        print(f"  fault {event['kind']:<12} at {event['at_s']:7.1f} s, lasted {event['duration_s']:5.1f} s {extra or ''}")
    print(f"  requests {result['requests']}, HTTP statuses {result['http_statuses']}, client re-sends {result['client_retries']}")
    print(f"  acknowledged {acc['acknowledged']}, rows {acc['rows']}, by status {acc['by_status']}")
    if acc["failed_errors"]:
        print(f"  failed with reasons: {acc['failed_errors']}")
    print(f"  submit phase {result['submit_s']} s, drain after it {result['drain_after_submit_s']} s")
    print(f"  end-to-end latency {acc['latency_s']}")
    print(f"  server errors (5xx other than 503): {len(result['server_errors'])}, 429/503 without Retry-After: {result['retry_after_missing']}")
    if acc["problems"]:
        print(f"  PROBLEMS: {json.dumps(acc['problems'])}")
    print("  RESULT: " + ("every accepted sketch accounted for, scored at most once" if result["ok"] else "FAILED"))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the soak, print the figures, exit 0 when everything is accounted for."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_figures(result)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
