"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 description of the API, limits included.

Route modules describe their operations with :func:`document` (the sketches operations are described
here). :func:`build_document` completes every operation the same way, so an operation added later gets
them too: the API-key security unless it declares its own (``"security": []`` for a public one), a
404 for a path parameter, a 400 for parameters or a body, a 413 for a body, 401 and 503 for a
secured operation, 429 for all (the per-key budget counts every API request), each error answered with
the JSON error body. The query parameters of the sketch list are generated from the model that parses
them (``ListQuery``), so the document's patterns are the parser's own.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from flask import current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api import bp
from service.api import errors as _errors  # noqa: F401 - JSON error handlers must be registered
from service.api.bodies import (
    IMAGE_ENCODING,
    REF,
    batch_schema,
    image_form_schema,
    quickdraw_line_schemas,
    ref,
    sketch_schemas,
)
from service.api.examples import json_examples, multipart_examples, ndjson_examples
from service.api.schemas import LIST_MAX_LIMIT, RESPONSE_MODELS, ListQuery
from service.core.query_syntax import FALSE_WORDS, NO_NUL, TIMESTAMP, TIMESTAMP_HELP, TRUE_WORDS, anchored
from service.core.validation import MAX_CLIENT_REF, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_RAW_COORD

MAX_DB_ID = 2**63 - 1
_extra_paths: dict[str, dict[str, Any]] = {}
_extra_models: list[type[BaseModel]] = []


def document(path: str, method: str, operation: dict[str, Any], models: tuple[type[BaseModel], ...] = ()) -> None:
    """Add an operation of another route module (stats, reviews, ...) to the document.

    ``models`` are pydantic response models the operation refers to (``#/components/schemas/<Name>``).
    Error responses, security and path parameters are completed by :func:`build_document`.
    """
    _extra_paths.setdefault(path, {})[method.lower()] = operation
    _extra_models.extend(m for m in models if m not in _extra_models)


# --------------------------------------------------------------------------- building blocks for route modules


def query_param(name: str, schema: dict, description: str, *, required: bool = False) -> dict:
    """A query parameter; an optional one may be sent empty (``name=``), which is the same as leaving it out."""
    param = {"name": name, "in": "query", "required": required, "schema": schema, "description": description}
    if not required:
        param["allowEmptyValue"] = True
    return param


def timestamp_schema(example: str = "2026-11-28T00:00:00Z") -> dict:
    """Schema of a timestamp query parameter (the syntax of service.core.query_syntax)."""
    return {"type": "string", "pattern": anchored(TIMESTAMP), "examples": [example]}


def yes_no_schema() -> dict:
    """Schema of a yes/no query parameter."""
    return {"type": "string", "enum": [*TRUE_WORDS, *FALSE_WORDS]}


def text_schema(max_length: int | None = None) -> dict:
    """Schema of a free-text query parameter (no NUL characters)."""
    out: dict[str, Any] = {"type": "string", "pattern": anchored(NO_NUL)}
    if max_length is not None:
        out["maxLength"] = max_length
    return out


def json_content(schema: dict, examples: dict | None = None) -> dict:
    """A JSON ``content`` map for a request body or a response."""
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = examples
    return {"application/json": media}


def query_parameters(model: type[BaseModel]) -> list[dict]:
    """Query parameters from a pydantic model of them: names, schemas, defaults and descriptions."""
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        branches = [b for b in prop.pop("anyOf", ()) if b.get("type") != "null"]
        if branches:  # X | None: a query parameter is absent, never null
            prop = {**branches[0], **prop}
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            del prop["default"]
        description = prop.pop("description", "")
        out.append(query_param(name, prop, description, required=name in required))
    return out


# --------------------------------------------------------------------------- completing every operation

_RETRY_AFTER = {
    "Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 0}, "description": "seconds to wait"}
}
# status -> (component name, description, headers)
STANDARD_ERRORS: dict[str, tuple[str, str, dict]] = {
    "400": ("BadRequest", "invalid input: `field` names the offending parameter or body field", {}),
    "401": (
        "Unauthorized",
        "missing, invalid or revoked API key",
        {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}, "description": "Bearer"}},
    ),
    "403": ("Forbidden", "not allowed for this API key", {}),
    "404": ("NotFound", "no such resource for this API key (another client's included)", {}),
    "413": ("PayloadTooLarge", "request body larger than the configured limit", {}),
    "415": ("UnsupportedMediaType", "content type not accepted by this operation (UTF-8 only)", {}),
    "429": ("TooManyRequests", "rate limit of this API key exceeded", _RETRY_AFTER),
    "503": ("ServiceUnavailable", "database unavailable; retry after the given delay", _RETRY_AFTER),
}


