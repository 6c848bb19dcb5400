"""The dashboard blueprint: every page needs a logged-in reviewer or admin."""

from flask import Blueprint, request
from flask_login import current_user

from service.auth.headers import add_page_headers
from service.extensions import login_manager

bp = Blueprint("dashboard", __name__)


@bp.before_request
def _require_login():
    # One gate for the whole blueprint, so no page can forget its decorator.
    if not current_user.is_authenticated:
        if request.headers.get("Sec-Fetch-Dest") == "image":
            # An <img> would follow a redirect to the login page and use up its message: just refuse.
            return "", 401
        if request.method not in ("GET", "HEAD"):
            # A verdict or a bulk action sent after the session ended: log in, then back to that page.
            return errors.session_expired()
        return login_manager.unauthorized()
    return None


bp.after_request(add_page_headers)

# View modules register on bp when imported; keep them after bp exists.
from service.dashboard import draw, errors, gallery, overview, review, threshold  # noqa: E402,F401
from service.dashboard import audit, detail, formatting, pictures, sketches  # noqa: E402,F401
from service.dashboard import alerts, monitoring  # noqa: E402,F401
