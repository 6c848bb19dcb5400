"""Flagged gallery and the bitmap images (input, reconstruction, pair, difference)."""

from __future__ import annotations

from flask import abort, current_app, make_response, render_template, request
from sqlalchemy import select

from service import images, stats
from service.dashboard import bp
from service.dashboard.listing import DEFAULT_PER_PAGE, MAX_PER_PAGE, SORT_NAMES, SORTS, STATES, flagged_page
from service.params import ParamError, parse_int
from service.extensions import app_settings, db
from service.core.schema import Sketch
from service.core.thresholds import current_threshold

GALLERY_SCALE = 4
# Images are derived from bytes that never change once stored; the ETag guards the rare rescore.
IMAGE_CACHE = "private, max-age=86400"


@bp.get("/flagged")
def flagged():
    """Flagged sketches with their explanations; sortable, filterable by review state, paginated."""
    state = request.args.get("state", "all")
    sort = request.args.get("sort", "score")
    try:
        if state not in STATES:
            raise ParamError("state", f"expected one of {', '.join(STATES)}")
        if sort not in SORTS:
            raise ParamError("sort", f"expected one of {', '.join(SORTS)}")
        page_no = parse_int(request.args, "page", 1, 1, 10**9)
        per_page = parse_int(request.args, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    except ParamError as exc:
        abort(400, description=str(exc))
    session = db.session
    page = flagged_page(session, state=state, sort=sort, page=page_no, per_page=per_page)
    return render_template(
        "dashboard/flagged.html",
        page=page,
        state=state,
        sort=sort,
        states=STATES,
        sorts=list(SORTS),
        sort_names=SORT_NAMES,
        scale=GALLERY_SCALE,
        threshold=current_threshold(session, app_settings(current_app)),
        progress=stats.flagged_progress(session),
        reviewers=stats.reviewer_counts(session),
    )


@bp.get("/sketches/<int:sketch_id>/<kind>.png")
def image(sketch_id: int, kind: str):
    """A PNG of the input, reconstruction, both stacked ('pair') or the difference map ('diff')."""
    if kind not in images.KINDS:
        abort(404)
    try:
        scale = images.check_scale(parse_int(request.args, "s", 4, images.MIN_SCALE, images.MAX_SCALE))
    except (ParamError, ValueError) as exc:
        abort(400, description=str(exc))
    row = db.session.execute(
        select(Sketch.input_bitmap, Sketch.reconstruction, Sketch.drawing).where(Sketch.id == sketch_id)
    ).first()
    if row is None:
        abort(404, description=f"sketch {sketch_id} does not exist")
    # A pair without its reconstruction still shows the drawing (over a grey square): gallery cards of
    # sketches flagged after scoring, until a worker has computed it.
    needs_recon = kind in ("reconstruction", "diff")
    recon = row.reconstruction
    inp = images.input_of(row.input_bitmap, row.drawing)
    if inp is None or (needs_recon and recon is None):
        abort(404, description="this image is not available: not scored yet, or not kept")
    tag = images.etag(kind, scale, inp, recon if kind != "input" else None)
    if tag in request.if_none_match:
        resp = make_response("", 304)
    else:
        try:
            png = images.render(kind, inp, recon, scale)
        except images.BitmapError as exc:
            abort(404, description=str(exc))
        resp = make_response(png)
        resp.mimetype = "image/png"
    resp.set_etag(tag)
    resp.headers["Cache-Control"] = IMAGE_CACHE
    return resp


@bp.post("/sketches/<int:sketch_id>/reconstruct")
def reconstruct(sketch_id: int):
    """Have a worker compute the reconstruction not kept at scoring (the model that scored it)."""
    from flask import flash, redirect, url_for

    from service.core.celery_app import RECONSTRUCT_TASK

    if db.session.get(Sketch, sketch_id) is None:
        abort(404, description=f"sketch {sketch_id} does not exist")
    try:
        current_app.extensions["celery"].send_task(RECONSTRUCT_TASK, args=[[sketch_id]])
    except Exception as exc:  # noqa: BLE001 - broker errors come in many types
        flash(f"Could not reach the workers ({type(exc).__name__}); try again later.", "error")
    else:
        flash("A worker is computing the reconstruction; reload the page in a moment.", "success")
    return redirect(url_for("dashboard.detail", sketch_id=sketch_id))
