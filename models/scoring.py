"""Anomaly scores from the autoencoder: the score formula, batched scoring, and the :class:`Scorer` facade.

Importing this module is cheap: TensorFlow is imported inside the functions that need it, so the web
process (which reads model metadata only) never loads it.

The score is the ink-normalised squared reconstruction error (see :data:`SCORE_DEFINITION`). The
model is trained to reconstruct cats and to turn non-cats into a blank image, so a cat scores near 0
and a drawing the model refuses to reproduce scores near 1.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.autoencoder import SIDE, coerce_config, crop_output, to_model_input

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256
# oneDNN builds and caches its kernels per input shape. Arbitrary batch sizes pay that on each new
# size and grow the process by ~100 MB over a few hundred sizes; multiples of this step do neither.
BATCH_STEP = 16
# Keeps blank-vs-blank at the maximum score (an empty drawing is not a cat) and avoids 0/0.
_EPS = 1e-3


def ink_normalized_error(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """sum((x - r)^2) / (sum(x^2) + sum(r^2)) per image, x and r in [0, 1]; result in [0, 1]."""
    axes = tuple(range(1, x.ndim))
    err = np.square(x - r).sum(axis=axes, dtype=np.float64)
    ink = np.square(x).sum(axis=axes, dtype=np.float64) + np.square(r).sum(axis=axes, dtype=np.float64)
    return ((err + _EPS) / (ink + _EPS)).astype(np.float32)


def ink_ratio_error(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """sum((x - r)^2) / (sum(x) + sum(r)) per image (the variant measured in the shared notes)."""
    axes = tuple(range(1, x.ndim))
    err = np.square(x - r).sum(axis=axes, dtype=np.float64)
    ink = x.sum(axis=axes, dtype=np.float64) + r.sum(axis=axes, dtype=np.float64)
    return ((err + _EPS) / (ink + _EPS)).astype(np.float32)


def mean_squared_error(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Plain per-image mean squared reconstruction error (baseline; ranks simple shapes as cats)."""
    axes = tuple(range(1, x.ndim))
    return np.square(x - r).mean(axis=axes, dtype=np.float64).astype(np.float32)


SCORE_FORMULAS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "ink_normalized_sq_error": ink_normalized_error,
    "ink_ratio_sq_error": ink_ratio_error,
    "mse": mean_squared_error,
}
DEFAULT_FORMULA = "ink_normalized_sq_error"
SCORE_DEFINITION = (
    "score = (sum((x - r)^2) + 1e-3) / (sum(x^2) + sum(r^2) + 1e-3) over the 28x28 bitmap, x = input and "
    "r = reconstruction scaled to [0, 1]. 0 = perfect reconstruction (cat-like), 1 = the model erased the "
    "drawing (not a cat); an empty drawing scores 1. Higher = more anomalous."
)

_tf_configured = False


def configure_tensorflow(threads: int | None = None) -> None:
    """Set TF's thread pools (and enable oneDNN kernels) before the first TF op; later calls only warn."""
    global _tf_configured
    # oneDNN convolutions are ~7x faster here for 1-4 channel layers, but only if set before TF loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not threads:
        _tf_configured = True
        return
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (threads, threads):
        _tf_configured = True
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # TF's runtime is already up: thread pools can no longer change in this process.
        log.warning("TensorFlow already initialised; cannot set its thread count to %d", threads)
    _tf_configured = True


