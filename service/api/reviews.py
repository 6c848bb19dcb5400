"""``POST /api/v1/sketches/<id>/review``: record a verdict with an API key.

A client key reviews only its own sketches (another client's id is a 404 and changes nothing), and its
verdict is its own label (``client_verdict``). An admin key reviews any sketch as staff (``verdict``).
"""

from __future__ import annotations

from flask import jsonify, request

from service.api import bp
from service.api.auth_key import current_client, current_key_is_admin, require_api_key
from service.api.errors import ApiError
from service.api.examples import review_examples
from service.api.openapi import MAX_DB_ID, document, json_content
from service.api.schemas import ReviewOut
from service.extensions import db
from service.reviews import VERDICTS, ReviewError, UnknownSketch, record_review


@bp.post("/sketches/<int:sketch_id>/review")
@require_api_key
def api_review(sketch_id: int):
    """Body ``{"verdict": "anomaly" | "cat"}``; the reviewer is recorded as ``api:<client>``.

    A client key may review only its own sketches; an admin key any sketch.
    """
    if sketch_id > MAX_DB_ID:
        raise ApiError(404, "id", f"no sketch {sketch_id}")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "body", 'expected a JSON object like {"verdict": "anomaly"}')
    unknown = sorted(set(body) - {"verdict"})
    if unknown:
        raise ApiError(400, unknown[0], "unknown field")
    verdict = body.get("verdict")
    if verdict not in VERDICTS:
        raise ApiError(400, "verdict", f"must be one of {', '.join(VERDICTS)}")
    admin = current_key_is_admin()
    client = current_client()
    try:
        entry = record_review(
            db.session, sketch_id, verdict, f"api:{client}", owner=None if admin else client, by_client=not admin
        )
    except UnknownSketch as exc:
        db.session.rollback()
        raise ApiError(404, None, str(exc)) from None
    except ReviewError as exc:
        db.session.rollback()
        raise ApiError(400, "verdict", str(exc)) from None
    db.session.commit()
    resp = jsonify(
        sketch_id=sketch_id,
        verdict=entry.verdict,
        reviewer=entry.reviewer,
        created_at=entry.created_at.isoformat(),
        kind="client" if entry.by_client else "staff",
    )
    resp.status_code = 201
    return resp


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
document(
    "/sketches/{id}/review",
    "post",
    {
        "summary": "Record a verdict on a sketch",
        "description": "Adds a verdict to the sketch's review history; the reviewer is recorded as `api:<client>`. "
        "A client key reviews only its own sketches (another client's id is a 404 and changes nothing); its "
        "verdict becomes the sketch's `client_verdict`, its own label, which never feeds the shared threshold. "
        "An admin key reviews any sketch as staff: its verdict becomes the sketch's `verdict`.",
        "operationId": "reviewSketch",
        "security": [{"apiKey": []}],
        "requestBody": {
            "required": True,
            "content": json_content(
                {
                    "type": "object",
                    "required": ["verdict"],
                    "properties": {"verdict": {"enum": list(VERDICTS)}},
                    "additionalProperties": False,
                },
                review_examples(),
            ),
        },
        "responses": {
            "201": {"description": "the recorded review", "content": json_content({"$ref": "#/components/schemas/ReviewOut"})},
            "400": {"description": "missing or unknown verdict", "content": _ERROR},
            "401": {"description": "missing, invalid or revoked API key", "content": _ERROR},
            "404": {"description": "no such sketch for this API key (another client's sketch included)", "content": _ERROR},
            "413": {"description": "request body too large", "content": _ERROR},
            "429": {"description": "rate limit exceeded", "content": _ERROR},
            "503": {"description": "database unavailable; retry later", "content": _ERROR},
        },
    },
    models=(ReviewOut,),
)
