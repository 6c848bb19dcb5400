"""Error pages for people (styled, with the menu, in plain words) and JSON errors for fetch() callers.

Unknown addresses anywhere outside the API get the styled 404 page. A form or a keyboard verdict sent
after the session expired is not an error to show: the reviewer is sent to log in and then back to the
page they were on (``resume=1`` tells its script to restore the selection it kept in sessionStorage).
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from flask import flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from service.auth import bp as auth_bp
from service.auth.access import safe_next, wants_json
from service.dashboard import bp
from service.extensions import db

API_PREFIX = "/api/"
TITLES = {
    400: "That request did not work",
    403: "Not for your account",
    404: "Page not found",
    405: "That cannot be done here",
    409: "Already changed",
    413: "Too large",
    429: "Too many attempts",
    500: "Something went wrong",
}
# Werkzeug's default texts speak to developers; these speak to the person at the screen.
PLAIN = {
    400: "The page sent something this site could not use. Go back and try again.",
    403: "Your account cannot open this page. Ask an admin if you need it.",
    404: "There is nothing at this address. It may have been mistyped, or the item no longer exists.",
    405: "This address does not accept that kind of request.",
    413: "What was sent is larger than this site accepts.",
    429: "Too many attempts in a short time. Wait a minute, then try again.",
    500: "Something went wrong on our side and nothing was changed. Try again in a moment; if it keeps "
    "happening, tell an admin the time it happened.",
}
EXPIRED = "Your session has expired. Log in again to carry on where you were; nothing was recorded yet."
# Flask-WTF's reason when the form carried no token (the session's own token may still be fine).
MISSING_TOKEN = "The CSRF token is missing."
STALE = "This page was out of date, so nothing was recorded. Go back to it: your selection is kept, and you can send it again."


def _message(exc: HTTPException) -> str:
    code = exc.code or 500
    if isinstance(exc, CSRFError):
        return "This form had expired. Reload the page and send it again."
    default = type(exc).description
    if code >= 500 or not exc.description or exc.description == default:
        return PLAIN.get(code, exc.name)
    return exc.description


def _page(code: int, title: str, message: str, back_url: str | None = None):
    try:
        return render_template("error.html", code=code, title=title, message=message, back_url=back_url), code
    except Exception:  # noqa: BLE001 - the page itself failed (the database is down): a plain page still helps
        db.session.rollback()
        return render_template("error_plain.html", code=code, title=title, message=message), code


def error_page(exc: HTTPException):
    """A styled page with the menu, or a JSON error for fetch() callers."""
    code = exc.code or 500
    message = _message(exc)
    if wants_json():
        resp = jsonify(error={"field": None, "message": message})
        resp.status_code = code
        return resp
    if code == 403 and current_user.is_authenticated:
        message = f"{message} You are logged in as {current_user.username} ({current_user.role})."
    return _page(code, TITLES.get(code, exc.name), message)


def server_error(exc: InternalServerError):
    """An unexpected failure: logged by Flask, answered without details."""
    db.session.rollback()
    return error_page(InternalServerError())


def not_found_anywhere(exc: HTTPException):
    """Unknown addresses outside any blueprint: the styled page, except under /api/ (the API's JSON shape)."""
    if request.path.startswith(API_PREFIX):
        resp = jsonify(error={"field": None, "message": exc.description})
        resp.status_code = exc.code or 404
        return resp
    return error_page(exc)


def with_resume(path: str) -> str:
    """``path`` with ``resume=1``: the page's script then restores the selection it kept."""
    parts = urlsplit(path)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "resume"] + [("resume", "1")]
    return urlunsplit(("", "", parts.path, urlencode(query), ""))


def return_path() -> str:
    """The page a form or a fetch() was sent from: its ``next`` field, else the Referer on this site."""
    target = safe_next(request.form.get("next") if request.form else None)
    if target is None and request.referrer:
        ref = urlsplit(request.referrer)
        if ref.netloc == request.host:
            target = safe_next(urlunsplit(("", "", ref.path, ref.query, "")))
    return target or url_for("dashboard.overview")


def session_expired():
    """A write sent without a live session: to the login page, then back where the reviewer was."""
    back = with_resume(return_path())
    login_url = url_for("auth.login", next=back)
    # Shown on the login page, where a form's redirect or the page's script (for a fetch()) leads.
    flash(EXPIRED, "info")
    if wants_json():
        resp = jsonify(error={"field": None, "message": EXPIRED, "login_url": login_url})
        resp.status_code = 401
        return resp
    return redirect(login_url)


def csrf_failed(exc: CSRFError):
    """A form or fetch() whose CSRF token does not fit: an expired session, or a page left open across a new login.

    Nothing is recorded either way. With a live session the answer stays a 400, but it leads back to the page
    (with ``resume=1``), where the script restores the selection it kept.
    """
    if not current_user.is_authenticated:
        return session_expired()
    if exc.description == MISSING_TOKEN:
        # A live session and no token at all: not a page left open, a request this site did not make.
        return error_page(exc)
    back = with_resume(return_path())
    if wants_json():
        resp = jsonify(error={"field": None, "message": STALE, "reload": back})
        resp.status_code = 400
        return resp
    return _page(400, "This page was out of date", STALE, back_url=back)


for _bp in (bp, auth_bp):
    for _code in (400, 403, 404, 405, 409, 413, 429):
        _bp.register_error_handler(_code, error_page)
    _bp.register_error_handler(InternalServerError, server_error)
auth_bp.register_error_handler(CSRFError, error_page)
bp.register_error_handler(CSRFError, csrf_failed)
bp.app_errorhandler(404)(not_found_anywhere)
