"""Rate limits: per API key on the whole JSON API, per login name (and per address) on the login form.

Limits are declared once, at import, on the shared ``service.extensions.limiter``; ``init_app`` binds them
to an app, so building many apps (tests) never stacks duplicate limits. Counters live in
``settings.ratelimit_storage_uri`` (Redis in production, so every web replica shares them). Keys are
hashed before they reach the storage: a Redis dump never contains an API key or a username.
Breaches answer 429 with ``Retry-After`` (JSON under ``/api``, via the API's error handler). The
``X-RateLimit-*`` headers on every answer are off unless ``ratelimit_headers`` is set: they cost two more
storage round trips per request, a fifth of a single-sketch submission's CPU.
"""

from __future__ import annotations

import hashlib
import logging
import time

from flask import Flask, current_app, request
from flask_limiter.util import get_remote_address

from service.extensions import limiter
from service.security import hash_api_key

log = logging.getLogger(__name__)

KEY_PREFIX = "sketchwatch"
LOGIN_ENDPOINT = "auth.login"
API_BLUEPRINT = "api"
# Digest prefix length: 128 bits keep keys distinct while keeping storage keys short.
DIGEST_CHARS = 32
_WRAPPED = "_sketchwatch_login_limited"


def presented_api_key() -> str | None:
    """The API key sent with this request (``Authorization: Bearer`` or ``X-API-Key``), if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


def api_key_or_address() -> str:
    """Limit key: the SHA-256 of the presented API key, else the client address."""
    key = presented_api_key()
    if key:
        return "key:" + hash_api_key(key)[:DIGEST_CHARS]
    return "ip:" + (get_remote_address() or "unknown")


def login_name() -> str:
    """Limit key for a login attempt: the hashed, case-folded username, else the client address."""
    username = (request.form.get("username") or "").strip().casefold()
    if username:
        return "login:" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]
    return "ip:" + (get_remote_address() or "unknown")


def _retry_after(response):
    """Give every 429 a ``Retry-After`` (seconds until the breached window resets)."""
    if response.status_code == 429 and "Retry-After" not in response.headers:
        seconds = 1
        current = limiter.current_limit
        if current is not None:
            try:
                seconds = max(1, int(current.reset_at - time.time()))
            except Exception:  # noqa: BLE001 - storage trouble: a short default still tells clients to wait
                log.warning("could not read the rate-limit window", exc_info=True)
        response.headers["Retry-After"] = str(seconds)
    return response


def _settings():
    from service import app_settings

    return app_settings(current_app)


def api_limit() -> str:
    """The per-key limit on every API endpoint (the submit route carries its own, same-valued limit)."""
    return _settings().ratelimit_submit


def login_limit() -> str:
    """The per-username limit on login attempts."""
    return _settings().ratelimit_login


# One object each, so re-binding them on another app de-duplicates instead of adding a second limit.
API_LIMIT = limiter.limit(api_limit, key_func=api_key_or_address)
LOGIN_LIMIT = limiter.limit(login_limit, key_func=login_name, methods=["POST"], override_defaults=False)


def limiter_config(settings) -> dict:
    """Flask-Limiter configuration for ``settings``."""
    return {
        "RATELIMIT_ENABLED": settings.ratelimit_enabled,
        "RATELIMIT_STORAGE_URI": settings.ratelimit_storage_uri,
        # A Redis hiccup must not turn every request into a 500: fall back to per-process counters.
        "RATELIMIT_STORAGE_OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_SWALLOW_ERRORS": True,
        "RATELIMIT_HEADERS_ENABLED": settings.ratelimit_headers,
        "RATELIMIT_KEY_PREFIX": KEY_PREFIX,
    }


def init_app(app: Flask, settings) -> None:
    """Configure the limiter from ``settings``, bind it to ``app`` and attach the API and login limits."""
    for name, value in limiter_config(settings).items():
        app.config.setdefault(name, value)
    if settings.env == "production" and settings.ratelimit_storage_uri.startswith("memory://"):
        log.warning("rate limits use per-process memory storage; set SKETCHWATCH_RATELIMIT_STORAGE_URI to Redis")
    limiter.init_app(app)  # registers its request hooks once per app
    app.after_request(_retry_after)
    api_bp = app.blueprints.get(API_BLUEPRINT)
    if api_bp is not None:
        API_LIMIT(api_bp)
    view = app.view_functions.get(LOGIN_ENDPOINT)
    if view is not None and not getattr(view, _WRAPPED, False):
        # Wrapping (rather than only registering by name) also enforces the limit if the view
        # has no limiter decorator of its own; stacked limiter wrappers check once.
        wrapped = LOGIN_LIMIT(view)
        setattr(wrapped, _WRAPPED, True)
        app.view_functions[LOGIN_ENDPOINT] = wrapped
