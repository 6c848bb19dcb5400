"""Anomaly scores from the autoencoder: the score formula, batched scoring, and the :class:`Scorer` facade.

Importing this module is cheap: TensorFlow is imported inside the functions that need it, so the web
process (which reads model metadata only) never loads it.

The score is the ink-normalised squared reconstruction error (the formulas and :data:`SCORE_DEFINITION`
live in :mod:`models.formulas`, TensorFlow's process settings in :mod:`models.tf_runtime`). The
model is trained to reconstruct cats and to turn non-cats into a blank image, so a cat scores near 0
and a drawing the model refuses to reproduce scores near 1.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import load_artifact, resolve_model_dir
from models.autoencoder import coerce_config, crop_output, to_model_input
from models.formulas import DEFAULT_FORMULA, SCORE_FORMULAS
from models.raster import SIDE
from models.scorer_base import DEFAULT_BATCH, ScorerBase
from models.tf_runtime import configure_tensorflow, is_configured

# oneDNN builds and caches its kernels per input shape. Arbitrary batch sizes pay that on each new
# size and grow the process by ~100 MB over a few hundred sizes; multiples of this step do neither.
BATCH_STEP = 16

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
    if not is_configured():
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


class Scorer(ScorerBase):
    """A loaded model plus its metadata: scores bitmaps or stroke drawings (higher = more anomalous)."""

    runtime = "keras"  # models.lite.LiteScorer is the "litert" one

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
        configure_tensorflow(threads)
        path = resolve_model_dir(model_dir)
        model, meta = load_artifact(path)
        return cls(model, meta, path)

    def _reconstruct(self, bitmaps_uint8: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The Keras model's (inputs, reconstructions), ``batch_size`` rows per call."""
        return reconstruct(self.model, bitmaps_uint8, batch_size)
