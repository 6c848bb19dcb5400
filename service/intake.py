"""Intake: validate submissions, store them as ``queued`` (idempotently), commit, then enqueue scoring.

The order matters: a sketch is committed before its task is sent, so a worker never looks for a row
that is not there yet, and a broker outage loses nothing (the sweeper re-sends queued rows).
Nothing here touches the model.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

import numpy as np
from flask import current_app
from pydantic import ValidationError
from sqlalchemy import Connection, DateTime, Engine, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError

from models.formats import FormatError, read_image
from models.normalize import normalize_raw
from service.core.db import json_dumps
from service.extensions import db
from service.queue import enqueue_scoring
from service.core.schema import STATUS_QUEUED, Sketch, utcnow
from service.core.settings import Settings

log = logging.getLogger(__name__)

SIDE = 28
# A unique-constraint race resolves on the next attempt; more than this means something else is wrong.
MAX_STORE_ATTEMPTS = 5
# Bounded IN lists stay far below every database's bound-parameter limit.
LOOKUP_CHUNK = 500
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_SKETCHES = Sketch.__table__


@dataclass
class IntakeResult:
    """Outcome of one submission: accepted (index, id, duplicate) and rejected (index, field, message)."""

    accepted: list[tuple[int, int, bool]] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from service.extensions import app_settings

    return app_settings(current_app)


def prepare_item(item: Any, settings: Settings) -> dict:
    """Validate one submitted sketch and return the column values to store; raises InputError."""
    # Imported here: service.api loads its route modules, and some of them import this module.
    from service.api.schemas import InputError, SketchIn, check_drawing, first_error

    if not isinstance(item, dict):
        raise InputError("body", "expected a JSON object with a 'drawing'")
    _check_size_early(item.get("drawing"), settings, InputError)
    try:
        sketch = SketchIn.model_validate(item)
    except ValidationError as exc:
        raise first_error(exc) from None
    check_drawing(sketch.drawing, sketch.format, settings.max_strokes, settings.max_points)
    # SketchIn (2-3 non-empty rows of finite numbers per stroke) and check_drawing (equal row lengths, the
    # point limit, coordinate ranges) have verified every rule parse_drawing applies; skipping its second
    # pass saves a numpy round trip per drawing (raw: 240 -> 151 us, simplified: half of its cost).
    if sketch.format == "simplified":
        drawing = [[list(map(int, row)) for row in stroke] for stroke in sketch.drawing]
    else:
        drawing = _int_strokes(normalize_raw(sketch.drawing))
    return {
        "client_ref": sketch.client_ref,
        "source_format": sketch.format,
        "drawing": drawing,
        "meta": sketch.metadata,
    }


def _check_size_early(drawing: Any, settings: Settings, error: type[Exception]) -> None:
    """Refuse oversized drawings before validating every point (10^6 points cost 0.7 s otherwise)."""
    if not isinstance(drawing, list):
        return
    if len(drawing) > settings.max_strokes:
        raise error("drawing", f"{len(drawing)} strokes; the limit is {settings.max_strokes}")
    points = sum(len(s[0]) for s in drawing if isinstance(s, list) and s and isinstance(s[0], list))
    if points > settings.max_points:
        raise error("drawing", f"{points} points; the limit is {settings.max_points}")


def _int_strokes(strokes: list[np.ndarray]) -> list[list[list[int]]]:
    """Strokes as JSON-ready integer lists in 0..255 (one rounding pass for the whole drawing)."""
    points = np.concatenate([np.asarray(s[:2], dtype=np.float64) for s in strokes], axis=1)
    ints = np.rint(points).clip(0, 255).astype(np.int64)
    bounds = np.cumsum([s.shape[1] for s in strokes])[:-1]
    return [part.tolist() for part in np.split(ints, bounds, axis=1)]


def accept(client: str, items: list, settings: Settings | None = None) -> IntakeResult:
    """Validate, store the good items as queued in one transaction, commit, then enqueue their ids."""
    from service.api.schemas import InputError

    settings = _settings(settings)
    result = IntakeResult()
    rows: list[tuple[int, dict]] = []
    for index, item in enumerate(items):
        try:
            rows.append((index, prepare_item(item, settings)))
        except InputError as exc:
            result.rejected.append((index, exc.field, exc.message))
    return _store_and_enqueue(client, rows, result, settings)


def accept_image(
    client: str,
    data: bytes,
    metadata: dict | None = None,
    client_ref: str | None = None,
    settings: Settings | None = None,
) -> IntakeResult:
    """Store a PNG/JPEG upload as a 28x28 input bitmap (``source_format="image"``) and enqueue it."""
    from service.api.schemas import ImageFields, InputError, first_error

    settings = _settings(settings)
    result = IntakeResult()
    try:
        fields = ImageFields.model_validate({"client_ref": client_ref, "metadata": metadata})
    except ValidationError as exc:
        err = first_error(exc)
        result.rejected.append((0, err.field, err.message))
        return result
    try:
        bitmap = image_to_bitmap(data, settings.max_image_pixels)
    except InputError as exc:
        result.rejected.append((0, exc.field, exc.message))
        return result
    row = {
        "client_ref": fields.client_ref,
        "source_format": "image",
        "drawing": None,
        "meta": fields.metadata,
        "input_bitmap": bitmap.tobytes(),
    }
    return _store_and_enqueue(client, [(0, row)], result, settings)


def image_to_bitmap(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes -> (28, 28) uint8, white ink on black; raises InputError naming ``image``."""
    from service.api.schemas import InputError

    if not data:
        raise InputError("image", "empty file")
    if not (data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC)):
        raise InputError("image", "not a PNG or JPEG file")
    exact = _exact_size_bitmap(data)
    if exact is not None:
        return exact
    try:
        return read_image(data, max_pixels=max_pixels)
    except FormatError as exc:
        raise InputError("image", exc.message) from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile files; never a 500
        raise InputError("image", f"cannot decode image ({type(exc).__name__})") from None


