"""Rate limits: per API key on the whole JSON API, per login name (and per address) on the login form.

The API limit is a :class:`service.api_budget.KeyBudget` checked before every ``/api`` request (leased
from the shared counter, so most requests cost no storage round trip). The login limit is declared once,
at import, on the shared Flask-Limiter ``service.extensions.limiter``; ``init_app`` binds it to an app, so
building many apps (tests) never stacks duplicate limits. Counters live in
``settings.ratelimit_storage_uri`` (Redis in production, so every web replica shares them). Keys are
hashed before they reach the storage: a Redis dump never contains an API key or a username.
Breaches answer 429 with ``Retry-After`` (JSON under ``/api``). ``X-RateLimit-*`` headers on API answers
are off unless ``ratelimit_headers`` is set.
"""

from __future__ import annotations

import hashlib
import logging
import time

from flask import Flask, current_app, g, request
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import TooManyRequests

from service.api.auth_key import presented_key_hash
from service.api_budget import KeyBudget
from service.extensions import limiter

log = logging.getLogger(__name__)

KEY_PREFIX = "sketchwatch"
LOGIN_ENDPOINT = "auth.login"
API_BLUEPRINT = "api"
# Digest prefix length: 128 bits keep keys distinct while keeping storage keys short.
DIGEST_CHARS = 32
_WRAPPED = "_sketchwatch_login_limited"
BUDGET_EXTENSION = "sketchwatch_api_budget"
STORAGE_OPTIONS = {"socket_timeout": 1, "socket_connect_timeout": 1}


def api_key_or_address() -> str:
    """Limit key: the SHA-256 of the presented API key, else the client address."""
    key_hash = presented_key_hash()
    if key_hash:
        return "key:" + key_hash[:DIGEST_CHARS]
    return "ip:" + (get_remote_address() or "unknown")


def login_name() -> str:
    """Limit key for a login attempt: the hashed, case-folded username, else the client address."""
    username = (request.form.get("username") or "").strip().casefold()
    if username:
        return "login:" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]
    return "ip:" + (get_remote_address() or "unknown")


def _check_api_budget():
    """Before every ``/api`` request: count it against the caller's key (or address); 429 when spent."""
    budget = current_app.extensions.get(BUDGET_EXTENSION)
    if budget is None:
        return None
    # One budget per endpoint, as Flask-Limiter's blueprint limits had: reads do not eat into submissions.
    verdict = g.api_budget = budget.take(f"{request.endpoint}/{api_key_or_address()}")
    if not verdict.allowed:
        # The API's HTTP error handler words it and sets Retry-After, as for every other 4xx.
        raise TooManyRequests(str(budget.item), retry_after=verdict.retry_after())
    return None


def _budget_headers(response):
    """``X-RateLimit-*`` on API answers, when ``ratelimit_headers`` is set."""
    verdict = g.get("api_budget")
    if verdict is not None and _settings().ratelimit_headers:
        response.headers["X-RateLimit-Limit"] = str(verdict.limit)
        response.headers["X-RateLimit-Remaining"] = str(verdict.remaining)
        response.headers["X-RateLimit-Reset"] = str(int(verdict.reset))
    return response


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
    from service.extensions import app_settings

    return app_settings(current_app)


def login_limit() -> str:
    """The per-username limit on login attempts."""
    return _settings().ratelimit_login


@limiter.request_filter
def _not_login() -> bool:
    """Flask-Limiter only holds the login limit: every other request skips its checks."""
    # Its before_request hook otherwise resolves and filters limits on every API request (8% of a submission).
    return request.endpoint != LOGIN_ENDPOINT


# One object, so re-binding it on another app de-duplicates instead of adding a second limit.
LOGIN_LIMIT = limiter.limit(login_limit, key_func=login_name, methods=["POST"], override_defaults=False)


def limiter_config(settings) -> dict:
    """Flask-Limiter configuration for ``settings``."""
    return {
        "RATELIMIT_ENABLED": settings.ratelimit_enabled,
        "RATELIMIT_STORAGE_URI": settings.ratelimit_storage_uri,
        # A Redis hiccup must not turn every request into a 500: fall back to per-process counters.
        "RATELIMIT_STORAGE_OPTIONS": STORAGE_OPTIONS,
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
    first = BUDGET_EXTENSION not in app.extensions
    app.extensions[BUDGET_EXTENSION] = (
        KeyBudget(settings.ratelimit_submit, settings.ratelimit_storage_uri, KEY_PREFIX, STORAGE_OPTIONS)
        if settings.ratelimit_enabled
        else None
    )
    if first:  # init_app may run again on the same app (tests): one set of hooks
        # Hooks of the API blueprint only: other requests never pay for the budget lookup.
        app.before_request_funcs.setdefault(API_BLUEPRINT, []).append(_check_api_budget)
        app.after_request_funcs.setdefault(API_BLUEPRINT, []).append(_budget_headers)
        app.after_request(_retry_after)
    view = app.view_functions.get(LOGIN_ENDPOINT)
    if view is not None and not getattr(view, _WRAPPED, False):
        # Wrapping (rather than only registering by name) also enforces the limit if the view
        # has no limiter decorator of its own; stacked limiter wrappers check once.
        wrapped = LOGIN_LIMIT(view)
        setattr(wrapped, _WRAPPED, True)
        app.view_functions[LOGIN_ENDPOINT] = wrapped
