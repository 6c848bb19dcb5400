"""Dashboard benchmark: seed 10^4..10^6 sketches straight into PostgreSQL, then time every page.

Seeding runs server-side (``INSERT ... SELECT`` over ``generate_series`` joined to a table of real Quick
Draw templates), so a million rows cost one statement rather than a million round trips. Rows look like
production: real drawings and bitmaps, a two-mode score distribution (cats low, anomalies high), flags
at the model's threshold, two model versions, a few queued and failed sketches, and reviews with the
denormalised verdict. Pages are fetched through the real login form with a ``requests.Session``.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import requests
from sqlalchemy import text

from bench.loadgen import DEFAULT_DATA
from bench.stack import Stack
from service.core.packing import pack_bitmap, pack_drawing

log = logging.getLogger(__name__)

TEMPLATES = 1000
THRESHOLD = 0.5
CURRENT_VERSION = "bench-current"
OLD_VERSION = "bench-previous"
REVIEW_FRACTION = 0.05
REQUEST_TIMEOUT_S = 60.0
SEED_TIMEOUT_S = 1800
SEED_DAYS = 60
# Rows per INSERT ... SELECT: a 10^7 level is ten statements, each well inside the statement timeout.
SEED_CHUNK = 1_000_000
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')

# (name, path): every dashboard page and stats endpoint a reviewer or admin reaches. {id} is a flagged sketch.
ENDPOINTS: list[tuple[str, str]] = [
    ("overview", "/"),
    ("overview_24h", "/?range=24h"),
    ("overview_7d_log", "/?range=7d&log=1&bins=100"),
    ("overview_model", f"/?model_version={CURRENT_VERSION}"),
    ("flagged", "/flagged"),
    ("flagged_by_time", "/flagged?sort=time"),
    ("flagged_unreviewed", "/flagged?state=unreviewed"),
    ("flagged_anomaly", "/flagged?state=anomaly"),
    ("flagged_page_50", "/flagged?page=50"),
    ("detail", "/sketches/{id}"),
    ("image_pair", "/sketches/{id}/pair.png"),
    ("image_diff", "/sketches/{id}/diff.png?s=8"),
    ("threshold", "/threshold"),
    ("threshold_preview", "/threshold/preview?t=0.6"),
    ("stats_histogram", "/api/v1/stats/histogram"),
    ("stats_histogram_24h", "/api/v1/stats/histogram?range=24h&bins=100&log=1"),
    ("draw", "/draw"),
    ("admin_users", "/admin/users"),
    ("admin_keys", "/admin/keys"),
    ("timeseries_minute", "/api/v1/stats/timeseries?bucket=minute"),
    ("timeseries_hour", "/api/v1/stats/timeseries?bucket=hour"),
    ("timeseries_day", "/api/v1/stats/timeseries?bucket=day"),
    ("timeseries_client_hour", "/api/v1/stats/timeseries?bucket=hour&client=client-1"),
    ("overview_trend_30d", "/?range=30d&bucket=day"),
    ("monitoring", "/monitoring"),
    ("monitoring_clients", "/monitoring/clients"),
    ("alerts", "/alerts"),
    ("alert_history", "/alerts/history"),
]

_TEMPLATE_DDL = (
    "CREATE UNLOGGED TABLE IF NOT EXISTS bench_templates "
    "(k integer PRIMARY KEY, drawing bytea NOT NULL, meta json, bitmap bytea NOT NULL, recon bytea NOT NULL)"
)

# Scores: 92% cat-like (around 0.2), 8% anomalies (0.55..1); flagged when above the threshold.
_SEED_SQL = """
INSERT INTO sketches (client, client_ref, submitted_at, scored_at, source_format, drawing, metadata,
                      input_bitmap, reconstruction, status, score, score_logit, flagged, threshold, model_version,
                      error, attempts, enqueued_at)
