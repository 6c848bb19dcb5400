"""``/api/v1/sketches``: submit sketches (JSON, JSON batch, ndjson, image) and read their status."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Any

import orjson
from flask import current_app, g, jsonify, request, url_for
from pydantic import ValidationError
from sqlalchemy import select

from service.api import bp
from service.api.auth_key import current_client, require_api_key
from service.api.errors import ApiError
from service.api.schemas import ListQuery, first_error, from_quickdraw
from service.extensions import db
# Module import (not names): service.intake imports service.api.schemas, which loads this package.
from service import intake
from service.core.schema import Sketch

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})
MULTIPART = "multipart/form-data"
MAX_DB_ID = 2**63 - 1
CURSOR_PREFIX = "v1:"

# Columns a status answer needs; the drawing and the bitmaps are never loaded here.
STATUS_COLUMNS = (
    Sketch.id,
    Sketch.status,
    Sketch.score,
    Sketch.flagged,
    Sketch.threshold,
    Sketch.model_version,
    Sketch.submitted_at,
    Sketch.scored_at,
    Sketch.error,
    Sketch.client_ref,
    Sketch.meta,
    Sketch.source_format,
    Sketch.verdict,
)


def _status_base() -> str:
    base = g.get("sketches_url")
    if base is None:
        base = g.sketches_url = url_for("api.list_sketches")
    return base


def status_url(sketch_id: int) -> str:
    """Relative URL of a sketch's status resource."""
    return f"{_status_base()}/{sketch_id}"


# --------------------------------------------------------------------------- submit


# Rate-limited by the API blueprint's per-key limit (service.ratelimit), like every API route.
@bp.post("/sketches")
@require_api_key
def submit_sketches():
    """Accept one sketch, a batch (JSON array or ndjson) or an image; 202 as soon as stored."""
    mimetype = request.mimetype
    client = current_client()
    if mimetype in JSON_TYPES:
        _require_utf8()
        body = _parse_json(request.get_data(cache=False))
        if isinstance(body, dict):
            return _single_answer(intake.accept(client, [body]))
        if isinstance(body, list):
            _check_batch_size(len(body))
            return _batch_answer(intake.accept(client, body))
        raise ApiError(400, "body", "expected a JSON object (one sketch) or an array (a batch)")
    if mimetype in NDJSON_TYPES:
        _require_utf8()
        indexes, items, bad = _parse_ndjson(request.get_data(cache=False))
        result = intake.accept(client, items) if items else intake.IntakeResult()
        return _batch_answer(_reindex(result, indexes, bad))
    if mimetype == MULTIPART:
        return _image_submission(client)
    raise ApiError(
        415,
        "Content-Type",
        f"unsupported content type {mimetype or '(none)'!r}: send application/json, "
        "application/x-ndjson or multipart/form-data",
    )


def _require_utf8() -> None:
    charset = request.mimetype_params.get("charset")
    if charset and charset.lower().replace("-", "") != "utf8":
        raise ApiError(415, "Content-Type", f"charset {charset!r} is not supported: JSON must be UTF-8")


def _parse_json(data: bytes) -> Any:
    if not data.strip():
        raise ApiError(400, "body", "empty body")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson rejects NaN/Infinity, invalid UTF-8 and nesting deeper than 1024 levels.
        raise ApiError(400, "body", f"invalid JSON: {exc}") from None


def _parse_ndjson(data: bytes) -> tuple[list[int], list[Any], list[tuple[int, str, str]]]:
    """Split an ndjson body into (line numbers, decoded items, lines that are not JSON)."""
    lines = [(lineno, line) for lineno, line in enumerate(data.split(b"\n")) if line.strip()]
    if not lines:
        raise ApiError(400, "body", "empty body: no ndjson lines")
    _check_batch_size(len(lines))
    indexes: list[int] = []
    items: list[Any] = []
    bad: list[tuple[int, str, str]] = []
    for lineno, line in lines:
        try:
            items.append(from_quickdraw(orjson.loads(line)))
            indexes.append(lineno)
        except orjson.JSONDecodeError as exc:
            bad.append((lineno, "body", f"line {lineno + 1}: invalid JSON: {exc}"))
    return indexes, items, bad


def _reindex(result: intake.IntakeResult, indexes: list[int], bad: list[tuple[int, str, str]]) -> intake.IntakeResult:
    """Report ndjson items by their 0-based line number rather than their position among good lines."""
    result.accepted = [(indexes[i], sketch_id, dup) for i, sketch_id, dup in result.accepted]
    result.rejected = sorted([(indexes[i], f, m) for i, f, m in result.rejected] + bad)
    return result


def _check_batch_size(n: int) -> None:
    from service.extensions import app_settings

    limit = app_settings(current_app).max_batch
    if n == 0:
        raise ApiError(400, "body", "empty batch")
    if n > limit:
        raise ApiError(400, "body", f"batch of {n} sketches; the limit is {limit} per request")


