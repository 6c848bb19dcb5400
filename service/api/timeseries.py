"""``GET /api/v1/stats/timeseries``: submitted, scored, flagged and failed counts, the flag rate, score
quantiles and queue lag per minute, hour or day, with threshold changes and model versions marked.

A client key's series covers only its own sketches; an admin key and a dashboard session see every
client's, or one client's with ``?client=`` (the scoping of ``/stats/histogram``).
"""

from __future__ import annotations

from flask import jsonify, request
from flask_login import current_user

from service.api import bp
from service.api.errors import ApiError
from service.api.openapi import document, query_param, text_schema, timestamp_schema
from service.api.sketches import scoped_client
from service.api.stats import key_or_login
from service.core import monitoring
from service.extensions import db
from service.params import ParamError, parse_time


@bp.get("/stats/timeseries")
@key_or_login
def stats_timeseries():
    """The time series of the caller's sketches (see the module docstring and the OpenAPI operation)."""
    try:
        since = parse_time(request.args, "since")
        until = parse_time(request.args, "until")
    except ParamError as exc:
        raise ApiError(400, exc.field, exc.message) from None
    bucket = request.args.get("bucket") or "hour"
    requested = (request.args.get("client") or "").strip() or None
    if requested is not None and "\x00" in requested:
        raise ApiError(400, "client", "must not contain NUL characters")
    client = requested if current_user.is_authenticated else scoped_client(requested)
    try:
        series = monitoring.timeseries(db.session, bucket, since, until, client)
    except monitoring.SeriesError as exc:
        raise ApiError(400, exc.field, exc.message) from None
    return jsonify(series.to_dict())


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
_NUMBER = {"type": ["number", "null"]}
_POINT = {
    "type": "object",
    "properties": {
        "start": {"type": "string", "format": "date-time", "description": "bucket start (UTC)"},
        "submitted": {"type": "integer"},
        "scored": {"type": "integer"},
        "flagged": {"type": "integer", "description": "flagged when scored (score above the threshold then in force)"},
        "failed": {"type": "integer"},
        "flag_rate": {**_NUMBER, "description": "flagged / scored; null when nothing was scored"},
        "p50": {**_NUMBER, "description": "median score"},
        "p95": {**_NUMBER, "description": "95th percentile score"},
        "lag_avg_s": {**_NUMBER, "description": "mean seconds from submission to score"},
        "lag_max_s": {**_NUMBER, "description": "longest seconds from submission to score"},
    },
}
_SERIES = {
    "type": "object",
    "properties": {
        "bucket": {"enum": list(monitoring.BUCKETS)},
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "client": {"type": ["string", "null"]},
        "points": {"type": "array", "items": _POINT},
        "marks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "kind": {"enum": ["threshold", "model"]},
                    "label": {"type": "string"},
                },
            },
        },
    },
}
document(
    "/stats/timeseries",
    "get",
    {
        "summary": "Counts, flag rate, score quantiles and queue lag per minute, hour or day",
        "description": (
            "One point per bucket (empty ones included) for the sketches submitted in it: submitted, scored, "
            "flagged (at scoring) and failed counts, the flag rate, the p50/p95 scores and the submit-to-scored "
            "lag, computed in SQL (hour and day buckets from the hourly rollup, their quantiles within 0.01). "
            "`marks` lists threshold changes and model versions first seen in the window. Without `since`: the "
            "last 120 minutes, 48 hours or 30 days (the current bucket included); at most 1440 minute or 2000 "
            "hour/day buckets. A client key's series covers only its own sketches; an admin key or a dashboard login "
            "session covers every client, or the one named by `client`."
        ),
        "operationId": "statsTimeseries",
        "security": [{"apiKey": []}, {"session": []}],
        "parameters": [
            query_param("bucket", {"enum": list(monitoring.BUCKETS), "default": "hour"}, "bucket size"),
            query_param("since", timestamp_schema("2026-11-28T00:00:00Z"), "window start; taken down to its bucket; "
                        "earlier than until, and at most 1440 minute or 2000 hour/day buckets before it"),
            query_param("until", timestamp_schema("2026-11-29T00:00:00Z"), "window end (exclusive); default now"),
            query_param("client", text_schema(), "only this client; a client key may name only itself (403 otherwise)"),
        ],
        "responses": {
            "200": {"description": "the time series", "content": {"application/json": {"schema": _SERIES}}},
            "400": {"description": "bad parameter (the error names it), or too many buckets", "content": _ERROR},
            "401": {"description": "no valid API key and no login session", "content": _ERROR},
            "403": {"description": "a client key named another client in `client`", "content": _ERROR},
            "429": {"description": "rate limit exceeded", "content": _ERROR},
            "503": {"description": "database unavailable; retry later", "content": _ERROR},
        },
    },
)
