"""Login and logout."""

from __future__ import annotations

from functools import lru_cache

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select

from service.extensions import app_settings
from service.auth import bp
from service.auth.access import safe_next
from service.auth.forms import ActionForm, LoginForm
from service.auth.headers import add_page_headers
from service.extensions import db, limiter
from service.core.schema import User
from service.core.security import hash_password, verify_password

bp.after_request(add_page_headers)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified when the username is unknown, so a wrong name costs the same time as a wrong password.
    return hash_password("not-a-real-password")


def _login_limit() -> str:
    return app_settings(current_app).ratelimit_login


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def login():
    """Show the login form; on a valid POST start a session and go to ``next``."""
    next_url = safe_next(request.values.get("next"))
    if current_user.is_authenticated:
        return redirect(next_url or url_for("dashboard.overview"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        user = db.session.execute(select(User).where(User.username == form.username.data)).scalar_one_or_none()
        ok = verify_password(user.password_hash if user else _dummy_hash(), form.password.data)
        if user is not None and ok and user.active:
            login_user(user)
            current_app.logger.info("login", extra={"user": user.username})
            return redirect(next_url or url_for("dashboard.overview"))
        error = "Unknown user, wrong password, or deactivated account."
    status = 401 if error else 200
    return render_template("auth/login.html", form=form, error=error, next_url=next_url), status


@bp.post("/logout")
@login_required
def logout():
    """End the session (POST with CSRF, so another site cannot log a user out)."""
    form = ActionForm()
    if not form.validate_on_submit():
        return redirect(url_for("dashboard.overview"))
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
