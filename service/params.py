"""Parsing and validating query parameters shared by the dashboard pages and the stats API.

Outside both packages, so that the API does not import the dashboard (nor the dashboard the API).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from service.core.query_syntax import parse_integer, parse_timestamp, parse_yes_no
from service.stats import DEFAULT_BINS, MAX_BINS, StatsFilter

# Quick time windows offered on the overview ("all" means no window).
RANGES = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


class ParamError(ValueError):
    """A bad query parameter, named so the message can point at it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_time(args: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 date or date-time parameter (naive means UTC; the syntax of service.core.query_syntax), or None when absent or empty."""
    raw = args.get(name) or ""
    if not raw:
        return None
    try:
        return parse_timestamp(raw)
    except ValueError as exc:
        raise ParamError(name, str(exc)) from None


def parse_filter(args: Mapping[str, str], now: datetime | None = None) -> StatsFilter:
    """A StatsFilter from ``range`` (1h/24h/7d/30d/all) or ``since``/``until``, and ``model_version``."""
    window = args.get("range") or ""
    since = parse_time(args, "since")
    until = parse_time(args, "until")
    if window and window not in ("all", "custom"):
        if window not in RANGES:
            raise ParamError("range", f"expected one of all, custom, {', '.join(RANGES)}; got {window!r}")
        since, until = (now or datetime.now(timezone.utc)) - RANGES[window], None
    elif window == "all":
        since = until = None
    model_version = (args.get("model_version") or "").strip() or None
    if model_version is not None and "\x00" in model_version:
        raise ParamError("model_version", "must not contain NUL characters")
    try:
        return StatsFilter(since=since, until=until, model_version=model_version)
    except ValueError as exc:
        raise ParamError("since", str(exc)) from None


def parse_int(args: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer parameter within [lo, hi]; ``default`` when absent or empty."""
    raw = args.get(name) or ""
    if not raw:
        return default
    try:
        value = parse_integer(raw)
    except ValueError as exc:
        raise ParamError(name, str(exc)) from None
    if not lo <= value <= hi:
        raise ParamError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def parse_bins(args: Mapping[str, str]) -> int:
    """The histogram bin count."""
    return parse_int(args, "bins", DEFAULT_BINS, 1, MAX_BINS)


def parse_bool(args: Mapping[str, str], name: str) -> bool:
    """A yes/no parameter (true/false, True/False, 1/0, yes/no, on/off); False when absent or empty."""
    raw = args.get(name) or ""
    if not raw:
        return False
    try:
        return parse_yes_no(raw)
    except ValueError as exc:
        raise ParamError(name, str(exc)) from None


def parse_axis(args: Mapping[str, str], name: str = "axis") -> str:
    """A histogram's axis: "score" (the default) or "logit" (the scores' log-odds)."""
    raw = (args.get(name) or "").strip() or "score"
    if raw not in ("score", "logit"):
        raise ParamError(name, "expected score or logit")
    return raw


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


def parse_threshold(raw: str | None, bounds: tuple[float, float], name: str = "value") -> float:
    """A threshold typed by an admin, within ``bounds``; one plain message for whatever is wrong with it."""
    lo, hi = bounds
    ask = f"Enter a threshold between {lo:g} and {hi:g}."
    text = (raw or "").strip()
    if not text:
        raise ParamError(name, ask)
    try:
        value = float(text)
    except ValueError:
        raise ParamError(name, f"“{_shown(text)}” is not a number. {ask}") from None
    if not math.isfinite(value):
        raise ParamError(name, f"“{_shown(text)}” is not a finite number. {ask}")
    if value < lo:
        raise ParamError(name, f"{_shown(text)} is below {lo:g}, the lowest score: every sketch would be flagged. {ask}")
    if value > hi:
        raise ParamError(name, f"{_shown(text)} is above {hi:g}, the highest score: no sketch would be flagged. {ask}")
    return value


def parse_threshold_logit(raw: str | None, bounds: tuple[float, float], name: str = "value_logit") -> float:
    """A threshold typed as log-odds, log(t / (1 - t)): the bounded threshold it stands for, within ``bounds``."""
    text = (raw or "").strip()
    ask = "Enter the threshold's log-odds as a number, e.g. 1.4 (a threshold of 0.80)."
    try:
        value = float(text)
    except ValueError:
        raise ParamError(name, f"“{_shown(text)}” is not a number. {ask}") from None
    if not math.isfinite(value):
        raise ParamError(name, f"“{_shown(text)}” is not a finite number. {ask}")
    t = 1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))
    if not 0.0 < t < 1.0:
        raise ParamError(name, f"log-odds {_shown(text)} is a threshold of {t:g}: beyond what a score resolves. {ask}")
    return parse_threshold(repr(t), bounds, name)


def _shown(text: str, limit: int = 40) -> str:
    """What the user typed, shortened for an error message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
