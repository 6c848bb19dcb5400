"""The load generator: a separate process that submits real Quick Draw drawings over HTTP keep-alive.

Two modes, both printing one JSON summary on stdout:

* ``batch``: closed loop, ``--concurrency`` connections each sending JSON arrays of ``--batch`` sketches
  for ``--duration`` seconds (or until ``--count`` sketches). With ``--broker-url`` it pauses while more
  than ``--max-backlog`` sketches wait in the scoring queue, so the run measures the sustained rate
  rather than how fast a queue can be filled.
* ``single``: open loop, one sketch per request at a fixed offered ``--rate``; sends are scheduled on the
  clock by one asyncio loop over a pool of connections, so a slow answer does not lower the offered rate
  and the client adds no thread hand-offs of its own to the latency it measures.

It imports neither Flask nor the models, to keep its own CPU use small on a shared 2-core machine.
Run ``python -m bench.loadgen --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import itertools
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "others.ndjson"
SUBMIT_PATH = "/api/v1/sketches"
REQUEST_TIMEOUT_S = 30.0
BACKLOG_POLL_S = 0.2
# Connections the single mode opens before its first send, and how long an idle one is trusted: a server
# may close keep-alive connections idle for 2 s (gunicorn's default).
WARM_CONNECTIONS = 16
KEEPALIVE_TRUST_S = 1.5


class LoadError(RuntimeError):
    """The load could not be generated (bad data file, server unreachable)."""


def load_fragments(path: Path, limit: int | None = None) -> list[bytes]:
    """Pre-encoded JSON sketches from a Quick Draw ndjson file, each missing only its closing client_ref.

    A fragment is ``{"drawing":...,"format":...,"metadata":{...},"client_ref":"`` so a request body is
    built by byte concatenation, not JSON encoding, while the clock runs.
    """
    frags: list[bytes] = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
                item = {
                    "drawing": rec["drawing"],
                    "format": rec.get("format", "simplified"),
                    "metadata": {k: rec[k] for k in ("word", "countrycode") if k in rec},
                }
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise LoadError(f"{path}:{lineno}: not a Quick Draw drawing ({exc})") from None
            frags.append(orjson.dumps(item)[:-1] + b',"client_ref":"')
            if limit and len(frags) >= limit:
                break
    if not frags:
        raise LoadError(f"{path}: no drawings")
    return frags


def item(frag: bytes, ref: str) -> bytes:
    """One sketch's JSON from a fragment and its client_ref."""
    return frag + ref.encode() + b'"}'


class Client:
    """One keep-alive HTTP connection that reconnects after an error."""

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, bytes]:
        """POST a submission; (status, body), or (0, error text) on a connection failure."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
            try:
                self.conn.request("POST", SUBMIT_PATH, body=body, headers=self.headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A keep-alive connection the server closed fails once; a real outage fails twice.
                if attempt == 2:
                    return 0, str(exc).encode()
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Tally:
    """Thread-safe counters and per-request latencies."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    first_send: float | None = None
    last_answer: float | None = None
    trace: list[tuple[float, float, int]] | None = None

    def record(self, status: int, body: bytes, sent_wall: float, latency_s: float, lag_s: float, items: int) -> None:
        """Account one answered request."""
        now = time.time()
        with self.lock:
            self.requests += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            self.latencies_ms.append(latency_s * 1000.0)
            self.lags_ms.append(lag_s * 1000.0)
            if self.trace is not None:
                self.trace.append((sent_wall, latency_s * 1000.0, status))
            if self.first_send is None or sent_wall < self.first_send:
                self.first_send = sent_wall
            self.last_answer = now if self.last_answer is None else max(self.last_answer, now)
            if status in (200, 202):
                if items == 1:
                    self.accepted += 1
                else:
                    answer = orjson.loads(body)
                    self.accepted += int(answer.get("accepted", 0))
                    self.rejected += int(answer.get("rejected", 0))
            elif len(self.errors) < 5:
                self.errors.append(f"{status}: {body[:300].decode(errors='replace')}")

    def summary(self) -> dict:
        """JSON-ready summary with latency percentiles."""
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "statuses": self.statuses,
            "errors": self.errors,
            "first_send": self.first_send,
            "last_answer": self.last_answer,
            "intake_ms": percentiles(self.latencies_ms),
            "client_lag_ms": percentiles(self.lags_ms),
        }


