"""The scoring model's metadata (model.json), read without importing TensorFlow."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from models.artifact import ArtifactError, read_meta, resolve_model_dir


@lru_cache(maxsize=8)
def model_meta(configured: str | None = None) -> dict[str, Any]:
    """Parsed model.json of the model in use ({} when it is missing or invalid)."""
    try:
        return read_meta(resolve_model_dir(configured))
    except ArtifactError:
        return {}


@lru_cache(maxsize=8)
def calibration(configured: str | None = None) -> dict[str, Any] | None:
    """The model's calibrated threshold: its nominal false-flag rate on cats and that rate's interval.

    From model.json's ``threshold_calibration`` (models.pipeline: the split-conformal order statistic of the
    held-out cat scores, with the Beta interval of the rate it gives on new cats). A model without one gets
    the interval of what its suggested threshold is, the interpolated 95th percentile of its
    ``heldout_cat_score.n`` cats (``method: percentile``). None without either. scipy loads on the first call.
    """
    meta = model_meta(configured)
    return _recorded(meta.get("threshold_calibration")) or _percentile_fallback(meta)


def _recorded(record: Any) -> dict[str, Any] | None:
    """The pipeline's calibration record in the shape the API and the threshold page show; None if unreadable."""
    try:
        rate = record["fpr_on_new_cats"]
        return {
            "method": "split_conformal",
            "threshold": float(record["threshold"]),
            "n": int(rate["n"]),
            "rank": float(rate["rank"]),
            "nominal_false_flag_rate": float(record["nominal_fpr"]),
            "expected_false_flag_rate": float(rate["expected_fpr"]),
            "interval": [float(rate["low"]), float(rate["high"])],
            "confidence": float(rate["level"]),
        }
    except (KeyError, TypeError, ValueError):
        return None


def _percentile_fallback(meta: dict[str, Any], nominal: float = 0.05, level: float = 0.95) -> dict[str, Any] | None:
    """The interval of a suggested threshold that is numpy's linear 95th percentile of n held-out cat scores."""
    n = (meta.get("heldout_cat_score") or {}).get("n")
    threshold = meta.get("suggested_threshold")
    if not isinstance(n, int) or n < 2 or not isinstance(threshold, (int, float)):
        return None
    from scipy.stats import beta

    # That percentile sits at (fractional) rank q (n - 1) + 1 of n; a new cat's flag rate there is Beta(n + 1 - k, k).
    rank = (1.0 - nominal) * (n - 1) + 1.0
    low, high = beta.ppf([(1 - level) / 2, (1 + level) / 2], n + 1 - rank, rank)
    return {
        "method": "percentile",
        "threshold": float(threshold),
        "n": n,
        "rank": rank,
        "nominal_false_flag_rate": nominal,
        "expected_false_flag_rate": (n + 1 - rank) / (n + 1),
        "interval": [float(low), float(high)],
        "confidence": level,
    }
