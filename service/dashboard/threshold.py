"""Threshold page: live preview, suggestions, apply (admins only) and the change history."""

from __future__ import annotations

import math

from flask import current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, select, true
from wtforms import FloatField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, ValidationError

from service.extensions import app_settings
from service import stats
from service.auth.access import has_role, role_required
from service.dashboard import bp
from service.dashboard.charts import histogram_chart
from service.dashboard.params import ParamError, parse_float
from service.extensions import db
from service.core.model_info import model_meta
from service.core.schema import ROLE_ADMIN, Sketch, ThresholdChange
from service.core.thresholds import apply_threshold, current_threshold

HISTORY_ROWS = 50
SLIDER_STEPS = 1000


def _finite(_form, field) -> None:
    if field.data is None or not math.isfinite(field.data):
        raise ValidationError("must be a finite number")


class ThresholdForm(FlaskForm):
    """A new threshold and why."""

    value = FloatField("New threshold", validators=[InputRequired(), _finite])
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])


def _settings():
    return app_settings(current_app)


def _percentiles() -> list[tuple[float, float]]:
    return stats.parse_percentiles(model_meta(_settings().model_dir))


def _page(form: ThresholdForm, status: int = 200):
    session = db.session
    threshold = current_threshold(session, _settings())
    hist = stats.histogram(session)
    # The slider spans the stored scores and the current threshold, wherever that lies.
    lo, hi = min(hist.lo, threshold), max(hist.hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    history = session.execute(select(ThresholdChange).order_by(ThresholdChange.id.desc()).limit(HISTORY_ROWS)).scalars().all()
    changes = session.execute(select(func.count()).select_from(ThresholdChange)).scalar_one()
    percentiles = _percentiles()
    return render_template(
        "dashboard/threshold.html",
        form=form,
        threshold=threshold,
        preview=stats.preview(session, threshold, percentiles),
        percentiles=percentiles,
        f1=stats.f1_optimal_threshold(session),
        chart=histogram_chart(hist, threshold),
        slider_lo=lo,
        slider_hi=hi,
        slider_step=(hi - lo) / SLIDER_STEPS,
        history=history,
        changes=changes,
        can_apply=has_role(current_user, ROLE_ADMIN),
    ), status


@bp.get("/threshold")
def threshold():
    """The threshold page."""
    form = ThresholdForm(formdata=None, value=current_threshold(db.session, _settings()))
    return _page(form)


@bp.get("/threshold/preview")
def threshold_preview():
    """JSON: what threshold ``t`` would flag, its precision/recall on reviews, and percentile position."""
    try:
        t = parse_float(request.args, "t")
    except ParamError as exc:
        resp = jsonify(error={"field": exc.field, "message": exc.message})
        resp.status_code = 400
        return resp
    return jsonify(stats.preview(db.session, t, _percentiles()).to_dict())


@bp.post("/threshold")
@role_required(ROLE_ADMIN)
def apply():
    """Apply a new threshold: recorded with who/when/old/new/reason, all stored sketches re-flagged."""
    form = ThresholdForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    change = apply_threshold(db.session, _settings(), form.value.data, current_user.username, form.reason.data.strip())
    db.session.commit()
    flagged = db.session.execute(select(func.count()).select_from(Sketch).where(Sketch.flagged == true())).scalar_one()
    current_app.logger.info(
        "threshold changed", extra={"user": current_user.username, "old": change.previous, "new": change.value}
    )
    flash(f"Threshold changed from {change.previous:.6g} to {change.value:.6g}; {flagged:,} sketches are now flagged.", "success")
    return redirect(url_for("dashboard.threshold"))
