"""``sketchwatch bench``: model ceiling, end-to-end throughput, latency, memory and dashboard timings in one run.

Also runnable as ``python -m bench.cli`` (the smoke test does that, so TensorFlow never loads in pytest).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import click

from bench import report

log = logging.getLogger("bench")


@dataclass
class BenchOptions:
    """Everything one bench run does; :meth:`quick_options` shrinks it to a smoke test."""

    duration: float = 60.0
    workers: int = 2
    web_workers: int = 2
    web_threads: int = 4
    rate: float = 200.0
    rows: int = 100_000
    skip_e2e: bool = False
    skip_dashboard: bool = False
    growth: list[int] = field(default_factory=lambda: [1, 2, 4])
    growth_duration: float = 20.0
    rates: list[float] | None = None
    step_duration: float = 10.0
    latency_duration: float = 20.0
    batch: int = 100
    concurrency: int = 2
    max_backlog: int = 3000
    tf_threads: int = 1
    worker_batch_size: int | None = None
    model_batch: int = 256
    repeat: int = 5
    quick: bool = False
    profile_dir: Path | None = None

    @classmethod
    def quick_options(cls, **overrides) -> BenchOptions:
        """A tiny load that still exercises every phase and produces every figure."""
        opts = cls(
            duration=4.0, workers=1, web_workers=1, rate=20.0, rows=2000, growth=[1, 2], growth_duration=3.0,
            rates=[10.0, 20.0], step_duration=3.0, latency_duration=3.0, max_backlog=500, repeat=2, quick=True,
        )  # fmt: skip
        for k, v in overrides.items():
            setattr(opts, k, v)
        return opts

    def sweep_rates(self) -> list[float]:
        """Offered rates of the latency sweep: around ``rate`` up to 8x (the headline rate is always run)."""
        if self.rates:
            return sorted(set(self.rates) | {self.rate})
        return sorted({self.rate / 4, self.rate / 2, self.rate, self.rate * 2, self.rate * 4, self.rate * 8})

    def dashboard_levels(self) -> list[int]:
        """Row counts to time the dashboard at: 10^4, 10^5, 10^6 up to ``rows`` (plus ``rows`` itself)."""
        levels = [10**k for k in range(4, 7) if 10**k <= self.rows]
        if self.rows not in levels:
            levels.append(self.rows)
        return sorted(levels)


def run_bench(opts: BenchOptions) -> dict:
    """Run every phase and return the full result (headline figures at the top level).

    A phase that fails is recorded under ``errors`` and the run goes on with the next one, so one
    broken step does not throw away minutes of measurements.
    """
    from bench import e2e

    started = time.monotonic()
    result: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_at_start": os.getloadavg()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()},
        "errors": [],
    }  # fmt: skip
    load = e2e.LoadOptions(batch=opts.batch, concurrency=opts.concurrency, max_backlog=opts.max_backlog)

    log.info("model ceiling (in-process, batch %d)", opts.model_batch)
    with _phase(result, "model ceiling"):
        model = e2e.model_ceiling(batch=opts.model_batch, quick=opts.quick)
        result["model"] = model
        result["model_ceiling_per_s"] = model.get("from_strokes_per_s")
        result["model_only_per_s"] = model.get("model_only_per_s")
    if not opts.skip_e2e:
        with _phase(result, "end to end"):
            _run_e2e(opts, load, result)
    if not opts.skip_dashboard:
        with _phase(result, "dashboard"):
            _run_dashboard(opts, result)
    result["targets"] = report.targets(result)
    result["machine"]["load_at_end"] = os.getloadavg()[0]
    result["elapsed_s"] = time.monotonic() - started
    return result


@contextmanager
def _phase(result: dict, name: str):
    """Record a failing phase in ``result['errors']`` instead of ending the run."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - reported in the result and on stderr
        log.exception("%s failed", name)
        result["errors"].append(f"{name}: {type(exc).__name__}: {exc}")


