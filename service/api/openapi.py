"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 description of the API, limits included."""

from __future__ import annotations

import copy
from typing import Any

from flask import current_app, jsonify
from pydantic.json_schema import models_json_schema

from service.api import bp
from service.api import errors as _errors  # noqa: F401 - JSON error handlers must be registered
from service.api.schemas import (
    LIST_DEFAULT_LIMIT,
    LIST_MAX_LIMIT,
    MAX_CLIENT_REF,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_RAW_COORD,
    BatchOut,
    ErrorOut,
    SketchIn,
    SketchListOut,
    SketchOut,
    SubmitOut,
)

REF = "#/components/schemas/{model}"
_extra_paths: dict[str, dict[str, Any]] = {}


def document(path: str, method: str, operation: dict[str, Any]) -> None:
    """Let other route modules (stats, reviews) add their operations to the document."""
    _extra_paths.setdefault(path, {})[method.lower()] = operation


def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def _error(description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref("ErrorOut")}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
_COMMON_ERRORS = {
    "401": _error("missing, invalid or revoked API key"),
    "429": _error("rate limit exceeded", _RETRY_AFTER),
    "503": _error("database unavailable; retry after the given delay", _RETRY_AFTER),
}


def _limits_text(s) -> str:
    return (
        f"Limits: at most {s.max_batch} sketches per request, {s.max_strokes} strokes and {s.max_points} points "
        f"per sketch, request body {s.max_content_length} bytes, image {s.max_image_pixels} pixels, client_ref "
        f"{MAX_CLIENT_REF} characters, metadata {MAX_METADATA_BYTES} bytes of JSON nested at most "
        f"{MAX_METADATA_DEPTH} levels. Simplified coordinates are integers 0..255; raw coordinates are finite "
        f"with |v| <= {MAX_RAW_COORD:g}. NaN and Infinity are rejected."
    )


def _submit_operation(s) -> dict:
    batch = {"type": "array", "items": _ref("SketchIn"), "minItems": 1, "maxItems": s.max_batch}
    return {
        "summary": "Submit sketches for anomaly scoring",
        "description": (
            "Stores the sketch(es) as `queued` and answers at once; scoring is asynchronous: poll `status_url`. "
            "Re-sending a `client_ref` already used by the same API key returns the existing id with "
            "`duplicate: true` and stores nothing. A batch stores its valid items and lists the invalid ones "
            "by index (202 if at least one was accepted, 400 if none). " + _limits_text(s)
        ),
        "operationId": "submitSketches",
        "security": [{"apiKey": []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"oneOf": [_ref("SketchIn"), batch]}},
                "application/x-ndjson": {
                    "schema": {
                        "type": "string",
                        "description": (
                            "Quick Draw ndjson, one drawing per line (key_id, word, countrycode, recognized, "
                            "timestamp, format, drawing). key_id becomes client_ref unless client_ref is given; "
                            "the other fields go to metadata. Items are indexed by 0-based line number."
                        ),
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {"type": "string", "contentMediaType": "image/png", "description": "PNG or JPEG"},
                            "client_ref": {"type": "string", "maxLength": MAX_CLIENT_REF},
                            "metadata": {"type": "string", "description": "a JSON object, as text"},
                        },
                    }
                },
            },
        },
        "responses": {
            "200": {
                "description": "duplicate single submission: the existing sketch",
                "content": {"application/json": {"schema": _ref("SubmitOut")}},
            },
            "202": {
                "description": "stored and queued for scoring",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"oneOf": [_ref("SubmitOut"), _ref("BatchOut")]}}},
            },
            "400": {
                "description": "invalid input; for a batch where nothing was accepted, the per-item report",
                "content": {"application/json": {"schema": {"oneOf": [_ref("ErrorOut"), _ref("BatchOut")]}}},
            },
            "413": _error(f"body larger than {s.max_content_length} bytes"),
            "415": _error("content type other than application/json, application/x-ndjson, multipart/form-data"),
            **_COMMON_ERRORS,
        },
    }


