"""HTML error pages for the dashboard (JSON for fetch() callers)."""

from __future__ import annotations

from flask import jsonify, render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from service.auth import bp as auth_bp
from service.auth.access import wants_json
from service.dashboard import bp


def _error_page(exc: HTTPException):
    code = exc.code or 500
    message = exc.description or exc.name
    if wants_json():
        resp = jsonify(error={"field": None, "message": message})
        resp.status_code = code
        return resp
    return render_template("error.html", code=code, title=exc.name, message=message), code


for _bp in (bp, auth_bp):
    for _code in (400, 403, 404, 405, 409, 413, 429):
        _bp.register_error_handler(_code, _error_page)
    _bp.register_error_handler(CSRFError, _error_page)
