"""Request-body schemas of the OpenAPI document: what the intake accepts, as exactly as JSON Schema can say it.

Built by hand rather than from the pydantic models because the rules depend on the format (simplified
coordinates are integers 0..255, raw ones numbers within +-1e6 with a time row), which the models check
in code. What JSON Schema cannot say is in the descriptions and in ``x-constraints``: the rows of a
stroke have equal lengths, all strokes together hold at most ``max_points`` points, metadata is at most
``MAX_METADATA_BYTES`` of JSON and ``MAX_METADATA_DEPTH`` levels deep, an image decodes as PNG or JPEG.
"""

from __future__ import annotations

from typing import Any

from service.api.schemas import MAX_KEY_ID_INT
from service.core.query_syntax import NO_NUL, anchored
from service.core.validation import MAX_CLIENT_REF, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_RAW_COORD, MAX_RAW_TIME

REF = "#/components/schemas/{model}"


def ref(name: str) -> dict:
    """A reference to a component schema."""
    return {"$ref": REF.format(model=name)}


def _row(item: dict, max_points: int, what: str) -> dict:
    return {"type": "array", "items": item, "minItems": 1, "maxItems": max_points, "description": what}


def _drawing(stroke: dict, max_strokes: int, fmt: str) -> dict:
    return {
        "type": "array",
        "items": stroke,
        "minItems": 1,
        "maxItems": max_strokes,
        "description": f"the strokes of a {fmt} drawing; the rows of a stroke have equal lengths",
    }


def constraints_text(settings) -> list[str]:
    """The rules JSON Schema cannot express, listed in ``x-constraints`` and the descriptions."""
    return [
        "the rows of a stroke have equal lengths (one value per point)",
        f"all strokes together hold at most {settings.max_points} points",
        f"metadata is at most {MAX_METADATA_BYTES} bytes as JSON and at most {MAX_METADATA_DEPTH} levels deep",
    ]


def sketch_schemas(settings) -> dict[str, dict]:
    """Component schemas of a submitted sketch: SketchIn (one of SimplifiedSketchIn, RawSketchIn) and its parts."""
    simplified_stroke = {
        "type": "array",
        "items": _row({"type": "integer", "minimum": 0, "maximum": 255}, settings.max_points, "integers 0..255"),
        "minItems": 2,
        "maxItems": 2,
        "description": "[x-row, y-row]",
    }
    xy = {"type": "number", "minimum": -MAX_RAW_COORD, "maximum": MAX_RAW_COORD}
    raw_stroke = {
        "type": "array",
        "prefixItems": [
            _row(xy, settings.max_points, "x, canvas pixels"),
            _row(xy, settings.max_points, "y, canvas pixels"),
            _row({"type": "number", "minimum": 0, "maximum": MAX_RAW_TIME}, settings.max_points, "t, milliseconds"),
        ],
        "items": False,
        "minItems": 2,
        "description": "[x-row, y-row] or [x-row, y-row, t-row]",
    }
    common = {
        "client_ref": {"anyOf": [ref("ClientRef"), {"type": "null"}], "description": "idempotency key, unique per API key"},
        "metadata": {"anyOf": [ref("Metadata"), {"type": "null"}]},
    }
    rules = constraints_text(settings)
    return {
        "ClientRef": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CLIENT_REF,
            "pattern": anchored(NO_NUL),
            "description": "a client's own id for the sketch; re-sending it returns the existing sketch",
        },
        "Metadata": {
            "type": "object",
            "description": f"free-form JSON object, stored and returned as is; at most {MAX_METADATA_BYTES} bytes "
            f"as JSON and {MAX_METADATA_DEPTH} levels deep",
        },
        "SimplifiedSketchIn": {
            "type": "object",
            "title": "SimplifiedSketchIn",
            "description": "Quick Draw simplified strokes: integer coordinates 0..255. " + "; ".join(rules) + ".",
            "required": ["drawing"],
            "additionalProperties": False,
            "properties": {
                "drawing": _drawing(simplified_stroke, settings.max_strokes, "simplified"),
                "format": {"const": "simplified", "default": "simplified"},
                **common,
            },
            "x-constraints": rules,
        },
        "RawSketchIn": {
            "type": "object",
            "title": "RawSketchIn",
            "description": "Canvas strokes of any range (|x|, |y| <= 1e6; t in 0..1e12), normalised on intake like "
            "Google's simplified files. " + "; ".join(rules) + ".",
            "required": ["drawing", "format"],
            "additionalProperties": False,
            "properties": {
                "drawing": _drawing(raw_stroke, settings.max_strokes, "raw"),
                "format": {"const": "raw"},
                **common,
            },
            "x-constraints": rules,
        },
        "SketchIn": {
            "type": "object",
            "description": "One drawing: Quick Draw strokes, simplified (the default) or raw; the format decides "
            "which of the two schemas applies.",
            "required": ["drawing"],
            "additionalProperties": False,
            "properties": {
                "drawing": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_strokes,
                    "description": "strokes; each is [x-row, y-row] (simplified) or [x-row, y-row(, t-row)] (raw)",
                },
                "format": {"enum": ["simplified", "raw"], "default": "simplified"},
                **common,
            },
            "oneOf": [ref("SimplifiedSketchIn"), ref("RawSketchIn")],
        },
    }