def _run_e2e(opts: BenchOptions, load, result: dict) -> None:
    from bench import e2e
    from bench.stack import Stack, StackConfig

    config = StackConfig(
        workers=opts.workers, web_workers=opts.web_workers, web_threads=opts.web_threads,
        tf_threads=opts.tf_threads, worker_batch_size=opts.worker_batch_size,
    )  # fmt: skip
    with Stack(config) as stack:
        log.info("stack up: %s, %d web x %d threads, %d workers", stack.url, opts.web_workers, opts.web_threads, opts.workers)
        result["warm_up_s"] = e2e.warm_up(stack, load)
        log.info("throughput: batches of %d for %.0f s", opts.batch, opts.duration)
        main = e2e.throughput(stack, opts.duration, load, opts.profile_dir)
        main["batch"] = opts.batch
        result["throughput"] = main
        result["growth"] = [main]
        log.info("  %s sketches/s end to end", _num(main["e2e_per_s"]))
        log.info("latency sweep: %s /s", ", ".join(f"{r:g}" for r in opts.sweep_rates()))
        result["latency_sweep"] = []
        with _phase(result, "latency sweep"):
            _sweep(stack, opts, load, result["latency_sweep"])
        runs = {opts.workers: main}
        for n in opts.growth:
            if n in runs:
                continue
            log.info("growth: %d worker processes for %.0f s", n, opts.growth_duration)
            with _phase(result, f"growth with {n} workers"):
                runs[n] = e2e.growth(stack, [n], opts.growth_duration, load)[0]
                log.info("  %s sketches/s", _num(runs[n]["e2e_per_s"]))
        result["growth"] = [runs[n] for n in sorted(runs)]
    _headline_e2e(result)


def _run_dashboard(opts: BenchOptions, result: dict) -> None:
    from bench import dashboard
    from bench.stack import Stack, StackConfig

    levels = opts.dashboard_levels()
    log.info("dashboard: seeding %s rows", ", ".join(f"{n:,}" for n in levels))
    with Stack(StackConfig(workers=0, web_workers=opts.web_workers, web_threads=opts.web_threads)) as stack:
        result["dashboard"] = dashboard.run(stack, levels, repeat=opts.repeat)
    top = result["dashboard"][-1]
    result["dashboard_ms"] = {name: round(e["max_ms"], 1) for name, e in top["endpoints"].items()}
    result["dashboard_rows"] = top["rows"]


def _sweep(stack, opts: BenchOptions, load, steps: list[dict]) -> None:
    """Rising offered rates into ``steps``; at saturation, only the headline rate is still measured."""
    from bench import e2e

    pending = opts.sweep_rates()
    while pending:
        rate = pending.pop(0)
        duration = opts.latency_duration if rate == opts.rate else opts.step_duration
        step = e2e.latency_step(stack, rate, duration, load)
        steps.append(step)
        p99 = step["latency_s"]["p99"]
        log.info("  %g/s: p99 %s s, intake p99 %s ms%s", rate, _num(p99, ".3f"), _num(step["intake_ms"]["p99"], ".1f"),
                 " (saturated)" if step["saturated"] else "")  # fmt: skip
        if step["saturated"]:
            # Higher rates would only saturate harder; the headline rate is still needed for the targets.
            pending = [opts.rate] if rate < opts.rate else []


def _headline_e2e(result: dict) -> None:
    main = result["throughput"]
    ceiling = result.get("model_ceiling_per_s")
    result["e2e_per_s"] = main["e2e_per_s"]
    result["e2e_ratio"] = main["e2e_per_s"] / ceiling if ceiling and main["e2e_per_s"] else None
    rate = result["options"]["rate"]
    lat = next((s for s in result["latency_sweep"] if s["rate"] == rate), None)
    if lat is not None:
        result["latency"] = lat
        result["latency_p50_s"] = _clean(lat["latency_s"]["p50"])
        result["latency_p95_s"] = _clean(lat["latency_s"]["p95"])
        result["latency_p99_s"] = _clean(lat["latency_s"]["p99"])
        result["intake_p50_ms"] = lat["intake_ms"]["p50"]
        result["intake_p99_ms"] = lat["intake_ms"]["p99"]
    phases = [main, *result["latency_sweep"], *result["growth"]]
    worker = [mb for p in phases for mb in p["worker_rss_mb"]]
    web = [mb for p in phases for mb in p["web_rss_mb"]]
    result["worker_rss_mb"] = max(worker) if worker else None
    result["web_rss_mb"] = max(web) if web else None


