"""``GET /api/v1/stats/histogram``: the overview's histogram, threshold and counts as JSON.

A client key's numbers cover only its own sketches; an admin key and a dashboard session see every
client's, or one client's with ``?client=``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import wraps

from flask import current_app, jsonify, request
from flask_login import current_user

from service.extensions import app_settings
from service import stats
from service.api import bp
from service.api.auth_key import require_api_key
from service.api.errors import ApiError
from service.api.openapi import document, json_content, query_param, text_schema, timestamp_schema, yes_no_schema
from service.api.schemas import HistogramOut
from service.api.sketches import scoped_client
from service.params import RANGES, ParamError, parse_axis, parse_bins, parse_bool, parse_filter
from service.extensions import db
from service.core.model_info import calibration
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
    bins (1-200), log (adds log10(1 + count) per bin), axis (score or logit: the scores' log-odds),
    client (a client key: only its own name).
    """
    try:
        flt = parse_filter(request.args)
        bins = parse_bins(request.args)
        log = parse_bool(request.args, "log")
        axis = parse_axis(request.args)
    except ParamError as exc:
        raise ApiError(400, exc.field, exc.message) from None
    requested = (request.args.get("client") or "").strip() or None
    if requested is not None and "\x00" in requested:
        raise ApiError(400, "client", "must not contain NUL characters")
    # A dashboard session is staff: every client, like the overview page. A key goes through its scope.
    flt = replace(flt, client=requested if current_user.is_authenticated else scoped_client(requested))
    hist, counts = stats.overview(db.session, flt, bins, axis)
    settings = app_settings(current_app)
    threshold = current_threshold(db.session, settings)
    return jsonify(
        histogram=hist.to_dict(log=log),
        threshold=threshold,
        threshold_logit=stats.logit(threshold),
        calibration=stats.calibration_view(calibration(settings.model_dir)),
        counts=counts.to_dict(),
        filters={
            "since": flt.since.isoformat() if flt.since else None,
            "until": flt.until.isoformat() if flt.until else None,
            "model_version": flt.model_version,
            "client": flt.client,
        },
    )


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
document(
    "/stats/histogram",
    "get",
    {
        "summary": "Histogram of stored scores, the threshold in force, the calibrated threshold and counts by state",
        "description": (
            "Equal-width bins over the stored score range of the selected model version (numpy.histogram "
            "semantics: half-open bins, the last one closed), computed in SQL. The same data as the dashboard "
            "overview. A client key's histogram and counts cover only its own sketches (the threshold is the one "
            "shared by every client); an admin key or a dashboard login session covers every client, or the one "
            "named by `client`. `calibration` is the model's calibrated threshold (split-conformal over its held-out "
            "cats) with the share of cats it is meant to flag and that share's interval. Authenticated by an API "
            "key or a dashboard login session."
        ),
        "operationId": "statsHistogram",
        "security": [{"apiKey": []}, {"session": []}],
        "parameters": [
            query_param("since", timestamp_schema(), "window start (inclusive); `until` must be later"),
            query_param("until", timestamp_schema("2026-11-29T00:00:00Z"), "window end (exclusive)"),
            query_param("range", {"enum": ["all", "custom", *RANGES]}, "preset window; overrides since/until"),
            query_param("model_version", text_schema(), "only sketches scored by this model version"),
            query_param("bins", {"type": "integer", "minimum": 1, "maximum": stats.MAX_BINS, "default": stats.DEFAULT_BINS}, "number of bins"),
            query_param("log", yes_no_schema(), "also return log10(1 + count) per bin"),
            query_param("axis", {"enum": list(stats.AXES), "default": "score"},
                        "bin the scores (`score`) or their log-odds (`logit`), which stay apart where scores round to 1"),
            query_param("client", text_schema(), "only this client; a client key may name only itself (403 otherwise)"),
        ],
        "responses": {
            "200": {"description": "histogram, threshold and counts", "content": json_content({"$ref": "#/components/schemas/HistogramOut"})},
            "400": {"description": "bad parameter (the error names it)", "content": _ERROR},
            "401": {"description": "no valid API key and no login session", "content": _ERROR},
            "403": {"description": "a client key named another client in `client`", "content": _ERROR},
            "429": {"description": "rate limit exceeded", "content": _ERROR},
            "503": {"description": "database unavailable; retry later", "content": _ERROR},
        },
    },
    models=(HistogramOut,),
)