SELECT 'client-' || (s.g % 5), 'seed-' || s.g, s.ts,
       CASE WHEN s.st = 'scored' THEN s.ts + (0.05 + random() * 0.5) * interval '1 second' END,
       'simplified', t.drawing, t.meta, NULL,
       CASE WHEN s.st = 'scored' AND s.sc > CAST(:thr AS float8) THEN t.recon END,
       s.st,
       CASE WHEN s.st = 'scored' THEN s.sc END,
       CASE WHEN s.st = 'scored' THEN ln(s.sc) - ln(1 - s.sc) END,
       CASE WHEN s.st = 'scored' THEN s.sc > CAST(:thr AS float8) END,
       CASE WHEN s.st = 'scored' THEN CAST(:thr AS float8) END,
       CASE WHEN s.st = 'scored' THEN (CASE WHEN s.g % 5 = 0 THEN CAST(:old AS text) ELSE CAST(:cur AS text) END) END,
       CASE WHEN s.st = 'failed' THEN 'seeded failure' END,
       CASE WHEN s.st = 'failed' THEN 5 ELSE 1 END,
       s.ts
FROM (
    SELECT g,
           CASE WHEN u < 0.001 THEN now() - random() * interval '60 seconds'
                ELSE now() - random() * interval '60 days' END AS ts,  -- SEED_DAYS
           CASE WHEN u < 0.001 THEN 'queued' WHEN u < 0.0015 THEN 'failed' ELSE 'scored' END AS st,
           CASE WHEN random() < 0.92 THEN 0.05 + 0.35 * (random() + random() + random()) / 3
                ELSE 0.55 + 0.45 * sqrt(random()) END AS sc
    FROM (SELECT g, random() AS u FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g) AS r
) AS s
JOIN bench_templates AS t ON t.k = s.g % CAST(:ntpl AS bigint)
"""

_REVIEW_SQL = """
WITH picked AS (
    SELECT id, CASE WHEN score > 0.7 OR random() < 0.1 THEN 'anomaly' ELSE 'cat' END AS verdict
    FROM sketches
    WHERE client_ref LIKE 'seed-%' AND id > CAST(:after AS bigint) AND flagged = true AND random() < CAST(:frac AS float8)
), added AS (
    INSERT INTO reviews (sketch_id, verdict, reviewer, created_at)
    SELECT id, verdict, 'bench-reviewer', now() FROM picked
    RETURNING sketch_id, verdict
)
UPDATE sketches AS s SET verdict = a.verdict FROM added AS a WHERE s.id = a.sketch_id
"""


@dataclass
class SeedResult:
    """Rows in the table after a seeding step and how long the step took."""

    rows: int
    seconds: float
    rollup_s: float = 0.0
    bytes_per_row: float | None = None


def load_templates(n: int = TEMPLATES) -> list[tuple]:
    """(k, drawing JSON, metadata JSON, bitmap bytes, reconstruction bytes) from the shared data."""
    from pathlib import Path

    data_dir = Path(DEFAULT_DATA).parent
    bitmaps = np.load(data_dir / "others_bitmaps_28.npy", mmap_mode="r")
    drawings = []
    with open(DEFAULT_DATA, "rb") as fh:
        for line in fh:
            rec = orjson.loads(line)
            if rec.get("format", "simplified") != "simplified":
                continue
            drawings.append((rec["drawing"], {"word": rec.get("word"), "countrycode": rec.get("countrycode")}))
            if len(drawings) >= n:
                break
    out = []
    for k, (drawing, meta) in enumerate(drawings):
        bitmap = np.asarray(bitmaps[k % len(bitmaps)], dtype=np.uint8)
        # A blurred copy stands in for the reconstruction: same size, similar content.
        img = bitmap.reshape(28, 28).astype(np.float32)
        blur = (img + np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1)) / 5
        # Stored as production stores them (service.core.packing): a stroke submission keeps no input bitmap,
        # and only flagged sketches keep their reconstruction (see _SEED_SQL).
        out.append((k, pack_drawing(drawing), orjson.dumps(meta).decode(), pack_bitmap(bitmap.tobytes()),
                    pack_bitmap(blur.astype(np.uint8).tobytes())))
    return out


def _raw_connect(stack: Stack):
    import psycopg

    return psycopg.connect(stack.database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def prepare(stack: Stack) -> None:
    """Create and fill the template table and a short threshold history."""
    rows = load_templates()
    with _raw_connect(stack) as conn:
        conn.execute(_TEMPLATE_DDL)
        conn.execute("TRUNCATE bench_templates")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO bench_templates VALUES (%s, %s, %s, %s, %s)", rows)
        conn.execute(
            "INSERT INTO threshold_changes (value, previous, changed_by, reason, created_at) VALUES "
            "(0.45, NULL, 'bench-admin', 'initial', now() - interval '30 days'), "
            f"({THRESHOLD}, 0.45, 'bench-admin', 'fewer false alarms', now() - interval '10 days')"
        )
    # Seeded rows go back 60 days: their weekly partitions are made first, as beat would have made them.
    from sqlalchemy.orm import Session

    from service.core import partitions

    with Session(stack.engine) as session, session.begin():
        since = datetime.now(timezone.utc) - timedelta(days=SEED_DAYS + 1)
        partitions.ensure_partitions(session, since, days=7, ahead=SEED_DAYS // 7 + 3)


def seed_to(stack: Stack, target: int) -> SeedResult:
    """Add sketches (and reviews) until the table holds ``target`` seeded rows; VACUUM ANALYZE after."""
    start = time.perf_counter()
    with _raw_connect(stack) as conn:
        (have,) = conn.execute("SELECT count(*) FROM sketches").fetchone()
        (after,) = conn.execute("SELECT coalesce(max(id), 0) FROM sketches").fetchone()
        if target > have:
            (ntpl,) = conn.execute("SELECT count(*) FROM bench_templates").fetchone()
            conn.execute(f"SET statement_timeout = {SEED_TIMEOUT_S * 1000}")
            # An import: the score-bucket rollup's row triggers stay off, and the rollup is recounted after.
            conn.execute("SET session_replication_role = replica")
            for lo in range(have + 1, target + 1, SEED_CHUNK):
                hi = min(target, lo + SEED_CHUNK - 1)
                params = {"lo": lo, "hi": hi, "ntpl": ntpl, "thr": THRESHOLD, "old": OLD_VERSION, "cur": CURRENT_VERSION}
                conn.execute(_to_psycopg(_SEED_SQL), params)
                log.info("seeded rows %d..%d", lo, hi)
            conn.execute(_to_psycopg(_REVIEW_SQL), {"after": after, "frac": REVIEW_FRACTION})
            conn.execute("SET session_replication_role = DEFAULT")
        # Fresh statistics, as autovacuum would have gathered on a table that grew over months.
        conn.execute("VACUUM ANALYZE sketches")
        conn.execute("VACUUM ANALYZE reviews")
        (rows,) = conn.execute("SELECT count(*) FROM sketches").fetchone()
    rollup_s = rebuild_rollup(stack)
    return SeedResult(rows=int(rows), seconds=time.perf_counter() - start, rollup_s=rollup_s,
                      bytes_per_row=bytes_per_row(stack, int(rows)))


# Table, TOAST and indexes of sketches and of every partition of it (pg_partition_tree lists the table itself).
_SIZE_SQL = "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('sketches')"


def bytes_per_row(stack: Stack, rows: int) -> float | None:
    """PostgreSQL bytes per stored sketch: table + TOAST + indexes (all partitions) over the row count."""
    if not rows:
        return None
    with _raw_connect(stack) as conn:
        (size,) = conn.execute(_SIZE_SQL).fetchone()
    return round(int(size) / rows, 1)


def rebuild_rollup(stack: Stack) -> float:
    """Rebuild the hourly rollup after the bulk insert (the documented step after an import); its seconds.

    In production the alerts worker's refresh keeps it current hour by hour; rows seeded with old
    submission times are what an import looks like.
    """
    from sqlalchemy.orm import Session

    from service.core import rollups, score_rollup

    start = time.perf_counter()
    with Session(stack.engine) as session, session.begin():
        rollups.reset(session)
        rollups.refresh(session)
        score_rollup.rebuild(session)
    with _raw_connect(stack) as conn:
        conn.execute("VACUUM ANALYZE stats_hourly")
        conn.execute("VACUUM ANALYZE score_buckets")
    return time.perf_counter() - start


def _to_psycopg(sql: str) -> str:
    """:name placeholders -> psycopg's %(name)s."""
    return re.sub(r"(?<!:):([a-z]+)", r"%(\1)s", sql.replace("%", "%%"))


