"""The sketch detail page: the drawing and its explanation, metadata, review history, and the way on.

Previous/next follow the list the page was opened from (its ``next`` parameter, see queues.py), so a
reviewer walks the flagged queue, a search result or the audit sample in that list's own order.
"""

from __future__ import annotations

import json

from flask import abort, current_app, render_template, request, url_for
from sqlalchemy import select

from service import quality, stats
from service.auth.access import safe_next
from service.core.schema import AuditSample, Sketch
from service.core.thresholds import current_threshold
from service.dashboard import bp
from service.dashboard.queues import Queue, queue_from_url
from service.extensions import app_settings, db
from service.reviews import review_history

DETAIL_SCALE = 8


def pretty_json(value) -> str:
    """Indented JSON as plain text; the template escapes it like any other user data."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def queue_progress(queue: Queue) -> stats.Progress | None:
    """How far the reviewers are through the list the page was opened from (queues only)."""
    if queue.kind == "flagged":
        return stats.flagged_progress(db.session)
    if queue.kind == "audit" and queue.round is not None:
        strata = quality.strata(db.session, queue.round, queue.round.threshold)
        return stats.Progress(reviewed=sum(s.reviewed for s in strata), total=sum(s.drawn for s in strata))
    return None


@bp.get("/sketches/<int:sketch_id>")
def detail(sketch_id: int):
    """One sketch: its strokes, images and heatmap, metadata, review history, previous/next in its list."""
    session = db.session
    sketch = session.get(Sketch, sketch_id) or abort(404, description=f"There is no sketch {sketch_id}.")
    back_url = safe_next(request.args.get("next")) or url_for("dashboard.flagged")
    queue = queue_from_url(session, back_url)
    prev_id, next_id = queue.items.neighbours(session, sketch_id, Sketch.id)
    stratum = None
    if queue.round is not None:
        stratum = session.execute(
            select(AuditSample.stratum).where(AuditSample.round_id == queue.round.id, AuditSample.sketch_id == sketch_id)
        ).scalar_one_or_none()
    meta = sketch.meta
    return render_template(
        "dashboard/detail.html",
        sketch=sketch,
        history=review_history(session, sketch_id),
        meta_items=sorted((str(k), v) for k, v in meta.items()) if isinstance(meta, dict) else [],
        meta_json=pretty_json(meta) if meta is not None else None,
        pretty_json=pretty_json,
        scale=DETAIL_SCALE,
        back_url=back_url,
        queue=queue,
        prev_url=url_for("dashboard.detail", sketch_id=prev_id, next=back_url) if prev_id else None,
        next_url=url_for("dashboard.detail", sketch_id=next_id, next=back_url) if next_id else None,
        progress=queue_progress(queue),
        stratum=stratum,
        threshold=current_threshold(session, app_settings(current_app)),
    )
