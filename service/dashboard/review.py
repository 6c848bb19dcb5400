"""Recording verdicts from the dashboard (one sketch or a selection) and the CSV export."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from flask import Response, abort, flash, jsonify, redirect, request, stream_with_context, url_for
from flask_login import current_user

from service.auth.access import safe_next, wants_json
from service.dashboard import bp
from service.dashboard.listing import STATES, export_query
from service.extensions import db
from service.reviews import MAX_BULK, ReviewError, UnknownSketch, check_verdict, record_review, record_reviews

EXPORT_COLUMNS = (
    "id", "client", "client_ref", "submitted_at", "scored_at", "score", "threshold",
    "flagged", "model_version", "verdict", "reviewer", "reviewed_at",
)
EXPORT_BATCH = 1000
# Spreadsheets run cells starting with these as formulas; client names come from outside.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _back(default: str) -> str:
    return safe_next(request.form.get("next") or request.args.get("next")) or default


@bp.post("/sketches/<int:sketch_id>/review")
def review(sketch_id: int):
    """Record a verdict on one sketch; JSON for fetch() callers, else redirect back."""
    verdict = (request.form.get("verdict") or (request.get_json(silent=True) or {}).get("verdict") or "").strip()
    try:
        check_verdict(verdict)
        entry = record_review(db.session, sketch_id, verdict, current_user.username)
    except ReviewError as exc:
        db.session.rollback()
        abort(404 if isinstance(exc, UnknownSketch) else 400, description=str(exc))
    db.session.commit()
    if wants_json():
        return jsonify(
            sketch_id=sketch_id, verdict=entry.verdict, reviewer=entry.reviewer, created_at=entry.created_at.isoformat()
        )
    flash(f"Sketch {sketch_id}: {verdict_label(verdict)}.", "success")
    return redirect(_back(url_for("dashboard.detail", sketch_id=sketch_id)))


@bp.post("/review/bulk")
def bulk_review():
    """Record the same verdict on every selected sketch."""
    verdict = (request.form.get("verdict") or "").strip()
    try:
        ids = [int(v) for v in request.form.getlist("ids")]
    except ValueError:
        abort(400, description="ids must be integers")
    if not ids:
        flash("Select at least one sketch first.", "error")
        return redirect(_back(url_for("dashboard.flagged")))
    if len(ids) > MAX_BULK:
        abort(400, description=f"at most {MAX_BULK} sketches per bulk review")
    try:
        done = record_reviews(db.session, ids, verdict, current_user.username)
    except ReviewError as exc:
        db.session.rollback()
        abort(400, description=str(exc))
    db.session.commit()
    if wants_json():
        return jsonify(verdict=verdict, reviewed=done)
    flash(f"{len(done)} sketches marked {verdict_label(verdict)}.", "success")
    return redirect(_back(url_for("dashboard.flagged")))


def verdict_label(verdict: str | None) -> str:
    """Human wording of a verdict."""
    return {"anomaly": "confirmed anomaly", "cat": "it's a cat"}.get(verdict or "", "unreviewed")


def csv_cell(value) -> str:
    """One CSV cell: ISO times, plain numbers, and text defused against spreadsheet formulas."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


@bp.get("/export.csv")
def export_csv():
    """Flagged and reviewed sketches as CSV, streamed in batches (never all rows in memory)."""
    state = request.args.get("state", "all")
    if state not in STATES:
        abort(400, description=f"state: expected one of {', '.join(STATES)}")
    stmt = export_query(state).execution_options(yield_per=EXPORT_BATCH)

    def rows():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(EXPORT_COLUMNS)
        yield buf.getvalue()
        with db.session_scope() as session:
            for partition in session.execute(stmt).partitions():
                buf.seek(0)
                buf.truncate()
                for row in partition:
                    writer.writerow([csv_cell(v) for v in row])
                yield buf.getvalue()

    resp = Response(stream_with_context(rows()), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="sketchwatch-{state}.csv"'
    return resp
