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
    }
    assert not usage_sync.pool_counters_lost([entry], pool, snapshot(3, 1))
    assert usage_sync.pool_counters_lost(
        [entry],
        pool,
        base.UsageSnapshot(
            day=base.PeriodUsage(period="2026-05-07"), month=base.PeriodUsage(period="2026-05")
        ),
    )


def test_limiter_url_puts_the_password_in() -> None:
    assert usage_sync.limiter_url("redis://redis:6379/0", None) == "redis://redis:6379/0"
    assert (
        usage_sync.limiter_url("redis://redis:6379/0", "p@ss/word") == "redis://:p%40ss%2Fword@redis:6379/0"
    )
    assert (
        usage_sync.limiter_url("rediss://user:old@redis.example.com:6380", "new")
        == "rediss://user:new@redis.example.com:6380"
    )


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
