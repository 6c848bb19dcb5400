"""End-to-end phases of ``sketchwatch bench`` against a running :class:`bench.stack.Stack`.

* model ceiling: in-process batched scoring from strokes, in a child process (TF never loads here);
* throughput: batches of 100 from the load-generator process, first submit -> last ``scored`` row;
* latency: single sketches at a fixed offered rate, ``scored_at - submitted_at`` from the database;
* growth: throughput per worker-process count, latency per offered rate up to saturation.

Every wait is bounded; a phase that times out reports what it measured and says it did not drain.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from bench.loadgen import DEFAULT_DATA, percentiles
from bench.stack import ResourceSampler, Stack
from service.stack import ROOT

log = logging.getLogger(__name__)

LOADGEN_GRACE_S = 90.0
# A step whose p99 exceeds this, or whose scoring falls behind the offered rate, is saturated.
SATURATED_P99_S = 5.0
SATURATED_FRACTION = 0.9


@dataclass
class LoadOptions:
    """Shape of the offered load."""

    batch: int = 100
    concurrency: int = 2
    max_backlog: int = 3000
    single_concurrency: int = 64
    data: Path = DEFAULT_DATA
    drain_timeout: float = 120.0


def run_loadgen(args: list[str], timeout: float, sampler: ResourceSampler | None = None) -> dict:
    """Run ``python -m bench.loadgen ARGS`` as a separate process and return its JSON summary."""
    cmd = [sys.executable, "-m", "bench.loadgen", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if sampler is not None:
        sampler.track("loadgen", proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise RuntimeError(f"load generator did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def model_ceiling(batch: int = 256, quick: bool = False, timeout: float = 600.0) -> dict:
    """Model ceiling (sketches/s, scoring from strokes in one process), measured in a child process."""
    code = (
        "import json, sys\n"
        "from bench.e2e import _ceiling_in_process\n"
        f"print(json.dumps(_ceiling_in_process(batch={batch}, quick={quick})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"model ceiling failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _ceiling_in_process(batch: int = 256, quick: bool = False) -> dict:
    """``bench.model.run`` on the configured model (SKETCHWATCH_MODEL_DIR, else the shipped one)."""
    from bench import model as model_bench

    kwargs: dict = {"batch": batch, "verbose": False, "model_dir": os.environ.get("SKETCHWATCH_MODEL_DIR") or None}
    if quick:
        kwargs.update(n=2048, repeats=1)  # a tiny load for the smoke test
    out = dict(model_bench.run(**kwargs))
    out["source"] = "bench.model"
    return out


# --------------------------------------------------------------------------- helpers on the database


def _phase_rows(stack: Stack, after_id: int) -> dict:
    sql = text(
        "SELECT count(*) FILTER (WHERE status = 'scored'), count(*) FILTER (WHERE status = 'failed'), count(*), "
        "extract(epoch FROM min(submitted_at)), extract(epoch FROM max(scored_at)) FROM sketches WHERE id > :a"
    )
    with stack.engine.connect() as conn:
        scored, failed, total, first_sub, last_scored = conn.execute(sql, {"a": after_id}).one()
    return {
        "scored": int(scored),
        "failed": int(failed),
        "stored": int(total),
        "first_submitted": float(first_sub) if first_sub is not None else None,
        "last_scored": float(last_scored) if last_scored is not None else None,
    }


def _scored_per_second(stack: Stack, after_id: int) -> list[tuple[int, int]]:
    sql = text(
        "SELECT floor(extract(epoch FROM scored_at))::bigint AS s, count(*) FROM sketches "
        "WHERE id > :a AND status = 'scored' GROUP BY s ORDER BY s"
    )
    with stack.engine.connect() as conn:
        return [(int(s), int(c)) for s, c in conn.execute(sql, {"a": after_id})]


def _latencies(stack: Stack, after_id: int) -> list[float]:
    sql = text(
        "SELECT extract(epoch FROM scored_at - submitted_at) FROM sketches WHERE id > :a AND status = 'scored'"
    )
    with stack.engine.connect() as conn:
        return [float(v) for (v,) in conn.execute(sql, {"a": after_id})]


def per_sketch(before: dict[str, float], after: dict[str, float], sketches: int) -> dict[str, float | None]:
    """Server-wide counter growth over a phase, per sketch (WAL bytes, Redis commands)."""
    return {k: ((after[k] - before[k]) / sketches if sketches else None) for k in before}


def sustained(series: list[tuple[int, int]], trim: int = 2) -> dict:
    """Median and minimum of the per-second scored counts, without the ramp-up and ramp-down seconds."""
    if not series:
        return {"median": None, "min": None, "seconds": 0}
    # Fill seconds in which nothing was scored: they count as zero, not as missing.
    first, last = series[0][0], series[-1][0]
    counts = dict(series)
    filled = [counts.get(s, 0) for s in range(first, last + 1)]
    core = filled[trim:-1] if len(filled) > trim + 2 else filled
    ordered = sorted(core)
    return {"median": float(ordered[len(ordered) // 2]), "min": float(ordered[0]), "seconds": len(filled)}


# --------------------------------------------------------------------------- phases


def warm_up(stack: Stack, opts: LoadOptions, timeout: float = 180.0) -> float:
    """Send small batches until every web and worker process has served and scored; returns seconds taken.

    Several connections at once, so every web process gets requests: each process's first requests
    (lazy imports, connection set-up) must not land in a measurement.
    """
    start = time.monotonic()
    after = stack.max_id()
    connections = 4 * stack.config.web_workers
    tasks = max(4 * stack.config.workers, 2 * connections)
    lg = run_loadgen(
        ["batch", "--url", stack.url, "--key", stack.api_key, "--data", str(opts.data), "--batch", "10",
         "--count", str(10 * tasks), "--duration", "90", "--concurrency", str(connections), "--prefix", f"warm-{after}"],
        timeout=150,
    )  # fmt: skip
    if not lg["accepted"]:
        raise RuntimeError(f"warm-up submissions were not accepted: {lg['errors']}")
    if not stack.wait_scored(after, lg["accepted"], timeout):
        raise RuntimeError(f"workers did not score the warm-up within {timeout:.0f} s:\n{stack.tail('worker')}")
    stack.analyze()
    return time.monotonic() - start


def throughput(stack: Stack, duration: float, opts: LoadOptions, profile_dir: Path | None = None) -> dict:
    """Batches of ``opts.batch`` for ``duration`` s; sketches/s from the first submit until the last is scored."""
    after = stack.max_id()
    args = [
        "batch", "--url", stack.url, "--key", stack.api_key, "--data", str(opts.data),
        "--batch", str(opts.batch), "--duration", str(duration), "--concurrency", str(opts.concurrency),
        "--prefix", f"tp-{after}", "--broker-url", stack.broker_url, "--max-backlog", str(opts.max_backlog),
    ]  # fmt: skip
    profiler = _Profiler(stack, profile_dir, min(duration, 20.0)) if profile_dir else None
    settle_s = stack.settle()
    counters = stack.counters()
    with ResourceSampler(stack) as res:
        if profiler:
            profiler.start()
        lg = run_loadgen(args, timeout=duration + LOADGEN_GRACE_S, sampler=res)
        drained = stack.wait_scored(after, lg["accepted"], opts.drain_timeout)
        if profiler:
            profiler.finish()
    rows = _phase_rows(stack, after)
    series = _scored_per_second(stack, after)
    first = lg["first_send"]
    span = (rows["last_scored"] - first) if (rows["last_scored"] and first) else None
    out = {
        "workers": stack.config.workers,
        "duration_s": duration,
        "submitted": lg["accepted"],
        "rejected": lg["rejected"],
        "http_errors": lg["errors"],
        "scored": rows["scored"],
        "failed": rows["failed"],
        "drained": drained,
        "span_s": span,
        "e2e_per_s": rows["scored"] / span if span else None,
        "sustained_per_s": sustained(series),
        "series": series,
        "batch_intake_ms": lg["intake_ms"],
        "backlog_wait_s": lg.get("backlog_wait_s"),
        "worker_rss_mb": res.per_process("worker"),
        "web_rss_mb": res.per_process("web"),
        "resources": res.report(rows["scored"]),
        "per_sketch": per_sketch(counters, stack.counters(), rows["scored"]),
        "settle_s": settle_s,
    }
    if profiler:
        out["profiles"] = profiler.files
    return out


def latency_step(stack: Stack, rate: float, duration: float, opts: LoadOptions) -> dict:
    """Single sketches at ``rate``/s for ``duration`` s: intake latency (client) and submit-to-scored (DB)."""
    after = stack.max_id()
    args = [
        "single", "--url", stack.url, "--key", stack.api_key, "--data", str(opts.data), "--rate", str(rate),
        "--duration", str(duration), "--concurrency", str(opts.single_concurrency), "--prefix", f"lat-{after}",
    ]  # fmt: skip
    settle_s = stack.settle()
    counters = stack.counters()
    with ResourceSampler(stack) as res:
        lg = run_loadgen(args, timeout=duration + LOADGEN_GRACE_S, sampler=res)
        drained = stack.wait_scored(after, lg["accepted"], min(opts.drain_timeout, max(30.0, duration * 3)))
    rows = _phase_rows(stack, after)
    lat = _latencies(stack, after)
    missing = lg["accepted"] - len(lat)
    span = (rows["last_scored"] - rows["first_submitted"]) if rows["last_scored"] else None
    scored_rate = rows["scored"] / span if span else 0.0
    # Unscored sketches are slower than any scored one: count them at +inf so percentiles stay honest.
    pct = percentiles(lat + [float("inf")] * max(missing, 0))
    saturated = (
        not drained
        or lg["dropped"] > (1 - SATURATED_FRACTION) * lg["offered"]
        or pct["p99"] is None
        or pct["p99"] > SATURATED_P99_S
        or scored_rate < SATURATED_FRACTION * min(rate, lg["achieved_send_rate"])
    )
    return {
        "rate": rate,
        "duration_s": duration,
        "offered": lg["offered"],
        "dropped": lg["dropped"],
        "accepted": lg["accepted"],
        "http_errors": lg["errors"],
        "achieved_send_rate": lg["achieved_send_rate"],
        "scored": rows["scored"],
        "scored_rate": scored_rate,
        "drained": drained,
        "latency_s": pct,
        "intake_ms": lg["intake_ms"],
        "client_lag_ms": lg["client_lag_ms"],
        "saturated": saturated,
        "worker_rss_mb": res.per_process("worker"),
        "web_rss_mb": res.per_process("web"),
        "resources": res.report(rows["scored"]),
        "per_sketch": per_sketch(counters, stack.counters(), rows["scored"]),
        "settle_s": settle_s,
    }


def latency_sweep(stack: Stack, rates: list[float], duration: float, opts: LoadOptions) -> list[dict]:
    """Latency at rising offered rates; stops after the first saturated step."""
    steps = []
    for rate in sorted(rates):
        step = latency_step(stack, rate, duration, opts)
        log.info("latency at %.0f/s: p99 %.3f s, saturated=%s", rate, step["latency_s"]["p99"] or -1, step["saturated"])
        steps.append(step)
        if step["saturated"]:
            break
        if not step["drained"]:
            break
    return steps


def growth(stack: Stack, counts: list[int], duration: float, opts: LoadOptions) -> list[dict]:
    """Throughput with each worker-process count (the worker is restarted for each)."""
    out = []
    for n in counts:
        stack.start_workers(n)
        warm = warm_up(stack, opts)
        res = throughput(stack, duration, opts)
        res["warm_up_s"] = warm
        out.append(res)
    return out


class _Profiler:
    """py-spy recordings of every worker process and one web process during a phase."""

    def __init__(self, stack: Stack, out_dir: Path, seconds: float) -> None:
        self.stack = stack
        self.out_dir = Path(out_dir)
        self.seconds = max(int(seconds), 1)
        self.procs: list[subprocess.Popen] = []
        self.files: list[str] = []

    def start(self) -> None:
        """Attach py-spy to the busy processes (skipped with a warning when py-spy is missing)."""
        import shutil

        pyspy = shutil.which("py-spy")
        if pyspy is None:
            log.warning("py-spy not installed: no profiles")
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        roles = self.stack.process_roles()
        # Pool children do the scoring; granian's workers (not its main process) serve requests.
        targets = [("worker", p) for p in roles["worker"][1:]] + [("web", p) for p in roles["web"][1:2]]
        for role, proc in targets:
            path = self.out_dir / f"{role}-{proc.pid}.txt"
            cmd = [pyspy, "record", "-p", str(proc.pid), "-d", str(self.seconds), "-r", "50", "-f", "raw", "-o", str(path), "--nonblocking"]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.files.append(str(path))

    def finish(self) -> None:
        """Wait (bounded) for the recordings to be written."""
        for proc in self.procs:
            try:
                proc.wait(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