def _list_parameters() -> list[dict]:
    def q(name: str, schema: dict, description: str) -> dict:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}

    return [
        q("limit", {"type": "integer", "minimum": 1, "maximum": LIST_MAX_LIMIT, "default": LIST_DEFAULT_LIMIT}, "page size"),
        q("cursor", {"type": "string"}, "the `next` value of the previous page"),
        q("status", {"type": "string", "enum": ["queued", "scored", "failed"]}, "only this status"),
        q("flagged", {"type": "boolean"}, "only flagged (true) or unflagged (false) sketches"),
        q("since", {"type": "string", "format": "date-time"}, "submitted at or after (ISO 8601; naive = UTC)"),
        q("until", {"type": "string", "format": "date-time"}, "submitted before (ISO 8601; naive = UTC)"),
        q("client", {"type": "string"}, "must be the caller's own client name (403 otherwise)"),
        q("client_ref", {"type": "string"}, "only the sketch with this client_ref"),
    ]


def build_document(settings) -> dict:
    """The OpenAPI 3.1 document for ``settings`` (limits are configurable, so they are filled in here)."""
    _, defs = models_json_schema(
        [(m, "validation" if m is SketchIn else "serialization") for m in (SketchIn, SubmitOut, BatchOut, SketchOut, SketchListOut, ErrorOut)],
        ref_template=REF,
    )
    schemas = defs.get("$defs", {})
    schemas["SketchIn"]["description"] += " " + _limits_text(settings)
    schemas["SketchIn"]["properties"]["drawing"]["maxItems"] = settings.max_strokes
    paths: dict[str, dict] = {
        "/sketches": {
            "post": _submit_operation(settings),
            "get": {
                "summary": "List the caller's sketches, newest first",
                "operationId": "listSketches",
                "security": [{"apiKey": []}],
                "parameters": _list_parameters(),
                "responses": {
                    "200": {"description": "a page", "content": {"application/json": {"schema": _ref("SketchListOut")}}},
                    "400": _error("bad filter value (the error names the parameter) or unknown parameter"),
                    "403": _error("`client` names another client"),
                    **_COMMON_ERRORS,
                },
            },
        },
        "/sketches/{id}": {
            "get": {
                "summary": "Status and result of one sketch",
                "operationId": "getSketch",
                "security": [{"apiKey": []}],
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {
                    "200": {"description": "the sketch", "content": {"application/json": {"schema": _ref("SketchOut")}}},
                    "404": _error("no such sketch for this API key"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}},
            }
        },
    }
    for path, ops in _extra_paths.items():
        paths.setdefault(path, {}).update(copy.deepcopy(ops))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SketchWatch API",
            "version": "1",
            "description": "Submit hand-drawn sketches for asynchronous anomaly scoring and read the results. "
            + _limits_text(settings),
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"}
            },
        },
        "x-limits": {
            "max_batch": settings.max_batch,
            "max_strokes": settings.max_strokes,
            "max_points": settings.max_points,
            "max_content_length": settings.max_content_length,
            "max_image_pixels": settings.max_image_pixels,
            "max_client_ref": MAX_CLIENT_REF,
            "max_metadata_bytes": MAX_METADATA_BYTES,
            "max_metadata_depth": MAX_METADATA_DEPTH,
            "max_raw_coordinate": MAX_RAW_COORD,
            "list_max_limit": LIST_MAX_LIMIT,
        },
    }


@bp.get("/openapi.json")
def openapi_document():
    """Serve the OpenAPI document (public: it holds no secrets)."""
    from service.extensions import app_settings

    doc = current_app.extensions.get("sketchwatch_openapi")
    if doc is None:
        doc = current_app.extensions["sketchwatch_openapi"] = build_document(app_settings(current_app))
    return jsonify(doc)