_INFER_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_fn(model):
    """One tf.function per model with a fixed (None, S, S, 1) signature: traced once, no predict() leak."""
    fn = _INFER_CACHE.get(model)
    if fn is None:
        import tensorflow as tf

        size = int(model.input_shape[1])
        spec = tf.TensorSpec([None, size, size, 1], tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
        _INFER_CACHE[model] = fn
    return fn


def reconstruct(model, bitmaps_uint8: np.ndarray, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Run the model: return (inputs, reconstructions) as (N, 28, 28) float32 in [0, 1]."""
    if not _tf_configured:
        configure_tensorflow()
    size = int(model.input_shape[1])
    x = to_model_input(bitmaps_uint8, size)
    fn = _inference_fn(model)
    recon = np.empty((x.shape[0], SIDE, SIDE), dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        rows = chunk.shape[0]
        recon[start : start + rows] = crop_output(fn(pad_rows(chunk, BATCH_STEP)).numpy()[:rows], size)
    return crop_output(x, size), recon


def pad_rows(batch: np.ndarray, step: int) -> np.ndarray:
    """``batch`` with blank rows appended up to the next multiple of ``step``."""
    missing = -batch.shape[0] % step
    if not missing:
        return batch
    return np.concatenate([batch, np.zeros((missing, *batch.shape[1:]), dtype=batch.dtype)])


def score_batch(
    model, bitmaps_uint8: np.ndarray, formula: str = DEFAULT_FORMULA, batch_size: int = DEFAULT_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Score (N, 28, 28) uint8 bitmaps: return (scores float32 (N,), reconstructions uint8 (N, 28, 28))."""
    if formula not in SCORE_FORMULAS:
        raise ValueError(f"unknown score formula {formula!r}; known: {sorted(SCORE_FORMULAS)}")
    x, recon = reconstruct(model, bitmaps_uint8, batch_size)
    scores = SCORE_FORMULAS[formula](x, recon)
    recon_u8 = np.clip(np.rint(recon * 255.0), 0, 255).astype(np.uint8)
    return scores, recon_u8


class Scorer:
    """A loaded model plus its metadata: scores bitmaps or stroke drawings (higher = more anomalous)."""

    def __init__(self, model, meta: dict[str, Any], model_dir: Path | None = None):
        self.model = model
        self.meta = meta
        self.model_dir = model_dir
        self.formula = meta.get("score", {}).get("formula", DEFAULT_FORMULA)
        if self.formula not in SCORE_FORMULAS:
            raise ValueError(f"model.json names an unknown score formula {self.formula!r}")
        coerce_config(meta.get("architecture"))  # fail early on a config this code cannot build

    @classmethod
    def load(cls, model_dir: str | Path | None = None, threads: int | None = None) -> Scorer:
        """Load an artifact directory (None = the shipped model); ``threads`` caps TF's thread pools."""
        from models.artifact import load_artifact, shipped_model_dir

        configure_tensorflow(threads)
        path = Path(model_dir) if model_dir is not None else shipped_model_dir()
        model, meta = load_artifact(path)
        return cls(model, meta, path)

    def score_bitmaps(self, bitmaps_uint8: np.ndarray, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(N, 28, 28) uint8 -> (scores (N,), reconstructions (N, 28, 28) uint8)."""
        return score_batch(self.model, bitmaps_uint8, self.formula, batch_size)

    def score_drawings(self, drawings: Sequence[Sequence], batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Rasterize drawings (lists of (2, n) strokes in the 0..255 box) and score them.

        Beyond one batch, the next batch is rasterized in a helper thread while TF scores the
        current one (TF releases the GIL while it computes), so the two costs overlap.
        """
        from concurrent.futures import ThreadPoolExecutor

        from models.raster import rasterize_batch

        if len(drawings) <= batch_size:
            return self.score_bitmaps(rasterize_batch(drawings), batch_size)
        chunks = [drawings[i : i + batch_size] for i in range(0, len(drawings), batch_size)]
        scores, recons = [], []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rasterize") as pool:
            pending = pool.submit(rasterize_batch, chunks[0])
            for i in range(len(chunks)):
                bitmaps = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(rasterize_batch, chunks[i + 1])
                s, r = self.score_bitmaps(bitmaps, batch_size)
                scores.append(s)
                recons.append(r)
        return np.concatenate(scores), np.concatenate(recons)

    @property
    def version(self) -> str:
        """Model version id (date + short hash of the weights)."""
        return str(self.meta["version"])

    @property
    def suggested_threshold(self) -> float:
        """Default flagging threshold (flag when score > threshold)."""
        return float(self.meta["suggested_threshold"])

    @property
    def percentiles(self) -> dict[str, float]:
        """Held-out cat score percentiles, keys "90", "95", "99", "99.5"."""
        return {str(k): float(v) for k, v in self.meta["percentiles"].items()}

    @property
    def score_definition(self) -> str:
        """Human-readable definition of the score."""
        return str(self.meta.get("score", {}).get("definition", SCORE_DEFINITION))
