"""Durations as written in the API (`30d`, `12h`, `1w2d`): parse and format.

Used by `compile` (ttl, maxTTL) and by the operator's rotation logic (rotationInterval,
rotationGracePeriod). The CRD pattern `api.DURATION_PATTERN` admits exactly what this parses.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"([0-9]+)([smhdw])")
_WHOLE = re.compile(r"^(?:[0-9]+[smhdw])+$")
# timedelta cannot hold more than 999999999 days; anything near it is a typo anyway.
_MAX_SECONDS = 100 * 365 * 86400


def parse_duration(text: str) -> timedelta:
    """`1w2d3h` -> timedelta; ValueError for anything else (including lifetimes over 100 years)."""
    if not _WHOLE.match(text):
        raise ValueError(f"invalid duration {text!r}: expected whole units like 30d, 12h, 1w2d")
    seconds = sum(int(count) * _UNIT_SECONDS[unit] for count, unit in _PART.findall(text))
    if seconds > _MAX_SECONDS:
        raise ValueError(f"invalid duration {text!r}: longer than 100 years")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest API spelling of a whole-second duration (e.g. 90 days -> 90d, 36h -> 1d12h)."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