def _error_content() -> dict:
    return json_content(ref("ErrorOut"))


def _components_responses() -> dict:
    return {
        name: {"description": description, "content": _error_content(), **({"headers": headers} if headers else {})}
        for name, description, headers in STANDARD_ERRORS.values()
    }


def _tag(path: str) -> str:
    first = path.strip("/").split("/")[0]
    return "meta" if "." in first else first


def complete_operation(path: str, operation: dict) -> dict:
    """``operation`` with the defaults every operation of this API shares (see the module docstring)."""
    op = copy.deepcopy(operation)
    op.setdefault("security", [{"apiKey": []}])
    op.setdefault("tags", [_tag(path)])
    params = op.setdefault("parameters", [])
    declared = {(p["in"], p["name"]) for p in params}
    for name in re.findall(r"\{(\w+)\}", path):
        if ("path", name) not in declared:
            params.insert(0, {"name": name, "in": "path", "required": True,
                              "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_DB_ID}})  # fmt: skip
    if not params:
        del op["parameters"]
    responses = op.setdefault("responses", {})
    needed = {"429"}
    if op["security"]:
        needed |= {"401", "503"}
    if any(p["in"] == "query" for p in params) or "requestBody" in op:
        needed.add("400")
    if any(p["in"] == "path" for p in params):
        needed.add("404")
    if "requestBody" in op:
        needed.add("413")
    for status in needed:
        responses.setdefault(status, {"$ref": f"#/components/responses/{STANDARD_ERRORS[status][0]}"})
    for status, resp in responses.items():
        if status >= "400" and "$ref" not in resp:
            resp.setdefault("content", _error_content())
            headers = STANDARD_ERRORS.get(status, ("", "", {}))[2]
            if headers:
                resp["headers"] = {**copy.deepcopy(headers), **resp.get("headers", {})}
    op["responses"] = dict(sorted(responses.items()))
    return op


# --------------------------------------------------------------------------- the sketches operations


def _limits_text(s) -> str:
    return (
        f"Limits: at most {s.max_batch} sketches per request, {s.max_strokes} strokes and {s.max_points} points "
        f"per sketch, request body {s.max_content_length} bytes, image {s.max_image_pixels} pixels, client_ref "
        f"{MAX_CLIENT_REF} characters, metadata {MAX_METADATA_BYTES} bytes of JSON nested at most "
        f"{MAX_METADATA_DEPTH} levels. Simplified coordinates are integers 0..255; raw coordinates are finite "
        f"with |v| <= {MAX_RAW_COORD:g}. NaN and Infinity are rejected."
    )


_ID_FROM_BODY = {"id": "$response.body#/id"}
_LINKS_TO_SKETCH = {
    "GetSketch": {"operationId": "getSketch", "parameters": _ID_FROM_BODY, "description": "poll the sketch"},
    "ReviewSketch": {"operationId": "reviewSketch", "parameters": _ID_FROM_BODY, "description": "review the sketch"},
}


def _submit_operation(s) -> dict:
    return {
        "summary": "Submit sketches for anomaly scoring",
        "description": (
            "Stores the sketch(es) as `queued` and answers at once; scoring is asynchronous: poll `status_url`. "
            "Re-sending a `client_ref` already used by the same API key returns the existing id with "
            "`duplicate: true` and stores nothing. A batch (JSON array or ndjson) stores its valid items and lists "
            "the invalid ones by index (202 if at least one was accepted, 400 if none). " + _limits_text(s)
        ),
        "operationId": "submitSketches",
        "requestBody": {
            "required": True,
            "content": {
                **json_content(
                    {"oneOf": [ref("SketchIn"), batch_schema("SketchIn", s, "a batch of sketches")]}, json_examples()
                ),
                "application/x-ndjson": {
                    "schema": batch_schema("QuickDrawLine", s, "Quick Draw ndjson"),
                    "examples": ndjson_examples(),
                    "x-serialization": "newline-delimited JSON: each item of the array is one line of the body",
                },
                "multipart/form-data": {
                    "schema": image_form_schema(s),
                    "encoding": copy.deepcopy(IMAGE_ENCODING),
                    "examples": multipart_examples(),
                },
            },
            "description": (
                "application/json: one sketch (an object) or a batch (an array). application/x-ndjson: Quick Draw "
                "ndjson, one drawing per line (the schema describes the lines as the items of an array); key_id "
                "becomes client_ref unless the line has one, the other Quick Draw fields go to metadata, items "
                "are reported by 0-based line number and blank lines are ignored. multipart/form-data: an image "
                "file `image` (PNG or JPEG), with optional `client_ref` and `metadata` (a JSON object) fields."
            ),
        },
        "responses": {
            "200": {
                "description": "duplicate single submission: the existing sketch",
                "content": json_content(ref("SubmitOut")),
                "links": _LINKS_TO_SKETCH,
            },
            "202": {
                "description": "stored and queued for scoring (a batch: at least one item accepted)",
                "headers": {"Location": {"schema": {"type": "string"}, "description": "status URL (single sketch)"}},
                "content": json_content({"oneOf": [ref("SubmitOut"), ref("BatchOut")]}),
                "links": _LINKS_TO_SKETCH,
            },
            "400": {
                "description": "invalid input; for a batch where nothing was accepted, the per-item report",
                "content": json_content({"oneOf": [ref("ErrorOut"), ref("BatchOut")]}),
            },
            "413": {"$ref": "#/components/responses/PayloadTooLarge"},
            "415": {
                "description": "content type other than application/json, application/x-ndjson, multipart/form-data",
            },
        },
    }


def _list_operation() -> dict:
    return {
        "summary": "List the caller's sketches, newest first",
        "description": (
            "A client key lists only its own sketches; an admin key lists every client's, or one client's with "
            "`client`. Unknown parameters and repeated ones are a 400, so typos do not pass silently. `until` must "
            "be later than `since`, and `score_max` not below `score_min` (400 otherwise)."
        ),
        "operationId": "listSketches",
        "parameters": query_parameters(ListQuery),
        "responses": {
            "200": {
                "description": f"a page (at most {LIST_MAX_LIMIT} sketches)",
                "content": json_content(ref("SketchListOut")),
                "links": {
                    "GetFirstSketch": {"operationId": "getSketch", "parameters": {"id": "$response.body#/items/0/id"}},
                    "NextPage": {"operationId": "listSketches", "parameters": {"cursor": "$response.body#/next"}},
                },
            },
            "400": {"description": "bad filter value (the error names the parameter) or unknown parameter"},
            "403": {"description": "`client` names another client (client keys)"},
        },
    }


def _get_operation() -> dict:
    return {
        "summary": "Status and result of one sketch",
        "description": "A client key reads only its own sketches (another client's is a 404); an admin key reads any.",
        "operationId": "getSketch",
        "responses": {
            "200": {
                "description": "the sketch",
                "content": json_content(ref("SketchOut")),
                "links": {"ReviewSketch": _LINKS_TO_SKETCH["ReviewSketch"]},
            },
            "404": {"description": "no such sketch for this API key (another client's sketch included)"},
        },
    }


def _openapi_operation() -> dict:
    return {
        "summary": "This document",
        "operationId": "openapi",
        "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1 document", "content": json_content({"type": "object"})}},
    }


