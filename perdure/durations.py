"""Durations and points in time, as Cloudflare Workflows spells them.

A duration is a :class:`datetime.timedelta`, a number of **milliseconds**, or a string
``"<n> <unit>"`` / ``"<n> <unit>s"`` with unit second, minute, hour, day, week, month
(30 days) or year (365 days). All of them become seconds (a float) inside the engine.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import datetime, timedelta

from .errors import ValidationError

Duration = timedelta | int | float | str
"""Anything accepted where the API asks for a duration."""

_UNIT_SECONDS = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
}
# ASCII digits and spaces only (re.ASCII): the REST API's schema states the same pattern.
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s+(second|minute|hour|day|week|month|year)s?\s*$", re.ASCII)


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Return ``value`` in seconds, or raise :class:`ValidationError` quoting the input."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValidationError(f"{what} {value!r} is not a duration: use a timedelta, milliseconds or '<n> <unit>'")
    elif isinstance(value, (int, float)):
        try:
            seconds = float(value) / 1000.0  # an int too large for a float (JSON allows it) raises
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValidationError(f"{what} {value!r} is not a finite number of milliseconds")
    elif isinstance(value, str):
        parsed = _parse_text(value)
        if parsed is None:
            raise ValidationError(
                f"{what} {value!r} cannot be parsed: expected '<n> <unit>' with unit second, "
                "minute, hour, day, week, month or year (e.g. '10 seconds'), or milliseconds"
            )
        seconds = parsed
    else:
        raise ValidationError(f"{what} {value!r} is not a duration: use a timedelta, milliseconds or '<n> <unit>'")
    if seconds < 0:
        raise ValidationError(f"{what} {value!r} is negative")
    return seconds


@functools.lru_cache(maxsize=1024)
def _parse_text(value: str) -> float | None:
    match = _DURATION_RE.fullmatch(value)
    return None if match is None else float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_timestamp(value: object, *, what: str = "time") -> float:
    """Return an aware datetime or epoch milliseconds as epoch seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError(f"{what} {value!r} is a naive datetime: give it a timezone")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value / 1000.0
    raise ValidationError(f"{what} {value!r} must be an aware datetime or milliseconds since the epoch")
