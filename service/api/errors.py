"""JSON error responses for the API: every failure is ``{"error": {"field", "message"}}``."""

from __future__ import annotations

import logging

from flask import current_app, jsonify, request
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from service.api import bp

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
DB_RETRY_AFTER_S = 5

# Field reported for errors that concern the request as a whole.
_FIELD_BY_CODE = {
    401: "Authorization",
    405: "method",
    413: "body",
    415: "Content-Type",
}


class ApiError(Exception):
    """An error answered as JSON: status code, offending field and a human message."""

    def __init__(self, status: int, field: str | None, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        self.headers = headers or {}


def error_response(status: int, field: str | None, message: str, headers: dict | None = None):
    """A JSON error response."""
    resp = jsonify(error={"field": field, "message": message})
    resp.status_code = status
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _http_error(exc: HTTPException):
    headers = {}
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    if exc.code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"request body is larger than the limit of {limit} bytes" if limit else "request body too large"
    elif exc.code == 429:
        message = f"rate limit exceeded ({exc.description}); retry later"
    elif exc.code is not None and exc.code >= 500:
        message = "internal server error"
    else:
        message = exc.description or exc.name
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    return error_response(exc.code or 500, _FIELD_BY_CODE.get(exc.code or 0), message, headers)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return error_response(exc.status, exc.field, exc.message, exc.headers)


@bp.errorhandler(HTTPException)
def _api_http_error(exc: HTTPException):
    return _http_error(exc)


@bp.errorhandler(OperationalError)
@bp.errorhandler(DisconnectionError)
@bp.errorhandler(PoolTimeoutError)
def _database_unavailable(exc: Exception):
    # The database being down is an outage, not a bug: tell clients to come back.
    log.warning("database unavailable: %s", type(exc).__name__, exc_info=True)
    return error_response(
        503, None, "database unavailable; retry later", {"Retry-After": str(DB_RETRY_AFTER_S)}
    )


@bp.app_errorhandler(HTTPException)
def _routing_error(exc: HTTPException):
    # 404/405 raised while routing never reach blueprint handlers; answer JSON for /api paths only.
    if request.path.startswith(API_PREFIX):
        return _http_error(exc)
    return exc
