"""``POST /api/v1/sketches/<id>/review``: record a verdict with an API key."""

from __future__ import annotations

from flask import jsonify, request

from service.api import bp
from service.api.auth_key import current_client, require_api_key
from service.api.errors import ApiError
from service.api.openapi import document
from service.extensions import db
from service.reviews import VERDICTS, ReviewError, UnknownSketch, record_review


@bp.post("/sketches/<int:sketch_id>/review")
@require_api_key
def api_review(sketch_id: int):
    """Body ``{"verdict": "anomaly" | "cat"}``; the reviewer is recorded as ``api:<client>``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "body", 'expected a JSON object like {"verdict": "anomaly"}')
    unknown = sorted(set(body) - {"verdict"})
    if unknown:
        raise ApiError(400, unknown[0], "unknown field")
    verdict = body.get("verdict")
    if verdict not in VERDICTS:
        raise ApiError(400, "verdict", f"must be one of {', '.join(VERDICTS)}")
    try:
        entry = record_review(db.session, sketch_id, verdict, f"api:{current_client()}")
    except UnknownSketch as exc:
        db.session.rollback()
        raise ApiError(404, None, str(exc)) from None
    except ReviewError as exc:
        db.session.rollback()
        raise ApiError(400, "verdict", str(exc)) from None
    db.session.commit()
    resp = jsonify(
        sketch_id=sketch_id, verdict=entry.verdict, reviewer=entry.reviewer, created_at=entry.created_at.isoformat()
    )
    resp.status_code = 201
    return resp


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
document(
    "/sketches/{id}/review",
    "post",
    {
        "summary": "Record a reviewer's verdict on a sketch",
        "description": "Adds a verdict to the sketch's review history and makes it the current one; "
        "the reviewer is recorded as `api:<client>`.",
        "operationId": "reviewSketch",
        "security": [{"apiKey": []}],
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["verdict"],
                        "properties": {"verdict": {"enum": list(VERDICTS)}},
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {
            "201": {"description": "the recorded review", "content": {"application/json": {}}},
            "400": {"description": "missing or unknown verdict", "content": _ERROR},
            "401": {"description": "missing, invalid or revoked API key", "content": _ERROR},
            "404": {"description": "no such sketch", "content": _ERROR},
            "413": {"description": "request body too large", "content": _ERROR},
            "429": {"description": "rate limit exceeded", "content": _ERROR},
            "503": {"description": "database unavailable; retry later", "content": _ERROR},
        },
    },
)