def _exact_size_bitmap(data: bytes) -> np.ndarray | None:
    """A 28x28 upload is already a model-sized bitmap: use its pixels as they are (re-framing would blur it)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
        if img.size != (SIDE, SIDE) or "A" in img.getbands() or "transparency" in img.info:
            return None
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - read_image reports undecodable files with a proper message
        return None
    border = np.concatenate((grey[0], grey[-1], grey[:, 0], grey[:, -1]))
    # Dark ink on light paper: flip to the dataset's white-on-black, as read_image does.
    return (255 - grey) if float(np.median(border)) > 127.5 else grey.copy()


def _store_and_enqueue(
    client: str, rows: list[tuple[int, dict]], result: IntakeResult, settings: Settings
) -> IntakeResult:
    if rows:
        result.accepted = store(db.engine, client, rows)
        new_ids = [sketch_id for _, sketch_id, duplicate in result.accepted if not duplicate]
        enqueue_scoring(new_ids)
        log.info(
            "stored %d sketches",
            len(new_ids),
            extra={"sketch_ids": new_ids, "client": client, "duplicates": len(result.accepted) - len(new_ids)},
        )
    return result


def store(engine: Engine, client: str, rows: list[tuple[int, dict]]) -> list[tuple[int, int, bool]]:
    """Insert rows as queued and commit; an already used (client, client_ref) returns the existing id."""
    for attempt in range(1, MAX_STORE_ATTEMPTS + 1):
        try:
            return _store_committed(engine, client, rows)
        except DBAPIError as err:
            # A pooled connection that died since its last use (a database restart): the pool is now
            # invalidated, and the next attempt connects afresh. Any other database error is the caller's.
            if not err.connection_invalidated or attempt == MAX_STORE_ATTEMPTS:
                raise
            log.warning("database connection lost while storing; retrying (attempt %d)", attempt)
    raise AssertionError("unreachable")


def _store_committed(engine: Engine, client: str, rows: list[tuple[int, dict]]) -> list[tuple[int, int, bool]]:
    # A Core connection, not the ORM session: its bookkeeping was a tenth of a request's CPU.
    if engine.dialect.name == "postgresql":
        # The batch is one INSERT statement, atomic on its own: in autocommit it commits in its own round
        # trip instead of needing a second one for COMMIT. Everything after it only reads.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return _store_once(conn, client, rows)
    with engine.begin() as conn:
        return _store_once(conn, client, rows)


def existing_ids(conn: Connection, client: str, refs: Iterable[str]) -> dict[str, int]:
    """Ids already stored for these client_refs of ``client``."""
    refs = sorted(set(refs))
    found: dict[str, int] = {}
    for start in range(0, len(refs), LOOKUP_CHUNK):
        chunk = refs[start : start + LOOKUP_CHUNK]
        stmt = select(Sketch.client_ref, Sketch.id).where(Sketch.client == client, Sketch.client_ref.in_(chunk))
        found.update({ref: sketch_id for ref, sketch_id in conn.execute(stmt)})
    return found


def _store_once(conn: Connection, client: str, rows: list[tuple[int, dict]]) -> list[tuple[int, int, bool]]:
    """Insert the batch in one statement (two on SQLite); look up only the client_refs that conflicted."""
    now = utcnow()
    by_ref: dict[str, dict] = {}  # first row per client_ref; later ones in the batch are repeats
    values: list[dict] = []
    for _, row in rows:
        ref = row["client_ref"]
        if ref is None:
            values.append(_row_values(client, row, now))
        elif ref not in by_ref:
            by_ref[ref] = _row_values(client, row, now)
            values.append(by_ref[ref])
    anonymous_ids, fresh = _insert_rows(conn, values)
    known = _resolve_conflicts(conn, client, by_ref, fresh)
    accepted: list[tuple[int, int, bool]] = []
    next_anonymous = iter(anonymous_ids)
    first_seen: set[str] = set()
    for index, row in rows:
        ref = row["client_ref"]
        if ref is None:
            accepted.append((index, next(next_anonymous), False))
        elif ref in known:
            accepted.append((index, known[ref], True))
        else:
            # A repeat of a client_ref inside this batch points at the first one and is a duplicate.
            accepted.append((index, fresh[ref], ref in first_seen))
            first_seen.add(ref)
    return accepted


def _resolve_conflicts(conn: Connection, client: str, by_ref: dict[str, dict], fresh: dict[str, int]) -> dict[str, int]:
    """Ids of the stored rows our skipped client_refs conflicted with; ``fresh`` gains any re-inserted row.

    A conflicting row can vanish between our INSERT and the lookup (a concurrent transaction rolled back,
    or a purge). Only those refs are inserted again, so rows already committed (autocommit) are never
    inserted twice.
    """
    known: dict[str, int] = {}
    pending = [ref for ref in by_ref if ref not in fresh]
    for attempt in range(1, MAX_STORE_ATTEMPTS + 1):
        if not pending:
            return known
        known.update(existing_ids(conn, client, pending))
        pending = [ref for ref in pending if ref not in known]
        if not pending:
            return known
        log.info("client_ref race for client %s; inserting %d again (attempt %d)", client, len(pending), attempt)
        _, again = _insert_rows(conn, [by_ref[ref] for ref in pending])
        fresh.update(again)
        pending = [ref for ref in pending if ref not in again]
    if pending:
        raise RuntimeError(f"client_ref conflicts for client {client!r} did not resolve")
    return known


def _insert_rows(conn: Connection, values: list[dict]) -> tuple[list[int], dict[str, int]]:
    """Insert queued rows (one client, one timestamp), skipping (client, client_ref) pairs already stored.

    Returns the ids of the rows without a client_ref, in order, and client_ref -> id for the new rows with one.
    """
    if conn.dialect.name == "postgresql":
        return _insert_rows_pg(conn, values)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    anonymous = [v for v in values if v["client_ref"] is None]
    with_ref = [v for v in values if v["client_ref"] is not None]
    ids: list[int] = []
    fresh: dict[str, int] = {}
    if anonymous:
        stmt = insert(_SKETCHES).returning(_SKETCHES.c.id, sort_by_parameter_order=True)
        ids = list(conn.execute(stmt, anonymous).scalars())
    if with_ref:
        stmt = (
            sqlite_insert(_SKETCHES)
            .on_conflict_do_nothing(index_elements=[_SKETCHES.c.client, _SKETCHES.c.client_ref])
            .returning(_SKETCHES.c.client_ref, _SKETCHES.c.id)
        )
        fresh = {ref: sketch_id for ref, sketch_id in conn.execute(stmt, with_ref)}
    return ids, fresh


# One short statement whatever the batch size: psycopg and PostgreSQL parse it once, where a multi-row
# VALUES list of 10 parameters per row cost the web process a fifth of its CPU per sketch to build and convert.
# ORDER BY the ordinality makes the serial ids follow the input order (as SQLAlchemy's own sorted
# insertmanyvalues relies on), so the rows without a client_ref map back by sorting their ids.
_INSERT_PG = text(
    f"""
    INSERT INTO sketches (client, client_ref, submitted_at, enqueued_at, source_format, drawing, metadata,
                          input_bitmap, status, attempts)
    SELECT :client, v.ref, :now, :now, v.fmt, CAST(v.drawing AS json), CAST(v.meta AS json), v.bitmap,
           '{STATUS_QUEUED}', 0
    FROM unnest(CAST(:refs AS text[]), CAST(:fmts AS text[]), CAST(:drawings AS text[]), CAST(:metas AS text[]),
                CAST(:bitmaps AS bytea[])) WITH ORDINALITY AS v(ref, fmt, drawing, meta, bitmap, n)
    ORDER BY v.n
    ON CONFLICT (client, client_ref) DO NOTHING
    RETURNING id, client_ref
    """
).bindparams(bindparam("now", type_=DateTime(timezone=True)))


def _insert_rows_pg(conn: Connection, values: list[dict]) -> tuple[list[int], dict[str, int]]:
    params = {
        "client": values[0]["client"],
        "now": values[0]["submitted_at"],
        "refs": [v["client_ref"] for v in values],
        "fmts": [v["source_format"] for v in values],
        "drawings": [None if v["drawing"] is None else json_dumps(v["drawing"]) for v in values],
        "metas": [None if v["metadata"] is None else json_dumps(v["metadata"]) for v in values],
        "bitmaps": [v["input_bitmap"] for v in values],
    }
    returned = conn.execute(_INSERT_PG, params).all()
    ids = sorted(sketch_id for sketch_id, ref in returned if ref is None)
    return ids, {ref: sketch_id for sketch_id, ref in returned if ref is not None}


def _row_values(client: str, row: dict, now: datetime) -> dict:
    # Keys are column names (Core INSERT). enqueued_at is stamped here, not after the send: one row version
    # less per sketch; a failed send clears it.
    return {
        "client": client,
        "client_ref": row["client_ref"],
        "submitted_at": now,
        "enqueued_at": now,
        "source_format": row["source_format"],
        "drawing": row["drawing"],
        "metadata": row["meta"],  # the column's name (the ORM attribute is ``meta``)
        "input_bitmap": row.get("input_bitmap"),
        "status": STATUS_QUEUED,
        "attempts": 0,
    }