def login(base_url: str, username: str, password: str) -> requests.Session:
    """A session logged in through the real login form (CSRF token from the page)."""
    session = PlainHttpSession()
    page = session.get(base_url + "/login", timeout=REQUEST_TIMEOUT_S)
    page.raise_for_status()
    match = CSRF_RE.search(page.text)
    if match is None:
        raise RuntimeError("login page has no csrf_token field")
    token = match.group(1) or match.group(2)
    resp = session.post(
        base_url + "/login",
        data={"csrf_token": token, "username": username, "password": password},
        timeout=REQUEST_TIMEOUT_S,
        allow_redirects=False,
    )
    if resp.status_code not in (302, 303):
        raise RuntimeError(f"login failed with HTTP {resp.status_code}")
    return session


class PlainHttpSession(requests.Session):
    """A session that returns Secure cookies over plain HTTP.

    Production marks the session cookie Secure (TLS ends at a proxy); the bench talks HTTP straight
    to the web server, where the proxy would be, so it must send the cookie back anyway.
    """

    def request(self, *args, **kwargs):
        """Send the request, then clear the Secure flag of every stored cookie."""
        resp = super().request(*args, **kwargs)
        for cookie in self.cookies:
            cookie.secure = False
        return resp


def _sample_id(stack: Stack) -> int:
    with stack.engine.connect() as conn:
        value = conn.execute(
            text("SELECT id FROM sketches WHERE flagged = true AND status = 'scored' ORDER BY score DESC LIMIT 1")
        ).scalar()
    if value is None:
        raise RuntimeError("no flagged sketch to open")
    return int(value)


