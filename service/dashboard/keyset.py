"""Keyset pagination and neighbours over an ordered list of sketches, in SQL.

A list is a base query (its filters) and one or more segments, each with extra terms and a sort key of
(column, descending) pairs ending in a unique column. Segments follow each other: a score order lists the
scored sketches by (score, id), then those without a score by id, so no NULL ever sits in a key and each
segment's order can come from an index. A position is (segment, key values); pages and the previous and
next sketch are read from a position with ``key > position`` terms, never with OFFSET.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

Key = Sequence[tuple[Any, bool]]


@dataclass(frozen=True)
class Segment:
    """A stretch of the list: extra WHERE terms and the sort key within it."""

    where: tuple
    key: Key


@dataclass(frozen=True)
class Position:
    """Where a row sits in a list: its segment and its key values there."""

    segment: int
    values: tuple

    def encode(self) -> str:
        """An opaque cursor for URLs."""
        raw = json.dumps([self.segment, list(self.values)], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str, segments: int) -> Position:
        """The position a cursor names; ValueError when it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            segment, values = json.loads(raw)
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
            raise ValueError("invalid cursor: follow the page links") from None
        if not isinstance(segment, int) or not 0 <= segment < segments or not isinstance(values, list):
            raise ValueError("invalid cursor: follow the page links")
        # Every key of these lists is a number (ids, scores, draw order).
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError("invalid cursor: follow the page links")
        if any(isinstance(v, float) and v != v for v in values) or any(abs(v) > 2**63 for v in values):
            raise ValueError("invalid cursor: follow the page links")
        return cls(segment, tuple(values))


def beyond(key: Key, values: Sequence, backwards: bool = False):
    """WHERE term: rows strictly after ``values`` in the order of ``key`` (before them when ``backwards``).

    The first column's bound is repeated on its own so that an index on it can start at the position.
    """
    if len(values) != len(key):
        raise ValueError("cursor does not fit this list: follow the page links")
    terms = []
    for i, (col, desc) in enumerate(key):
        later = (col < values[i]) if desc != backwards else (col > values[i])
        terms.append(and_(*[c == v for (c, _), v in zip(key[:i], values[:i])], later))
    first, desc = key[0]
    bound = (first <= values[0]) if desc != backwards else (first >= values[0])
    return and_(bound, or_(*terms))


def order(key: Key, backwards: bool = False) -> list:
    """ORDER BY terms of ``key`` (reversed when ``backwards``)."""
    return [c.desc() if desc != backwards else c.asc() for c, desc in key]


@dataclass
class KeysetPage:
    """One page of rows with the cursors of the pages around it."""

    items: list[Any]
    next: str | None
    prev: str | None


class OrderedList:
    """A filtered, ordered list of sketches: pages, positions and neighbours."""

    def __init__(self, base: Callable[..., Select], segments: Sequence[Segment]) -> None:
        self.base = base  # base(*columns) -> SELECT columns FROM ... WHERE filters
        self.segments = list(segments)

    def key_columns(self, segment: int) -> list:
        """The key columns of a segment (selected with each row to make its cursor)."""
        return [c for c, _ in self.segments[segment].key]

    def _walk(self, session: Session, columns, start: Position | None, limit: int, backwards: bool) -> list:
        """Up to ``limit`` (segment, row) pairs from ``start`` onwards (or back), crossing segments."""
        out: list = []
        n = len(self.segments)
        seg_order = range(start.segment if start else 0, n) if not backwards else range(
            start.segment if start else n - 1, -1, -1
        )
        for si in seg_order:
            seg = self.segments[si]
            stmt = self.base(*columns, *self.key_columns(si)).where(*seg.where)
            if start is not None and si == start.segment:
                stmt = stmt.where(beyond(seg.key, start.values, backwards))
            rows = session.execute(stmt.order_by(*order(seg.key, backwards)).limit(limit - len(out))).all()
            out.extend((si, row) for row in rows)
            if len(out) >= limit:
                break
        return out

    def _position(self, si: int, row) -> Position:
        k = len(self.segments[si].key)
        return Position(si, tuple(row[-k:]))

    def page(self, session: Session, columns, per_page: int, after: str | None = None, before: str | None = None) -> KeysetPage:
        """The page after cursor ``after`` (or before ``before``; the first page without either)."""
        if before:
            start = Position.decode(before, len(self.segments))
            got = self._walk(session, columns, start, per_page + 1, backwards=True)
            more_before = len(got) > per_page
            got = list(reversed(got[:per_page]))
            items = [row for _, row in got]
            return KeysetPage(
                items=items,
                next=self._position(*got[-1]).encode() if got else None,
                prev=self._position(*got[0]).encode() if got and more_before else None,
            )
        start = Position.decode(after, len(self.segments)) if after else None
        got = self._walk(session, columns, start, per_page + 1, backwards=False)
        more_after = len(got) > per_page
        got = got[:per_page]
        return KeysetPage(
            items=[row for _, row in got],
            next=self._position(*got[-1]).encode() if got and more_after else None,
            prev=self._position(*got[0]).encode() if got and start is not None else None,
        )

    def position_of(self, session: Session, sketch_id: int, id_column) -> Position | None:
        """Where sketch ``sketch_id`` sits (its key values, whether or not the filters still select it)."""
        for si, seg in enumerate(self.segments):
            row = session.execute(
                self.base(*self.key_columns(si), filtered=False).where(*seg.where, id_column == sketch_id).limit(1)
            ).first()
            if row is not None and all(v is not None for v in row):
                return Position(si, tuple(row))
        # Not placeable in this order (say, an unscored sketch in a score order with no segment for it).
        return None

    def neighbours(self, session: Session, sketch_id: int, id_column) -> tuple[int | None, int | None]:
        """(previous id, next id) around sketch ``sketch_id`` in this list."""
        at = self.position_of(session, sketch_id, id_column)
        if at is None:
            return None, None
        prev = self._walk(session, [id_column], at, 1, backwards=True)
        nxt = self._walk(session, [id_column], at, 1, backwards=False)
        return (prev[0][1][0] if prev else None), (nxt[0][1][0] if nxt else None)
