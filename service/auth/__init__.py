"""The auth blueprint: login/logout, the Flask-Login user loader, roles, and user/API-key admin pages."""

from flask import Blueprint

bp = Blueprint("auth", __name__)

# View modules register on bp when imported; keep them after bp exists.
from service.auth import access, admin, views  # noqa: E402,F401
from service.auth import retention  # noqa: E402,F401
from service.auth.access import role_required  # noqa: E402,F401
