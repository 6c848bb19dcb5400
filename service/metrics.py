"""Prometheus ``/metrics``: pipeline counts read from SQL at scrape time, plus this process's HTTP metrics.

Web and worker are separate processes (often on separate hosts), so the pipeline figures (submissions,
scored, failed, flagged, queue depth, scoring latency) are not kept in process memory: a custom
collector reads them from the database (indexed counts) and, with Redis, from the broker's queue list.
Any web replica therefore reports the same, complete numbers. Results are cached for a few seconds so
several scrapers cannot turn into a query storm, and a source that is down is reported as
``sketchwatch_metrics_source_up{source=...} 0`` instead of failing the scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import case, extract, func, literal, select, text, true
from sqlalchemy.engine import Engine

from service.core.celery_app import QUEUE
from service.core.schema import STATUS_FAILED, STATUS_QUEUED, STATUS_SCORED, Sketch, utcnow

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
STATUSES = (STATUS_QUEUED, STATUS_SCORED, STATUS_FAILED)
# End-to-end latency (submitted -> scored) in seconds; batches normally score within a second or two.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
LATENCY_WINDOW_S = 900.0
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CACHE_S = 5.0
# A scrape must never hang on a sick database: PostgreSQL aborts the queries after this long.
STATEMENT_TIMEOUT_MS = 2000
# Kombu's Redis transport keeps priority sub-queues as "<queue>\x06\x16<priority>".
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_UNACKED_KEY = "unacked"


@dataclass
class PipelineCounts:
    """One reading of the pipeline state from SQL (and the broker)."""

    by_status: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    unsent: int = 0
    oldest_queued_age_s: float = 0.0
    latency_buckets: list[int] = field(default_factory=list)
    latency_count: int = 0
    latency_sum: float = 0.0
    broker_depth: int | None = None
    broker_unacked: int | None = None
    database_up: bool = True
    broker_up: bool | None = None


def _latency_seconds(dialect: str):
    """SQL expression for scored_at - submitted_at in seconds, per dialect."""
    if dialect == "postgresql":
        return extract("epoch", Sketch.scored_at - Sketch.submitted_at)
    # SQLite stores both as text; julianday() parses them.
    return (func.julianday(Sketch.scored_at) - func.julianday(Sketch.submitted_at)) * literal(86400.0)


def read_pipeline_counts(engine: Engine, window_s: float = LATENCY_WINDOW_S) -> PipelineCounts:
    """Counts by status, flagged, unsent, oldest queued age and the recent latency histogram (indexed queries)."""
    out = PipelineCounts()
    dialect = engine.dialect.name
    now = utcnow()
    latency = _latency_seconds(dialect)
    with engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        # (status, submitted_at) index: an index-only count per status.
        rows = conn.execute(select(Sketch.status, func.count()).group_by(Sketch.status)).all()
        out.by_status = {status: 0 for status in STATUSES} | {str(s): int(n) for s, n in rows}
        # (flagged, score) index.
        out.flagged = int(conn.execute(select(func.count()).where(Sketch.flagged == true())).scalar_one())
        # Queued rows are few, and the status index finds them without touching the rest.
        queued = conn.execute(
            select(func.count(Sketch.enqueued_at), func.count(), func.min(Sketch.submitted_at)).where(
                Sketch.status == STATUS_QUEUED
            )
        ).one()
        out.unsent = int(queued[1]) - int(queued[0])
        if queued[2] is not None:
            oldest = queued[2] if queued[2].tzinfo else queued[2].replace(tzinfo=now.tzinfo)
            out.oldest_queued_age_s = max(0.0, (now - oldest).total_seconds())
        # Latency of recently submitted, scored sketches: the (status, submitted_at) index bounds the scan.
        since = now - timedelta(seconds=window_s)
        cols = [func.sum(case((latency <= b, 1), else_=0)) for b in LATENCY_BUCKETS]
        hist = conn.execute(
            select(func.count(), func.sum(latency), *cols).where(
                Sketch.status == STATUS_SCORED, Sketch.submitted_at >= since, Sketch.scored_at.is_not(None)
            )
        ).one()
        out.latency_count = int(hist[0] or 0)
        out.latency_sum = float(hist[1] or 0.0)
        out.latency_buckets = [int(v or 0) for v in hist[2:]]
        conn.rollback()
    return out


def read_redis_depth(broker_url: str, queue: str) -> tuple[int, int]:
    """(messages waiting in the Redis queue and its priority sub-queues, messages delivered but unacked)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        names = [queue] + [f"{queue}{REDIS_PRIORITY_SEP}{p}" for p in REDIS_PRIORITY_STEPS if p]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        pipe.hlen(REDIS_UNACKED_KEY)
        values = pipe.execute()
        return int(sum(values[:-1])), int(values[-1])
    finally:
        client.close()


class PipelineCollector:
    """A prometheus_client collector reading pipeline figures at scrape time, cached for ``cache_s``."""

    def __init__(self, engine_getter, broker_url: str | None = None, queue: str = QUEUE, cache_s: float = CACHE_S):
        self._engine_getter = engine_getter
        self._broker_url = broker_url if broker_url and broker_url.startswith(("redis://", "rediss://")) else None
        self._queue = queue
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, PipelineCounts, float] | None = None

    def read(self) -> tuple[PipelineCounts, float]:
        """The current counts (possibly cached) and how long reading them took."""
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self._cache_s:
                return self._cached[1], self._cached[2]
            start = time.perf_counter()
            counts = self._read_uncached()
            took = time.perf_counter() - start
            self._cached = (time.monotonic(), counts, took)
            return counts, took

    def _read_uncached(self) -> PipelineCounts:
        try:
            counts = read_pipeline_counts(self._engine_getter())
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            counts = PipelineCounts(database_up=False)
        if self._broker_url:
            try:
                counts.broker_depth, counts.broker_unacked = read_redis_depth(self._broker_url, self._queue)
                counts.broker_up = True
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics: broker unavailable (%s)", type(exc).__name__)
                counts.broker_up = False
        return counts

    def collect(self):
        """Yield the metric families (called by the registry at each scrape)."""
        counts, took = self.read()
        yield from pipeline_families(counts)
        yield GaugeMetricFamily(
            "sketchwatch_metrics_read_seconds", "Time taken to read the pipeline figures from SQL and the broker", value=took
        )


