"""Recording reviewers' verdicts: every verdict is kept, the latest one is copied onto the sketch."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from service.core.schema import VERDICT_ANOMALY, VERDICT_CAT, Review, Sketch, utcnow

VERDICTS = (VERDICT_ANOMALY, VERDICT_CAT)
MAX_BULK = 500


class ReviewError(ValueError):
    """A verdict that cannot be recorded (bad verdict, no reviewer, too many ids)."""


class UnknownSketch(ReviewError):
    """The sketch to review does not exist."""


def check_verdict(verdict: str) -> str:
    """Validate a verdict name."""
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    return verdict


def record_review(session: Session, sketch_id: int, verdict: str, reviewer: str) -> Review:
    """Add a verdict for one sketch and make it the sketch's current verdict (caller commits)."""
    recorded = record_reviews(session, [sketch_id], verdict, reviewer)
    if not recorded:
        raise UnknownSketch(f"sketch {sketch_id} does not exist")
    return session.execute(
        select(Review).where(Review.sketch_id == sketch_id).order_by(Review.id.desc()).limit(1)
    ).scalar_one()


def record_reviews(
    session: Session, sketch_ids: Iterable[int], verdict: str, reviewer: str, when: datetime | None = None
) -> list[int]:
    """Add the same verdict to many sketches in two statements; returns the ids that exist (caller commits)."""
    check_verdict(verdict)
    if not reviewer:
        raise ReviewError("a verdict needs a reviewer")
    ids = sorted({int(i) for i in sketch_ids})
    if len(ids) > MAX_BULK:
        raise ReviewError(f"at most {MAX_BULK} sketches per bulk review, got {len(ids)}")
    if not ids:
        return []
    existing = list(session.execute(select(Sketch.id).where(Sketch.id.in_(ids)).order_by(Sketch.id)).scalars())
    if not existing:
        return []
    when = when or utcnow()
    session.execute(
        insert(Review),
        [{"sketch_id": i, "verdict": verdict, "reviewer": reviewer, "created_at": when} for i in existing],
    )
    session.execute(
        update(Sketch)
        .where(Sketch.id.in_(existing))
        .values(verdict=verdict)
    )
    return existing


def review_history(session: Session, sketch_id: int) -> list[Review]:
    """All verdicts on a sketch, oldest first."""
    return list(
        session.execute(
            select(Review).where(Review.sketch_id == sketch_id).order_by(Review.created_at, Review.id)
        ).scalars()
    )
