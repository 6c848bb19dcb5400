"""The anomaly score formulas: per-image reconstruction error of the autoencoder, numpy only.

A formula maps (inputs, reconstructions), both (N, 28, 28) float32 in [0, 1], to (N,) float32 scores.
``model.json`` names the formula of its model; :mod:`models.artifact` checks the name against
:data:`SCORE_FORMULAS` without loading TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# Keeps blank-vs-blank at the maximum score (an empty drawing is not a cat) and avoids 0/0.
_EPS = 1e-3
# Keeps the log-odds finite when the input and reconstruction share no ink at all (sum(x r) = 0, e.g. a
# blank drawing): the odds are then at most (784 + eps) / tiny, far above any drawing with shared ink.
_LOGIT_TINY = 1e-30


def ink_normalized_error(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """sum((x - r)^2) / (sum(x^2) + sum(r^2)) per image, x and r in [0, 1]; result in [0, 1]."""
    axes = tuple(range(1, x.ndim))
    err = np.square(x - r).sum(axis=axes, dtype=np.float64)
    ink = np.square(x).sum(axis=axes, dtype=np.float64) + np.square(r).sum(axis=axes, dtype=np.float64)
    return ((err + _EPS) / (ink + _EPS)).astype(np.float32)


def _ink_sums(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, in float64: sum((x - r)^2), sum(x^2) + sum(r^2) and sum(x * r)."""
    # The same operations as ink_normalized_error, so the score comes out bit for bit the same; every
    # term is a sum of non-negative products, so float64 accumulation loses nothing that matters.
    axes = tuple(range(1, x.ndim))
    err = np.square(x - r).sum(axis=axes, dtype=np.float64)
    ink = np.square(x).sum(axis=axes, dtype=np.float64) + np.square(r).sum(axis=axes, dtype=np.float64)
    cross = np.multiply(x, r).sum(axis=axes, dtype=np.float64)
    return err, ink, cross


def ink_normalized_logit(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """log(s / (1 - s)) of :func:`ink_normalized_error` per image, float64, from the sums (no 1 - s).

    With s = (e + eps) / (ink + eps) and ink - e = 2 sum(x r), the odds are (e + eps) / (2 sum(x r)): the
    top of the scale, where s rounds to 1, keeps its order (an erased drawing has sum(x r) near 0).
    """
    err, _ink, cross = _ink_sums(x, r)
    return np.log(err + _EPS) - np.log(2.0 * cross + _LOGIT_TINY)


def ink_normalized_error_and_logit(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score float32, log-odds float64) per image from one pass over the sums."""
    err, ink, cross = _ink_sums(x, r)
    scores = ((err + _EPS) / (ink + _EPS)).astype(np.float32)
    return scores, np.log(err + _EPS) - np.log(2.0 * cross + _LOGIT_TINY)


def logit_of_score(scores) -> np.ndarray:
    """log(s / (1 - s)) of stored bounded scores in float64; NaN outside (0, 1), +inf at 1.

    Resolution is the score's: a float32 score rounds every s above 1 - 2**-25 to 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(s) - np.log1p(-s)
    return np.where((s > 0) & (s <= 1), out, np.nan)


# The log-odds a stored float32 score of exactly 1 stands for: every s above 1 - 2**-25 rounds to 1, so only
# "at least this" is known; and those of a score of 0 (below 2**-149, which no ink-normalised score reaches).
SATURATED_LOGIT = math.log(2.0**25 - 1.0)
FLOOR_LOGIT = math.log(2.0**-149)


def logit_of_stored_score(score: float | None) -> float | None:
    """log(s / (1 - s)) of one stored score, clamped to what a float32 score resolves; None without a score."""
    if score is None or not math.isfinite(score):
        return None
    if score >= 1.0 - 2.0**-25:
        return SATURATED_LOGIT
    if score <= 2.0**-149:
        return FLOOR_LOGIT
    return math.log(score) - math.log1p(-score)


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
# Formulas whose log-odds have a closed form from the sums; the others get logit_of_score of their score.
SCORE_LOGITS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "ink_normalized_sq_error": ink_normalized_error_and_logit,
}


def score_and_logit(formula: str, x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32, log-odds float64) of ``formula``; NaN log-odds where the score is not in (0, 1]."""
    both = SCORE_LOGITS.get(formula)
    if both is not None:
        return both(x, r)
    scores = SCORE_FORMULAS[formula](x, r)
    return scores, logit_of_score(scores)

SCORE_DEFINITION = (
    "score = (sum((x - r)^2) + 1e-3) / (sum(x^2) + sum(r^2) + 1e-3) over the 28x28 bitmap, x = input and "
    "r = reconstruction scaled to [0, 1]. 0 = perfect reconstruction (cat-like), 1 = the model erased the "
    "drawing (not a cat); an empty drawing scores 1. Higher = more anomalous."
)
