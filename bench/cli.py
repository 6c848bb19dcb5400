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
    # Scoring runtime of the workers: "litert" (model.tflite), "keras", or "both" (each measured, side by side).
    runtime: str = "both"

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

    def runtimes(self) -> list[str]:
        """The runtimes to measure, the one of the full end-to-end run first (LiteRT when both)."""
        return ["litert", "keras"] if self.runtime == "both" else [self.runtime]

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

    log.info("model ceiling (in-process, batch %d): %s", opts.model_batch, ", ".join(opts.runtimes()))
    with _phase(result, "model ceiling"):
        _run_model(opts, result)
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


def _model_kwargs(opts: BenchOptions) -> dict:
    kwargs = {"batch": opts.model_batch, "model_dir": os.environ.get("SKETCHWATCH_MODEL_DIR") or None}
    if opts.quick:
        kwargs.update(n=2048, repeats=1, n_single=512)  # a tiny load for the smoke test
    return kwargs


def _run_model(opts: BenchOptions, result: dict) -> None:
    """Model-only figures of each runtime, each in a child process; the first runtime's are the headline."""
    from bench import model as model_bench

    runtimes = opts.runtimes()
    comparison = model_bench.compare(tuple(runtimes), **_model_kwargs(opts))
    model = dict(comparison[runtimes[0]], source="bench.model")
    result["model"] = model
    result["model_ceiling_per_s"] = model.get("from_strokes_per_s")
    result["model_only_per_s"] = model.get("model_only_per_s")
    result["runtimes"] = {name: {k: comparison[name][k] for k in _MODEL_FIGURES} for name in runtimes}
    if "ratio" in comparison:
        result["runtime_ratio"] = comparison["ratio"]
    for name in runtimes:
        log.info("  %s: model only %s/s, from strokes %s/s, one sketch per call %s/s", name,
                 _num(comparison[name]["model_only_per_s"]), _num(comparison[name]["from_strokes_per_s"]),
                 _num(comparison[name]["batch1_per_s"]))  # fmt: skip


_MODEL_FIGURES = ("model_only_per_s", "model_only_per_cpu_s", "from_strokes_per_s", "batch1_per_s", "load_s",
                  "peak_rss_mb")


@contextmanager
def _runtime_model_dir(runtime: str):
    """The artifact directory whose workers score with ``runtime`` (a Keras-only copy for "keras")."""
    import tempfile

    from bench import model as model_bench
    from models.artifact import has_tflite

    configured = os.environ.get("SKETCHWATCH_MODEL_DIR") or None
    if runtime == "litert":
        if not has_tflite(configured):
            raise RuntimeError("the model has no model.tflite: add it with `sketchwatch export`, "
                               "or use --runtime keras")
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="sketchwatch-bench-keras-") as tmp:
        yield str(model_bench.keras_only_artifact(configured, Path(tmp)))


def _run_e2e(opts: BenchOptions, load, result: dict) -> None:
    runtimes = opts.runtimes()
    with _runtime_model_dir(runtimes[0]) as model_dir:
        _run_e2e_full(opts, load, result, model_dir, runtimes[0])
    for runtime in runtimes[1:]:
        with _phase(result, f"end to end ({runtime})"), _runtime_model_dir(runtime) as model_dir:
            _run_e2e_side(opts, load, result, model_dir, runtime)
    if "keras" in result.get("runtimes", {}) and "litert" in result.get("runtimes", {}):
        k, lt = result["runtimes"]["keras"], result["runtimes"]["litert"]
        if k.get("e2e_per_s") and lt.get("e2e_per_s"):
            result.setdefault("runtime_ratio", {})["e2e_per_s"] = lt["e2e_per_s"] / k["e2e_per_s"]


def _worker_figures(result: dict, runtime: str, ready_s: float, phases: list[dict]) -> None:
    """Ready time and pool memory of one runtime's workers into ``result['runtimes']``."""
    worker = [mb for p in phases for mb in p["worker_rss_mb"]]
    entry = result.setdefault("runtimes", {}).setdefault(runtime, {})
    entry["worker_ready_s"] = ready_s
    entry["worker_rss_mb"] = max(worker) if worker else None
    entry["e2e_per_s"] = phases[0]["e2e_per_s"]
    entry["e2e_sketches"] = phases[0].get("scored")


