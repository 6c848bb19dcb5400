"""The sketches page: every stored sketch, searched and filtered, keyset-paginated in SQL, and its CSV."""

from __future__ import annotations

from flask import abort, current_app, render_template, request
from sqlalchemy import func, select

from service import stats
from service.core.schema import Sketch
from service.core.thresholds import current_threshold
from service.dashboard import bp
from service.dashboard.listing import CARD_COLUMNS, DEFAULT_PER_PAGE, MAX_PER_PAGE, export_select
from service.dashboard.queues import LIST_SORTS, SEARCH_FIELDS, clients, parse_search, sketches_list
from service.dashboard.review import csv_response
from service.extensions import app_settings, db
from service.params import ParamError, parse_int
from service.search import MAX_DB_ID, STATUSES, VERDICTS, SketchSearch

GALLERY_SCALE = 4


def _sort() -> str:
    sort = request.args.get("sort", "new")
    if sort not in LIST_SORTS:
        raise ParamError("sort", f"expected one of {', '.join(LIST_SORTS)}")
    return sort


@bp.get("/sketches")
def sketches():
    """Every sketch, newest first by default: search by id, client_ref or metadata, filter, page with cursors."""
    session = db.session
    error = None
    try:
        search = parse_search(request.args)
        sort = _sort()
        per_page = parse_int(request.args, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        items = sketches_list(search, sort)
        page = items.page(session, CARD_COLUMNS, per_page, request.args.get("after"), request.args.get("before"))
        total = session.execute(select(func.count()).select_from(Sketch).where(*search.clauses())).scalar_one()
    except ParamError as exc:
        error, search, sort, per_page, page, total = exc, SketchSearch(), "new", DEFAULT_PER_PAGE, None, 0
    except ValueError as exc:
        error, search, sort, per_page, page, total = ParamError("after", str(exc)), SketchSearch(), "new", DEFAULT_PER_PAGE, None, 0
    # A number may be an id: offer that sketch at once, whatever else the text matches.
    digits = (search.q or "").lstrip("#")
    id_match = None
    if digits.isascii() and digits.isdigit() and 0 < int(digits) <= MAX_DB_ID:
        id_match = session.get(Sketch, int(digits))
    args = {k: request.args[k] for k in SEARCH_FIELDS if request.args.get(k)}
    if sort != "new":
        args["sort"] = sort
    if per_page != DEFAULT_PER_PAGE:
        args["per_page"] = per_page
    body = render_template(
        "dashboard/sketches.html",
        page=page,
        total=total,
        search=search,
        id_match=id_match,
        filtering=any(v is not None for k, v in vars(search).items() if k != "q"),
        sort=sort,
        sorts=LIST_SORTS,
        args=args,
        form=request.args,
        error=error,
        statuses=STATUSES,
        verdicts=VERDICTS,
        clients=clients(session),
        versions=stats.model_versions(session),
        scale=GALLERY_SCALE,
        threshold=current_threshold(session, app_settings(current_app)),
    )
    return body, (400 if error else 200)


@bp.get("/sketches/export.csv")
def sketches_csv():
    """The sketches the page's search and filters select, as CSV in the page's order, with metadata."""
    try:
        search = parse_search(request.args)
        sort = _sort()
    except ParamError as exc:
        abort(400, description=str(exc))
    order = {
        "new": (Sketch.id.desc(),),
        "old": (Sketch.id.asc(),),
        "score": (Sketch.score_logit.desc().nulls_last(), Sketch.id.desc()),
        "score_asc": (Sketch.score_logit.asc().nulls_last(), Sketch.id.asc()),
    }[sort]
    return csv_response(export_select(*search.clauses()).order_by(*order), f"sketchwatch-sketches-{sort}.csv")