def _image_submission(client: str):
    upload = request.files.get("image")
    if upload is None:
        raise ApiError(400, "image", "missing file field 'image' (PNG or JPEG)")
    unknown = sorted(set(request.form) - {"client_ref", "metadata"} | set(request.files) - {"image"})
    if unknown:
        raise ApiError(400, unknown[0], "unknown field")
    metadata = None
    raw_meta = request.form.get("metadata")
    if raw_meta:
        try:
            metadata = orjson.loads(raw_meta)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "metadata", f"invalid JSON: {exc}") from None
    client_ref = request.form.get("client_ref") or None
    return _single_answer(intake.accept_image(client, upload.read(), metadata, client_ref))


def _single_answer(result: intake.IntakeResult):
    if result.rejected:
        _, field, message = result.rejected[0]
        raise ApiError(400, field, message)
    _, sketch_id, duplicate = result.accepted[0]
    body = {"id": sketch_id, "status_url": status_url(sketch_id), "duplicate": duplicate}
    return jsonify(body), (200 if duplicate else 202), {"Location": status_url(sketch_id)}


def _batch_answer(result: intake.IntakeResult):
    items: list[dict] = [
        {"index": i, "id": sketch_id, "status_url": status_url(sketch_id), "duplicate": dup}
        for i, sketch_id, dup in result.accepted
    ]
    items += [{"index": i, "error": {"field": f, "message": m}} for i, f, m in result.rejected]
    items.sort(key=lambda item: item["index"])
    body = {"items": items, "accepted": len(result.accepted), "rejected": len(result.rejected)}
    return jsonify(body), (202 if result.accepted else 400)


# --------------------------------------------------------------------------- read


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        # SQLite hands back naive values; everything is stored in UTC.
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _sketch_json(row) -> dict:
    return {
        "id": row.id,
        "status": row.status,
        "score": row.score,
        "flagged": row.flagged,
        "threshold": row.threshold,
        "model_version": row.model_version,
        "submitted_at": _iso(row.submitted_at),
        "scored_at": _iso(row.scored_at),
        "error": row.error,
        "client_ref": row.client_ref,
        "metadata": row.meta,
        "source_format": row.source_format,
        "verdict": row.verdict,
        "status_url": status_url(row.id),
    }


@bp.get("/sketches/<int:sketch_id>")
@require_api_key
def get_sketch(sketch_id: int):
    """Status and result of one of the caller's own sketches (404 for anyone else's)."""
    if sketch_id > MAX_DB_ID:
        raise ApiError(404, "id", f"no sketch {sketch_id}")
    row = db.session.execute(
        select(*STATUS_COLUMNS).where(Sketch.id == sketch_id, Sketch.client == current_client())
    ).first()
    if row is None:
        raise ApiError(404, "id", f"no sketch {sketch_id}")
    return jsonify(_sketch_json(row))


def encode_cursor(last_id: int) -> str:
    """Opaque keyset cursor for ids below ``last_id``."""
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor points below; raises ApiError naming ``cursor`` if it is not ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if text.startswith(CURSOR_PREFIX):
            value = int(text[len(CURSOR_PREFIX) :])
            if 0 < value <= MAX_DB_ID:
                return value
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiError(400, "cursor", "invalid cursor: pass the 'next' value of the previous page")


@bp.get("/sketches")
@require_api_key
def list_sketches():
    """The caller's sketches, newest first, filtered and paginated with a keyset cursor."""
    params: dict[str, Any] = {}
    for name in request.args:
        values = request.args.getlist(name)
        if len(values) > 1:
            raise ApiError(400, name, "given more than once")
        params[name] = values[0]
    try:
        query = ListQuery.model_validate(params)
    except ValidationError as exc:
        err = first_error(exc)
        raise ApiError(400, err.field, err.message) from None
    client = current_client()
    if query.client is not None and query.client != client:
        raise ApiError(403, "client", "an API key can only list its own sketches")
    if query.since and query.until and query.since >= query.until:
        raise ApiError(400, "until", "must be later than since")

    stmt = select(*STATUS_COLUMNS).where(Sketch.client == client)
    if query.status is not None:
        stmt = stmt.where(Sketch.status == query.status)
    if query.flagged is not None:
        stmt = stmt.where(Sketch.flagged.is_(query.flagged))
    if query.since is not None:
        stmt = stmt.where(Sketch.submitted_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(Sketch.submitted_at < query.until)
    if query.client_ref is not None:
        stmt = stmt.where(Sketch.client_ref == query.client_ref)
    if query.cursor is not None:
        stmt = stmt.where(Sketch.id < decode_cursor(query.cursor))
    rows = db.session.execute(stmt.order_by(Sketch.id.desc()).limit(query.limit + 1)).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return jsonify(items=[_sketch_json(r) for r in rows], next=encode_cursor(rows[-1].id) if more else None)
