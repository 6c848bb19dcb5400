"""Searching and filtering stored sketches: one definition for the dashboard's sketches page and the API list.

Outside both packages, so that the API does not import the dashboard (nor the dashboard the API).
The search text matches a sketch id (when it is a number), the client_ref or the metadata (case-insensitive
substring of the metadata's JSON text); ``#123`` matches the id alone, ``key:value`` one metadata key exactly
(``word:cat``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import Text, cast, false, func, or_
from sqlalchemy.sql.elements import ColumnElement

from service.core.schema import STATUS_FAILED, STATUS_QUEUED, STATUS_SCORED, VERDICT_ANOMALY, VERDICT_CAT, Sketch

STATUSES = (STATUS_QUEUED, STATUS_SCORED, STATUS_FAILED)
# "none" is an unreviewed sketch (no staff verdict yet).
VERDICTS = (VERDICT_ANOMALY, VERDICT_CAT, "none")
MAX_QUERY = 200
MAX_DB_ID = 2**63 - 1
# Metadata keys are bound into a JSON path, so only plain names are taken as keys.
_KEY_VALUE = re.compile(r"^([A-Za-z0-9_-]{1,64})[:=](.+)$")


@dataclass(frozen=True)
class SketchSearch:
    """Which sketches a list shows: search text and filters; None means "any"."""

    q: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    client: str | None = None
    client_ref: str | None = None
    status: str | None = None
    flagged: bool | None = None
    verdict: str | None = None
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        if self.q is not None and len(self.q) > MAX_QUERY:
            raise ValueError(f"search text is longer than {MAX_QUERY} characters")

    @property
    def active(self) -> bool:
        """True when anything narrows the list."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    def clauses(self) -> list[ColumnElement[bool]]:
        """WHERE terms of this search (bound parameters only; the text is never part of the SQL)."""
        out: list[ColumnElement[bool]] = []
        if self.q:
            out.append(text_clause(self.q))
        if self.score_min is not None:
            out.append(Sketch.score >= self.score_min)
        if self.score_max is not None:
            out.append(Sketch.score <= self.score_max)
        if self.client is not None:
            out.append(Sketch.client == self.client)
        if self.client_ref is not None:
            out.append(Sketch.client_ref == self.client_ref)
        if self.status is not None:
            out.append(Sketch.status == self.status)
        if self.flagged is not None:
            out.append(Sketch.flagged == self.flagged)
        if self.verdict == "none":
            out.append(Sketch.verdict.is_(None))
        elif self.verdict is not None:
            out.append(Sketch.verdict == self.verdict)
        if self.model_version is not None:
            out.append(Sketch.model_version == self.model_version)
        if self.since is not None:
            out.append(Sketch.submitted_at >= self.since)
        if self.until is not None:
            out.append(Sketch.submitted_at < self.until)
        return out


def text_clause(q: str) -> ColumnElement[bool]:
    """The search text as one WHERE term: id, client_ref or metadata, or one metadata key with ``key:value``."""
    q = q.strip()
    if q.startswith("#") and q[1:].isascii() and q[1:].isdigit():
        return Sketch.id == int(q[1:]) if 0 < int(q[1:]) <= MAX_DB_ID else false()
    pair = _KEY_VALUE.match(q)
    if pair:
        key, value = pair.group(1), pair.group(2).strip()
        return func.lower(Sketch.meta[key].as_string()) == value.lower()
    terms = [Sketch.client_ref.icontains(q, autoescape=True), cast(Sketch.meta, Text).icontains(q, autoescape=True)]
    if q.isascii() and q.isdigit() and 0 < int(q) <= MAX_DB_ID:
        terms.insert(0, Sketch.id == int(q))
    return or_(*terms)
