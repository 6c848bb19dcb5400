"""Bearer API-key authentication for the JSON API."""

from __future__ import annotations

import threading
import time
from functools import wraps

from flask import current_app, g, jsonify, request

from service.core.accounts import api_key_identity
from service.core.security import hash_api_key
from service.extensions import db


def current_client() -> str | None:
    """Name of the API key that authenticated this request."""
    return getattr(g, "api_client", None)


def current_key_is_admin() -> bool:
    """True when this request's API key is an admin key (it sees every client's sketches)."""
    return bool(getattr(g, "api_admin", False))


def presented_api_key() -> str | None:
    """The API key sent with this request (``Authorization: Bearer`` or ``X-API-Key``), if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


_KEY_HASH = "api_key_hash"


def presented_key_hash() -> str | None:
    """SHA-256 of this request's API key (None without one), parsed and hashed once per request.

    The rate limit (before the view) and the authentication (in the view) both need it.
    """
    if _KEY_HASH not in g:
        key = presented_api_key()
        setattr(g, _KEY_HASH, hash_api_key(key) if key else None)
    return g.get(_KEY_HASH)


EXTENSION = "sketchwatch_api_keys"
# Bounds the cache whatever the number of keys; only valid keys are ever cached.
MAX_CACHED_KEYS = 10_000


class KeyCache:
    """Valid API keys (hash -> what the key is: client name, admin) for ``ttl_s`` seconds: one SQL lookup less per request.

    Only keys that authenticated are cached, so unknown keys cannot fill it. A key revoked in this process
    is forgotten at once (``forget``); one revoked elsewhere stops working within ``ttl_s``.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[object, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str):
        """What ``put`` stored for a recently verified key, or None."""
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, name) -> None:
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


def _client_for(key_hash: str) -> tuple[str, bool] | None:
    """(client name, admin) of a valid key digest: from this process's cache, else from the database."""
    cache: KeyCache | None = current_app.extensions.get(EXTENSION)
    identity = cache.get(key_hash) if cache is not None else None
    if identity is not None:
        return identity
    identity = api_key_identity(db.session, key_hash)
    if identity is not None and cache is not None:
        cache.put(key_hash, identity)
    return identity


def require_api_key(view):
    """Reject requests without a valid, unrevoked API key with 401 and a JSON error."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key_hash = presented_key_hash()
        if not key_hash:
            return _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        identity = _client_for(key_hash)
        if identity is None:
            return _unauthorized("invalid or revoked API key")
        g.api_client, g.api_admin = identity
        return view(*args, **kwargs)

    return wrapper


def _unauthorized(message: str):
    resp = jsonify(error={"field": "Authorization", "message": message})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Bearer realm="sketchwatch"'
    return resp