def _clean(value):
    """JSON has no infinity: an unmeasurable percentile (sketches never scored) becomes None."""
    return None if value is None or (isinstance(value, float) and math.isinf(value)) else value


def _num(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _int_list(_ctx, _param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _float_list(_ctx, _param, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@click.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (progress goes to stderr).")
@click.option("--quick", is_flag=True, help="Tiny load for a smoke test (every phase and figure, no meaningful numbers).")
@click.option("--duration", type=click.FloatRange(min=1), default=None, help="Seconds of batch submissions in the main run [60].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Celery worker processes in the main run [2].")
@click.option("--web-workers", type=click.IntRange(min=1), default=None, help="Web server (granian) processes [2].")
@click.option("--web-threads", type=click.IntRange(min=1), default=None, help="Request threads per web process [4].")
@click.option("--rate", type=click.FloatRange(min=0.1), default=None, help="Offered single sketches/s for the latency target [200].")
@click.option("--rows", type=click.IntRange(min=100), default=None, help="Largest dashboard table; 1000000 for the 10^6 target [100000].")
@click.option("--skip-e2e", is_flag=True, help="Skip the live-stack phases (throughput, latency, growth).")
@click.option("--skip-dashboard", is_flag=True, help="Skip the dashboard seeding and timing.")
@click.option("--growth", callback=_int_list, default=None, help="Worker-process counts to compare [1,2,4].")
@click.option("--growth-duration", type=click.FloatRange(min=1), default=None, help="Seconds per growth run [20].")
@click.option("--rates", callback=_float_list, default=None, help="Offered rates of the latency sweep [rate/4 .. rate*8].")
@click.option("--step-duration", type=click.FloatRange(min=1), default=None, help="Seconds per latency-sweep step [10].")
@click.option("--tf-threads", type=click.IntRange(min=1), default=None, help="TensorFlow threads per worker process [1].")
@click.option("--worker-batch-size", type=click.IntRange(min=1), default=None, help="Ids per scoring task (SKETCHWATCH_WORKER_BATCH_SIZE).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Connections sending batches [2].")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the figures (PNG) and the raw result (bench-result.json) into this directory.")  # fmt: skip
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="py-spy recordings of workers and web during the main run (raw collapsed stacks).")  # fmt: skip
def bench_command(as_json: bool, quick: bool, plot_dir: Path | None, **given) -> None:
    """Measure model ceiling, end-to-end throughput, latency, memory and dashboard times on this machine."""
    logging.basicConfig(level=logging.INFO, format="[bench %(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("alembic", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = {k: v for k, v in given.items() if v is not None and v is not False}
    if given.get("skip_e2e"):
        overrides["skip_e2e"] = True
    if given.get("skip_dashboard"):
        overrides["skip_dashboard"] = True
    opts = BenchOptions.quick_options(**overrides) if quick else BenchOptions(**overrides)
    result = _json_safe(run_bench(opts))
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
        # One file per kind of run, so a dashboard-only run does not overwrite an end-to-end one.
        kind = "-dashboard" if opts.skip_e2e else "-e2e" if opts.skip_dashboard else ""
        (plot_dir / f"bench-result{kind}.json").write_text(json.dumps(result, indent=1))
        result["figures"] = [str(p) for p in report.plot(result, plot_dir)]
    if as_json:
        out = {**report.summary(result), **result}
        click.echo(json.dumps(out))
    else:
        click.echo(report.markdown(result))
        if result.get("figures"):
            click.echo("figures: " + ", ".join(result["figures"]))
        click.echo(f"elapsed: {result['elapsed_s']:.0f} s")
    if result["errors"]:
        for err in result["errors"]:
            click.echo(f"error: {err}", err=True)
        raise SystemExit(1)


if __name__ == "__main__":
    bench_command(prog_name="python -m bench.cli")
