"""The audit page: draw a stratified random sample for review, review it, and read the unbiased estimates."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from service import audit, quality, stats
from service.auth.access import has_role
from service.core.schema import ROLE_ADMIN, AuditSample
from service.core.thresholds import current_threshold
from service.dashboard import bp
from service.dashboard.listing import CARD_COLUMNS, DEFAULT_PER_PAGE, MAX_PER_PAGE
from service.dashboard.queues import audit_list
from service.extensions import app_settings, db
from service.params import ParamError, parse_int

GALLERY_SCALE = 4


@bp.get("/audit")
def audit_page():
    """The current audit round: its strata, progress, estimates at the threshold in force, and its sketches."""
    session = db.session
    try:
        per_page = parse_int(request.args, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    except ParamError as exc:
        abort(400, description=str(exc))
    threshold = current_threshold(session, app_settings(current_app))
    r = audit.current_round(session)
    page = est = suggestion = None
    if r is not None:
        items = audit_list(r)
        try:
            page = items.page(session, (*CARD_COLUMNS, AuditSample.stratum), per_page,
                              request.args.get("after"), request.args.get("before"))
        except ValueError as exc:
            abort(400, description=str(exc))
        est = quality.estimate(session, r, threshold)
        suggestion = quality.f1_suggestion(session, r)
    return render_template(
        "dashboard/audit.html",
        round=r,
        page=page,
        estimate=est,
        suggestion=suggestion,
        threshold=threshold,
        per_stratum=audit.DEFAULT_PER_STRATUM,
        max_per_stratum=audit.MAX_PER_STRATUM,
        min_reviews=quality.MIN_REVIEWS_PER_STRATUM,
        reviewers=stats.reviewer_counts(session),
        can_restart=has_role(current_user, ROLE_ADMIN),
        scale=GALLERY_SCALE,
    )


@bp.post("/audit/draw")
def audit_draw():
    """Draw more sketches at random from each stratum; the first round, or a new one (admins), starts here."""
    session = db.session
    try:
        per_stratum = parse_int(request.form, "per_stratum", audit.DEFAULT_PER_STRATUM, 1, audit.MAX_PER_STRATUM)
    except ParamError as exc:
        flash(f"Nothing drawn: {exc.message}.", "error")
        return redirect(url_for("dashboard.audit_page"))
    r = audit.current_round(session)
    if request.form.get("new_round") and r is not None:
        if not has_role(current_user, ROLE_ADMIN):
            abort(403, description="Only an admin can start a new audit round.")
        r = None
    try:
        if r is None:
            r = audit.start_round(session, current_threshold(session, app_settings(current_app)), current_user.username)
        drawn = audit.draw(session, r, per_stratum)
        session.commit()
    except audit.AuditError as exc:
        session.rollback()
        flash(f"Nothing drawn: {exc}.", "error")
        return redirect(url_for("dashboard.audit_page"))
    except IntegrityError:
        # Someone drew into the same round at the same moment; their draw stands, this one can be repeated.
        session.rollback()
        flash("Someone else drew at the same moment; nothing was added. Draw again.", "error")
        return redirect(url_for("dashboard.audit_page"))
    current_app.logger.info("audit draw", extra={"user": current_user.username, "round": r.id, "drawn": drawn.total})
    if drawn.total == 0:
        flash("Every sketch of this round's frame has been drawn already.", "info")
    else:
        flash(f"Drew {drawn.above} sketch{'' if drawn.above == 1 else 'es'} above the threshold and "
              f"{drawn.below} at or below it, at random. Review them below.", "success")
    return redirect(url_for("dashboard.audit_page"))


