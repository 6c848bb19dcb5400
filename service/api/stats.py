"""``GET /api/v1/stats/histogram``: the overview's histogram, threshold and counts as JSON."""

from __future__ import annotations

from functools import wraps

from flask import current_app, jsonify, request
from flask_login import current_user

from service.extensions import app_settings
from service import stats
from service.api import bp
from service.api.auth_key import require_api_key
from service.api.errors import ApiError
from service.api.openapi import document
from service.dashboard.params import ParamError, parse_bins, parse_bool, parse_filter
from service.extensions import db
from service.core.thresholds import current_threshold


def key_or_login(view):
    """Allow a logged-in dashboard session or a valid API key (401 JSON otherwise)."""
    keyed = require_api_key(view)

    @wraps(view)
    def wrapper(*args, **kwargs):
        if current_user.is_authenticated:
            return view(*args, **kwargs)
        return keyed(*args, **kwargs)

    return wrapper


@bp.get("/stats/histogram")
@key_or_login
def stats_histogram():
    """Histogram with fixed bin edges computed in SQL, plus threshold and counts.

    Query parameters: since, until (ISO 8601), range (1h/24h/7d/30d/all), model_version,
    bins (1-200), log (adds log10(1 + count) per bin).
    """
    try:
        flt = parse_filter(request.args)
        bins = parse_bins(request.args)
        log = parse_bool(request.args, "log")
    except ParamError as exc:
        raise ApiError(400, exc.field, exc.message) from None
    hist, counts = stats.overview(db.session, flt, bins)
    return jsonify(
        histogram=hist.to_dict(log=log),
        threshold=current_threshold(db.session, app_settings(current_app)),
        counts=counts.to_dict(),
        filters={
            "since": flt.since.isoformat() if flt.since else None,
            "until": flt.until.isoformat() if flt.until else None,
            "model_version": flt.model_version,
        },
    )


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
document(
    "/stats/histogram",
    "get",
    {
        "summary": "Histogram of stored scores, the threshold in force and counts by state",
        "description": (
            "Equal-width bins over the stored score range of the selected model version (numpy.histogram "
            "semantics: half-open bins, the last one closed), computed in SQL. The same data as the dashboard "
            "overview. Authenticated by an API key or a dashboard login session."
        ),
        "operationId": "statsHistogram",
        "security": [{"apiKey": []}],
        "parameters": [
            _query("since", {"type": "string", "format": "date-time"}, "window start (inclusive), ISO 8601; naive = UTC"),
            _query("until", {"type": "string", "format": "date-time"}, "window end (exclusive), ISO 8601"),
            _query("range", {"enum": ["all", "custom", "1h", "24h", "7d", "30d"]}, "preset window; overrides since/until"),
            _query("model_version", {"type": "string"}, "only sketches scored by this model version"),
            _query("bins", {"type": "integer", "minimum": 1, "maximum": stats.MAX_BINS, "default": stats.DEFAULT_BINS}, "number of bins"),
            _query("log", {"type": "boolean", "default": False}, "also return log10(1 + count) per bin"),
        ],
        "responses": {
            "200": {"description": "histogram, threshold and counts", "content": {"application/json": {}}},
            "400": {"description": "bad parameter (the error names it)", "content": _ERROR},
            "401": {"description": "no valid API key and no login session", "content": _ERROR},
            "429": {"description": "rate limit exceeded", "content": _ERROR},
            "503": {"description": "database unavailable; retry later", "content": _ERROR},
        },
    },
)