def pipeline_families(c: PipelineCounts) -> list[Metric]:
    """Metric families for one reading; figures whose source is down are omitted."""
    up = GaugeMetricFamily("sketchwatch_metrics_source_up", "1 when the source answered this scrape", labels=["source"])
    up.add_metric(["database"], 1.0 if c.database_up else 0.0)
    if c.broker_up is not None:
        up.add_metric(["broker"], 1.0 if c.broker_up else 0.0)
    families: list[Metric] = [up]
    if c.database_up:
        total = sum(c.by_status.values())
        by_status = GaugeMetricFamily("sketchwatch_sketches", "Stored sketches by status", labels=["status"])
        for status in sorted(c.by_status):
            by_status.add_metric([status], c.by_status[status])
        latency = GaugeHistogramMetricFamily(
            "sketchwatch_scoring_latency_seconds",
            f"Submitted-to-scored latency of sketches submitted in the last {LATENCY_WINDOW_S:g} s",
            buckets=[(_le(b), n) for b, n in zip(LATENCY_BUCKETS, c.latency_buckets)] + [("+Inf", c.latency_count)],
            gsum_value=c.latency_sum,
        )
        families += [
            CounterMetricFamily("sketchwatch_submissions", "Sketches accepted and stored", value=total),
            CounterMetricFamily("sketchwatch_scored", "Sketches scored", value=c.by_status.get(STATUS_SCORED, 0)),
            CounterMetricFamily(
                "sketchwatch_failures", "Sketches that failed scoring after bounded retries",
                value=c.by_status.get(STATUS_FAILED, 0),
            ),
            by_status,
            GaugeMetricFamily("sketchwatch_flagged", "Sketches currently flagged as anomalies", value=c.flagged),
            GaugeMetricFamily(
                "sketchwatch_unsent", "Queued sketches never handed to the broker (the sweeper re-sends them)",
                value=c.unsent,
            ),
            GaugeMetricFamily(
                "sketchwatch_oldest_queued_age_seconds", "Age of the oldest queued sketch (0 when none)",
                value=c.oldest_queued_age_s,
            ),
            latency,
        ]
    depth = GaugeMetricFamily("sketchwatch_queue_depth", "Sketches or messages waiting to be scored", labels=["source"])
    if c.database_up:
        depth.add_metric(["database"], c.by_status.get(STATUS_QUEUED, 0))
    if c.broker_depth is not None:
        depth.add_metric(["broker"], c.broker_depth)
    families.append(depth)
    if c.broker_unacked is not None:
        families.append(
            GaugeMetricFamily(
                "sketchwatch_broker_unacked", "Messages delivered to a worker and not yet acknowledged",
                value=c.broker_unacked,
            )
        )
    return families


def _le(bound: float) -> str:
    return repr(float(bound))


class RequestMetrics:
    """This process's HTTP request counter and latency histogram, labelled by route (bounded cardinality)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "sketchwatch_http_requests",
            "HTTP requests answered by this process",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "sketchwatch_http_request_duration_seconds",
            "Time to answer an HTTP request in this process",
            ["endpoint", "method"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )

    def start(self) -> None:
        """before_request hook."""
        g._metrics_start = time.perf_counter()

    def finish(self, response):
        """after_request hook: count and time the request by its endpoint name, never its raw path."""
        start = g.pop("_metrics_start", None)
        endpoint = request.endpoint or "unmatched"
        if endpoint == "metrics":
            return response
        method = request.method if request.method in _METHODS else "other"
        self.requests.labels(endpoint, method, str(response.status_code)).inc()
        if start is not None:
            self.latency.labels(endpoint, method).observe(time.perf_counter() - start)
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def build_registry(engine_getter, broker_url: str | None, queue: str = QUEUE, cache_s: float = CACHE_S):
    """A fresh registry with the pipeline collector, request metrics and process metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PipelineCollector(engine_getter, broker_url, queue, cache_s))
    ProcessCollector(namespace="sketchwatch_web", registry=registry)
    return registry, RequestMetrics(registry)


def init_app(app: Flask, settings=None, cache_s: float = CACHE_S) -> CollectorRegistry:
    """Serve ``/metrics`` on ``app`` and count its requests; one registry per app (tests build many apps)."""
    from service.extensions import db

    if settings is None:
        from service.extensions import app_settings

        settings = app_settings(app)

    def engine():
        if db.engine is None:
            raise RuntimeError("database is not configured")
        return db.engine

    registry, request_metrics = build_registry(engine, settings.broker_url, QUEUE, cache_s)
    app.extensions["sketchwatch_metrics"] = registry
    app.before_request(request_metrics.start)
    app.after_request(request_metrics.finish)

    def metrics() -> Response:
        """Prometheus text exposition of this app's registry."""
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    app.add_url_rule(METRICS_PATH, endpoint="metrics", view_func=metrics, methods=["GET"])
    limiter = app.extensions.get("limiter")
    if limiter:
        for lim in limiter:
            lim.exempt(metrics)
    return registry