# --------------------------------------------------------------------------- the document


def _model_schemas() -> dict:
    models = list(RESPONSE_MODELS) + [m for m in _extra_models if m not in RESPONSE_MODELS]
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    return defs.get("$defs", {})


def build_document(settings) -> dict:
    """The OpenAPI 3.1 document for ``settings`` (limits are configurable, so they are filled in here)."""
    schemas = {**_model_schemas(), **sketch_schemas(settings), **quickdraw_line_schemas(settings)}
    paths: dict[str, dict] = {
        "/sketches": {"post": _submit_operation(settings), "get": _list_operation()},
        "/sketches/{id}": {"get": _get_operation()},
        "/openapi.json": {"get": _openapi_operation()},
    }
    for path, ops in _extra_paths.items():
        paths.setdefault(path, {}).update(copy.deepcopy(ops))
    paths = {path: {m: complete_operation(path, op) for m, op in ops.items()} for path, ops in paths.items()}
    tags = sorted({t for ops in paths.values() for op in ops.values() for t in op.get("tags", ())})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SketchWatch API",
            "version": "1",
            "description": "Submit hand-drawn sketches for asynchronous anomaly scoring and read the results. "
            + _limits_text(settings)
            + " Every error is JSON: {\"error\": {\"field\", \"message\"}}. An optional query parameter sent "
            "empty (`name=`) is the same as leaving it out. Timestamps in query parameters are "
            + TIMESTAMP_HELP
            + ".",
        },
        "servers": [{"url": "/api/v1"}],
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _components_responses(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <API key> (X-API-Key: <API key> works too). A client key "
                    "sees and reviews only the sketches it submitted; an admin key (`sketchwatch apikeys create "
                    "--admin`) every client's.",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "session",
                    "description": "a logged-in dashboard session (staff: every client's numbers)",
                },
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