def _run_e2e_side(opts: BenchOptions, load, result: dict, model_dir: str, runtime: str) -> None:
    """Another runtime's workers: ready time, then the main throughput phase only."""
    from bench import e2e
    from bench import model as model_bench
    from bench.stack import Stack, StackConfig

    config = StackConfig(
        workers=opts.workers, web_workers=opts.web_workers, web_threads=opts.web_threads,
        tf_threads=opts.tf_threads, worker_batch_size=opts.worker_batch_size, model_dir=model_dir,
    )  # fmt: skip
    with Stack(config) as stack:
        ready_s = model_bench.worker_ready_seconds(stack, opts.workers)
        log.info("%s workers ready in %.2f s; throughput: batches of %d for %.0f s", runtime, ready_s, opts.batch,
                 opts.duration)  # fmt: skip
        e2e.warm_up(stack, load)
        main = e2e.throughput(stack, opts.duration, load)
        log.info("  %s sketches/s end to end (%s)", _num(main["e2e_per_s"]), runtime)
    _worker_figures(result, runtime, ready_s, [main])


def _run_e2e_full(opts: BenchOptions, load, result: dict, model_dir: str | None, runtime: str) -> None:
    from bench import e2e
    from bench import model as model_bench
    from bench.stack import Stack, StackConfig

    config = StackConfig(
        workers=opts.workers, web_workers=opts.web_workers, web_threads=opts.web_threads,
        tf_threads=opts.tf_threads, worker_batch_size=opts.worker_batch_size, model_dir=model_dir,
    )  # fmt: skip
    with Stack(config) as stack:
        log.info("stack up: %s, %d web x %d threads, %d workers", stack.url, opts.web_workers, opts.web_threads, opts.workers)
        ready_s = model_bench.worker_ready_seconds(stack, opts.workers)
        log.info("%s workers ready in %.2f s", runtime, ready_s)
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
    _worker_figures(result, runtime, ready_s, [main, *result["latency_sweep"], *result["growth"]])
    result["worker_ready_s"] = ready_s
    result["runtime"] = runtime


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
    result["bytes_per_row"] = top.get("bytes_per_row")


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


def runtime_lines(result: dict) -> list[str]:
    """Markdown: the runtimes side by side (model-only figures, worker ready time and memory, end to end)."""
    runtimes = [n for n in ("litert", "keras") if n in result.get("runtimes", {})]
    if not runtimes:
        return []
    ratio = result.get("runtime_ratio") or {}
    both = len(runtimes) == 2
    lines = ["", "### Scoring runtimes", "",
             "| | " + " | ".join(runtimes) + (" | litert / keras |" if both else " |"),
             "|---" * (len(runtimes) + 1 + both) + "|"]  # fmt: skip
    rows = (("model only, batch 256 (sketches/s)", "model_only_per_s", ",.0f"),
            ("from strokes, batch 256 (sketches/s)", "from_strokes_per_s", ",.0f"),
            ("one sketch per call, 1 thread (sketches/s)", "batch1_per_s", ",.0f"),
            ("model process: import + load + first batch (s)", "load_s", ".2f"),
            ("model process peak RSS (MB)", "peak_rss_mb", ",.0f"),
            ("worker start to ready (s)", "worker_ready_s", ".2f"),
            ("worker process peak RSS (MB)", "worker_rss_mb", ",.0f"),
            ("end to end, batches (sketches/s)", "e2e_per_s", ",.0f"))  # fmt: skip
    for label, key, spec in rows:
        cells = [_num(result["runtimes"][n].get(key), spec) for n in runtimes]
        extra = ""
        if both:
            extra = f" {ratio[key]:.2f}x |" if ratio.get(key) else " |"
        lines.append(f"| {label} | " + " | ".join(cells) + " |" + extra)
    return lines


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
@click.option("--runtime", type=click.Choice(["litert", "keras", "both"]), default=None,
              help="Scoring runtime of the workers; 'both' measures each (model, ready time, memory, end-to-end "
                   "throughput) and prints them side by side, with the full run on LiteRT [both].")
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
        click.echo("\n".join(runtime_lines(result)))
        if result.get("figures"):
            click.echo("figures: " + ", ".join(result["figures"]))
        click.echo(f"elapsed: {result['elapsed_s']:.0f} s")
    if result["errors"]:
        for err in result["errors"]:
            click.echo(f"error: {err}", err=True)
        raise SystemExit(1)


if __name__ == "__main__":
    bench_command(prog_name="python -m bench.cli")
