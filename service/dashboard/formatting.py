"""Template filters of the pages: times always shown in UTC and saying so; scores as log-odds."""

from __future__ import annotations

from datetime import datetime, timezone

from service.dashboard import bp
from service.stats import logit

TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; naive values (SQLite) are UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@bp.app_template_filter("utc_text")
def utc_text(value: datetime | None) -> str:
    """'2026-05-01 12:00:00 UTC' (the database connection's own zone never leaks into a page)."""
    return as_utc(value).strftime(TIME_FORMAT) if value else "–"


@bp.app_template_filter("utc_iso")
def utc_iso(value: datetime | None) -> str:
    """ISO 8601 with its offset, for <time datetime>."""
    return as_utc(value).isoformat() if value else ""


@bp.app_template_filter("log_odds")
def log_odds(value: float | None, digits: int = 4) -> str:
    """A bounded score or threshold as log-odds, log(p / (1 - p)), or '–' at or beyond 0 and 1."""
    odds = logit(value)
    return "–" if odds is None else f"{odds:.{digits}f}"
