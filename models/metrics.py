"""Detection metrics for anomaly scores (higher = more anomalous; anomalous items are the positives).

Thin wrappers around scikit-learn so every command and test computes them the same way. A drawing
is flagged when its score is strictly greater than the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _as_scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """1-D float64 array of finite scores, or a ValueError naming the argument."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name}: no scores")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: scores must be finite")
    return arr


def _labels_and_scores(normal: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate into (y_true with anomalous = 1, y_score)."""
    y = np.concatenate([np.zeros(normal.size, dtype=np.int8), np.ones(anomalous.size, dtype=np.int8)])
    return y, np.concatenate([normal, anomalous])


def tpr_at_fpr(normal_scores, anomalous_scores, max_fpr: float) -> float:
    """Highest true-positive rate reachable with a false-positive rate of at most ``max_fpr``."""
    normal = _as_scores(normal_scores, "normal_scores")
    anomalous = _as_scores(anomalous_scores, "anomalous_scores")
    fpr, tpr, _ = roc_curve(*_labels_and_scores(normal, anomalous), drop_intermediate=False)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def auroc(normal_scores, anomalous_scores) -> float:
    """Area under the ROC curve: P(anomalous score > normal score), ties counting one half."""
    normal = _as_scores(normal_scores, "normal_scores")
    anomalous = _as_scores(anomalous_scores, "anomalous_scores")
    return float(roc_auc_score(*_labels_and_scores(normal, anomalous)))


def evaluate_scores(
    normal_scores,
    anomalous_scores,
    threshold: float | None = None,
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All detection metrics as a JSON-ready dict; ``categories`` labels each anomalous score.

    Keys: auroc, average_precision, tpr_at_fpr_1, tpr_at_fpr_5, threshold, precision_at_threshold,
    recall_at_threshold, fpr_at_threshold, n_normal, n_anomalous, per_category (worst AUROC first).
    Threshold-dependent values are None without a threshold (precision also when nothing is flagged).
    """
    normal = _as_scores(normal_scores, "normal_scores")
    anomalous = _as_scores(anomalous_scores, "anomalous_scores")
    y, s = _labels_and_scores(normal, anomalous)
    result: dict[str, Any] = {
        "auroc": float(roc_auc_score(y, s)),
        "average_precision": float(average_precision_score(y, s)),
        "tpr_at_fpr_1": tpr_at_fpr(normal, anomalous, 0.01),
        "tpr_at_fpr_5": tpr_at_fpr(normal, anomalous, 0.05),
        "threshold": None if threshold is None else float(threshold),
        "precision_at_threshold": None,
        "recall_at_threshold": None,
        "fpr_at_threshold": None,
        "n_normal": int(normal.size),
        "n_anomalous": int(anomalous.size),
        "per_category": [],
    }
    if threshold is not None:
        true_pos = int((anomalous > threshold).sum())
        false_pos = int((normal > threshold).sum())
        result["precision_at_threshold"] = true_pos / (true_pos + false_pos) if true_pos + false_pos else None
        result["recall_at_threshold"] = true_pos / anomalous.size
        result["fpr_at_threshold"] = false_pos / normal.size
    if categories is not None:
        result["per_category"] = per_category(normal, anomalous, categories, threshold)
    return result


def conformal_threshold(normal_scores, fpr: float = 0.05) -> float:
    """Split-conformal threshold: the ceil((n+1)(1-fpr))-th smallest normal score (flag when score > it).

    For a new normal drawing exchangeable with the n calibration ones, P(flagged) <= fpr, and
    >= fpr - 1/(n+1) (without ties). With n < 1/fpr - 1 no score qualifies and the largest is used.
    """
    s = np.sort(_as_scores(normal_scores, "normal_scores"))
    rank = math.ceil((s.size + 1) * (1.0 - fpr) - 1e-9)
    return float(s[min(rank, s.size) - 1])


def conformal_fpr_interval(n: int, fpr: float = 0.05, level: float = 0.95) -> dict[str, float]:
    """Distribution of the false-flag rate that a conformal threshold from n normals gives on new normals.

    Given the calibration set, the rate is Beta(n + 1 - rank, rank) distributed (rank as in
    :func:`conformal_threshold`): its mean and central ``level`` interval.
    """
    from scipy.stats import beta

    rank = min(math.ceil((n + 1) * (1.0 - fpr) - 1e-9), n)
    a, b = n + 1 - rank, rank
    lo, hi = beta.ppf([(1 - level) / 2, (1 + level) / 2], a, b)
    return {"n": int(n), "rank": int(rank), "expected_fpr": a / (a + b), "low": float(lo), "high": float(hi),
            "level": level}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) binomial interval of the proportion k / n."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def per_category(normal_scores, anomalous_scores, categories: Sequence[str], threshold: float | None = None) -> list[dict]:
    """One row per anomalous category: {category, n, auroc (vs all normals), mean_score, flagged_fraction}."""
    normal = _as_scores(normal_scores, "normal_scores")
    anomalous = _as_scores(anomalous_scores, "anomalous_scores")
    labels = np.asarray(categories, dtype=object)
    if labels.shape != anomalous.shape:
        raise ValueError(f"categories has {labels.size} labels for {anomalous.size} anomalous scores")
    rows = []
    for name in sorted(set(labels.tolist()), key=str):
        sel = anomalous[labels == name]
        rows.append(
            {
                "category": str(name),
                "n": int(sel.size),
                "auroc": float(roc_auc_score(*_labels_and_scores(normal, sel))),
                "mean_score": float(sel.mean()),
                "flagged_fraction": None if threshold is None else float((sel > threshold).mean()),
            }
        )
    rows.sort(key=lambda r: (r["auroc"], r["category"]))
    return rows
