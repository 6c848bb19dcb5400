"""Recording reviewers' verdicts: every verdict is kept, the latest one is copied onto the sketch.

Two kinds of verdict: a staff verdict (dashboard reviewers, admin API keys) becomes the sketch's
``verdict`` and feeds the threshold suggestions; a client's verdict on its own sketch (its API key)
becomes ``client_verdict`` only, so no client can steer the threshold every client shares. A reviewer
can undo their last action (one verdict or one bulk review).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from service.core import sketches
from service.core.schema import VERDICT_ANOMALY, VERDICT_CAT, Review, Sketch, utcnow

VERDICTS = (VERDICT_ANOMALY, VERDICT_CAT)
MAX_BULK = 500


class ReviewError(ValueError):
    """A verdict that cannot be recorded (bad verdict, no reviewer, too many ids)."""


class UnknownSketch(ReviewError):
    """The sketch to review does not exist (or is another client's)."""


class NothingToUndo(ReviewError):
    """The action to undo is not the reviewer's latest one (already undone, or newer verdicts since)."""


def check_verdict(verdict: str) -> str:
    """Validate a verdict name."""
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    return verdict


def record_review(
    session: Session, sketch_id: int, verdict: str, reviewer: str, *, owner: str | None = None, by_client: bool = False
) -> Review:
    """Add a verdict for one sketch and make it the sketch's current verdict (caller commits).

    ``owner`` and ``by_client`` as for ``record_reviews``.
    """
    recorded = record_reviews(session, [sketch_id], verdict, reviewer, owner=owner, by_client=by_client)
    if not recorded:
        raise UnknownSketch(f"sketch {sketch_id} does not exist")
    return session.execute(
        select(Review).where(Review.sketch_id == sketch_id).order_by(Review.id.desc()).limit(1)
    ).scalar_one()


def record_reviews(
    session: Session,
    sketch_ids: Iterable[int],
    verdict: str,
    reviewer: str,
    when: datetime | None = None,
    *,
    owner: str | None = None,
    by_client: bool = False,
) -> list[int]:
    """Add the same verdict to many sketches in two statements; returns the ids reviewed (caller commits).

    ``owner`` limits the review to that client's sketches (any other id counts as missing).
    ``by_client`` records the client's label on its own sketches (``client_verdict``), not a staff verdict.
    """
    check_verdict(verdict)
    if not reviewer:
        raise ReviewError("a verdict needs a reviewer")
    ids = sorted({int(i) for i in sketch_ids})
    if len(ids) > MAX_BULK:
        raise ReviewError(f"at most {MAX_BULK} sketches per bulk review, got {len(ids)}")
    if not ids:
        return []
    scope = [Sketch.client == owner] if owner is not None else []
    existing = list(
        session.execute(select(Sketch.id).where(Sketch.id.in_(ids), *scope).order_by(Sketch.id)).scalars()
    )
    if not existing:
        return []
    when = when or utcnow()
    session.execute(
        insert(Review),
        [
            {"sketch_id": i, "verdict": verdict, "reviewer": reviewer, "created_at": when, "by_client": by_client}
            for i in existing
        ],
    )
    if by_client:
        sketches.set_client_verdict(session, existing, verdict)
    else:
        sketches.set_verdict(session, existing, verdict)
    return existing


def last_action(session: Session, reviewer: str) -> int | None:
    """Id of the reviewer's latest staff review, which names their last action; None if they have none."""
    return session.execute(
        select(func.max(Review.id)).where(Review.reviewer == reviewer, Review.by_client.is_(False))
    ).scalar_one_or_none()


def undo_last_action(session: Session, reviewer: str, action: int | None) -> dict[int, str | None]:
    """Withdraw the reviewer's last action if ``action`` names it; returns {sketch id: verdict now}.

    An action is every verdict the reviewer recorded in one go (``record_reviews`` stamps them with one
    time). Those reviews are deleted and each sketch gets back its latest remaining staff verdict.
    Raises NothingToUndo when ``action`` is not the reviewer's latest (undone already, or superseded).
    Caller commits.
    """
    if action is None or last_action(session, reviewer) != action:
        raise NothingToUndo("only your most recent review can be undone, and only once")
    stamp = select(Review.created_at).where(Review.id == action).scalar_subquery()
    mine = [Review.reviewer == reviewer, Review.by_client.is_(False), Review.created_at == stamp]
    ids = sorted(set(session.execute(select(Review.sketch_id).where(*mine)).scalars()))
    session.execute(delete(Review).where(*mine).execution_options(synchronize_session=False))
    sketches.restore_verdicts(session, ids)
    rows = session.execute(select(Sketch.id, Sketch.verdict).where(Sketch.id.in_(ids))).all()
    return {row.id: row.verdict for row in rows}


def review_history(session: Session, sketch_id: int) -> list[Review]:
    """All verdicts on a sketch, oldest first."""
    return list(
        session.execute(
            select(Review).where(Review.sketch_id == sketch_id).order_by(Review.created_at, Review.id)
        ).scalars()
    )