def percentiles(values: list[float], points: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """p50/p95/p99/max of a list by linear interpolation (None when empty); 'n' is the count."""
    out: dict[str, float | None] = {"n": len(values)}
    if not values:
        out.update({f"p{p:g}": None for p in points} | {"max": None})
        return out
    ordered = sorted(values)
    for p in points:
        pos = (len(ordered) - 1) * p / 100.0
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        a, b = ordered[lo], ordered[hi]
        # Equal neighbours (infinite ones included) need no interpolation, and inf - inf is nan.
        out[f"p{p:g}"] = a if a == b or pos == lo else a + (b - a) * (pos - lo)
    out["max"] = ordered[-1]
    return out


class BacklogGate:
    """Holds senders while the scoring queue holds more than ``cap`` sketches.

    The backlog is read from the broker (the length of the Celery queue's Redis list, times the
    sketches per task): O(1) and free for the database, unlike counting ``queued`` rows, whose index
    is full of dead entries while sketches are being scored.
    """

    def __init__(self, broker_url: str, queue_name: str, cap: int, per_task: int) -> None:
        import redis

        self.cap = cap
        self.per_task = max(per_task, 1)
        self.queue_name = queue_name
        self.client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=2)
        self.open = threading.Event()
        self.open.set()
        self.waited_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog", daemon=True)
        self._thread.start()

    def backlog(self) -> int:
        """Sketches waiting in the queue (tasks not yet taken by a worker, times sketches per task)."""
        return int(self.client.llen(self.queue_name)) * self.per_task

    def _run(self) -> None:
        closed_at = 0.0
        while not self._stop.is_set():
            queued = self.backlog()
            if queued > self.cap and self.open.is_set():
                self.open.clear()
                closed_at = time.monotonic()
            elif queued <= self.cap and not self.open.is_set():
                self.open.set()
                self.waited_s += time.monotonic() - closed_at
            self._stop.wait(BACKLOG_POLL_S)

    def wait(self, deadline: float) -> bool:
        """Block while the backlog is over the cap; False once ``deadline`` (monotonic) passes."""
        while not self.open.wait(timeout=0.5):
            if time.monotonic() >= deadline:
                return False
        return time.monotonic() < deadline

    def close(self) -> None:
        """Stop polling and open the gate."""
        self._stop.set()
        self.open.set()
        self._thread.join(timeout=2)
        self.client.close()


