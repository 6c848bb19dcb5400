"""The shadow comparison: the active model against the shadow candidate on the sketches both scored.

The pairs are the sketches with a shadow score of the shadow version (``shadow_scores``) whose stored
result (``sketches``) comes from the active version. Both histograms are counted in SQL, each over its
own model's score range (the two models' scales differ, so each has its own threshold). AUROC,
precision and recall are computed with scikit-learn on the reviewed pairs (the staff verdict is the
label: anomaly = 1, cat = 0); precision and recall use each model's own flags. The disagreement queue
lists the pairs whose flags differ, newest first, read by key (never OFFSET).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from service.core.schema import VERDICT_ANOMALY, VERDICT_CAT, ShadowScore, Sketch
from service.stats import DEFAULT_BINS, Histogram, bin_edges, check_bins


@dataclass(frozen=True)
class Pair:
    """Which two versions are compared (the active one may be None: then every stored result counts)."""

    active: str | None
    shadow: str

    def clauses(self) -> list:
        """WHERE terms selecting the sketches both versions scored (joined on shadow_scores)."""
        out = [ShadowScore.model_version == self.shadow, Sketch.score.is_not(None)]
        if self.active is not None:
            out.append(Sketch.model_version == self.active)
        return out


def joined(*columns):
    """SELECT ``columns`` FROM sketches JOIN shadow_scores (the pairs' rows; add ``Pair.clauses``)."""
    return select(*columns).select_from(Sketch).join(ShadowScore, ShadowScore.sketch_id == Sketch.id)


def disagree():
    """WHERE term: the two models' flags differ."""
    return Sketch.flagged != ShadowScore.flagged


@dataclass
class ModelMetrics:
    """One model's numbers on the reviewed pairs (None where undefined: one class only, nothing flagged)."""

    auroc: float | None
    precision: float | None
    recall: float | None
    flagged: int
    true_positives: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


@dataclass
class Comparison:
    """Everything the dashboard and ``GET /api/v1/models/compare`` show."""

    pair: Pair
    scored_by_both: int
    active_hist: Histogram
    shadow_hist: Histogram
    reviewed: int
    anomalies: int
    active: ModelMetrics
    shadow: ModelMetrics
    disagreements: int
    flagged_by_active_only: int
    flagged_by_shadow_only: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "active_version": self.pair.active,
            "shadow_version": self.pair.shadow,
            "scored_by_both": self.scored_by_both,
            "histograms": {"active": self.active_hist.to_dict(), "shadow": self.shadow_hist.to_dict()},
            "reviewed": self.reviewed,
            "anomalies": self.anomalies,
            "metrics": {"active": self.active.to_dict(), "shadow": self.shadow.to_dict()},
            "disagreements": self.disagreements,
            "flagged_by_active_only": self.flagged_by_active_only,
            "flagged_by_shadow_only": self.flagged_by_shadow_only,
        }


def _bucket(column, edges: list[float], first: int, last: int):
    """Bin index of ``column`` for bins first..last: a binary search over the exact edges (numpy semantics)."""
    if first == last:
        return literal(first)
    mid = (first + last + 1) // 2
    return case((column < edges[mid], _bucket(column, edges, first, mid - 1)), else_=_bucket(column, edges, mid, last))


def pair_histogram(session: Session, pair: Pair, column, bins: int = DEFAULT_BINS) -> Histogram:
    """Histogram of ``column`` (Sketch.score or ShadowScore.score) over the pairs, over its own range, in SQL."""
    check_bins(bins)
    lo, hi = session.execute(joined(func.min(column), func.max(column)).where(*pair.clauses())).one()
    if lo is None:
        return Histogram(edges=bin_edges(0.0, 1.0, bins), counts=[0] * bins, empty=True)
    edges = bin_edges(float(lo), float(hi), bins)
    bucket = _bucket(column, edges, 0, bins - 1).label("b")
    counts = [0] * bins
    for b, n in session.execute(joined(bucket, func.count()).where(*pair.clauses()).group_by(bucket)):
        counts[int(b)] = int(n)
    return Histogram(edges=edges, counts=counts)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _metrics(labels, scores, flags) -> ModelMetrics:
    """AUROC of the scores and precision/recall of the flags against the labels (scikit-learn)."""
    import numpy as np
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    y = np.asarray(labels, dtype=int)
    pred = np.asarray(flags, dtype=int)
    both_classes = 0 < y.sum() < len(y)
    return ModelMetrics(
        auroc=float(roc_auc_score(y, np.asarray(scores, dtype=float))) if both_classes else None,
        precision=_finite(precision_score(y, pred, zero_division=np.nan)) if len(y) else None,
        recall=_finite(recall_score(y, pred, zero_division=np.nan)) if len(y) else None,
        flagged=int(pred.sum()),
        true_positives=int((pred & y).sum()),
    )


def compare(session: Session, pair: Pair, bins: int = DEFAULT_BINS) -> Comparison:
    """The comparison of ``pair`` (see the module docstring)."""
    where = pair.clauses()
    disagree_ = disagree()
    total, active_only, shadow_only = session.execute(
        joined(
            func.count(),
            func.coalesce(func.sum(case((and_(disagree_, Sketch.flagged.is_(True)), 1), else_=0)), 0),
            func.coalesce(func.sum(case((and_(disagree_, ShadowScore.flagged.is_(True)), 1), else_=0)), 0),
        ).where(*where)
    ).one()
    reviewed = session.execute(
        joined(Sketch.verdict, Sketch.score, Sketch.flagged, ShadowScore.score, ShadowScore.flagged)
        .where(*where, Sketch.verdict.in_((VERDICT_ANOMALY, VERDICT_CAT)))
        .order_by(Sketch.id)
    ).all()
    labels = [r[0] == VERDICT_ANOMALY for r in reviewed]
    return Comparison(
        pair=pair,
        scored_by_both=int(total),
        active_hist=pair_histogram(session, pair, Sketch.score, bins),
        shadow_hist=pair_histogram(session, pair, ShadowScore.score, bins),
        reviewed=len(reviewed),
        anomalies=sum(labels),
        active=_metrics(labels, [r[1] for r in reviewed], [bool(r[2]) for r in reviewed]),
        shadow=_metrics(labels, [r[3] for r in reviewed], [bool(r[4]) for r in reviewed]),
        disagreements=int(active_only) + int(shadow_only),
        flagged_by_active_only=int(active_only),
        flagged_by_shadow_only=int(shadow_only),
    )
