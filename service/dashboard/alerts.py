"""Alert rules (admins only): list and create rules with their webhooks, pause, test and delete them, and the
history of every notification with its delivery attempts.

Webhook URLs are checked against the SSRF policy (``service.core.webhooks``) when saved. A webhook's secret
is shown once, when the rule is created (a generated one included), like an API key. A test send is queued
for the alerts worker, so the page never waits on a receiver.
"""

from __future__ import annotations

import logging

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from service.auth.access import role_required
from service.core import alerts, webhooks
from service.core.celery_app import DELIVER_WEBHOOK_TASK
from service.core.schema import ROLE_ADMIN, AlertRule
from service.dashboard import bp
from service.extensions import app_settings, db

log = logging.getLogger(__name__)

CONFIRMED = "yes"
HOOK_FIELDS = 3
HISTORY_ROWS = 100


class RuleForm(FlaskForm):
    """A new alert rule and up to three webhooks (more with the CLI)."""

    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    metric = SelectField("Metric", choices=list(alerts.METRICS))
    direction = SelectField("Fires when the value is", choices=list(alerts.DIRECTIONS))
    bound = StringField("Bound", validators=[DataRequired()])
    window = IntegerField("Window (seconds)", validators=[InputRequired(), NumberRange(1, alerts.MAX_WINDOW_S)], default=300)
    min_count = IntegerField("Minimum sketches", validators=[Optional(), NumberRange(0, 10**9)], default=20)
    client = StringField("Only client (empty: all)", validators=[Optional(), Length(max=100)])
    url_1 = StringField("Webhook URL", validators=[DataRequired(), Length(max=webhooks.MAX_URL_LENGTH)])
    secret_1 = StringField("Secret (empty: generated)", validators=[Optional(), Length(max=alerts.MAX_SECRET)])
    url_2 = StringField("Second webhook URL", validators=[Optional(), Length(max=webhooks.MAX_URL_LENGTH)])
    secret_2 = StringField("Secret", validators=[Optional(), Length(max=alerts.MAX_SECRET)])
    url_3 = StringField("Third webhook URL", validators=[Optional(), Length(max=webhooks.MAX_URL_LENGTH)])
    secret_3 = StringField("Secret", validators=[Optional(), Length(max=alerts.MAX_SECRET)])


def _settings():
    return app_settings(current_app)


def _rule_or_404(rule_id: int) -> AlertRule:
    rule = db.session.get(AlertRule, rule_id)
    if rule is None:
        abort(404)
    return rule


def _page(form: RuleForm, status: int = 200, created: list[tuple[str, str]] | None = None):
    allowlist_text = _settings().webhook_allowlist
    return render_template(
        "dashboard/alerts.html",
        form=form,
        rules=alerts.list_rules(db.session),
        describe=alerts.describe,
        created=created,
        allowlist=allowlist_text,
        interval=_settings().alert_interval_s,
    ), status


@bp.get("/alerts", endpoint="alerts")
@role_required(ROLE_ADMIN)
def alerts_page():
    """The rules, their state and last reading, and the form for a new one."""
    return _page(RuleForm(formdata=None))


def _spec(form: RuleForm) -> tuple[alerts.RuleSpec, list[tuple[str, str]]]:
    """The rule the form asks for, with generated secrets where none was typed."""
    try:
        bound = float(form.bound.data)
    except (TypeError, ValueError):
        raise alerts.RuleError("bound", "must be a number") from None
    hooks = []
    for k in range(1, HOOK_FIELDS + 1):
        url = (getattr(form, f"url_{k}").data or "").strip()
        if url:
            secret = (getattr(form, f"secret_{k}").data or "").strip() or alerts.new_secret()
            hooks.append((url, secret))
    spec = alerts.RuleSpec(
        name=form.name.data, metric=form.metric.data, direction=form.direction.data, bound=bound,
        window_s=int(form.window.data), min_count=int(form.min_count.data or 0), client=form.client.data,
        webhooks=tuple(hooks),
    )  # fmt: skip
    return spec, hooks


