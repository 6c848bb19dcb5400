"""``/api/v1/sketches``: submit sketches (JSON, JSON batch, ndjson, image) and read their status."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from flask import current_app, g, jsonify, request, url_for
from pydantic import ValidationError
from sqlalchemy import select, true

from service.api import bp
from service.api.auth_key import current_client, current_key_is_admin, require_api_key
from service.api.errors import ApiError
from service.api.schemas import ListQuery, encode_cursor, from_quickdraw
from service.extensions import db
# Module import (not names), so the intake's entry points are looked up at call time.
from service import intake
from service.core.schema import Sketch
from service.core.validation import InputError, first_error
from service.search import SketchSearch

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})
MULTIPART = "multipart/form-data"
MAX_DB_ID = 2**63 - 1

# Columns a status answer needs; the drawing and the bitmaps are never loaded here.
STATUS_COLUMNS = (
    Sketch.id,
    Sketch.status,
    Sketch.score,
    Sketch.score_logit,
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
    Sketch.client_verdict,
    Sketch.client,
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
        except InputError as exc:
            bad.append((lineno, exc.field, exc.message))
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
    for fields in (request.form, request.files):
        repeated = sorted(name for name in fields if len(fields.getlist(name)) > 1)
        if repeated:
            raise ApiError(400, repeated[0], "given more than once")
    # A field that is sent is validated as sent: an empty client_ref or metadata is an error, not "absent".
    metadata = None
    if "metadata" in request.form:
        try:
            metadata = orjson.loads(request.form["metadata"])
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "metadata", f"invalid JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise ApiError(400, "metadata", "must be a JSON object")
    client_ref = request.form.get("client_ref")
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
        "score_logit": row.score_logit,
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
        "client_verdict": row.client_verdict,
        "client": row.client,
        "status_url": status_url(row.id),
    }


def visible_to_caller():
    """WHERE term limiting a query to the sketches this API key may see: its own, or all for an admin key."""
    if current_key_is_admin():
        return true()
    return Sketch.client == current_client()


@bp.get("/sketches/<int:sketch_id>")
@require_api_key
def get_sketch(sketch_id: int):
    """Status and result of one of the caller's own sketches (404 for anyone else's; an admin key sees all)."""
    if sketch_id > MAX_DB_ID:
        raise ApiError(404, "id", f"no sketch {sketch_id}")
    row = db.session.execute(select(*STATUS_COLUMNS).where(Sketch.id == sketch_id, visible_to_caller())).first()
    if row is None:
        raise ApiError(404, "id", f"no sketch {sketch_id}")
    return jsonify(_sketch_json(row))


def scoped_client(requested: str | None) -> str | None:
    """The client a list or aggregate covers: the caller's own; for an admin key ``requested`` or all (None).

    A client key naming another client is a 403: it may only see its own sketches.
    """
    if current_key_is_admin():
        return requested
    client = current_client()
    if requested is not None and requested != client:
        raise ApiError(403, "client", "an API key can only see its own sketches")
    return client


@bp.get("/sketches")
@require_api_key
def list_sketches():
    """The caller's sketches (an admin key's: every client's), newest first, filtered, keyset-paginated."""
    params: dict[str, Any] = {}
    for name in request.args:
        values = request.args.getlist(name)
        if len(values) > 1:
            raise ApiError(400, name, "given more than once")
        # An empty value is the same as leaving the parameter out (as the OpenAPI document says).
        if values[0]:
            params[name] = values[0]
    try:
        query = ListQuery.model_validate(params)
    except ValidationError as exc:
        err = first_error(exc)
        raise ApiError(400, err.field, err.message) from None
    client = scoped_client(query.client)
    if query.since and query.until and query.since >= query.until:
        raise ApiError(400, "until", "must be later than since")
    if query.score_min is not None and query.score_max is not None and query.score_min > query.score_max:
        raise ApiError(400, "score_max", "must not be below score_min")

    # The same search and filters as the dashboard's sketches page (service.search).
    search = SketchSearch(
        q=query.q or None,
        score_min=query.score_min,
        score_max=query.score_max,
        client=client,
        client_ref=query.client_ref,
        status=query.status,
        flagged=query.flagged,
        verdict=query.verdict,
        model_version=query.model_version,
        since=query.since,
        until=query.until,
    )
    stmt = select(*STATUS_COLUMNS).where(*search.clauses())
    # A cursor beyond the largest id pages from the top: every id is below it.
    if query.cursor is not None and query.cursor <= MAX_DB_ID:
        stmt = stmt.where(Sketch.id < query.cursor)
    rows = db.session.execute(stmt.order_by(Sketch.id.desc()).limit(query.limit + 1)).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return jsonify(items=[_sketch_json(r) for r in rows], next=encode_cursor(rows[-1].id) if more else None)
