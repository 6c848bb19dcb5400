"""Request and response models of the API (the submitted-item models are in ``service.core.validation``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from service.core.query_syntax import (
    FALSE_WORDS,
    NO_NUL,
    TIMESTAMP,
    TIMESTAMP_HELP,
    TRUE_WORDS,
    anchored,
    parse_integer,
    parse_number,
    parse_timestamp,
    parse_yes_no,
)
from service.core.validation import MAX_CLIENT_REF, InputError, no_nul
from service.search import MAX_QUERY

LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 500
STATUSES = ("queued", "scored", "failed")

# Quick Draw line fields that are not sketch fields; they are kept in metadata.
QUICKDRAW_FIELDS = ("key_id", "word", "countrycode", "recognized", "timestamp")


MAX_KEY_ID_INT = 2**63 - 1


def check_key_id(value: Any) -> None:
    """A Quick Draw key_id: a string that could be a client_ref, or a 64-bit integer (InputError otherwise)."""
    if isinstance(value, str):
        if len(value) > MAX_CLIENT_REF:
            raise InputError("key_id", f"longer than {MAX_CLIENT_REF} characters")
        if "\x00" in value:
            raise InputError("key_id", "must not contain NUL characters")
    elif isinstance(value, bool) or not isinstance(value, int) or not -MAX_KEY_ID_INT - 1 <= value <= MAX_KEY_ID_INT:
        raise InputError("key_id", "must be a string or a 64-bit integer")


def from_quickdraw(obj: Any) -> Any:
    """Map a Quick Draw ndjson line to a SketchIn dict: key_id -> client_ref, the rest -> metadata.

    Raises InputError for a key_id that could not be a client_ref.
    """
    if not isinstance(obj, dict):
        return obj
    if "key_id" in obj and obj["key_id"] is not None:
        check_key_id(obj["key_id"])
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


# Query-parameter types: the exact syntax of service.core.query_syntax, published as the document's schema.


def _syntax(parse):
    """A BeforeValidator applying ``parse`` to the raw query text (values already converted pass through)."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


QueryNumber = Annotated[float, _syntax(parse_number), Field(allow_inf_nan=False)]
QueryYesNo = Annotated[
    bool, _syntax(parse_yes_no), WithJsonSchema({"type": "string", "enum": [*TRUE_WORDS, *FALSE_WORDS]})
]


def query_timestamp(example: str) -> Any:
    """A timestamp parameter (the syntax of service.core.query_syntax), with an example value."""
    return Annotated[
        datetime,
        _syntax(parse_timestamp),
        WithJsonSchema({"type": "string", "pattern": anchored(TIMESTAMP), "examples": [example]}),
    ]



def query_text(max_length: int | None = None) -> Any:
    """A text parameter without NUL characters, at most ``max_length`` characters."""
    return Annotated[
        str, Field(max_length=max_length), AfterValidator(no_nul), Field(json_schema_extra={"pattern": anchored(NO_NUL)})
    ]


QueryText = query_text()

# Keyset cursor: "v1." and the id the next page starts below. The server makes it; clients pass it back.
CURSOR_PREFIX = "v1."
CURSOR_PATTERN = r"v1\.[1-9][0-9]{0,18}"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def encode_cursor(last_id: int) -> str:
    """The cursor of the page after the one ending at ``last_id``."""
    return f"{CURSOR_PREFIX}{last_id}"


def decode_cursor(cursor: str) -> int:
    """The id a cursor points below (ValueError if it is not one of ours)."""
    if not _CURSOR_RE.fullmatch(cursor):
        raise ValueError("invalid cursor: pass the 'next' value of the previous page")
    return int(cursor[len(CURSOR_PREFIX) :])


QueryCursor = Annotated[
    int,
    _syntax(decode_cursor),
    WithJsonSchema({"type": "string", "pattern": anchored(CURSOR_PATTERN), "examples": ["v1.1200"]}),
]


