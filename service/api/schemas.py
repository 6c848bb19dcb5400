"""Request and response models of the API, and the documented input limits."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

# Documented limits that are not settings (settings.max_strokes/max_points/max_batch are).
MAX_CLIENT_REF = 200
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8
MAX_RAW_COORD = 1_000_000.0
MAX_RAW_TIME = 1e12
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 500
STATUSES = ("queued", "scored", "failed")

# Quick Draw line fields that are not sketch fields; they are kept in metadata.
QUICKDRAW_FIELDS = ("key_id", "word", "countrycode", "recognized", "timestamp")

Coord = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Row = Annotated[list[Coord], Field(min_length=1)]
Stroke = Annotated[list[Row], Field(min_length=2, max_length=3)]


class InputError(ValueError):
    """One invalid input field, with a JSON-path-like name (``drawing[2][0][5]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def field_name(loc: tuple) -> str:
    """Render a pydantic error location as ``drawing[2][0][5]`` / ``metadata``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def first_error(exc: ValidationError, prefix: str = "") -> InputError:
    """The first pydantic error as an InputError (clients fix one thing at a time)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    name = field_name(tuple(err["loc"]))
    if prefix:
        name = prefix if name == "body" else f"{prefix}.{name}"
    message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return InputError(name, message)


def _json_depth(value: Any) -> int:
    """Nesting depth of a JSON value, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            if depth > MAX_METADATA_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in node)
    return deepest


def check_metadata(value: dict | None) -> dict | None:
    """Reject metadata nested deeper than MAX_METADATA_DEPTH or larger than MAX_METADATA_BYTES."""
    if value is None:
        return None
    if _json_depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"not serialisable as JSON: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"{size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return value


def _no_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters; refuse them up front rather than fail on insert."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


ClientRef = Annotated[str, Field(min_length=1, max_length=MAX_CLIENT_REF), AfterValidator(_no_nul)]


class SketchIn(BaseModel):
    """One submitted drawing: Quick Draw strokes, ``[[x...], [y...]]`` or ``[[x...], [y...], [t...]]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drawing: Annotated[list[Stroke], Field(min_length=1, description="strokes; each is [x-row, y-row(, t-row)]")]
    format: Literal["simplified", "raw"] = Field(
        "simplified",
        description="simplified: integer coordinates 0..255 (Quick Draw simplified); "
        "raw: canvas coordinates of any range (|v| <= 1e6), normalised on intake",
    )
    client_ref: ClientRef | None = Field(None, description="idempotency key, unique per API key")
    metadata: dict[str, Any] | None = Field(
        None, description=f"free-form JSON object, at most {MAX_METADATA_BYTES} bytes and {MAX_METADATA_DEPTH} levels"
    )

    _check_metadata = field_validator("metadata")(check_metadata)


class ImageFields(BaseModel):
    """The form fields that accompany an uploaded image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_ref: ClientRef | None = None
    metadata: dict[str, Any] | None = None

    _check_metadata = field_validator("metadata")(check_metadata)


def check_drawing(drawing: list, fmt: str, max_strokes: int, max_points: int) -> None:
    """Check limits, row lengths and coordinate ranges, naming the first offending element."""
    if len(drawing) > max_strokes:
        raise InputError("drawing", f"{len(drawing)} strokes; the limit is {max_strokes}")
    for i, stroke in enumerate(drawing):
        if fmt == "simplified" and len(stroke) != 2:
            raise InputError(f"drawing[{i}]", "a simplified stroke has exactly 2 rows: [x...], [y...]")
        n = len(stroke[0])
        for r, row in enumerate(stroke):
            if len(row) != n:
                raise InputError(f"drawing[{i}][{r}]", f"has {len(row)} values but row 0 has {n}")
    total = sum(len(stroke[0]) for stroke in drawing)
    if total > max_points:
        raise InputError("drawing", f"{total} points; the limit is {max_points}")
    for i, stroke in enumerate(drawing):
        for r, row in enumerate(stroke):
            _check_row(row, fmt, r, f"drawing[{i}][{r}]")


def _check_row(row: list, fmt: str, r: int, name: str) -> None:
    if fmt == "simplified":
        lo, hi = 0.0, 255.0
    elif r < 2:
        lo, hi = -MAX_RAW_COORD, MAX_RAW_COORD
    else:
        lo, hi = 0.0, MAX_RAW_TIME
    # Fast path for the common valid row; the slow loop below only runs to name the bad element.
    if lo <= min(row) and max(row) <= hi and (fmt != "simplified" or all(map(float.is_integer, row))):
        return
    for j, v in enumerate(row):
        if not lo <= v <= hi:
            raise InputError(f"{name}[{j}]", f"{v:.15g} is outside {lo:.15g}..{hi:.15g}")
        if fmt == "simplified" and v != math.floor(v):
            raise InputError(f"{name}[{j}]", f"{v:.15g} is not an integer (simplified coordinates are integers)")


def from_quickdraw(obj: Any) -> Any:
    """Map a Quick Draw ndjson line to a SketchIn dict: key_id -> client_ref, the rest -> metadata."""
    if not isinstance(obj, dict):
        return obj
    item = {k: obj[k] for k in ("drawing", "format", "client_ref") if k in obj}
    meta = obj.get("metadata")
    extra = {k: v for k, v in obj.items() if k not in ("drawing", "format", "client_ref", "metadata")}
    if extra:
        if meta is not None and not isinstance(meta, dict):
            item["metadata"] = meta  # let validation report the bad type
        else:
            item["metadata"] = {**extra, **(meta or {})}
    elif meta is not None:
        item["metadata"] = meta
    if "client_ref" not in item and obj.get("key_id") not in (None, ""):
        item["client_ref"] = str(obj["key_id"])
    return item


class ListQuery(BaseModel):
    """Query parameters of ``GET /sketches``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Annotated[int, Field(ge=1, le=LIST_MAX_LIMIT)] = LIST_DEFAULT_LIMIT
    cursor: str | None = None
    status: Literal["queued", "scored", "failed"] | None = None
    flagged: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    client: Annotated[str, AfterValidator(_no_nul)] | None = None
    client_ref: Annotated[str, AfterValidator(_no_nul)] | None = None

    @field_validator("since", "until")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        """Naive timestamps are taken as UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError("date is out of range") from None


# Response models: used for the OpenAPI document; handlers build plain dicts for speed.


class ErrorDetail(BaseModel):
    """What went wrong and where."""

    field: str | None = Field(description="offending field, e.g. drawing[2][0][5], metadata, limit, body")
    message: str


class ErrorOut(BaseModel):
    """Every non-2xx answer."""

    error: ErrorDetail


class SubmitOut(BaseModel):
    """Answer to a single submission."""

    id: int
    status_url: str
    duplicate: bool = Field(description="true when client_ref was already used: the existing id is returned")


class BatchItemOut(BaseModel):
    """One entry of a batch answer: either accepted (id) or rejected (error)."""

    index: int = Field(description="0-based position in the JSON array, or 0-based line number for ndjson")
    id: int | None = None
    status_url: str | None = None
    duplicate: bool | None = None
    error: ErrorDetail | None = None


class BatchOut(BaseModel):
    """Answer to a batch submission."""

    items: list[BatchItemOut]
    accepted: int
    rejected: int


class SketchOut(BaseModel):
    """A sketch's status and, once scored, its result."""

    id: int
    status: Literal["queued", "scored", "failed"]
    score: float | None = Field(description="anomaly score, higher is more anomalous")
    flagged: bool | None = Field(description="score > threshold")
    threshold: float | None = Field(description="threshold in force when scored (or last re-flagged)")
    model_version: str | None
    submitted_at: str = Field(description="ISO 8601, UTC")
    scored_at: str | None
    error: str | None
    client_ref: str | None
    metadata: dict[str, Any] | None
    source_format: str = Field(description="simplified, raw or image")
    verdict: str | None = Field(description="latest reviewer verdict: anomaly or cat")
    status_url: str


class SketchListOut(BaseModel):
    """A page of sketches, newest first."""

    items: list[SketchOut]
    next: str | None = Field(description="cursor of the next page (pass as ?cursor=), null on the last page")