def run_batch(
    url: str,
    api_key: str,
    frags: list[bytes],
    duration: float,
    batch: int = 100,
    concurrency: int = 2,
    count: int | None = None,
    prefix: str = "b",
    broker_url: str | None = None,
    max_backlog: int = 0,
    queue_name: str = "sketchwatch",
) -> dict:
    """Closed-loop batch submissions for ``duration`` seconds (or ``count`` sketches); returns the summary."""
    tally = Tally()
    seq = itertools.count()
    seq_lock = threading.Lock()
    gate = BacklogGate(broker_url, queue_name, max_backlog, batch) if broker_url and max_backlog > 0 else None
    n_frags = len(frags)
    deadline = time.monotonic() + duration

    def next_body() -> tuple[bytes, int] | None:
        with seq_lock:
            start = next(seq) * batch
        if count is not None and start >= count:
            return None
        size = batch if count is None else min(batch, count - start)
        parts = [item(frags[(start + i) % n_frags], f"{prefix}-{start + i}") for i in range(size)]
        return b"[" + b",".join(parts) + b"]", size

    def sender() -> None:
        client = Client(url, api_key)
        try:
            while time.monotonic() < deadline:
                if gate is not None and not gate.wait(deadline):
                    break
                nxt = next_body()
                if nxt is None:
                    break
                body, size = nxt
                wall, t0 = time.time(), time.perf_counter()
                status, data = client.post(body)
                tally.record(status, data, wall, time.perf_counter() - t0, 0.0, size)
                if status == 0:
                    time.sleep(0.5)  # the server is gone; do not spin
        finally:
            client.close()

    threads = [threading.Thread(target=sender, name=f"batch-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + REQUEST_TIMEOUT_S + 10)
    out = tally.summary()
    out.update(mode="batch", batch=batch, concurrency=concurrency, duration=duration)
    if gate is not None:
        out["backlog_wait_s"] = gate.waited_s
        gate.close()
    return out


def run_single(
    url: str,
    api_key: str,
    frags: list[bytes],
    rate: float,
    duration: float,
    concurrency: int = 64,
    prefix: str = "s",
    trace: bool = False,
) -> dict:
    """Open-loop single-sketch submissions at ``rate`` per second for ``duration`` seconds.

    One thread runs an asyncio loop over up to ``concurrency`` keep-alive connections. Sixteen blocking
    client threads had added their own wake-ups and GIL hand-offs to the latency they measured (a client
    p99 twice the server's); here a send waits only for a free connection, and that wait is reported as
    ``client_lag_ms``, apart from the answer time. With ``trace`` the summary also lists every request as
    ``[sent epoch s, latency ms, status]``.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    tally = Tally(trace=[] if trace else None)
    n = max(1, round(rate * duration))
    dropped = asyncio.run(_single_loop(url, api_key, frags, rate, duration, concurrency, prefix, n, tally))
    out = tally.summary()
    out.update(mode="single", rate=rate, duration=duration, offered=n, dropped=dropped, concurrency=concurrency)
    # Requests actually sent per second of the offered window (dropped ones were never sent).
    out["achieved_send_rate"] = (n - dropped) / max(duration, 1e-9)
    if trace:
        out["trace"] = sorted(tally.trace or [])
    return out


async def _single_loop(
    url: str, api_key: str, frags: list[bytes], rate: float, duration: float, concurrency: int, prefix: str,
    n: int, tally: Tally,
) -> int:  # fmt: skip
    """Send ``n`` requests on the clock; returns how many were dropped because the server fell behind."""
    pool = _AsyncPool(url, api_key, concurrency)
    await pool.open(min(concurrency, WARM_CONNECTIONS))
    dropped = 0
    start = time.perf_counter() + 0.05
    # A saturated server cannot take the offered load: sends later than this are dropped, not queued
    # forever, so the step ends on time and reports how much of the load never got out.
    give_up = start + duration + max(2.0, 0.5 * duration)

    async def send(i: int, due: float) -> None:
        nonlocal dropped
        async with pool.slots:
            if time.perf_counter() > give_up:
                dropped += 1
                return
            body = item(frags[i % len(frags)], f"{prefix}-{i}")
            wall, t0 = time.time(), time.perf_counter()
            status, data = await pool.post(body)
            tally.record(status, data, wall, time.perf_counter() - t0, t0 - due, 1)

    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, due)))
    await asyncio.gather(*tasks)
    pool.close()
    return dropped


class _AsyncPool:
    """Keep-alive HTTP/1.1 connections for POSTs of JSON bodies, at most ``size`` in use at once."""

    def __init__(self, url: str, api_key: str, size: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.head = (
            f"POST {SUBMIT_PATH} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.slots = asyncio.Semaphore(max(size, 1))
        # Used in turn (FIFO), so every connection stays warm: one left idle past the server's keep-alive
        # timeout is closed by the server, and opening new ones in a burst adds accept() to the answers.
        self.idle: collections.deque[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = collections.deque()

    async def open(self, count: int) -> None:
        """Open ``count`` connections ahead of the first send."""
        for _ in range(count):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.idle.append((time.monotonic(), reader, writer))

    async def _connection(self, fresh: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        while self.idle and not fresh:
            used, reader, writer = self.idle.popleft()
            if time.monotonic() - used < KEEPALIVE_TRUST_S:
                return reader, writer, False
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return reader, writer, True

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """POST a submission; (status, body), or (0, error text) on a connection failure."""
        request = self.head + str(len(body)).encode() + b"\r\n\r\n" + body
        for attempt in (1, 2):
            try:
                reader, writer, fresh = await self._connection(fresh=attempt == 2)
            except OSError as exc:
                return 0, str(exc).encode()
            try:
                writer.write(request)
                status, data, keep = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                writer.close()
                # A keep-alive connection the server closed fails once; a fresh one failing is an outage.
                if fresh:
                    return 0, (str(exc) or type(exc).__name__).encode()
                continue
            if keep:
                self.idle.append((time.monotonic(), reader, writer))
            else:
                writer.close()
            return status, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop every idle connection."""
        for _, _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection stays open, for one HTTP/1.1 answer with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ValueError("answer without Content-Length")
    data = await reader.readexactly(int(headers["content-length"]))
    return status, data, headers.get("connection", "").lower() != "close"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("batch", "single"))
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True, help="API key")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--count", type=int, default=None, help="batch mode: stop after this many sketches")
    p.add_argument("--rate", type=float, default=200.0, help="single mode: offered sketches/s")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--prefix", default=None, help="client_ref prefix (unique per run)")
    p.add_argument("--broker-url", default=None, help="batch mode: Redis broker to read the queue backlog from")
    p.add_argument("--queue", default="sketchwatch", help="Celery queue name (its Redis list key)")
    p.add_argument("--max-backlog", type=int, default=0, help="batch mode: pause while more sketches than this wait")
    p.add_argument("--trace", action="store_true", help="single mode: list every request's send time and latency")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the JSON summary on stdout."""
    args = _parser().parse_args(argv)
    frags = load_fragments(args.data)
    prefix = args.prefix or f"{args.mode}-{int(time.time() * 1000)}"
    if args.mode == "batch":
        out = run_batch(
            args.url, args.key, frags, args.duration, args.batch, args.concurrency or 2, args.count, prefix,
            args.broker_url, args.max_backlog, args.queue,
        )  # fmt: skip
    else:
        out = run_single(
            args.url, args.key, frags, args.rate, args.duration, args.concurrency or 64, prefix, args.trace
        )
    sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
