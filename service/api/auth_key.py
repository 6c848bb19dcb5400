"""Bearer API-key authentication for the JSON API."""

from __future__ import annotations

from functools import wraps

from flask import g, jsonify, request
from sqlalchemy import select

from service.extensions import db
from service.schema import ApiKey
from service.security import hash_api_key


def current_client() -> str | None:
    """Name of the API key that authenticated this request."""
    return getattr(g, "api_client", None)


def _key_from_request() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


def require_api_key(view):
    """Reject requests without a valid, unrevoked API key with 401 and a JSON error."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key = _key_from_request()
        if not key:
            return _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        row = db.session.execute(
            select(ApiKey.name, ApiKey.revoked_at).where(ApiKey.key_hash == hash_api_key(key))
        ).first()
        if row is None or row.revoked_at is not None:
            return _unauthorized("invalid or revoked API key")
        g.api_client = row.name
        return view(*args, **kwargs)

    return wrapper


def _unauthorized(message: str):
    resp = jsonify(error={"field": "Authorization", "message": message})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Bearer realm="sketchwatch"'
    return resp
