"""Who may see what: the Flask-Login user loader, JSON-aware login redirects, and role checks."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import abort, jsonify, redirect, request, url_for
from flask_login import current_user

from service.extensions import db, login_manager
from service.core.schema import ROLE_ADMIN, ROLE_REVIEWER, User

# Higher ranks include the rights of lower ones: an admin can also review.
ROLE_RANK = {ROLE_REVIEWER: 1, ROLE_ADMIN: 2}

login_manager.login_view = "auth.login"
login_manager.login_message = "Please log in to see this page."
login_manager.login_message_category = "info"


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """The logged-in user, or None when unknown or deactivated (which ends their session)."""
    try:
        user = db.session.get(User, int(user_id))
    except (TypeError, ValueError):
        return None
    return user if user is not None and user.active else None


def wants_json() -> bool:
    """True for fetch()/API style requests, which get JSON errors instead of HTML redirects."""
    if request.path.startswith("/api/"):
        return True
    if request.headers.get("X-Requested-With") == "fetch":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


@login_manager.unauthorized_handler
def unauthorized():
    """Anonymous visitors are sent to the login page; scripts get a 401 JSON error."""
    if wants_json():
        resp = jsonify(error={"field": None, "message": "login required"})
        resp.status_code = 401
        return resp
    return redirect(url_for("auth.login", next=safe_next(request.full_path)))


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a local path on this site, else None (no open redirects)."""
    if not target:
        return None
    target = target.rstrip("?") or "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def has_role(user, role: str) -> bool:
    """True when ``user`` holds ``role`` or a higher one."""
    rank = ROLE_RANK.get(getattr(user, "role", None), 0)
    return bool(getattr(user, "is_authenticated", False)) and rank >= ROLE_RANK[role]


def role_required(role: str):
    """Require a logged-in user with at least ``role``: anonymous -> login, too low a role -> 403."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not has_role(current_user, role):
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorator
