"""Bearer API-key authentication for the JSON API."""

from __future__ import annotations

import threading
import time
from functools import wraps

from flask import current_app, g, jsonify, request
from sqlalchemy import select

from service.extensions import db
from service.core.schema import ApiKey
from service.core.security import hash_api_key


def current_client() -> str | None:
    """Name of the API key that authenticated this request."""
    return getattr(g, "api_client", None)


def _key_from_request() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


EXTENSION = "sketchwatch_api_keys"
# Bounds the cache whatever the number of keys; only valid keys are ever cached.
MAX_CACHED_KEYS = 10_000


class KeyCache:
    """Valid API keys (hash -> client name) for ``ttl_s`` seconds: one SQL lookup less per request.

    Only keys that authenticated are cached, so unknown keys cannot fill it. A key revoked in this process
    is forgotten at once (``forget``); one revoked elsewhere stops working within ``ttl_s``.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> str | None:
        """The client name of a recently verified key, or None."""
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, name: str) -> None:
        """Remember a verified key."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_CACHED_KEYS:
                self._entries.clear()
            self._entries[key_hash] = (name, time.monotonic() + self.ttl_s)

    def forget(self) -> None:
        """Drop every cached key (after a revocation)."""
        with self._lock:
            self._entries.clear()


def init_app(app, settings) -> None:
    """Give the app its API-key cache."""
    app.extensions[EXTENSION] = KeyCache(settings.api_key_cache_s)


def forget_api_keys() -> None:
    """Make this process look every API key up again (call after revoking one)."""
    cache = current_app.extensions.get(EXTENSION)
    if cache is not None:
        cache.forget()


def _client_for(key: str) -> str | None:
    key_hash = hash_api_key(key)
    cache: KeyCache | None = current_app.extensions.get(EXTENSION)
    name = cache.get(key_hash) if cache is not None else None
    if name is not None:
        return name
    row = db.session.execute(select(ApiKey.name, ApiKey.revoked_at).where(ApiKey.key_hash == key_hash)).first()
    if row is None or row.revoked_at is not None:
        return None
    if cache is not None:
        cache.put(key_hash, row.name)
    return row.name


def require_api_key(view):
    """Reject requests without a valid, unrevoked API key with 401 and a JSON error."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key = _key_from_request()
        if not key:
            return _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        name = _client_for(key)
        if name is None:
            return _unauthorized("invalid or revoked API key")
        g.api_client = name
        return view(*args, **kwargs)

    return wrapper


def _unauthorized(message: str):
    resp = jsonify(error={"field": "Authorization", "message": message})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Bearer realm="sketchwatch"'
    return resp
