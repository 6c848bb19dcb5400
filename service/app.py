"""The Flask app factory: ``create_app`` binds the extensions and registers the blueprints."""

from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from service import metrics, queue, ratelimit
from service.api import auth_key
from service.api import bp as api_bp
from service.auth import bp as auth_bp
from service.core.logs import configure_logging
from service.core.settings import Settings, get_settings
from service.dashboard import bp as dashboard_bp
from service.dashboard.models_page import bp as models_bp
from service.extensions import SETTINGS_KEY, csrf, db, login_manager
from service.health import bp as health_bp


def create_app(config: Mapping[str, Any] | Settings | None = None) -> Flask:
    """Build the Flask app from env settings, optionally overridden by a mapping (tests)."""
    settings = config if isinstance(config, Settings) else get_settings(config)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        DATABASE_URL=settings.database_url,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.env == "production",
        WTF_CSRF_TIME_LIMIT=None,
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage_uri,
        TESTING=settings.env == "testing",
    )
    app.extensions[SETTINGS_KEY] = settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    configure_logging(settings)
    db.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)
    queue.init_app(app, settings)

    auth_key.init_app(app, settings)
    app.register_blueprint(health_bp)
    app.register_blueprint(api_bp, url_prefix="/api/v1")
    app.register_blueprint(auth_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(models_bp)
    # The API authenticates with bearer keys, not cookies, so CSRF does not apply to it.
    csrf.exempt(api_bp)

    # After the blueprints: rate limits attach to the API blueprint and the login view.
    ratelimit.init_app(app, settings)
    metrics.init_app(app, settings)
    return app

