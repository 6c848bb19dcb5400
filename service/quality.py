"""Unbiased precision, recall and F1 from the audit sample, with confidence intervals.

The audit (service.audit) is a stratified simple random sample of a fixed frame: stratum ``above`` (score >
the round's threshold t0) of N_a sketches and stratum ``below`` of N_b. In stratum h, r_h drawn sketches
carry a staff verdict so far; each stands for N_h / r_h sketches of its stratum (its sampling weight;
draws not reviewed yet are taken as missing at random within their stratum). For any threshold t:

    TP = sum_h N_h tp_h / r_h    (anomaly, score > t)      FP likewise (cat, score > t)
    FN = sum_h N_h fn_h / r_h    (anomaly, score <= t)
    precision = TP / (TP + FP)    recall = TP / (TP + FN)    F1 = 2 TP / (2 TP + FP + FN)

Intervals: every metric rises with TP and falls with FP and FN, and each of those is a sum of per-stratum
proportions. Each proportion gets a Wilson score interval (scipy.stats.binomtest) at confidence 1 - alpha/k,
k the number of proportions the metric uses (Bonferroni), so all k hold at once with probability >= 1 - alpha;
the metric's lowest and highest value over those intervals is its interval, which therefore covers with at
least the stated confidence. A stratum without reviews contributes [0, 1]: few reviews below the threshold
mean a wide recall interval, which is the honest answer. Proportions that are zero by construction (a
sketch at or below t0 cannot score above t >= t0) are exact and not counted in k.

Aggregates run in SQL over the audit rows; only a handful of numbers reach Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, select
from sqlalchemy.orm import Session

from service.core.schema import (
    STRATUM_ABOVE,
    STRATUM_BELOW,
    VERDICT_ANOMALY,
    VERDICT_CAT,
    AuditRound,
    AuditSample,
    Sketch,
)
from service.stats import best_f1_cut, cut_between

CONFIDENCE = 0.95
# Below this many reviewed draws in a non-empty stratum, no F1 suggestion is offered.
MIN_REVIEWS_PER_STRATUM = 10
_REVIEWED = Sketch.verdict.in_((VERDICT_ANOMALY, VERDICT_CAT))


@dataclass
class Metric:
    """A point estimate (None when the reviews cannot give one yet) and its confidence interval."""

    value: float | None
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass
class Stratum:
    """One stratum of a round: its size, its draws, its reviewed draws, and their outcome at a threshold."""

    name: str
    population: int
    drawn: int = 0
    reviewed: int = 0
    anomalies: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def weight(self) -> float | None:
        """Sketches of the stratum each reviewed draw stands for (N_h / r_h)."""
        return self.population / self.reviewed if self.reviewed else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.__dict__, "weight": self.weight}


@dataclass
class Estimate:
    """Precision, recall and F1 at a threshold, estimated from one audit round's reviews."""

    threshold: float
    round_id: int
    round_threshold: float
    strata: list[Stratum]
    precision: Metric
    recall: Metric
    f1: Metric
    confidence: float = CONFIDENCE

    @property
    def reviews(self) -> int:
        """Reviewed draws the estimate rests on."""
        return sum(s.reviewed for s in self.strata)

    @property
    def drawn(self) -> int:
        """Sketches drawn into the round."""
        return sum(s.drawn for s in self.strata)

    @property
    def needed(self) -> int:
        """Reviews still missing before an F1 suggestion is offered (0 when there are enough)."""
        return sum(max(0, MIN_REVIEWS_PER_STRATUM - s.reviewed) for s in self.strata if s.population)

    @property
    def enough(self) -> bool:
        """True when every non-empty stratum has MIN_REVIEWS_PER_STRATUM reviewed draws."""
        return self.needed == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "threshold": self.threshold,
            "round": self.round_id,
            "round_threshold": self.round_threshold,
            "confidence": self.confidence,
            "reviews": self.reviews,
            "drawn": self.drawn,
            "enough": self.enough,
            "needed": self.needed,
            "strata": [s.to_dict() for s in self.strata],
            "precision": self.precision.to_dict(),
            "recall": self.recall.to_dict(),
            "f1": self.f1.to_dict(),
        }


def strata(session: Session, r: AuditRound, t: float) -> list[Stratum]:
    """Per-stratum draws, reviews and outcomes at threshold ``t`` of round ``r`` (one GROUP BY in SQL)."""
    above = Sketch.score > t
    anomaly = Sketch.verdict == VERDICT_ANOMALY

    def n(cond):
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    rows = session.execute(
        select(
            AuditSample.stratum,
            func.count(),
            n(_REVIEWED),
            n(anomaly),
            n(and_(anomaly, above)),
            n(and_(Sketch.verdict == VERDICT_CAT, above)),
            n(and_(anomaly, ~above)),
        )
        .join(Sketch, Sketch.id == AuditSample.sketch_id)
        .where(AuditSample.round_id == r.id)
        .group_by(AuditSample.stratum)
    ).all()
    out = {
        STRATUM_ABOVE: Stratum(STRATUM_ABOVE, r.population_above),
        STRATUM_BELOW: Stratum(STRATUM_BELOW, r.population_below),
    }
    for name, drawn, reviewed, anomalies, tp, fp, fn in rows:
        s = out.get(name)
        if s is not None:
            s.drawn, s.reviewed, s.anomalies = int(drawn), int(reviewed), int(anomalies)
            s.tp, s.fp, s.fn = int(tp), int(fp), int(fn)
    return [out[STRATUM_ABOVE], out[STRATUM_BELOW]]


def wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n; [0, 1] without observations."""
    if n <= 0:
        return 0.0, 1.0
    # Imported here: scipy.stats adds ~45 MB to every web process, and only the audit pages need it.
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class _Total:
    """A population total sum_h N_h p_h: its estimate and the proportions it is built from."""

    parts: list[tuple[int, int, int]] = field(default_factory=list)  # (N_h, k_h, r_h) of non-structural terms

    def add(self, population: int, k: int, reviewed: int) -> None:
        """Add stratum N_h's proportion k_h / r_h (an empty stratum adds nothing)."""
        if population:
            self.parts.append((population, k, reviewed))

    @property
    def value(self) -> float | None:
        """The estimated total; None when a stratum it needs has no reviews yet."""
        if any(r == 0 for _, _, r in self.parts):
            return None
        return sum(n * k / r for n, k, r in self.parts)

    def bounds(self, confidence: float) -> tuple[float, float]:
        """Lowest and highest total with every proportion in its Wilson interval at ``confidence``."""
        lo = hi = 0.0
        for n, k, r in self.parts:
            p_lo, p_hi = wilson(k, r, confidence)
            lo += n * p_lo
            hi += n * p_hi
        return lo, hi


def _ratio(num: float, den: float, empty: float) -> float:
    return num / den if den > 0 else empty


def estimate_from(strata_: list[Stratum], t: float, r: AuditRound, confidence: float = CONFIDENCE) -> Estimate:
    """Precision, recall and F1 at ``t`` with intervals from per-stratum counts (see the module docstring)."""
    tp, fp, fn = _Total(), _Total(), _Total()
    for s in strata_:
        # A stratum's sketches all lie on one side of the round's threshold t0; against t some outcomes
        # are then impossible, and their zero is exact rather than estimated.
        can_flag = not (s.name == STRATUM_BELOW and t >= r.threshold)
        can_miss = not (s.name == STRATUM_ABOVE and t <= r.threshold)
        if can_flag:
            tp.add(s.population, s.tp, s.reviewed)
            fp.add(s.population, s.fp, s.reviewed)
        if can_miss:
            fn.add(s.population, s.fn, s.reviewed)

    def metric(num: _Total, dens: list[_Total], num_factor: float) -> Metric:
        used = [num, *dens]
        k = max(1, sum(len(x.parts) for x in used))
        level = 1.0 - (1.0 - confidence) / k
        n_lo, n_hi = num.bounds(level)
        d = [x.bounds(level) for x in dens]
        low = _ratio(num_factor * n_lo, num_factor * n_lo + sum(hi for _, hi in d), 0.0)
        high = _ratio(num_factor * n_hi, num_factor * n_hi + sum(lo for lo, _ in d), 1.0)
        values = [x.value for x in used]
        value = None
        if all(v is not None for v in values):
            den = num_factor * values[0] + sum(values[1:])
            value = num_factor * values[0] / den if den > 0 else None
        if value is not None:
            low, high = min(low, value), max(high, value)
        return Metric(value=value, low=low, high=high)

    return Estimate(
        threshold=float(t),
        round_id=r.id,
        round_threshold=r.threshold,
        strata=strata_,
        precision=metric(tp, [fp], 1.0),
        recall=metric(tp, [fn], 1.0),
        f1=metric(tp, [fp, fn], 2.0),
        confidence=confidence,
    )


def estimate(session: Session, r: AuditRound | None, t: float, confidence: float = CONFIDENCE) -> Estimate | None:
    """Estimated precision, recall and F1 of flagging ``score > t``, from round ``r``'s reviews (None without a round)."""
    if r is None:
        return None
    if not math.isfinite(t):
        raise ValueError("threshold must be a finite number")
    return estimate_from(strata(session, r, t), t, r, confidence)


@dataclass
class F1Suggestion:
    """The threshold with the best estimated F1, with the estimate there and the reviews it rests on."""

    threshold: float
    estimate: Estimate

    @property
    def reviews(self) -> int:
        """Reviewed audit draws behind the suggestion."""
        return self.estimate.reviews

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"threshold": self.threshold, "reviews": self.reviews, "estimate": self.estimate.to_dict()}


def f1_suggestion(session: Session, r: AuditRound | None, confidence: float = CONFIDENCE) -> F1Suggestion | None:
    """The threshold maximising the weighted F1 estimate over the audit reviews, found in SQL.

    None without a round, with fewer than MIN_REVIEWS_PER_STRATUM reviewed draws in a non-empty stratum, or
    without a reviewed anomaly. Candidate cut-offs lie between consecutive distinct reviewed scores; flagging
    everything from the k-th score up gives weighted TP and FP as running sums, and F1 = 2 TP / (TP + FP + P)
    with P the weighted total of anomalies.
    """
    if r is None:
        return None
    base = strata(session, r, r.threshold)
    by_name = {s.name: s for s in base}
    if any(s.population and s.reviewed < MIN_REVIEWS_PER_STRATUM for s in base):
        return None
    if not any(s.anomalies for s in base):
        return None
    weight = case(
        *[(AuditSample.stratum == s.name, s.weight) for s in by_name.values() if s.weight is not None],
        else_=0.0,
    )
    w = cast(weight, Float)
    pos = case((Sketch.verdict == VERDICT_ANOMALY, w), else_=0.0)
    per_score = (
        select(Sketch.score.label("score"), func.sum(pos).label("pos"), func.sum(w).label("n"))
        .join(AuditSample, AuditSample.sketch_id == Sketch.id)
        .where(AuditSample.round_id == r.id, _REVIEWED, Sketch.score.is_not(None))
        .group_by(Sketch.score)
        .subquery()
    )
    row = best_f1_cut(session, per_score)
    if row is None:
        return None
    threshold = cut_between(float(row.score), row.next_score)
    return F1Suggestion(threshold=threshold, estimate=estimate(session, r, threshold, confidence))
