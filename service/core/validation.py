"""Validation of submitted sketches, shared by the intake and the API's request models.

Pure Python and pydantic: the limits, the submitted-item models (``SketchIn``, ``ImageFields``), the
drawing checks, and :class:`InputError`, which names the offending field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

# Documented limits that are not settings (settings.max_strokes/max_points/max_batch are).
MAX_CLIENT_REF = 200
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8
MAX_RAW_COORD = 1_000_000.0
MAX_RAW_TIME = 1e12

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


def no_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters; refuse them up front rather than fail on insert."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


ClientRef = Annotated[str, Field(min_length=1, max_length=MAX_CLIENT_REF), AfterValidator(no_nul)]


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
