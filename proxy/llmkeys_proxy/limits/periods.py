"""UTC calendar periods and rolling-window constants shared by both limiter backends (`limits.redis`,
`limits.memory`) and by the operator's usage sync (period ids of `status.usage`)."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta

#: Length of the rolling windows (requestsPerMinute, tokensPerMinute), in milliseconds.
WINDOW_MS = 60_000
#: Counters outlive their period by this much, so the usage sync can still read a period just closed.
DAY_COUNTER_GRACE = timedelta(days=3)
MONTH_COUNTER_GRACE = timedelta(days=35)


def as_utc(now: datetime) -> datetime:
    """`now` in UTC; a naive datetime is taken to be UTC already."""
    tz = now.tzinfo
    if tz is UTC:
        return now  # the common case (the proxy's clock), without a conversion
    if tz is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def epoch_ms(now: datetime) -> int:
    """Milliseconds since the Unix epoch (window scores and reservation expiries use these)."""
    return math.floor(as_utc(now).timestamp() * 1000)


@functools.lru_cache(maxsize=64)
def _calendar(year: int, month: int, day: int) -> tuple[str, str, datetime, datetime]:
    """Day id, month id and the instants day and month counters expire, for one UTC date: every
    request of a day asks for them twice (reserve, settle), so they are computed once."""
    start = datetime(year, month, day, tzinfo=UTC)
    return (
        f"{year:04d}-{month:02d}-{day:02d}",
        f"{year:04d}-{month:02d}",
        day_end(start) + DAY_COUNTER_GRACE,
        month_end(start) + MONTH_COUNTER_GRACE,
    )


def day_id(now: datetime) -> str:
    """The UTC day `YYYY-MM-DD` that `now` falls in."""
    utc = as_utc(now)
    return _calendar(utc.year, utc.month, utc.day)[0]


def month_id(now: datetime) -> str:
    """The UTC month `YYYY-MM` that `now` falls in."""
    utc = as_utc(now)
    return _calendar(utc.year, utc.month, utc.day)[1]


def day_start(now: datetime) -> datetime:
    utc = as_utc(now)
    return datetime(utc.year, utc.month, utc.day, tzinfo=UTC)


def day_end(now: datetime) -> datetime:
    """First instant of the next UTC day."""
    return day_start(now) + timedelta(days=1)


def month_end(now: datetime) -> datetime:
    """First instant of the next UTC month."""
    utc = as_utc(now)
    if utc.month == 12:
        return datetime(utc.year + 1, 1, 1, tzinfo=UTC)
    return datetime(utc.year, utc.month + 1, 1, tzinfo=UTC)


def period_start(period: str) -> datetime:
    """Start of a period id, `YYYY-MM` or `YYYY-MM-DD` (for `status.usage.periodStart`)."""
    fmt = "%Y-%m" if len(period) == 7 else "%Y-%m-%d"
    return datetime.strptime(period, fmt).replace(tzinfo=UTC)


def day_counter_ttl_s(now: datetime) -> int:
    """Seconds a day counter written at `now` should live: to the end of its day, plus grace.

    Relative (EXPIRE, not EXPIREAT) on purpose: tests inject a `now` far from the server's clock."""
    utc = as_utc(now)
    return math.ceil((_calendar(utc.year, utc.month, utc.day)[2] - utc).total_seconds())


def month_counter_ttl_s(now: datetime) -> int:
    """Seconds a month counter written at `now` should live: to the end of its month, plus grace."""
    utc = as_utc(now)
    return math.ceil((_calendar(utc.year, utc.month, utc.day)[3] - utc).total_seconds())
