"""Threshold page: live preview, suggestions, apply (admins only, confirmed) and the change history.

A new value must lie within the score's range (stats.threshold_bounds) and is applied only after the
admin confirmed it, having been told how many stored sketches change flag (counted in SQL).
"""

from __future__ import annotations

from flask import current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, select, true
from wtforms import HiddenField, StringField
from wtforms.validators import DataRequired, Length, StopValidation

from service.extensions import app_settings
from service import audit, quality, stats
from service.auth.access import has_role, role_required
from service.dashboard import bp
from service.dashboard.charts import histogram_chart
from service.params import ParamError, parse_threshold, parse_threshold_logit
from service.extensions import db
from service.core import sketches
from service.core.model_info import calibration, model_meta
from service.core.schema import ROLE_ADMIN, Sketch, ThresholdChange
from service.core.thresholds import apply_threshold, current_threshold

HISTORY_ROWS = 50
SLIDER_STEPS = 1000
CONFIRMED = "yes"


def _threshold_value(form: "ThresholdForm", field) -> None:
    # A text field parsed here: one message whatever is wrong, and the box keeps what was typed. An empty box
    # with the log-odds box filled takes the threshold those log-odds stand for.
    try:
        if not (field.data or "").strip() and (form.value_logit.data or "").strip():
            form.number = parse_threshold_logit(form.value_logit.data, form.bounds)
        else:
            form.number = parse_threshold(field.data, form.bounds)
    except ParamError as exc:
        raise StopValidation(exc.message) from None


class ThresholdForm(FlaskForm):
    """A new threshold, why, and whether the admin confirmed it."""

    value = StringField("New threshold", validators=[_threshold_value])
    value_logit = StringField("or as log-odds")
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])
    confirm = HiddenField()

    bounds: tuple[float, float] = stats.SCORE_RANGE
    number: float | None = None


def _settings():
    return app_settings(current_app)


def _percentiles() -> list[tuple[float, float]]:
    return stats.parse_percentiles(model_meta(_settings().model_dir))


def _page(form: ThresholdForm, status: int = 200, confirm: stats.FlagChanges | None = None):
    session = db.session
    threshold = current_threshold(session, _settings())
    shown = form.number if form.number is not None else threshold
    hist = stats.histogram(session)
    # The slider spans the stored scores and the current threshold, wherever that lies.
    lo, hi = min(hist.lo, threshold), max(hist.hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    history = session.execute(select(ThresholdChange).order_by(ThresholdChange.id.desc()).limit(HISTORY_ROWS)).scalars().all()
    changes = session.execute(select(func.count()).select_from(ThresholdChange)).scalar_one()
    percentiles = _percentiles()
    audit_round = audit.current_round(session)
    return render_template(
        "dashboard/threshold.html",
        form=form,
        threshold=threshold,
        preview=stats.preview(session, shown, percentiles),
        flips=stats.flag_changes(session, shown),
        shown=shown,
        bounds=form.bounds,
        confirm=confirm,
        percentiles=percentiles,
        # The model's calibrated threshold with the interval of the share of cats it flags (scipy, loaded lazily).
        calibration=stats.calibration_view(calibration(_settings().model_dir)),
        # Suggestions and precision/recall rest on the audit sample's weighted reviews (service.quality).
        estimate=quality.estimate(session, audit_round, shown),
        chip_estimates={v: quality.estimate(session, audit_round, v) for _p, v in percentiles},
        f1=quality.f1_suggestion(session, audit_round),
        audit_round=audit_round,
        min_reviews=quality.MIN_REVIEWS_PER_STRATUM,
        chart=histogram_chart(hist, threshold),
        slider_lo=lo,
        slider_hi=hi,
        slider_step=(hi - lo) / SLIDER_STEPS,
        history=history,
        changes=changes,
        can_apply=has_role(current_user, ROLE_ADMIN),
        reflag=reflag_progress(session),
    ), status


def reflag_progress(session) -> dict | None:
    """The re-flag a large threshold change left to beat, with the rows still to change (None when none runs)."""
    progress = sketches.reflag_progress(session)
    if progress is None or not progress["running"]:
        return None
    progress["remaining"] = stats.flag_changes(session, progress["threshold"]).total
    return progress


@bp.get("/threshold")
def threshold():
    """The threshold page."""
    form = ThresholdForm(formdata=None, value=repr(current_threshold(db.session, _settings())))
    form.bounds = stats.threshold_bounds(db.session)
    return _page(form)


@bp.get("/threshold/preview")
def threshold_preview():
    """JSON: what threshold ``t`` would flag, how many flags change, precision/recall, percentile position.

    A value an admin could not apply (outside the score's range, not a number) is a 400 with the message
    the apply form would show. Without ``t``, ``logit`` gives the threshold as log-odds.
    """
    try:
        bounds = stats.threshold_bounds(db.session)
        if request.args.get("t") is None and request.args.get("logit") is not None:
            t = parse_threshold_logit(request.args.get("logit"), bounds, "logit")
        else:
            t = parse_threshold(request.args.get("t"), bounds, "t")
    except ParamError as exc:
        resp = jsonify(error={"field": exc.field, "message": exc.message})
        resp.status_code = 400
        return resp
    body = stats.preview(db.session, t, _percentiles()).to_dict()
    body["threshold_logit"] = stats.logit(t)
    body["changes"] = stats.flag_changes(db.session, t).to_dict()
    body["reflag"] = reflag_progress(db.session)
    est = quality.estimate(db.session, audit.current_round(db.session), t)
    body["estimate"] = est.to_dict() if est is not None else None
    return jsonify(body)


@bp.post("/threshold")
@role_required(ROLE_ADMIN)
def apply():
    """Apply a new threshold once confirmed: recorded with who/when/old/new/reason, stored sketches re-flagged.

    A valid value not yet confirmed answers the page with the confirmation: how many sketches change flag.
    """
    form = ThresholdForm()
    form.bounds = stats.threshold_bounds(db.session)
    if not form.validate_on_submit():
        return _page(form, 400)
    if form.confirm.data != CONFIRMED:
        return _page(form, confirm=stats.flag_changes(db.session, form.number))
    change = apply_threshold(db.session, _settings(), form.number, current_user.username, form.reason.data.strip())
    db.session.commit()
    flagged = db.session.execute(select(func.count()).select_from(Sketch).where(Sketch.flagged == true())).scalar_one()
    current_app.logger.info(
        "threshold changed", extra={"user": current_user.username, "old": change.previous, "new": change.value}
    )
    flash(f"Threshold changed from {change.previous:.6g} to {change.value:.6g}; {flagged:,} sketches are now flagged.", "success")
    return redirect(url_for("dashboard.threshold"))
