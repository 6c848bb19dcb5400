"""Scoring benchmark: sketches per second through the shipped model, from bitmaps and from strokes.

Run ``python -m bench.model [n]``; ``sketchwatch bench`` can call :func:`run`. Each figure is the best
of ``repeats`` passes (the first batch, which traces the TF graph, is excluded). The 1-minute load
average and the rate per CPU-second of this process are reported too: other processes on a shared
machine slow the wall-clock rate down a lot, the CPU-second rate much less.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

from models.formats import read_ndjson

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def _load_strokes(data_dir: Path, n: int) -> list[list[np.ndarray]]:
    """n drawings: the cats, then the other categories in file order, cycled if needed."""
    sources = (read_ndjson(data_dir / "cat.ndjson"), read_ndjson(data_dir / "others.ndjson"))
    base = [d.strokes for d in itertools.islice(itertools.chain(*sources), n)]
    if not base:
        raise FileNotFoundError(f"no drawings found under {data_dir}")
    return [base[i % len(base)] for i in range(n)]


def run(
    batch: int = 256,
    n: int = 8192,
    data_dir: Path | str | None = None,
    model_dir: Path | str | None = None,
    threads: int | None = 2,
    repeats: int = 3,
    verbose: bool = True,
) -> dict:
    """Measure model-only and rasterize+model+score throughput (sketches/s) at the given batch size."""
    from models.raster import rasterize_batch
    from models.scoring import Scorer

    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    drawings = _load_strokes(data_dir, n)
    scorer = Scorer.load(model_dir, threads=threads)
    bitmaps = rasterize_batch(drawings)
    scorer.score_bitmaps(bitmaps[:batch], batch_size=batch)  # trace the graph, warm oneDNN

    def model_only() -> None:
        scorer.score_bitmaps(bitmaps, batch_size=batch)

    def from_strokes() -> None:
        scorer.score_drawings(drawings, batch_size=batch)

    def from_strokes_sequential() -> None:
        for start in range(0, n, batch):
            scorer.score_bitmaps(rasterize_batch(drawings[start : start + batch]), batch_size=batch)

    def best_rate(fn) -> tuple[float, float]:
        """(sketches per wall-clock second, sketches per CPU second of this process), best of repeats."""
        walls, cpus = [], []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        return n / min(walls), n / min(cpus)

    result = {
        "n": n,
        "batch": batch,
        "threads": threads,
        "model_version": scorer.version,
        "load_average_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    for name, fn in (("model_only", model_only), ("from_strokes", from_strokes),
                     ("from_strokes_sequential", from_strokes_sequential)):
        result[f"{name}_per_s"], result[f"{name}_per_cpu_s"] = best_rate(fn)
    if verbose:
        print(f"model {result['model_version']}, batch {batch}, {n} sketches, TF threads {threads}, "
              f"load average {result['load_average_1m']:.2f} on {result['cpu_count']} cores")
        for name, label in (("model_only", "model only (bitmaps ready)"),
                            ("from_strokes", "from strokes (raster overlapped)"),
                            ("from_strokes_sequential", "from strokes (raster, then score)")):
            print(f"{label:34s} {result[name + '_per_s']:8,.0f} sketches/s   "
                  f"({result[name + '_per_cpu_s']:,.0f} per CPU-second)")
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: optional argument n (default 8192)."""
    argv = sys.argv[1:] if argv is None else argv
    run(n=int(argv[0]) if argv else 8192)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
