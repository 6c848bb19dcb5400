"""The explanation images of a sketch: its strokes as vector SVG and the error heatmap on the threshold's scale."""

from __future__ import annotations

from flask import abort, make_response, request
from sqlalchemy import select

from service import explain, images
from service.core.schema import Sketch
from service.dashboard import bp
from service.extensions import db
from service.params import ParamError, parse_float, parse_int

# Derived from stored bytes that never change once scored; the ETag guards the rare rescore.
IMAGE_CACHE = "private, max-age=86400"


def _cached(tag: str, render, mimetype: str):
    if tag in request.if_none_match:
        resp = make_response("", 304)
    else:
        resp = make_response(render())
        resp.mimetype = mimetype
    resp.set_etag(tag)
    resp.headers["Cache-Control"] = IMAGE_CACHE
    return resp


@bp.get("/sketches/<int:sketch_id>/strokes.svg")
def strokes(sketch_id: int):
    """The stored drawing as an SVG, stroke by stroke (404 for image submissions, which have no strokes)."""
    row = db.session.execute(select(Sketch.drawing).where(Sketch.id == sketch_id)).first()
    if row is None:
        abort(404, description=f"There is no sketch {sketch_id}.")
    if row.drawing is None:
        abort(404, description="This sketch was sent as an image, so it has no strokes to draw.")
    try:
        svg = explain.strokes_svg(row.drawing, title=f"sketch {sketch_id}")
    except explain.DrawingError as exc:
        abort(404, description=f"The stored drawing cannot be drawn: {exc}.")
    # Drawn from numbers only (no text of the client's), under the pages' CSP like every dashboard answer.
    return _cached(explain.etag("strokes", svg), lambda: svg, "image/svg+xml")


@bp.get("/sketches/<int:sketch_id>/heatmap.png")
def heatmap(sketch_id: int):
    """Where the reconstruction error is, coloured on a fixed scale pinned to threshold ``t``."""
    try:
        t = parse_float(request.args, "t")
        if not 0.0 <= t <= 1.0:
            raise ParamError("t", "must be between 0 and 1")
        scale = images.check_scale(parse_int(request.args, "s", 4, images.MIN_SCALE, images.MAX_SCALE))
    except (ParamError, ValueError) as exc:
        abort(400, description=str(exc))
    row = db.session.execute(
        select(Sketch.input_bitmap, Sketch.reconstruction, Sketch.drawing).where(Sketch.id == sketch_id)
    ).first()
    if row is None:
        abort(404, description=f"There is no sketch {sketch_id}.")
    inp = images.input_of(row.input_bitmap, row.drawing)
    if inp is None or row.reconstruction is None:
        abort(404, description="This sketch has no reconstruction: not scored yet, or not kept.")
    tag = explain.etag("heat", repr(t), scale, inp, bytes(row.reconstruction))
    try:
        return _cached(tag, lambda: explain.heatmap_png(inp, row.reconstruction, t, scale), "image/png")
    except images.BitmapError as exc:
        abort(404, description=str(exc))
