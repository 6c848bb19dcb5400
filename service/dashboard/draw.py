"""Drawing page: draw on a canvas, submit through the normal intake, poll until the worker scored it."""

from __future__ import annotations

from flask import jsonify, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from service.dashboard import bp
from service.extensions import db
from service.intake import accept
from service.core.schema import STATUS_SCORED, Sketch

POLL_INTERVAL_MS = 500
POLL_TIMEOUT_MS = 120_000


def dashboard_client() -> str:
    """Client name recorded on sketches drawn in the dashboard."""
    return f"dashboard:{current_user.username}"


def _error(status: int, field: str | None, message: str):
    resp = jsonify(error={"field": field, "message": message})
    resp.status_code = status
    return resp


@bp.get("/draw")
def draw():
    """The drawing canvas."""
    return render_template("dashboard/draw.html", poll_interval=POLL_INTERVAL_MS, poll_timeout=POLL_TIMEOUT_MS)


@bp.post("/draw")
def submit_drawing():
    """Accept raw canvas strokes ``{"drawing": [[[x..],[y..],[t..]], ...]}`` (JSON, CSRF header)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "drawing" not in body:
        return _error(400, "drawing", "send a JSON object with the canvas strokes in 'drawing'")
    result = accept(dashboard_client(), [{"drawing": body["drawing"], "format": "raw"}])
    if result.rejected:
        _index, field, message = result.rejected[0]
        return _error(400, field, message)
    _index, sketch_id, _duplicate = result.accepted[0]
    return (
        jsonify(
            id=sketch_id,
            status_url=url_for("dashboard.draw_status", sketch_id=sketch_id),
            detail_url=url_for("dashboard.detail", sketch_id=sketch_id),
        ),
        202,
    )


@bp.get("/draw/status/<int:sketch_id>")
def draw_status(sketch_id: int):
    """JSON status of a sketch; score, flag and image URLs once the worker has scored it."""
    row = db.session.execute(
        select(Sketch.id, Sketch.status, Sketch.score, Sketch.score_logit, Sketch.flagged, Sketch.threshold,
               Sketch.model_version, Sketch.error)
        .where(Sketch.id == sketch_id)
    ).first()
    if row is None:
        return _error(404, None, f"sketch {sketch_id} does not exist")
    out = {"id": row.id, "status": row.status, "error": row.error}
    if row.status == STATUS_SCORED:
        out.update(
            score=row.score,
            score_logit=row.score_logit,
            flagged=bool(row.flagged),
            threshold=row.threshold,
            model_version=row.model_version,
            input_url=url_for("dashboard.image", sketch_id=row.id, kind="input", s=6),
            reconstruction_url=url_for("dashboard.image", sketch_id=row.id, kind="reconstruction", s=6),
            diff_url=url_for("dashboard.image", sketch_id=row.id, kind="diff", s=6),
            detail_url=url_for("dashboard.detail", sketch_id=row.id),
        )
    return jsonify(out)
