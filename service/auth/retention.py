"""Admin page: the retention limits (editable, each change recorded with who made it), the latest runs and a
button that has the workers apply the limits now.
"""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import IntegerField
from wtforms.validators import NumberRange, Optional

from service.auth import bp
from service.auth.access import role_required
from service.auth.forms import ActionForm
from service.core import retention
from service.core.celery_app import RETENTION_TASK
from service.core.schema import ROLE_ADMIN
from service.extensions import app_settings, db

_HELP = "days; empty or 0 keeps them for ever"


class RetentionForm(FlaskForm):
    """The three retention limits, in days (empty or 0: for ever)."""

    images_days = IntegerField("Images of unflagged, unreviewed sketches", validators=[Optional(), NumberRange(0, retention.MAX_DAYS)],
                               description=_HELP)  # fmt: skip
    sketches_days = IntegerField("Unflagged, unreviewed sketches", validators=[Optional(), NumberRange(0, retention.MAX_DAYS)],
                                 description=_HELP)  # fmt: skip
    kept_days = IntegerField("Flagged or reviewed sketches, with their reviews",
                             validators=[Optional(), NumberRange(0, retention.MAX_DAYS)],
                             description=_HELP + "; at least as long as the line above")  # fmt: skip


def _page(form: RetentionForm, status: int = 200):
    session = db.session
    return render_template(
        "admin/retention.html",
        form=form,
        policy=retention.policy(session, app_settings(current_app)),
        runs=retention.runs(session),
        changes=retention.changes(session),
        action=ActionForm(),
        kinds=retention.KINDS,
    ), status


@bp.get("/admin/retention")
@role_required(ROLE_ADMIN)
def retention_page():
    """The limits in force, a form to change them, the latest runs and changes."""
    pol = retention.policy(db.session, app_settings(current_app))
    return _page(RetentionForm(data=pol.limits()))


@bp.post("/admin/retention")
@role_required(ROLE_ADMIN)
def save_retention():
    """Save new limits (recorded with the admin's name); the next run applies them."""
    form = RetentionForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    try:
        retention.set_policy(db.session, app_settings(current_app), current_user.username,
                             **{name: getattr(form, name).data for name in retention.LIMITS})  # fmt: skip
    except retention.PolicyError as exc:
        db.session.rollback()
        getattr(form, exc.field).errors.append(exc.message)
        return _page(form, 400)
    db.session.commit()
    flash("Retention limits saved; the next run applies them.", "success")
    return redirect(url_for("auth.retention_page"))


@bp.post("/admin/retention/run")
@role_required(ROLE_ADMIN)
def run_retention():
    """Have the workers apply the limits now (the beat task, sent at once)."""
    if not ActionForm().validate_on_submit():
        flash("The form expired; try again.", "error")
        return redirect(url_for("auth.retention_page"))
    try:
        current_app.extensions["celery"].send_task(RETENTION_TASK)
    except Exception as exc:  # noqa: BLE001 - broker errors come in many types
        flash(f"Could not reach the workers ({type(exc).__name__}); beat will run it on schedule.", "error")
    else:
        flash("Retention run queued; its report appears below when it is done.", "success")
    return redirect(url_for("auth.retention_page"))
