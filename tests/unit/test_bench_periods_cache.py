"""The cached calendar of limits/periods.py gives exactly what the plain date arithmetic gives."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta, timezone

from llmkeys_proxy.limits import periods


def _reference(now: datetime) -> tuple[str, str, int, int]:
    utc = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    day_end = datetime(utc.year, utc.month, utc.day, tzinfo=UTC) + timedelta(days=1)
    month_end = (
        datetime(utc.year + 1, 1, 1, tzinfo=UTC)
        if utc.month == 12
        else datetime(utc.year, utc.month + 1, 1, tzinfo=UTC)
    )
    return (
        utc.strftime("%Y-%m-%d"),
        utc.strftime("%Y-%m"),
        math.ceil((day_end + periods.DAY_COUNTER_GRACE - utc).total_seconds()),
        math.ceil((month_end + periods.MONTH_COUNTER_GRACE - utc).total_seconds()),
    )


def test_cached_calendar_matches_plain_arithmetic() -> None:
    rng = random.Random(6)
    zones = [UTC, None, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    base = datetime(2030, 1, 1, tzinfo=UTC)
    instants = [
        base + timedelta(seconds=rng.randrange(0, 3 * 365 * 86400), microseconds=rng.randrange(10**6))
        for _ in range(2000)
    ]
    # Around period boundaries too: the last microsecond of a month and the first of the next.
    instants += [datetime(2031, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), datetime(2032, 1, 1, tzinfo=UTC)]
    instants += [datetime(2032, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(2032, 3, 1, 0, 0, 0, 1, tzinfo=UTC)]
    for instant in instants:
        zone = rng.choice(zones)
        now = instant.replace(tzinfo=None) if zone is None else instant.astimezone(zone)
        got = (
            periods.day_id(now),
            periods.month_id(now),
            periods.day_counter_ttl_s(now),
            periods.month_counter_ttl_s(now),
        )
        assert got == _reference(now), now
