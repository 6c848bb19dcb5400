"""Admin pages: dashboard users (create, deactivate) and API keys (create, shown once; revoke)."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import func, select

from service.api.auth_key import forget_api_keys
from service.auth import bp
from service.auth.access import role_required
from service.auth.forms import ActionForm, ApiKeyForm, UserForm
from service.extensions import db
from service.core.schema import ROLE_ADMIN, ApiKey, User, utcnow
from service.core.security import hash_api_key, hash_password, new_api_key

# Shown next to a key so admins can tell keys apart without ever seeing them again.
KEY_PREFIX_CHARS = 12


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
    taken = db.session.execute(
        select(func.count()).select_from(User).where(User.username == form.username.data)
    ).scalar_one()
    if taken:
        form.username.errors.append("this username is taken")
        return _users_page(form, 409)
    db.session.add(
        User(username=form.username.data, password_hash=hash_password(form.password.data), role=form.role.data)
    )
    db.session.commit()
    flash(f"User {form.username.data} created as {form.role.data}.", "success")
    return redirect(url_for("auth.users"))


@bp.post("/admin/users/<int:user_id>/active")
@role_required(ROLE_ADMIN)
def toggle_user(user_id: int):
    """Deactivate an active user or reactivate an inactive one (never yourself)."""
    user = db.session.get(User, user_id) or abort(404)
    if user.id == current_user.id:
        flash("You cannot deactivate your own account.", "error")
        return redirect(url_for("auth.users"))
    user.active = not user.active
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
    taken = db.session.execute(
        select(func.count()).select_from(ApiKey).where(ApiKey.name == form.name.data)
    ).scalar_one()
    if taken:
        form.name.errors.append("a key with this name exists")
        return _keys_page(form, status=409)
    key = new_api_key()
    db.session.add(ApiKey(name=form.name.data, prefix=key[:KEY_PREFIX_CHARS], key_hash=hash_api_key(key)))
    db.session.commit()
    return _keys_page(ApiKeyForm(formdata=None), new_key=key)


@bp.post("/admin/keys/<int:key_id>/revoke")
@role_required(ROLE_ADMIN)
def revoke_key(key_id: int):
    """Revoke a key; requests with it are refused from now on."""
    key = db.session.get(ApiKey, key_id) or abort(404)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        db.session.commit()
        forget_api_keys()
        flash(f"Key {key.name} revoked.", "success")
    return redirect(url_for("auth.keys"))
