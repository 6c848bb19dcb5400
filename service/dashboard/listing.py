"""The sketch queries behind the galleries, the sketches page and the CSV exports (indexed, paginated in SQL)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, or_, select, true
from sqlalchemy.orm import Session

from service.core.schema import VERDICT_ANOMALY, VERDICT_CAT, Review, Sketch

STATES = ("all", "unreviewed", "anomaly", "cat")
# Each sort as (column, descending) pairs, ending in the id so that every row has one place. Score orders
# follow the log-odds: the same order as the score, without its ties where scores round to 1.
SORT_KEYS = {
    "score": ((Sketch.score_logit, True), (Sketch.id, True)),
    "score_asc": ((Sketch.score_logit, False), (Sketch.id, False)),
    "time": ((Sketch.submitted_at, True), (Sketch.id, True)),
    "time_asc": ((Sketch.submitted_at, False), (Sketch.id, False)),
}
SORTS = {name: tuple(c.desc() if d else c.asc() for c, d in keys) for name, keys in SORT_KEYS.items()}
SORT_NAMES = {"score": "score, highest first", "score_asc": "score, lowest first", "time": "newest first",
              "time_asc": "oldest first"}
DEFAULT_PER_PAGE = 48
MAX_PER_PAGE = 200

# Only what a card shows: never the drawing JSON or the bitmaps (metadata is bounded by the intake).
CARD_COLUMNS = (
    Sketch.id,
    Sketch.client,
    Sketch.client_ref,
    Sketch.submitted_at,
    Sketch.score,
    Sketch.score_logit,
    Sketch.threshold,
    Sketch.model_version,
    Sketch.verdict,
    Sketch.flagged,
    Sketch.status,
    Sketch.source_format,
    Sketch.meta,
)


def state_clause(state: str):
    """WHERE term for a review state."""
    if state == "unreviewed":
        return Sketch.verdict.is_(None)
    if state == "anomaly":
        return Sketch.verdict == VERDICT_ANOMALY
    if state == "cat":
        return Sketch.verdict == VERDICT_CAT
    if state == "all":
        return true()
    raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")


@dataclass
class Page:
    """One page of gallery rows plus what the pager needs."""

    items: list[Any]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        """Number of pages (at least 1)."""
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        """True when there is a previous page."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """True when there is a next page."""
        return self.page < self.pages


def flagged_query(state: str = "all") -> Select:
    """Flagged sketches in a review state; '= true' so (flagged, score) can serve it."""
    return select(*CARD_COLUMNS).where(Sketch.flagged == true(), state_clause(state))


def flagged_page(session: Session, state: str = "all", sort: str = "score", page: int = 1, per_page: int = DEFAULT_PER_PAGE) -> Page:
    """One page of flagged sketches, sorted and filtered in SQL (LIMIT/OFFSET, bound parameters)."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    total = session.execute(
        select(func.count()).select_from(Sketch).where(Sketch.flagged == true(), state_clause(state))
    ).scalar_one()
    pages = max(1, math.ceil(total / per_page))
    page = max(1, min(page, pages))
    rows = session.execute(
        flagged_query(state).order_by(*SORTS[sort]).limit(per_page).offset((page - 1) * per_page)
    ).all()
    return Page(items=rows, total=int(total), page=page, per_page=per_page)


def export_query(state: str = "all", sort: str = "score") -> Select:
    """Flagged or reviewed sketches, in the gallery's sort order, for the CSV export."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    return export_select(or_(Sketch.flagged == true(), Sketch.verdict.is_not(None)), state_clause(state)).order_by(
        *SORTS[sort]
    )


def export_select(*where) -> Select:
    """Sketches matching ``where`` with the staff reviewer of their verdict and their metadata, for a CSV export.

    A client's own label (``by_client``) is not the sketch's verdict, so its author is not the reviewer.
    """
    last = (
        select(Review.reviewer, Review.created_at)
        .where(Review.sketch_id == Sketch.id, Review.by_client.is_(False))
        .order_by(Review.id.desc())
        .limit(1)
    )
    last_reviewer = last.with_only_columns(Review.reviewer).scalar_subquery()
    last_reviewed = last.with_only_columns(Review.created_at).scalar_subquery()
    return select(
        Sketch.id,
        Sketch.client,
        Sketch.client_ref,
        Sketch.submitted_at,
        Sketch.scored_at,
        Sketch.score,
        Sketch.score_logit,
        Sketch.threshold,
        Sketch.flagged,
        Sketch.model_version,
        Sketch.verdict,
        last_reviewer.label("reviewer"),
        last_reviewed.label("reviewed_at"),
        Sketch.status,
        Sketch.meta.label("metadata"),
    ).where(*where)
