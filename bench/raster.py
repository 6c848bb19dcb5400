"""Rasterizer benchmark: single-core throughput on the shared Quick Draw strokes, plus fidelity.

Run ``python -m bench.raster [n]``; ``sketchwatch bench`` calls :func:`run`.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np

from models.formats import read_ndjson
from models.raster import rasterize, rasterize_batch

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def _load_strokes(data_dir: Path, n: int) -> list[list[np.ndarray]]:
    """Up to n drawings: the cats, then other categories, streamed in file order."""
    sources = (read_ndjson(data_dir / "cat.ndjson"), read_ndjson(data_dir / "others.ndjson"))
    return [d.strokes for d in itertools.islice(itertools.chain(*sources), n)]


def fidelity(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, float]:
    """Mean Pearson correlation and mean absolute difference against the official bitmaps (25 cat pairs)."""
    cats = [d.strokes for d in read_ndjson(data_dir / "cat.ndjson")]
    official = np.load(data_dir / "cat_bitmaps_28.npy", mmap_mode="r")[: len(cats)].reshape(-1, 28, 28)
    ours = rasterize_batch(cats).astype(np.float64)
    ref = official.astype(np.float64)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, ref)]
    return {
        "pairs": len(cats),
        "mean_corr": float(np.mean(corr)),
        "min_corr": float(np.min(corr)),
        "mean_abs_diff": float(np.abs(ours - ref).mean()),
    }


def run(n: int = 5000, data_dir: Path | str | None = None, verbose: bool = True) -> dict:
    """Measure rasterization throughput (drawings/s, one core, first call excluded) and fidelity."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    base = _load_strokes(data_dir, n)
    if not base:
        raise FileNotFoundError(f"no drawings found under {data_dir}")
    drawings = [base[i % len(base)] for i in range(n)]

    start = time.perf_counter()
    rasterize_batch(drawings[:8])  # compiles (or loads the cached kernel)
    warmup = time.perf_counter() - start

    start = time.perf_counter()
    rasterize_batch(drawings)
    batch_s = time.perf_counter() - start

    singles = drawings[: min(n, 1000)]
    start = time.perf_counter()
    for strokes in singles:
        rasterize(strokes)
    single_s = time.perf_counter() - start

    result = {
        "n": n,
        "distinct_drawings": len(base),
        "warmup_s": warmup,
        "batch_s": batch_s,
        "batch_drawings_per_s": n / batch_s,
        "single_drawings_per_s": len(singles) / single_s,
        **{f"fidelity_{k}": v for k, v in fidelity(data_dir).items()},
    }
    if verbose:
        print(f"rasterize_batch: {result['batch_drawings_per_s']:,.0f} drawings/s ({n} drawings, {batch_s:.3f} s, one core)")
        print(f"rasterize (one at a time): {result['single_drawings_per_s']:,.0f} drawings/s")
        print(f"first call: {warmup:.2f} s (excluded)")
        print(
            f"fidelity on {result['fidelity_pairs']} official pairs: mean r = {result['fidelity_mean_corr']:.5f} "
            f"(min {result['fidelity_min_corr']:.5f}), mean |diff| = {result['fidelity_mean_abs_diff']:.3f} grey levels"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: optional argument n (default 5000)."""
    argv = sys.argv[1:] if argv is None else argv
    run(int(argv[0]) if argv else 5000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
