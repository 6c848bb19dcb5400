"""models.metrics against independent brute-force computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.metrics import auroc, evaluate_scores, per_category, tpr_at_fpr

scores = st.lists(st.integers(0, 20).map(lambda v: v / 4.0), min_size=1, max_size=40)


def brute_auroc(normal, anomalous) -> float:
    """P(anomalous > normal) + 0.5 P(tie), by counting every pair (Mann-Whitney U / (n m))."""
    n = np.asarray(normal)[:, None]
    a = np.asarray(anomalous)[None, :]
    return float(((a > n).sum() + 0.5 * (a == n).sum()) / (n.size * a.size))


def brute_tpr_at_fpr(normal, anomalous, max_fpr) -> float:
    """Best TPR over every threshold rule 'score >= t' whose FPR stays within max_fpr."""
    normal = np.asarray(normal)
    anomalous = np.asarray(anomalous)
    best = 0.0
    for t in np.concatenate([normal, anomalous, [np.inf]]):
        if (normal >= t).mean() <= max_fpr:
            best = max(best, float((anomalous >= t).mean()))
    return best


def brute_average_precision(normal, anomalous) -> float:
    """Mean precision at the rank of each positive (valid when no scores tie)."""
    s = np.concatenate([normal, anomalous])
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
    y = y[np.argsort(-s, kind="stable")]
    hits = np.cumsum(y)
    ranks = np.arange(1, len(y) + 1)
    return float((hits / ranks)[y == 1].mean())


@settings(max_examples=150, deadline=None)
@given(scores, scores)
def test_auroc_matches_pair_count_with_ties(normal, anomalous):
    assert auroc(normal, anomalous) == pytest.approx(brute_auroc(normal, anomalous), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(scores, scores, st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5]))
def test_tpr_at_fpr_matches_threshold_sweep(normal, anomalous, max_fpr):
    assert tpr_at_fpr(normal, anomalous, max_fpr) == pytest.approx(brute_tpr_at_fpr(normal, anomalous, max_fpr))


def test_average_precision_matches_ranking_without_ties():
    rng = np.random.default_rng(3)
    normal = rng.normal(0.0, 1.0, 300)
    anomalous = rng.normal(1.0, 1.0, 120)
    got = evaluate_scores(normal, anomalous)["average_precision"]
    assert got == pytest.approx(brute_average_precision(normal, anomalous), abs=1e-12)


def test_threshold_metrics_counted_by_hand():
    normal = [0.1, 0.2, 0.3, 0.9]
    anomalous = [0.25, 0.5, 0.8, 0.95, 0.3]
    m = evaluate_scores(normal, anomalous, threshold=0.3)
    # Flagged means strictly above 0.3: anomalous 0.5, 0.8, 0.95; normal 0.9.
    assert m["recall_at_threshold"] == pytest.approx(3 / 5)
    assert m["precision_at_threshold"] == pytest.approx(3 / 4)
    assert m["fpr_at_threshold"] == pytest.approx(1 / 4)
    assert m["n_normal"] == 4 and m["n_anomalous"] == 5
    assert m["auroc"] == pytest.approx(brute_auroc(normal, anomalous))


def test_precision_is_none_when_nothing_is_flagged():
    m = evaluate_scores([0.1, 0.2], [0.3, 0.4], threshold=1.0)
    assert m["precision_at_threshold"] is None
    assert m["recall_at_threshold"] == 0.0


def test_perfect_separation_and_inversion():
    perfect = evaluate_scores([0.0, 0.1, 0.2], [0.5, 0.6])
    assert perfect["auroc"] == 1.0 and perfect["tpr_at_fpr_1"] == 1.0 and perfect["average_precision"] == 1.0
    inverted = evaluate_scores([0.5, 0.6], [0.0, 0.1, 0.2])
    assert inverted["auroc"] == 0.0 and inverted["tpr_at_fpr_5"] == 0.0


def test_per_category_rows_sorted_worst_first():
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, 200)
    easy = rng.normal(3, 1, 50)
    hard = rng.normal(0.2, 1, 30)
    cats = ["easy"] * 50 + ["hard"] * 30
    m = evaluate_scores(normal, np.concatenate([easy, hard]), threshold=1.0, categories=cats)
    rows = m["per_category"]
    assert [r["category"] for r in rows] == ["hard", "easy"]
    assert [r["n"] for r in rows] == [30, 50]
    assert rows[0]["auroc"] == pytest.approx(brute_auroc(normal, hard))
    assert rows[1]["mean_score"] == pytest.approx(easy.mean())
    assert rows[1]["flagged_fraction"] == pytest.approx((easy > 1.0).mean())
    json.dumps(m)  # every value is JSON-ready


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="normal_scores: no scores"):
        evaluate_scores([], [1.0])
    with pytest.raises(ValueError, match="anomalous_scores: scores must be finite"):
        evaluate_scores([0.0], [np.nan])
    with pytest.raises(ValueError, match="2 labels for 3"):
        per_category([0.0], [1.0, 2.0, 3.0], ["a", "b"])
