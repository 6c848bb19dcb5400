"""Admin pages: dashboard users (create, deactivate) and API keys (create, shown once; revoke).

Deactivating a user and revoking a key are confirmed first: the button opens a page saying what will
happen, and only its form (``confirm=yes``, with the CSRF token) does it.
"""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from service.api.auth_key import forget_api_keys
from service.auth import bp
from service.auth.access import role_required
from service.auth.forms import ActionForm, ApiKeyForm, UserForm
from service.core import accounts
from service.core.schema import ROLE_ADMIN, ApiKey, User
from service.extensions import app_settings, db

CONFIRMED = "yes"


def _users_page(form: UserForm, status: int = 200):
    users = db.session.execute(select(User).order_by(User.username)).scalars().all()
    return render_template("admin/users.html", users=users, form=form, action=ActionForm()), status


@bp.get("/admin/users")
@role_required(ROLE_ADMIN)
def users():
    """List users with a form to add one."""
    return _users_page(UserForm())


@bp.post("/admin/users")
@role_required(ROLE_ADMIN)
def create_user():
    """Create a reviewer or admin."""
    form = UserForm()
    if not form.validate_on_submit():
        return _users_page(form, 400)
    if accounts.username_taken(db.session, form.username.data):
        form.username.errors.append("this username is taken")
        return _users_page(form, 409)
    accounts.create_user(db.session, form.username.data, form.password.data, form.role.data)
    db.session.commit()
    flash(f"User {form.username.data} created as {form.role.data}.", "success")
    return redirect(url_for("auth.users"))


def _confirm_page(title: str, text: str, button: str, action_url: str, cancel_url: str, fields: dict):
    """The confirmation step of a destructive admin action."""
    return render_template(
        "admin/confirm.html", title=title, text=text, button=button, action_url=action_url, cancel_url=cancel_url,
        fields={**fields, "confirm": CONFIRMED},
    )


def _confirm_deactivation(user: User):
    return _confirm_page(
        f"Deactivate {user.username}?",
        f"{user.username} ({user.role}) is logged out at once, everywhere, and cannot log in until an admin "
        "reactivates the account. Their reviews are kept.",
        f"Deactivate {user.username}",
        url_for("auth.toggle_user", user_id=user.id),
        url_for("auth.users"),
        {"active": "0"},
    )


@bp.get("/admin/users/<int:user_id>/active")
@role_required(ROLE_ADMIN)
def confirm_toggle_user(user_id: int):
    """The confirmation page before deactivating a user."""
    user = db.session.get(User, user_id) or abort(404)
    if user.id == current_user.id:
        abort(400, description="You cannot deactivate your own account.")
    if not user.active:
        return redirect(url_for("auth.users"))
    return _confirm_deactivation(user)


@bp.post("/admin/users/<int:user_id>/active")
@role_required(ROLE_ADMIN)
def toggle_user(user_id: int):
    """Set a user active or not (``active`` = 1/0; without it, the other state); never yourself.

    Deactivating needs ``confirm=yes`` (else the confirmation page answers); reactivating does not.
    """
    user = db.session.get(User, user_id) or abort(404)
    if user.id == current_user.id:
        flash("You cannot deactivate your own account.", "error")
        return redirect(url_for("auth.users"))
    wanted = request.form.get("active")
    active = (not user.active) if wanted not in ("0", "1") else wanted == "1"
    if active == user.active:
        return redirect(url_for("auth.users"))
    if not active and request.form.get("confirm") != CONFIRMED:
        return _confirm_deactivation(user)
    user.active = active
    db.session.commit()
    flash(f"User {user.username} {'reactivated' if user.active else 'deactivated'}.", "success")
    return redirect(url_for("auth.users"))


def _keys_page(form: ApiKeyForm, new_key: str | None = None, status: int = 200):
    keys = db.session.execute(select(ApiKey).order_by(ApiKey.revoked_at.is_not(None), ApiKey.name)).scalars().all()
    return render_template("admin/keys.html", keys=keys, form=form, action=ActionForm(), new_key=new_key), status


@bp.get("/admin/keys")
@role_required(ROLE_ADMIN)
def keys():
    """List API keys (prefixes only) with a form to create one."""
    return _keys_page(ApiKeyForm())


@bp.post("/admin/keys")
@role_required(ROLE_ADMIN)
def create_key():
    """Create a key and show it once, in this response only (never stored, never in a cookie)."""
    form = ApiKeyForm()
    if not form.validate_on_submit():
        return _keys_page(form, status=400)
    if accounts.api_key_name_taken(db.session, form.name.data):
        form.name.errors.append("a key with this name exists")
        return _keys_page(form, status=409)
    key = accounts.create_api_key(db.session, form.name.data)
    db.session.commit()
    return _keys_page(ApiKeyForm(formdata=None), new_key=key)


def _confirm_revocation(key: ApiKey):
    cache_s = app_settings(current_app).api_key_cache_s
    return _confirm_page(
        f"Revoke the API key {key.name}?",
        f"Requests with {key.name}'s key ({key.prefix}…) are refused at once by this web process and within "
        f"{cache_s:g} seconds by every other; the client needs a new key to submit again. A revoked key "
        "cannot be restored. Its sketches are kept.",
        f"Revoke {key.name}",
        url_for("auth.revoke_key", key_id=key.id),
        url_for("auth.keys"),
        {},
    )


@bp.get("/admin/keys/<int:key_id>/revoke")
@role_required(ROLE_ADMIN)
def confirm_revoke_key(key_id: int):
    """The confirmation page before revoking a key."""
    key = db.session.get(ApiKey, key_id) or abort(404)
    if key.revoked_at is not None:
        return redirect(url_for("auth.keys"))
    return _confirm_revocation(key)


@bp.post("/admin/keys/<int:key_id>/revoke")
@role_required(ROLE_ADMIN)
def revoke_key(key_id: int):
    """Revoke a key once confirmed (``confirm=yes``, else the confirmation page); refused from then on."""
    key = db.session.get(ApiKey, key_id) or abort(404)
    if key.revoked_at is None and request.form.get("confirm") != CONFIRMED:
        return _confirm_revocation(key)
    if accounts.revoke_api_key(key):
        db.session.commit()
        forget_api_keys()
        flash(f"Key {key.name} revoked.", "success")
    return redirect(url_for("auth.keys"))
