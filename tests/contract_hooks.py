"""Schemathesis hooks for the API contract test (tests/test_contract.py), loaded by ``schemathesis run``.

The OpenAPI document says in JSON Schema everything JSON Schema can say. A few rules it can only state
in words (``x-constraints`` and the descriptions), and schemathesis cannot know them when it generates
requests the document calls valid. These hooks make such requests follow those rules, nothing else:

- the rows of a stroke have equal lengths, and a drawing holds at most ``x-limits.max_points`` points;
- metadata (with the extra fields of an ndjson line) is at most ``max_metadata_bytes`` of JSON and
  ``max_metadata_depth`` levels deep;
- an uploaded image decodes as PNG (a generated one is random bytes);
- ``until`` is later than ``since`` and ``score_max`` not below ``score_min``;
- a time series asks for at most 1440 minute or 2000 hour/day buckets.

They touch only requests generated as valid (positive mode): a request generated as invalid must be
rejected whatever else it holds. The ndjson serializer sends the document's item array as one JSON
value per line, as the media type's description says. A form generated as invalid that is valid as
the server receives it (a number sent as the text field client_ref is text) is left out.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import schemathesis
from schemathesis import GenerationMode

SKETCH_FIELDS = ("drawing", "format", "client_ref", "metadata")


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value: Any) -> bytes:
    """An array as newline-delimited JSON (one item per line); any other value as one line."""
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def _limits(case) -> dict:
    return case.operation.schema.raw_schema["x-limits"]


def _positive(case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, counted like service.core.validation (a container is one level)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest


def _metadata_fits(value: Any, limits: dict) -> bool:
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    return size <= limits["max_metadata_bytes"] and _depth(value) <= limits["max_metadata_depth"]


def _fix_drawing(item: dict, limits: dict) -> None:
    """Cut every stroke's rows to its shortest row and the drawing to the point limit."""
    drawing = item.get("drawing")
    if not isinstance(drawing, list):
        return
    budget = limits["max_points"]
    fixed = []
    for stroke in drawing:
        if not (isinstance(stroke, list) and stroke and all(isinstance(row, list) and row for row in stroke)):
            fixed.append(stroke)
            continue
        n = min(min(len(row) for row in stroke), budget)
        if n == 0:
            break
        fixed.append([row[:n] for row in stroke])
        budget -= n
    item["drawing"] = fixed


def _fix_sketch(item: Any, limits: dict, line: bool = False) -> None:
    """Make a sketch (or an ndjson line) follow the rules JSON Schema cannot state."""
    if not isinstance(item, dict):
        return
    _fix_drawing(item, limits)
    meta = item.get("metadata")
    extra = {k: v for k, v in item.items() if k not in SKETCH_FIELDS} if line else {}
    merged = {**extra, **meta} if isinstance(meta, dict) else extra
    if (extra or isinstance(meta, dict)) and not _metadata_fits(merged, limits):
        for key in extra:
            if key != "key_id":
                del item[key]
        if isinstance(meta, dict):
            item["metadata"] = {}


def _png() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).ellipse((8, 8, 56, 56), outline=255, width=3)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _instant(text: Any) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _order(query: dict, low: str, high: str, parse) -> None:
    """Swap two bounds given the wrong way round; drop the upper one when they are equal."""
    if query.get(low) in (None, "") or query.get(high) in (None, ""):
        return
    a, b = parse(query[low]), parse(query[high])
    if a is None or b is None or a < b:
        return
    if a == b:
        del query[high]
    else:
        query[low], query[high] = query[high], query[low]


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@schemathesis.hook
def map_case(context, case):
    """Valid requests follow the rules the document states in words (see the module docstring)."""
    return _follow_rules(case) if _positive(case) else case


@schemathesis.hook
def filter_case(context, case):
    """Leave out a form generated as invalid that is valid as sent (see ``_valid_as_sent``)."""
    return _positive(case) or not _is_form(case) or not _valid_as_sent(case)


def _is_form(case) -> bool:
    return (case.media_type or "").split(";")[0] == "multipart/form-data" and isinstance(case.body, dict)


# Text fields of the multipart form (the others are a file and a JSON part).
FORM_TEXT_FIELDS = ("client_ref",)
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _wire_text(value: Any) -> str:
    """What a form text field holds on the wire: a string as is, anything else as its JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def _valid_as_sent(case) -> bool:
    """Whether a form is valid as the server receives it.

    A form field is text: the number 7 sent as ``client_ref`` is the text "7", a valid client_ref,
    though the generated value was not a string; a list is one field per item (none for an empty one).
    schemathesis judges the generated values, so it would count such a form as invalid.
    """
    import jsonschema
    from referencing import Registry, Resource

    sent = dict(case.body)
    for name in FORM_TEXT_FIELDS:
        if name not in sent:
            continue
        value = sent[name]
        if isinstance(value, list):
            if len(value) > 1:
                return False  # repeated fields: the server rejects them
            if not value:
                del sent[name]
                continue
            value = value[0]
        sent[name] = _wire_text(value)
    if "image" in sent:
        sent["image"] = ""  # a file: the schema does not judge its bytes
    raw = case.operation.schema.raw_schema
    schema = raw["paths"]["/sketches"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    registry = Registry().with_resource("urn:doc", Resource.from_contents({**raw, "$schema": DRAFT}))
    return jsonschema.Draft202012Validator(_absolute(schema), registry=registry).is_valid(sent)


def _absolute(schema: Any) -> Any:
    """``schema`` with its document-relative references made absolute (``urn:doc#/...``)."""
    if isinstance(schema, dict):
        return {k: ("urn:doc" + v if k == "$ref" else _absolute(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_absolute(v) for v in schema]
    return schema


@schemathesis.hook
def before_add_examples(context, examples):
    """The document's examples too (the multipart one stands for a binary file: a real PNG goes instead)."""
    for case in examples:
        _follow_rules(case)


# GET /stats/timeseries: the longest window per request (1440 minute or 2000 hour/day buckets), with a margin
# for the buckets the server rounds ``since`` down to.
SERIES_MAX_SPAN = {"minute": timedelta(minutes=1430), "hour": timedelta(hours=1990), "day": timedelta(days=1990)}


def _fit_series_window(query: dict) -> None:
    """Leave out a ``since`` that is not before ``until`` (default now) or asks for too many buckets."""
    since = _instant(query["since"]) if query.get("since") else None
    if since is None:
        return
    until = _instant(query["until"]) if query.get("until") else datetime.now(timezone.utc)
    bucket = query.get("bucket") or "hour"
    if until is None or bucket not in SERIES_MAX_SPAN:
        return
    if not until - SERIES_MAX_SPAN[bucket] < since < until:
        del query["since"]


def _follow_rules(case):
    """Make a request the document calls valid follow the rules it states in words."""
    if isinstance(case.query, dict):
        _order(case.query, "since", "until", _instant)
        _order(case.query, "score_min", "score_max", _number)
        if case.operation.label == "GET /stats/timeseries":
            _fit_series_window(case.query)
    if case.operation.label != "POST /sketches":
        return case
    limits = _limits(case)
    media = (case.media_type or "").split(";")[0]
    body = case.body
    if media == "application/json":
        for item in body if isinstance(body, list) else [body]:
            _fix_sketch(item, limits)
    elif media == "application/x-ndjson" and isinstance(body, list):
        for item in body:
            _fix_sketch(item, limits, line=True)
    elif media == "multipart/form-data" and isinstance(body, dict):
        body["image"] = _png()
        if isinstance(body.get("metadata"), dict) and not _metadata_fits(body["metadata"], limits):
            body["metadata"] = {}
    return case