def quickdraw_line_schemas(settings) -> dict[str, dict]:
    """Component schemas of an ndjson line: a sketch plus the Quick Draw fields (kept in metadata)."""
    quickdraw = {
        "key_id": {
            "anyOf": [
                {"type": "string", "maxLength": MAX_CLIENT_REF, "pattern": anchored(NO_NUL)},
                {"type": "integer", "minimum": -MAX_KEY_ID_INT - 1, "maximum": MAX_KEY_ID_INT},
                {"type": "null"},
            ],
            "description": "the drawing's id; becomes client_ref unless the line has one (and is kept in metadata)",
        },
        "word": {"description": "category (kept in metadata)"},
        "countrycode": {"description": "kept in metadata"},
        "recognized": {"description": "kept in metadata"},
        "timestamp": {"description": "kept in metadata"},
    }
    out = {}
    for fmt in ("Simplified", "Raw"):
        sketch = sketch_schemas(settings)[f"{fmt}SketchIn"]
        out[f"{fmt}QuickDrawLine"] = {
            **sketch,
            "title": f"{fmt}QuickDrawLine",
            "description": sketch["description"] + " Any other field is kept in metadata (and counts toward its limits).",
            "properties": {**sketch["properties"], **quickdraw},
            "additionalProperties": True,
        }
    out["QuickDrawLine"] = {
        "oneOf": [ref("SimplifiedQuickDrawLine"), ref("RawQuickDrawLine")],
        "description": "One line of a Quick Draw ndjson file.",
    }
    return out


def batch_schema(item: str, settings, what: str) -> dict:
    """A batch: 1..max_batch values with at least one valid ``item``; each value is accepted or rejected alone."""
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": settings.max_batch,
        "contains": ref(item),
        "items": {"description": f"a {item}; any other value is rejected alone and reported by its index"},
        "description": f"{what}: each item is accepted or rejected on its own; the batch is answered 202 when at "
        f"least one item is a valid {item} (so at least one must be), 400 with the per-item report otherwise",
    }


def image_form_schema(settings) -> dict:
    """The multipart form of an image submission."""
    return {
        "type": "object",
        "required": ["image"],
        "additionalProperties": False,
        "properties": {
            "image": {
                "type": "string",
                "format": "binary",
                "contentMediaType": "application/octet-stream",
                "description": f"a PNG or JPEG file of at most {settings.max_image_pixels} pixels, sent as a file "
                "(with a filename)",
            },
            "client_ref": ref("ClientRef"),
            "metadata": ref("Metadata"),
        },
        "x-constraints": ["image decodes as PNG or JPEG", f"image has at most {settings.max_image_pixels} pixels"],
    }


IMAGE_ENCODING: dict[str, Any] = {
    "image": {"contentType": "image/png, image/jpeg"},
    "metadata": {"contentType": "application/json"},
}