def time_endpoints(stack: Stack, session: requests.Session, repeat: int = 5) -> dict[str, dict]:
    """Warm each endpoint once, then time ``repeat`` fetches; {name: {max_ms, median_ms, status, bytes}}."""
    sketch_id = _sample_id(stack)
    api_headers = {"Authorization": f"Bearer {stack.api_key}"}
    out: dict[str, dict] = {}
    for name, path in ENDPOINTS:
        url = stack.url + path.format(id=sketch_id)
        headers = api_headers if path.startswith("/api/") else None
        first = session.get(url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            resp = session.get(url, headers=headers, timeout=REQUEST_TIMEOUT_S)
            _ = resp.content
            times.append((time.perf_counter() - t0) * 1000.0)
        out[name] = {
            "path": path,
            "status": resp.status_code,
            "first_status": first.status_code,
            "bytes": len(resp.content),
            "max_ms": max(times),
            "median_ms": statistics.median(times),
        }
        if resp.status_code != 200:
            log.warning("%s answered HTTP %d", path, resp.status_code)
    return out


def run(stack: Stack, levels: list[int], repeat: int = 5) -> list[dict]:
    """Seed each level in turn (cumulatively) and time every endpoint; one dict per level."""
    prepare(stack)
    results = []
    for target in sorted(levels):
        seeded = seed_to(stack, target)
        log.info("seeded %d rows in %.1f s", seeded.rows, seeded.seconds)
        session = login(stack.url, *stack.admin)
        try:
            timings = time_endpoints(stack, session, repeat)
        finally:
            session.close()
        results.append({"rows": seeded.rows, "seed_s": seeded.seconds, "rollup_s": seeded.rollup_s,
                        "bytes_per_row": seeded.bytes_per_row, "endpoints": timings})
    return results
