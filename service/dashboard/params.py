"""Parsing and validating query parameters shared by the dashboard pages and the stats API."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from service.stats import DEFAULT_BINS, MAX_BINS, StatsFilter

# Quick time windows offered on the overview ("all" means no window).
RANGES = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


class ParamError(ValueError):
    """A bad query parameter, named so the message can point at it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_time(args: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 date or date-time parameter (naive means UTC), or None when absent."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ParamError(name, f"not an ISO 8601 date or date-time: {raw!r}") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def parse_filter(args: Mapping[str, str], now: datetime | None = None) -> StatsFilter:
    """A StatsFilter from ``range`` (1h/24h/7d/30d/all) or ``since``/``until``, and ``model_version``."""
    window = (args.get("range") or "").strip()
    since = parse_time(args, "since")
    until = parse_time(args, "until")
    if window and window not in ("all", "custom"):
        if window not in RANGES:
            raise ParamError("range", f"expected one of all, custom, {', '.join(RANGES)}; got {window!r}")
        since, until = (now or datetime.now(timezone.utc)) - RANGES[window], None
    elif window == "all":
        since = until = None
    model_version = (args.get("model_version") or "").strip() or None
    try:
        return StatsFilter(since=since, until=until, model_version=model_version)
    except ValueError as exc:
        raise ParamError("since", str(exc)) from None


def parse_int(args: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer parameter within [lo, hi]."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(name, f"not an integer: {raw!r}") from None
    if not lo <= value <= hi:
        raise ParamError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def parse_bins(args: Mapping[str, str]) -> int:
    """The histogram bin count."""
    return parse_int(args, "bins", DEFAULT_BINS, 1, MAX_BINS)


def parse_bool(args: Mapping[str, str], name: str) -> bool:
    """A yes/no parameter (1/0, true/false, on/off, yes/no)."""
    raw = (args.get(name) or "").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ParamError(name, f"expected a yes/no value, got {raw!r}")


def parse_float(args: Mapping[str, str], name: str) -> float:
    """A required finite number."""
    raw = (args.get(name) or "").strip()
    if not raw:
        raise ParamError(name, "is required")
    try:
        value = float(raw)
    except ValueError:
        raise ParamError(name, f"not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise ParamError(name, "must be a finite number")
    return value
