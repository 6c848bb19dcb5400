"""The audit sample: sketches drawn at random from above and from below the threshold, for review.

Reviews of flagged sketches alone never meet a missed anomaly, so they cannot measure recall, and the
top of the queue is not a fair picture of precision either. An audit round fixes a frame (the scored
sketches up to the latest id when it starts), splits it at the threshold in force into two strata
(``above``: score > threshold, i.e. flagged; ``below``: the rest) and draws sketches from each stratum
uniformly at random, without replacement. Drawing more later extends the same random sample. The
verdicts reviewers record on the drawn sketches, weighted by stratum, estimate precision and recall for
the whole frame (service.quality). Callers commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, func, insert, or_, select
from sqlalchemy.orm import Session

from service.core.schema import STATUS_SCORED, STRATUM_ABOVE, STRATUM_BELOW, AuditRound, AuditSample, Sketch, utcnow

STRATA = (STRATUM_ABOVE, STRATUM_BELOW)
DEFAULT_PER_STRATUM = 20
MAX_PER_STRATUM = 200


class AuditError(ValueError):
    """An audit that cannot be drawn (nothing scored yet, a bad sample size)."""


@dataclass
class Drawn:
    """How many sketches one draw added to each stratum of a round."""

    round: AuditRound
    above: int
    below: int

    @property
    def total(self) -> int:
        """Sketches drawn in both strata."""
        return self.above + self.below


def current_round(session: Session) -> AuditRound | None:
    """The latest audit round (the one estimates come from), or None before the first."""
    return session.execute(select(AuditRound).order_by(AuditRound.id.desc()).limit(1)).scalar_one_or_none()


def in_stratum(r: AuditRound, stratum: str):
    """WHERE terms of one stratum of a round's frame."""
    # Scored by the time the round started: a sketch still queued then never joins the frame later
    # (a scored row without a time predates scored_at and counts as scored then).
    scored_then = or_(Sketch.scored_at <= r.created_at, Sketch.scored_at.is_(None))
    frame = [Sketch.status == STATUS_SCORED, Sketch.id <= r.frame_max_id, scored_then]
    if stratum == STRATUM_ABOVE:
        return [*frame, Sketch.score > r.threshold]
    if stratum == STRATUM_BELOW:
        return [*frame, Sketch.score <= r.threshold]
    raise ValueError(f"stratum must be one of {', '.join(STRATA)}, got {stratum!r}")


def start_round(session: Session, threshold: float, who: str) -> AuditRound:
    """A new round over the sketches scored so far, split at ``threshold``; AuditError if none is scored."""
    last = session.execute(select(func.max(Sketch.id)).where(Sketch.status == STATUS_SCORED)).scalar_one_or_none()
    if last is None:
        raise AuditError("no sketch has been scored yet: there is nothing to audit")
    r = AuditRound(created_by=who, threshold=float(threshold), frame_max_id=int(last), created_at=utcnow(),
                   population_above=0, population_below=0)
    r.population_above = _count(session, in_stratum(r, STRATUM_ABOVE))
    r.population_below = _count(session, in_stratum(r, STRATUM_BELOW))
    session.add(r)
    session.flush()
    return r


def _count(session: Session, where) -> int:
    return int(session.execute(select(func.count()).select_from(Sketch).where(*where)).scalar_one())


def draw(session: Session, r: AuditRound, per_stratum: int) -> Drawn:
    """Add up to ``per_stratum`` sketches from each stratum of ``r``, uniformly at random among those not drawn yet."""
    if not 1 <= per_stratum <= MAX_PER_STRATUM:
        raise AuditError(f"draw between 1 and {MAX_PER_STRATUM} sketches per stratum")
    now = utcnow()
    counts = {}
    for stratum in STRATA:
        drawn = select(AuditSample.sketch_id).where(AuditSample.round_id == r.id)
        ids = list(
            session.execute(
                select(Sketch.id)
                .where(*in_stratum(r, stratum), Sketch.id.not_in(drawn))
                .order_by(func.random())
                .limit(per_stratum)
            ).scalars()
        )
        if ids:
            session.execute(
                insert(AuditSample),
                [{"round_id": r.id, "sketch_id": i, "stratum": stratum, "drawn_at": now} for i in ids],
            )
        counts[stratum] = len(ids)
    return Drawn(round=r, above=counts[STRATUM_ABOVE], below=counts[STRATUM_BELOW])


def sample_query(r: AuditRound, *columns) -> Select:
    """The sketches drawn into ``r`` with ``columns`` and their stratum, in the order they were drawn."""
    return (
        select(*columns, AuditSample.stratum)
        .join(AuditSample, AuditSample.sketch_id == Sketch.id)
        .where(AuditSample.round_id == r.id)
    )


def sample_order():
    """ORDER BY of a round's sample: the order of the draws (random within each draw)."""
    return (AuditSample.id.asc(),)