class ListQuery(BaseModel):
    """Query parameters of ``GET /sketches``; the OpenAPI document's parameters are generated from this model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Annotated[int, Field(ge=1, le=LIST_MAX_LIMIT), _syntax(parse_integer)] = Field(
        LIST_DEFAULT_LIMIT, description="page size"
    )
    cursor: QueryCursor | None = Field(None, description="the `next` value of the previous page")
    status: Literal["queued", "scored", "failed"] | None = Field(None, description="only this status")
    flagged: QueryYesNo | None = Field(None, description="only flagged (true) or unflagged (false) sketches")
    since: query_timestamp("2026-11-28T00:00:00Z") | None = Field(
        None, description=f"submitted at or after this time: {TIMESTAMP_HELP}"
    )
    until: query_timestamp("2026-11-29T00:00:00Z") | None = Field(
        None, description="submitted before this time (the syntax of since); later than since"
    )
    client: QueryText | None = Field(
        None, description="a client key: its own name only (403 otherwise); an admin key: any client"
    )
    client_ref: QueryText | None = Field(None, description="only the sketch with this client_ref")
    # The search and filters of the dashboard's sketches page (service.search).
    q: query_text(MAX_QUERY) | None = Field(
        None,
        description="search text: a sketch id, part of a client_ref or of the metadata (case-insensitive); "
        "`key:value` matches one metadata key exactly, e.g. `word:cat`",
    )
    score_min: QueryNumber | None = Field(None, description="score at least this")
    score_max: QueryNumber | None = Field(None, description="score at most this; not below score_min")
    verdict: Literal["anomaly", "cat", "none"] | None = Field(
        None, description="only this staff verdict; `none` = not reviewed yet"
    )
    model_version: query_text(64) | None = Field(None, description="only sketches scored by this model version")


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
    score_logit: float | None = Field(
        description=(
            "log(score / (1 - score)), computed from the model's sums in float64: the same order as score, "
            "still distinct where scores round to 1 (sketches scored before it was stored: the log-odds of "
            "their stored score, 17.33 for a score of 1)"
        )
    )
    flagged: bool | None = Field(description="score > threshold")
    threshold: float | None = Field(description="threshold in force when scored (or last re-flagged)")
    model_version: str | None
    submitted_at: str = Field(description="ISO 8601, UTC")
    scored_at: str | None
    error: str | None
    client_ref: str | None
    metadata: dict[str, Any] | None
    source_format: str = Field(description="simplified, raw or image")
    verdict: str | None = Field(
        description="latest verdict of SketchWatch's reviewers (dashboard or admin key): anomaly or cat"
    )
    client_verdict: str | None = Field(
        description="latest verdict the sketch's own client recorded with POST /sketches/{id}/review"
    )
    client: str = Field(description="the API key (client) that submitted the sketch")
    status_url: str


class SketchListOut(BaseModel):
    """A page of sketches, newest first."""

    items: list[SketchOut]
    next: str | None = Field(description="cursor of the next page (pass as ?cursor=), null on the last page")


class HistogramBinsOut(BaseModel):
    """Equal-width bins over the stored scores (numpy.histogram semantics)."""

    bins: int
    lo: float = Field(description="left edge of the first bin")
    hi: float = Field(description="right edge of the last bin")
    edges: list[float] = Field(description="bins + 1 edges")
    counts: list[int]
    total: int = Field(description="scored sketches counted in the bins")
    scale: Literal["linear", "log"]
    axis: Literal["score", "logit"] = Field(description="what was binned: the score or its log-odds")
    log_counts: list[float] | None = Field(None, description="log10(1 + count) per bin; only with log=true")


class CountsOut(BaseModel):
    """Sketches by state in the selected window."""

    total: int
    scored: int
    flagged: int
    reviewed: int = Field(description="sketches with a staff verdict")
    queued: int
    failed: int


class HistogramFiltersOut(BaseModel):
    """The filters the numbers cover (since/until as applied, after range)."""

    since: str | None
    until: str | None
    model_version: str | None
    client: str | None


class CalibrationOut(BaseModel):
    """The model's calibrated threshold and the share of cats it flags."""

    method: Literal["split_conformal", "percentile"] = Field(
        description="split_conformal: the ceil((n + 1)(1 - alpha))-th smallest of n held-out cat scores; "
        "percentile: the model carries no calibration record, its suggested percentile threshold is used"
    )
    threshold: float = Field(description="the calibrated threshold on the score scale (flag when score > it)")
    threshold_logit: float | None = Field(description="the same threshold as log-odds")
    n: int = Field(description="held-out cats it was computed from")
    rank: float = Field(description="the order statistic of the n scores it is")
    nominal_false_flag_rate: float = Field(description="alpha: the share of cats it is meant to flag")
    expected_false_flag_rate: float = Field(description="(n + 1 - rank) / (n + 1)")
    interval: list[float] = Field(description="[low, high]: the false-flag rate's central interval, Beta(n + 1 - rank, rank)")
    confidence: float = Field(description="the interval's level")


class HistogramOut(BaseModel):
    """Answer of ``GET /stats/histogram``."""

    histogram: HistogramBinsOut
    threshold: float = Field(description="the flag threshold in force, shared by every client")
    threshold_logit: float | None = Field(description="the threshold as log-odds, log(t / (1 - t)); null at 0 or 1")
    calibration: CalibrationOut | None = Field(
        description="the model's calibrated threshold with its nominal false-flag rate and interval (null: unknown)"
    )
    counts: CountsOut
    filters: HistogramFiltersOut


class ReviewOut(BaseModel):
    """Answer of ``POST /sketches/{id}/review``: the recorded review."""

    sketch_id: int
    verdict: Literal["anomaly", "cat"]
    reviewer: str = Field(description="api:<client>")
    created_at: str = Field(description="ISO 8601")
    kind: Literal["client", "staff"] = Field(
        description="client: the sketch's own client's label (client_verdict); staff: an admin key's verdict"
    )


# Every response model, in the order the document lists them.
RESPONSE_MODELS = (ErrorOut, SubmitOut, BatchOut, SketchOut, SketchListOut, HistogramOut, ReviewOut)
