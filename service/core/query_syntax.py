"""The exact syntax of query-parameter values: timestamps, integers, numbers and yes/no words.

One definition for the API's parsing, the dashboard's and the OpenAPI document: each syntax is a regular
expression that the parsers apply with ``fullmatch`` and the document publishes as the parameter's
``pattern``, so what the document calls valid is what the server accepts. The expressions keep to the
common subset of Python's and ECMA-262's syntax (``[0-9]``, not ``\\d``, which matches other scripts' digits).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

# A calendar date of the years 1000-9998 (so that no offset moves an instant out of datetime's range),
# February 29 in leap years only.
_YEAR = "(?:1[0-9]{3}|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
_MONTH_DAY = "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
_LEAP_YEAR = "(?:(?:1[0-9]|[2-9][0-9])(?:0[48]|[2468][048]|[13579][26])|(?:1[26]|[2468][048]|[3579][26])00)"
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,6})?)?"
_OFFSET = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
# ISO 8601 / RFC 3339: a date, or a date and time of day with an optional offset (none means UTC).
TIMESTAMP = f"{_DATE}(?:T{_TIME}{_OFFSET}?)?"
INTEGER = "-?(?:0|[1-9][0-9]*)"
# A JSON number (no NaN, no Infinity).
NUMBER = "-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
# Text without NUL characters (PostgreSQL text cannot hold them).
NO_NUL = "[^\\u0000]*"
TRUE_WORDS = ("true", "True", "1", "yes", "on")
FALSE_WORDS = ("false", "False", "0", "no", "off")

_TIMESTAMP_RE = re.compile(TIMESTAMP)
_INTEGER_RE = re.compile(INTEGER)
_NUMBER_RE = re.compile(NUMBER)

TIMESTAMP_HELP = (
    "an ISO 8601 date (2026-11-28) or date and time (2026-11-28T01:41:30, optional fraction of up to 6 "
    "digits, optional offset Z or +hh:mm; without an offset the time is UTC), years 1000-9998"
)


def anchored(pattern: str) -> str:
    """``pattern`` anchored at both ends, as the OpenAPI document publishes it (JSON Schema patterns search)."""
    return f"^(?:{pattern})$"


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from TIMESTAMP syntax; ValueError naming the expected form otherwise."""
    if not _TIMESTAMP_RE.fullmatch(text):
        raise ValueError(f"expected {TIMESTAMP_HELP}; got {text[:40]!r}")
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def parse_integer(text: str) -> int:
    """An integer in plain decimal (no sign but minus, no spaces, no underscores)."""
    if not _INTEGER_RE.fullmatch(text):
        raise ValueError(f"not an integer: {text[:40]!r}")
    return int(text)


def parse_number(text: str) -> float:
    """A finite number in JSON syntax."""
    if not _NUMBER_RE.fullmatch(text):
        raise ValueError(f"not a number: {text[:40]!r}")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"out of range: {text[:40]!r}")
    return value


def parse_yes_no(text: str) -> bool:
    """True or False from one of TRUE_WORDS / FALSE_WORDS."""
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}; got {text[:40]!r}")
