"""The dashboard blueprint: every page needs a logged-in reviewer or admin."""

from flask import Blueprint
from flask_login import current_user

from service.auth.headers import add_page_headers
from service.extensions import login_manager

bp = Blueprint("dashboard", __name__)


@bp.before_request
def _require_login():
    # One gate for the whole blueprint, so no page can forget its decorator.
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


bp.after_request(add_page_headers)

# View modules register on bp when imported; keep them after bp exists.
from service.dashboard import draw, errors, gallery, overview, review, threshold  # noqa: E402,F401
