"""Score drift: the recent window's score distribution against a reference, by the population stability index.

The reference is either

- ``model``: the held-out cats' score percentiles the model carries in model.json (``percentiles``, e.g.
  p90/p95/p99/p99.5). Their values cut the score axis into bins whose expected shares are known exactly
  (90% of the held-out cats score below p90, 5% between p90 and p95, ...), and only sketches scored by that
  model version are compared. A model.json with more percentiles gives finer bins with no code change.
- ``period``: the sketches of a chosen period (by default the week before the recent window), whose deciles
  (read from the hourly rollup's histogram) make the bins.

PSI = sum((o - e) * ln(o / e)) over the bins, which is KL(o||e) + KL(e||o): computed with
``scipy.stats.entropy``. Shares are floored at 1e-4 so an empty bin does not make it infinite. The usual
reading: below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from service.core import rollups
from service.core.rollups import BINS, as_datetime
from service.core.schema import STATUS_SCORED, Sketch, utcnow

STABLE_BELOW = 0.1
DRIFT_ABOVE = 0.25
MIN_COUNT = 50
SHARE_FLOOR = 1e-4
DECILES = 10
BASELINE = timedelta(days=7)


@dataclass
class Reference:
    """Bins over the score axis (cut points) and the reference's share of sketches in each."""

    kind: str  # "model" or "period"
    label: str
    cuts: list[float]
    shares: list[float]
    n: int | None = None
    model_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "label": self.label, "cuts": self.cuts, "shares": self.shares, "n": self.n,
                "model_version": self.model_version}  # fmt: skip


@dataclass
class Drift:
    """The recent window against the reference."""

    since: datetime
    until: datetime
    reference: Reference | None
    n: int = 0
    psi: float | None = None
    observed: list[float] = field(default_factory=list)
    min_count: int = MIN_COUNT

    @property
    def status(self) -> str:
        """"stable", "moderate", "drift", "insufficient" (too few scored sketches) or "unavailable" (no reference)."""
        if self.reference is None:
            return "unavailable"
        if self.n < self.min_count or self.psi is None:
            return "insufficient"
        if self.psi < STABLE_BELOW:
            return "stable"
        return "moderate" if self.psi <= DRIFT_ABOVE else "drift"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "n": self.n,
            "psi": self.psi,
            "status": self.status,
            "observed": self.observed,
            "reference": self.reference.to_dict() if self.reference else None,
        }


def model_percentiles(meta: dict) -> list[tuple[float, float]]:
    """The held-out cat score percentiles of model.json as sorted (percent, score) pairs."""
    raw = meta.get("percentiles")
    pairs = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            try:
                p, v = float(str(key).lower().lstrip("p")), float(value)
            except (TypeError, ValueError):
                continue
            if 0 < p < 100 and math.isfinite(v):
                pairs.append((p, v))
    return sorted(pairs)


def model_reference(meta: dict) -> Reference | None:
    """The reference made of the model's held-out cat percentiles (None when model.json carries none)."""
    pairs = model_percentiles(meta)
    if not pairs:
        return None
    cuts, shares, below = [], [], 0.0
    for p, v in pairs:
        if cuts and v <= cuts[-1]:
            continue
        cuts.append(v)
        shares.append(p / 100.0 - below)
        below = p / 100.0
    shares.append(1.0 - below)
    held_out = (meta.get("heldout_cat_score") or {}).get("n")
    version = meta.get("version")
    label = "held-out cats of model " + str(version) if version else "the model's held-out cats"
    return Reference(kind="model", label=label, cuts=cuts, shares=shares, n=held_out, model_version=version)


def period_reference(session: Session, since: datetime, until: datetime, client: str | None = None) -> Reference | None:
    """The reference made of the sketches submitted in [since, until): bins at its deciles (hourly rollup)."""
    bins = rollups.merge_bins(rollups.hourly_rows(session, since, until, client))
    n = int(bins.sum())
    if n == 0:
        return None
    cum = np.cumsum(bins)
    cut_bins: list[int] = []
    for k in range(1, DECILES):
        i = int(np.searchsorted(cum, n * k / DECILES, side="left")) + 1  # the cut after that bin
        if 0 < i < BINS and (not cut_bins or i > cut_bins[-1]):
            cut_bins.append(i)
    edges = [0, *cut_bins, BINS]
    shares = [float(bins[a:b].sum()) / n for a, b in zip(edges, edges[1:])]
    label = f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
    return Reference(kind="period", label=label, cuts=[i / BINS for i in cut_bins], shares=shares, n=n)


def observed_counts(
    session: Session, cuts: list[float], since: datetime, until: datetime, client: str | None = None,
    model_version: str | None = None,
) -> list[int]:
    """Scored sketches submitted in [since, until) per bin (bin k: cuts[k-1] <= score < cuts[k]), in SQL."""
    bucket = literal(len(cuts))
    for k in range(len(cuts) - 1, -1, -1):
        bucket = case((Sketch.score < cuts[k], literal(k)), else_=bucket)
    where = [Sketch.status == STATUS_SCORED, Sketch.submitted_at >= since, Sketch.submitted_at < until]
    if client is not None:
        where.append(Sketch.client == client)
    if model_version is not None:
        where.append(Sketch.model_version == model_version)
    label = bucket.label("k")
    counts = [0] * (len(cuts) + 1)
    for k, n in session.execute(select(label, func.count()).where(*where).group_by(label)):
        counts[int(k)] = int(n)
    return counts


def psi(expected: list[float], observed: list[float]) -> float:
    """Population stability index of ``observed`` against ``expected`` (shares or counts; floored, normalised)."""
    e = np.maximum(np.asarray(expected, dtype=float) / max(sum(expected), 1e-12), SHARE_FLOOR)
    o = np.maximum(np.asarray(observed, dtype=float) / max(sum(observed), 1e-12), SHARE_FLOOR)
    # Imported here: scipy.stats costs every scoring pool process ~60 MB, and only the alerts worker reads drift.
    from scipy.stats import entropy

    return float(entropy(o, e) + entropy(e, o))


def reference_for(session: Session, kind: str, meta: dict, since: datetime, client: str | None = None) -> Reference | None:
    """The configured reference: the model's (falling back to the baseline week without one) or the baseline week."""
    if kind == "model":
        ref = model_reference(meta)
        if ref is not None:
            return ref
    return period_reference(session, since - BASELINE, since, client)


def measure(
    session: Session,
    reference: Reference | None,
    since: datetime,
    until: datetime | None = None,
    client: str | None = None,
    min_count: int = MIN_COUNT,
) -> Drift:
    """The drift of the sketches submitted in [since, until) against ``reference``."""
    until = as_datetime(until or utcnow())
    since = as_datetime(since)
    result = Drift(since=since, until=until, reference=reference, min_count=min_count)
    if reference is None:
        return result
    counts = observed_counts(session, reference.cuts, since, until, client, reference.model_version)
    result.n = sum(counts)
    if result.n:
        result.observed = [c / result.n for c in counts]
        result.psi = psi(reference.shares, counts)
    return result
