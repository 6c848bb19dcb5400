"""Recording verdicts from the dashboard (one sketch or a selection), undoing the last one, and the CSV export."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from flask import Response, abort, flash, jsonify, redirect, request, stream_with_context, url_for
from flask_login import current_user

from service.auth.access import safe_next, wants_json
from service.dashboard import bp
from service.dashboard.listing import SORTS, STATES, export_query
from service.dashboard.queues import queue_from_url
from service.extensions import db
from service.core.schema import Sketch
from service.reviews import (
    MAX_BULK,
    NothingToUndo,
    ReviewError,
    UnknownSketch,
    check_verdict,
    last_action,
    record_review,
    record_reviews,
    undo_last_action,
)

EXPORT_COLUMNS = (
    "id", "client", "client_ref", "submitted_at", "scored_at", "score", "score_logit", "threshold",
    "flagged", "model_version", "verdict", "reviewer", "reviewed_at", "status", "metadata",
)
EXPORT_BATCH = 1000
# Spreadsheets run cells starting with these as formulas; client names come from outside.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _back(default: str) -> str:
    return safe_next(request.form.get("next") or request.args.get("next")) or default


def _undo(action: int) -> dict:
    """What a client needs to offer undoing ``action`` (the reviewer's latest review id)."""
    return {"url": url_for("dashboard.undo_review"), "action": action}


def flash_undo(text: str, action: int | None) -> None:
    """A success message with an Undo button for the action just recorded (base.html draws the button)."""
    if action is None:
        flash(text, "success")
    else:
        flash({"text": text, "action": action}, "undo")


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
            sketch_id=sketch_id,
            verdict=entry.verdict,
            reviewer=entry.reviewer,
            created_at=entry.created_at.isoformat(),
            undo=_undo(entry.id),
        )
    flash_undo(f"Sketch {sketch_id}: {verdict_label(verdict)}.", entry.id)
    if request.form.get("advance"):
        return redirect(_advance(sketch_id))
    return redirect(_back(url_for("dashboard.detail", sketch_id=sketch_id)))


def _advance(sketch_id: int) -> str:
    """The detail page of the sketch after ``sketch_id`` in the list the reviewer works through (auto-advance)."""
    queue = queue_from_url(db.session, safe_next(request.form.get("list")))
    _prev, nxt = queue.items.neighbours(db.session, sketch_id, Sketch.id)
    if nxt is None:
        flash(f"That was the last sketch of {queue.label}.", "info")
        return queue.url
    return url_for("dashboard.detail", sketch_id=nxt, next=queue.url)


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
    action = last_action(db.session, current_user.username) if done else None
    if wants_json():
        return jsonify(verdict=verdict, reviewed=done, undo=_undo(action) if action is not None else None)
    flash_undo(f"{len(done)} sketch{'' if len(done) == 1 else 'es'} marked {verdict_label(verdict)}.", action)
    return redirect(_back(url_for("dashboard.flagged")))


@bp.post("/review/undo")
def undo_review():
    """Withdraw the reviewer's last action (one verdict or one bulk review), named by ``action``."""
    raw = request.form.get("action") or (request.get_json(silent=True) or {}).get("action")
    try:
        action = int(raw)
    except (TypeError, ValueError):
        abort(400, description="action must be the id the review answer gave")
    try:
        restored = undo_last_action(db.session, current_user.username, action)
    except NothingToUndo as exc:
        db.session.rollback()
        if wants_json():
            return jsonify(error={"field": "action", "message": str(exc)}), 409
        flash(f"Nothing undone: {exc}.", "error")
        return redirect(_back(url_for("dashboard.flagged")))
    db.session.commit()
    n = len(restored)
    if wants_json():
        return jsonify(undone=n, verdicts={str(k): v for k, v in restored.items()})
    flash(f"Undone: {n} verdict{'' if n == 1 else 's'} withdrawn.", "success")
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
    if isinstance(value, (dict, list)):
        # Metadata: its JSON, so a spreadsheet or a script can read it back.
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


@bp.get("/export.csv")
def export_csv():
    """Flagged and reviewed sketches as CSV in the gallery's sort order, streamed in batches."""
    state = request.args.get("state", "all")
    sort = request.args.get("sort", "score")
    if state not in STATES:
        abort(400, description=f"state: expected one of {', '.join(STATES)}")
    if sort not in SORTS:
        abort(400, description=f"sort: expected one of {', '.join(SORTS)}")
    return csv_response(export_query(state, sort), f"sketchwatch-{state}-{sort}.csv")


def csv_response(stmt, filename: str) -> Response:
    """Rows of an export query as a CSV download, streamed in batches (never all rows in memory)."""
    stmt = stmt.execution_options(yield_per=EXPORT_BATCH)

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
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return resp
