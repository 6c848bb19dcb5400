"""Scoring benchmark: sketches per second through the shipped model, from bitmaps and from strokes, per runtime.

Run ``python -m bench.model [n] [--runtime litert|keras|both]``; ``sketchwatch bench`` calls :func:`run`
and :func:`compare`. Each figure is the best of ``repeats`` passes (the first batch, which sets up the
graph, is excluded). The 1-minute load average and the rate per CPU-second of this process are reported
too: other processes on a shared machine slow the wall-clock rate down a lot, the CPU-second rate much less.

The runtimes are LiteRT (``model.tflite``, what the workers use) and Keras (TensorFlow). :func:`compare`
measures each in a fresh child process, so neither carries the other's libraries and each child's
peak resident size is the memory that runtime costs to score (model, runtime, rasterizer).
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from models.formats import read_ndjson

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"
ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("keras", "litert")


def _load_strokes(data_dir: Path, n: int) -> list[list[np.ndarray]]:
    """n drawings: the cats, then the other categories in file order, cycled if needed."""
    sources = (read_ndjson(data_dir / "cat.ndjson"), read_ndjson(data_dir / "others.ndjson"))
    base = [d.strokes for d in itertools.islice(itertools.chain(*sources), n)]
    if not base:
        raise FileNotFoundError(f"no drawings found under {data_dir}")
    return [base[i % len(base)] for i in range(n)]


def default_runtime(model_dir: Path | str | None = None) -> str:
    """The runtime a worker would use for this artifact: LiteRT when it has model.tflite, else Keras."""
    from models.artifact import has_tflite

    return "litert" if has_tflite(model_dir) else "keras"


def run(
    batch: int = 256,
    n: int = 8192,
    data_dir: Path | str | None = None,
    model_dir: Path | str | None = None,
    threads: int | None = 2,
    repeats: int = 3,
    verbose: bool = True,
    runtime: str | None = None,
    n_single: int = 2048,
) -> dict:
    """Measure model-only and rasterize+model+score throughput (sketches/s) at the given batch size.

    Also one sketch per call on one thread (``batch1_per_s``, over ``n_single`` sketches), the time to
    import the runtime and load the model (``load_s``), and this process's peak resident size.
    ``runtime`` None means the worker's choice for the artifact (:func:`default_runtime`).
    """
    started = time.perf_counter()
    from models.raster import rasterize_batch

    runtime = runtime or default_runtime(model_dir)
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    drawings = _load_strokes(data_dir, n)
    bitmaps = rasterize_batch(drawings)
    # From here on, what a worker pays before its first task: import the runtime, load, first batch.
    load_started = time.perf_counter()
    if runtime == "keras":
        from models.quiet import quiet_tensorflow

        quiet_tensorflow()
    from models.lite import load_scorer

    scorer = load_scorer(model_dir, runtime, threads)
    scorer.score_bitmaps(bitmaps[:batch], batch_size=batch)  # set the graph up, warm oneDNN / LiteRT
    load_s = time.perf_counter() - load_started
    # One thread, as a worker's pool process runs (SKETCHWATCH_TF_THREADS=1). TF's thread pools cannot
    # change once set, so Keras measures this only in a process started with threads=1.
    single = scorer if threads == 1 else load_scorer(model_dir, runtime, 1) if runtime == "litert" else None
    singles = bitmaps[: min(n_single, n)]

    def model_only() -> None:
        scorer.score_bitmaps(bitmaps, batch_size=batch)

    def from_strokes() -> None:
        scorer.score_drawings(drawings, batch_size=batch)

    def from_strokes_sequential() -> None:
        for start in range(0, n, batch):
            scorer.score_bitmaps(rasterize_batch(drawings[start : start + batch]), batch_size=batch)

    def one_at_a_time() -> None:
        for i in range(len(singles)):
            single.score_bitmaps(singles[i : i + 1])

    def best_rate(fn, count: int) -> tuple[float, float]:
        """(sketches per wall-clock second, sketches per CPU second of this process), best of repeats."""
        walls, cpus = [], []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        return count / min(walls), count / min(cpus)

    result = {
        "runtime": runtime,
        "n": n,
        "batch": batch,
        "threads": threads,
        "model_version": scorer.version,
        "load_average_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "load_s": load_s,
    }
    for name, fn, count in (("model_only", model_only, n), ("from_strokes", from_strokes, n),
                            ("from_strokes_sequential", from_strokes_sequential, n)):  # fmt: skip
        result[f"{name}_per_s"], result[f"{name}_per_cpu_s"] = best_rate(fn, count)
    result["batch1_per_s"] = result["batch1_per_cpu_s"] = None
    if single is not None:
        single.score_bitmaps(singles[:1])
        result["batch1_per_s"], result["batch1_per_cpu_s"] = best_rate(one_at_a_time, len(singles))
    result["n_single"] = len(singles)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["heavy_modules"] = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "ai_edge_litert"})
    result["seconds"] = time.perf_counter() - started
    if verbose:
        print(f"{runtime}: model {result['model_version']}, batch {batch}, {n} sketches, threads {threads}, "
              f"load average {result['load_average_1m']:.2f} on {result['cpu_count']} cores")
        for name, label in (("model_only", "model only (bitmaps ready)"),
                            ("from_strokes", "from strokes (raster overlapped)"),
                            ("from_strokes_sequential", "from strokes (raster, then score)"),
                            ("batch1", "one sketch per call, 1 thread")):  # fmt: skip
            if result[name + "_per_s"] is not None:
                print(f"  {label:34s} {result[name + '_per_s']:8,.0f} sketches/s   "
                      f"({result[name + '_per_cpu_s']:,.0f} per CPU-second)")
        print(f"  load {load_s:.2f} s, process peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


def keras_only_artifact(model_dir: Path | str | None, dest: Path) -> Path:
    """A copy of the artifact without model.tflite (and its model.json record): a worker serves it with Keras."""
    from models.artifact import META_FILE, MODEL_FILE, resolve_model_dir

    src = resolve_model_dir(model_dir)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / MODEL_FILE, dest / MODEL_FILE)
    meta = json.loads((src / META_FILE).read_text(encoding="utf-8"))
    meta.pop("litert", None)
    (dest / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return dest


def worker_ready_seconds(stack, workers: int, timeout: float = 300.0) -> float:
    """Restart the stack's worker with ``workers`` pool processes; seconds from its start until all are ready.

    Ready is the pool process's "scoring process ready" line: model loaded and warmed up, able to score.
    """
    from service.stack import READY_LINE

    stack.stop_workers()
    started = time.monotonic()
    stack.start_workers(workers)
    while stack.log("worker").count(READY_LINE) < workers:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"worker not ready within {timeout:.0f} s:\n{stack.tail('worker')}")
        stack.check_alive()
        time.sleep(0.02)
    return time.monotonic() - started


def run_in_child(runtime: str, timeout: float = 900.0, **kwargs) -> dict:
    """:func:`run` for one runtime in a fresh Python process (its own memory and imports); the result dict."""
    code = (
        "import json, sys\n"
        "from bench.model import run\n"
        f"print(json.dumps(run(runtime={runtime!r}, verbose=False, **json.loads(sys.argv[1]))))\n"
    )
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, capture_output=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"model bench ({runtime}) failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def compare(runtimes: tuple[str, ...] = RUNTIMES, threads: int | None = 2, **kwargs) -> dict:
    """Each runtime in its own child process, then the LiteRT/Keras ratios of the rates.

    A runtime that could not measure one sketch per call on one thread in that process (Keras with
    ``threads`` > 1) measures it in a second child started with one thread.
    """
    out: dict = {}
    for name in runtimes:
        out[name] = run_in_child(name, threads=threads, **kwargs)
        if out[name]["batch1_per_s"] is None:
            one = run_in_child(name, threads=1, **{**kwargs, "n": min(kwargs.get("n", 8192), 2048)})
            out[name]["batch1_per_s"], out[name]["batch1_per_cpu_s"] = one["batch1_per_s"], one["batch1_per_cpu_s"]
    if "keras" in out and "litert" in out:
        k, lt = out["keras"], out["litert"]
        out["ratio"] = {f"{name}_per_s": lt[f"{name}_per_s"] / k[f"{name}_per_s"]
                        for name in ("model_only", "from_strokes", "batch1")}  # fmt: skip
        out["ratio"]["model_only_per_cpu_s"] = lt["model_only_per_cpu_s"] / k["model_only_per_cpu_s"]
    return out


def comparison_lines(comparison: dict) -> list[str]:
    """A markdown table of :func:`compare`'s result (one column per runtime, a ratio column when both ran)."""
    names = [n for n in RUNTIMES if n in comparison]
    ratio = comparison.get("ratio")
    head = "| in one process | " + " | ".join(names) + (" | litert / keras |" if ratio else " |")
    lines = [head, "|---" * (len(names) + 1 + bool(ratio)) + "|"]
    rows = (("model only, batch 256 (sketches/s)", "model_only_per_s", ",.0f"),
            ("model only per CPU-second", "model_only_per_cpu_s", ",.0f"),
            ("from strokes, batch 256 (sketches/s)", "from_strokes_per_s", ",.0f"),
            ("one sketch per call, 1 thread (sketches/s)", "batch1_per_s", ",.0f"),
            ("import + load + first batch (s)", "load_s", ".2f"),
            ("bench process peak RSS (MB)", "peak_rss_mb", ",.0f"))  # fmt: skip
    for label, key, spec in rows:
        cells = [format(comparison[n][key], spec) for n in names]
        extra = ""
        if ratio:
            extra = f" {ratio[key]:.2f}x |" if key in ratio else " |"
        lines.append(f"| {label} | " + " | ".join(cells) + " |" + extra)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: optional n (default 8192) and ``--runtime litert|keras|both`` (default both)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    runtime = "both"
    if "--runtime" in argv:
        i = argv.index("--runtime")
        runtime = argv[i + 1]
        del argv[i : i + 2]
    n = int(argv[0]) if argv else 8192
    if runtime == "both":
        print("\n".join(comparison_lines(compare(n=n))))
    else:
        run(n=n, runtime=runtime)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
