"""The lists a reviewer walks through (flagged gallery, sketches page, audit sample), rebuilt from their URL.

The detail page knows the list it was opened from by that list's URL (its ``next`` parameter), so its
previous/next links and auto-advance follow the same filters and the same order as the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlsplit

from flask import url_for
from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from service import audit
from service.core.schema import AuditRound, AuditSample, Sketch
from service.dashboard.keyset import OrderedList, Segment
from service.dashboard.listing import SORT_KEYS, STATES, state_clause
from service.params import RANGES, ParamError, parse_time
from service.search import STATUSES, VERDICTS, SketchSearch

# The sketches page's orders; a score order (by the log-odds) lists the unscored sketches after the scored ones.
LIST_SORTS = {
    "new": "newest first",
    "old": "oldest first",
    "score": "score, highest first",
    "score_asc": "score, lowest first",
}
SEARCH_FIELDS = ("q", "score_min", "score_max", "client", "status", "flagged", "verdict", "model_version",
                 "range", "since", "until")


def _select(*where, join_audit: int | None = None):
    def base(*columns, filtered: bool = True):
        stmt = select(*columns).select_from(Sketch)
        if join_audit is not None:
            stmt = stmt.join(AuditSample, AuditSample.sketch_id == Sketch.id).where(AuditSample.round_id == join_audit)
        return stmt.where(*where) if filtered else stmt

    return base


def flagged_list(state: str = "all", sort: str = "score") -> OrderedList:
    """The flagged gallery in a review state and sort."""
    base = _select(Sketch.flagged == true(), state_clause(state))
    if sort not in ("score", "score_asc"):
        return OrderedList(base, [Segment((), SORT_KEYS[sort])])
    return OrderedList(base, _score_segments(sort == "score"))


def _score_segments(desc: bool) -> list[Segment]:
    """Scored sketches by (log-odds, id), then any without log-odds by id: no NULL ever sits in a key."""
    return [
        Segment((Sketch.score_logit.is_not(None),), ((Sketch.score_logit, desc), (Sketch.id, desc))),
        Segment((Sketch.score_logit.is_(None),), ((Sketch.id, desc),)),
    ]


def sketches_list(search: SketchSearch, sort: str = "new") -> OrderedList:
    """Every sketch matching ``search``, in one of LIST_SORTS."""
    base = _select(*search.clauses())
    if sort in ("new", "old"):
        return OrderedList(base, [Segment((), ((Sketch.id, sort == "new"),))])
    return OrderedList(base, _score_segments(sort == "score"))


def audit_list(r: AuditRound) -> OrderedList:
    """The sketches drawn into audit round ``r``, in the order they were drawn."""
    return OrderedList(_select(join_audit=r.id), [Segment((), ((AuditSample.id, False),))])


def parse_search(args: Mapping[str, str], now: datetime | None = None) -> SketchSearch:
    """The sketches page's search and filters from its query string; ParamError names a bad one."""

    def text(name: str, limit: int = 200) -> str | None:
        value = (args.get(name) or "").strip()
        if len(value) > limit:
            raise ParamError(name, f"at most {limit} characters")
        if "\x00" in value:
            raise ParamError(name, "must not contain NUL characters")
        return value or None

    def number(name: str) -> float | None:
        raw = text(name, 40)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ParamError(name, f"“{raw}” is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ParamError(name, "must be a finite number")
        return value

    def choice(name: str, options) -> str | None:
        value = text(name)
        if value is not None and value not in options:
            raise ParamError(name, f"expected one of {', '.join(options)}")
        return value

    flagged = choice("flagged", ("yes", "no"))
    window = text("range")
    since, until = parse_time(args, "since"), parse_time(args, "until")
    if window and window not in ("all", "custom"):
        if window not in RANGES:
            raise ParamError("range", f"expected one of all, custom, {', '.join(RANGES)}")
        since, until = (now or datetime.now(timezone.utc)) - RANGES[window], None
    elif window == "all":
        since = until = None
    if since and until and since >= until:
        raise ParamError("until", "must be later than From")
    lo, hi = number("score_min"), number("score_max")
    if lo is not None and hi is not None and lo > hi:
        raise ParamError("score_max", "must not be below the lowest score asked for")
    return SketchSearch(
        q=text("q"),
        score_min=lo,
        score_max=hi,
        client=text("client"),
        status=choice("status", STATUSES),
        flagged=None if flagged is None else flagged == "yes",
        verdict=choice("verdict", VERDICTS),
        model_version=text("model_version", 64),
        since=since,
        until=until,
    )


def clients(session: Session) -> list[str]:
    """Distinct clients, by a loose index scan of (client, submitted_at) (one probe per client)."""
    c = Sketch.client
    seed = select(func.min(c).label("v")).cte("clients", recursive=True)
    step = select(select(func.min(c)).where(c > seed.c.v).scalar_subquery().label("v")).where(seed.c.v.is_not(None))
    found = seed.union_all(step)
    return [r[0] for r in session.execute(select(found.c.v).where(found.c.v.is_not(None)))]


@dataclass
class Queue:
    """A list the reviewer came from: what it is called, where it lives and its order."""

    kind: str
    url: str
    label: str
    items: OrderedList
    round: AuditRound | None = None


def queue_from_url(session: Session, url: str | None) -> Queue:
    """The list behind a gallery URL (``/flagged?...``, ``/sketches?...``, ``/audit``); the flagged queue otherwise."""
    parts = urlsplit(url or "")
    args = dict(parse_qsl(parts.query))
    if parts.path == url_for("dashboard.sketches"):
        sort = args.get("sort", "new")
        try:
            search = parse_search(args)
        except ParamError:
            search = SketchSearch()
        return Queue("sketches", url, "all sketches", sketches_list(search, sort if sort in LIST_SORTS else "new"))
    if parts.path == url_for("dashboard.audit_page"):
        r = audit.current_round(session)
        if r is not None:
            return Queue("audit", url, "the audit sample", audit_list(r), round=r)
    state = args.get("state", "all")
    sort = args.get("sort", "score")
    state = state if state in STATES else "all"
    sort = sort if sort in SORT_KEYS else "score"
    if parts.path != url_for("dashboard.flagged"):
        url = url_for("dashboard.flagged")
    return Queue("flagged", url, "the flagged gallery", flagged_list(state, sort))