@bp.post("/alerts")
@role_required(ROLE_ADMIN)
def create_alert():
    """Create a rule; its webhooks' secrets are shown once on the answer."""
    form = RuleForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    try:
        spec, hooks = _spec(form)
        allowlist = webhooks.parse_allowlist(_settings().webhook_allowlist)
        spec = alerts.check_spec(spec, allowlist)
        rule = alerts.create_rule(db.session, spec, current_user.username)
    except alerts.RuleError as exc:
        target = {"webhook": form.url_1, "secret": form.secret_1, "window": form.window, "min_count": form.min_count}
        field = target.get(exc.field) or getattr(form, exc.field, form.name)
        field.errors = [exc.message]
        return _page(form, 400)
    except ValueError as exc:  # a bad SKETCHWATCH_WEBHOOK_ALLOWLIST
        form.url_1.errors = [str(exc)]
        return _page(form, 400)
    db.session.commit()
    log.info("alert rule created", extra={"user": current_user.username, "rule": rule.name})
    flash(f"Alert rule “{rule.name}” created: {alerts.describe(rule)}.", "success")
    return _page(RuleForm(formdata=None), created=hooks)


@bp.post("/alerts/<int:rule_id>/toggle")
@role_required(ROLE_ADMIN)
def toggle_alert(rule_id: int):
    """Pause or resume a rule (a paused rule keeps its state and is not evaluated)."""
    rule = _rule_or_404(rule_id)
    rule.enabled = not rule.enabled
    db.session.commit()
    flash(f"Alert rule “{rule.name}” {'resumed' if rule.enabled else 'paused'}.", "success")
    return redirect(url_for("dashboard.alerts"))


@bp.post("/alerts/<int:rule_id>/test")
@role_required(ROLE_ADMIN)
def test_alert(rule_id: int):
    """Queue a test notification to every webhook of the rule (see the history for the outcome)."""
    rule = _rule_or_404(rule_id)
    note = alerts.test_notification(db.session, _settings(), rule)
    deliveries = [d.id for d in note.deliveries]
    db.session.commit()
    celery = current_app.extensions.get("celery")
    for delivery_id in deliveries:
        try:
            celery.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id, 0])
        except Exception as exc:  # noqa: BLE001 - the alerts worker re-sends overdue deliveries
            log.warning("test delivery %d not queued (%s); the alerts worker re-sends it", delivery_id, exc)
    flash(f"Test notification queued to {len(deliveries)} webhook(s) of “{rule.name}”.", "success")
    return redirect(url_for("dashboard.alert_history", _anchor=f"notification-{note.id}"))


@bp.route("/alerts/<int:rule_id>/delete", methods=["GET", "POST"])
@role_required(ROLE_ADMIN)
def delete_alert(rule_id: int):
    """Delete a rule once confirmed (GET and unconfirmed POSTs answer the confirmation page)."""
    rule = _rule_or_404(rule_id)
    if request.method == "GET" or request.form.get("confirm") != CONFIRMED:
        return render_template(
            "admin/confirm.html",
            title="Delete alert rule",
            text=f"Delete “{rule.name}” ({alerts.describe(rule)}) and its {len(rule.webhooks)} webhook(s)? Its "
            "notifications stay in the history.",
            button="Delete rule",
            action_url=url_for("dashboard.delete_alert", rule_id=rule.id),
            cancel_url=url_for("dashboard.alerts"),
            fields={"confirm": CONFIRMED},
        )
    name = rule.name
    alerts.delete_rule(db.session, rule)
    db.session.commit()
    log.info("alert rule deleted", extra={"user": current_user.username, "rule": name})
    flash(f"Alert rule “{name}” deleted.", "success")
    return redirect(url_for("dashboard.alerts"))


@bp.get("/alerts/history")
@role_required(ROLE_ADMIN)
def alert_history():
    """Every notification, newest first, with each delivery and each of its attempts."""
    rule = (request.args.get("rule") or "").strip() or None
    notes = alerts.history(db.session, HISTORY_ROWS, rule)
    return render_template("dashboard/alert_history.html", notes=notes, rule=rule)
