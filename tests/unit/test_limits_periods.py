"""UTC period ids and counter lifetimes (limits.periods)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from llmkeys_proxy.limits import periods


def test_period_ids_are_utc_calendar_periods() -> None:
    # 01:30 in UTC+2 is still the previous day and month in UTC.
    local = datetime(2031, 4, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert periods.day_id(local) == "2031-03-31"
    assert periods.month_id(local) == "2031-03"
    assert periods.day_id(datetime(2031, 4, 1, 0, 0)) == "2031-04-01"  # naive means UTC


def test_period_ends_cover_year_and_leap_day() -> None:
    assert periods.month_end(datetime(2031, 12, 31, 23, 59, tzinfo=UTC)) == datetime(2032, 1, 1, tzinfo=UTC)
    assert periods.day_end(datetime(2032, 2, 28, 12, tzinfo=UTC)) == datetime(2032, 2, 29, tzinfo=UTC)
    assert periods.month_end(datetime(2032, 2, 29, tzinfo=UTC)) == datetime(2032, 3, 1, tzinfo=UTC)
    assert periods.period_start("2032-02") == datetime(2032, 2, 1, tzinfo=UTC)
    assert periods.period_start("2032-02-29") == datetime(2032, 2, 29, tzinfo=UTC)


def test_counters_live_past_their_period_by_the_grace() -> None:
    now = datetime(2031, 3, 31, 23, 0, tzinfo=UTC)
    assert periods.day_counter_ttl_s(now) == 3600 + int(periods.DAY_COUNTER_GRACE.total_seconds())
    assert periods.month_counter_ttl_s(now) == 3600 + int(periods.MONTH_COUNTER_GRACE.total_seconds())


def test_epoch_ms() -> None:
    assert periods.epoch_ms(datetime(1970, 1, 1, 0, 0, 1, 500, tzinfo=UTC)) == 1000
    assert periods.epoch_ms(datetime(1970, 1, 1, 0, 0, 1, 999_999, tzinfo=UTC)) == 1999
