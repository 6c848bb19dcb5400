"""The anomaly score formulas: per-image reconstruction error of the autoencoder, numpy only.

A formula maps (inputs, reconstructions), both (N, 28, 28) float32 in [0, 1], to (N,) float32 scores.
``model.json`` names the formula of its model; :mod:`models.artifact` checks the name against
:data:`SCORE_FORMULAS` without loading TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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
