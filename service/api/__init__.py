"""The JSON API blueprint (``/api/v1``); route modules attach to ``bp``."""

from flask import Blueprint

bp = Blueprint("api", __name__)

# Route modules register on bp when imported; keep them after bp exists.
from service.api import routes  # noqa: E402,F401
