"""Usage-sync conversions, operator settings from the environment, and Event rate bounds (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmkeys_operator import events, settings, usage_sync
from llmkeys_proxy import config
from llmkeys_proxy.limits import base


def snapshot(month_requests: int, day_requests: int, micro_usd: int = 1_234_500) -> base.UsageSnapshot:
    return base.UsageSnapshot(
        day=base.PeriodUsage(period="2026-05-07", requests=day_requests, input_tokens=10, output_tokens=5),
        month=base.PeriodUsage(
            period="2026-05",
            requests=month_requests,
            input_tokens=100,
            cached_input_tokens=20,
            output_tokens=50,
            micro_usd=micro_usd,
            last_used_at=datetime(2026, 5, 7, 8, 9, 10, tzinfo=UTC),
        ),
    )


def test_usage_status_shape() -> None:
    status = usage_sync.usage_status(snapshot(7, 2))
    assert status["month"] == {
        "periodStart": "2026-05-01T00:00:00Z",
        "requests": 7,
        "inputTokens": 100,
        "cachedInputTokens": 20,
        "outputTokens": 50,
        "spendUSD": "1.2345",
        "lastUsedAt": "2026-05-07T08:09:10Z",
    }
    assert status["day"]["periodStart"] == "2026-05-07T00:00:00Z" and status["day"]["requests"] == 2


def test_counters_lost_only_when_redis_shows_less_for_the_same_period() -> None:
    shown = usage_sync.usage_status(snapshot(7, 2))
    assert not usage_sync.counters_lost(shown, snapshot(7, 2))
    assert not usage_sync.counters_lost(shown, snapshot(9, 3))
    assert usage_sync.counters_lost(shown, snapshot(0, 0))
    assert not usage_sync.counters_lost(None, snapshot(0, 0))
    next_month = base.UsageSnapshot(
        day=base.PeriodUsage(period="2026-06-01"), month=base.PeriodUsage(period="2026-06")
    )
    assert not usage_sync.counters_lost(shown, next_month)  # a new period starts at zero


def test_pool_usage_and_loss() -> None:
    pool = config.PoolEntry(
        id="teams/monthly/payments",
        policy="teams",
        budget="monthly",
        group_by="team",
        group_value="payments",
        spend_per_month_micro_usd=100_000_000,
    )
    entry = usage_sync.pool_usage(pool, snapshot(3, 1))
    assert entry == {
        "budget": "monthly",
        "group": "payments",
        "periodStart": "2026-05-01T00:00:00Z",
        "spendUSD": "1.2345",
        "tokens": 150,
        "capUSD": "100",
        "lastUsedAt": "2026-05-07T08:09:10Z",
        "history": [{"date": "2026-05-07", "requests": 1, "tokens": 15, "spendUSD": "0"}],
    }
    assert not usage_sync.pool_counters_lost([entry], pool, snapshot(3, 1))
    assert usage_sync.pool_counters_lost(
        [entry],
        pool,
        base.UsageSnapshot(
            day=base.PeriodUsage(period="2026-05-07"), month=base.PeriodUsage(period="2026-05")
        ),
    )


def test_refusals_and_breakdowns_from_tallies() -> None:
    tallies = {
        "r:rate_limit_exceeded": 4,
        "r:model_not_allowed": 1,
        "m:gpt-5.4-mini:q": 3,
        "m:gpt-5.4-mini:t": 300,
        "m:gpt-5.4-mini:u": 900,
        "m:other:q": 1,
        "m:other:t": 50,
        "m:other:u": 5_000,
        "p:llmkeys/mock:q": 4,
        "p:llmkeys/mock:t": 350,
        "p:llmkeys/mock:u": 5_900,
    }
    taken = base.UsageSnapshot(
        day=snapshot(7, 2).day, month=snapshot(7, 2).month, day_tallies=tallies, month_tallies=tallies
    )
    month = usage_sync.usage_status(taken)["month"]
    assert month["refusals"] == {"model_not_allowed": 1, "rate_limit_exceeded": 4}
    assert month["byModel"] == [
        {"name": "other", "requests": 1, "tokens": 50, "spendUSD": "0.005"},
        {"name": "gpt-5.4-mini", "requests": 3, "tokens": 300, "spendUSD": "0.0009"},
    ]
    assert month["byProvider"] == [
        {"name": "llmkeys/mock", "requests": 4, "tokens": 350, "spendUSD": "0.0059"}
    ]


def test_daily_history_keeps_31_days_and_finishes_yesterday() -> None:
    shown = {
        "history": [
            {"date": f"2026-04-{day:02d}", "requests": day, "tokens": 10 * day, "spendUSD": "0"}
            for day in range(1, 31)
        ]
        + [{"date": "2026-05-06", "requests": 1, "tokens": 1, "spendUSD": "0"}]
    }
    taken = base.UsageSnapshot(
        day=base.PeriodUsage(period="2026-05-07", requests=2, input_tokens=20),
        month=base.PeriodUsage(period="2026-05", requests=9),
        previous_day=base.PeriodUsage(period="2026-05-06", requests=7, input_tokens=70, micro_usd=1_500_000),
    )
    days = usage_sync.usage_status(taken, shown)["history"]
    # 31 UTC days end today: 2026-04-07 .. 2026-05-07 (days without use have no entry).
    assert [d["date"] for d in days] == [f"2026-04-{day:02d}" for day in range(7, 31)] + [
        "2026-05-06",
        "2026-05-07",
    ]
    assert days[-1] == {
        "date": "2026-05-07",
        "requests": 2,
        "tokens": 20,
        "spendUSD": "0",
    }
    assert days[-2] == {"date": "2026-05-06", "requests": 7, "tokens": 70, "spendUSD": "1.5"}


def test_settings_from_env() -> None:
    env = {
        "LLMKEYS_NAMESPACE": "gw",
        "LLMKEYS_WATCH_NAMESPACES": "a, b,,",
        "LLMKEYS_PROXY_URL": "http://proxy.gw.svc:8080/",
        "LLMKEYS_REDIS_URL": "redis://:secret@redis:6379",
        "LLMKEYS_USAGE_SYNC_INTERVAL_S": "5",
        "LLMKEYS_LIVENESS_PORT": "9000",
        "LLMKEYS_LOG_LEVEL": "debug",
        "LLMKEYS_LEADER_ELECTION": "false",
    }
    loaded = settings.OperatorSettings.from_env(env)
    assert loaded.namespace == "gw" and loaded.watch_namespaces == ("a", "b")
    assert loaded.served_namespaces == ["a", "b", "gw"]
    assert loaded.proxy_url == "http://proxy.gw.svc:8080"
    assert loaded.usage_sync_interval_s == 5.0 and loaded.liveness_port == 9000
    assert loaded.log_level == "DEBUG" and loaded.leader_election is False
    assert "secret" not in repr(loaded)
    assert settings.OperatorSettings.from_env({}).served_namespaces == []  # cluster-wide
    assert settings.OperatorSettings.from_env(env, namespace="other").namespace == "other"
    with pytest.raises(ValueError, match="LLMKEYS_REDIS_URL"):
        settings.OperatorSettings.from_env({"LLMKEYS_REDIS_URL": "http://nope:secret@x"})
    with pytest.raises(ValueError, match="number"):
        settings.OperatorSettings.from_env({"LLMKEYS_LIVENESS_PORT": "eighty"})


def test_events_are_bounded_per_object_reason_and_overall() -> None:
    recorder = events.EventRecorder(None, min_interval_s=60, burst=3, per_second=0.0)
    ref = events.ObjectReference("llmkeys.io/v1alpha1", "VirtualKey", "team-a", "dev", "uid-1")
    other = events.ObjectReference("llmkeys.io/v1alpha1", "VirtualKey", "team-a", "ops", "uid-2")
    assert recorder.record(ref, "Normal", "KeyIssued", "issued")
    assert not recorder.record(ref, "Normal", "KeyIssued", "again")  # same object and reason: too soon
    assert recorder.record(ref, "Normal", "KeyRotated", "rotated")
    assert recorder.record(other, "Normal", "KeyIssued", "issued")
    assert not recorder.record(other, "Normal", "Expired", "expired")  # the burst is spent
    assert recorder.dropped == 1
