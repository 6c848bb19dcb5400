"""Unbound Flask extensions, bound to an app in ``create_app``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

from service.core.db import db

SETTINGS_KEY = "sketchwatch_settings"
login_manager = LoginManager()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


if TYPE_CHECKING:
    from flask import Flask

    from service.core.settings import Settings


def app_settings(app: Flask) -> Settings:
    """The Settings object an app was built with."""
    return app.extensions[SETTINGS_KEY]
