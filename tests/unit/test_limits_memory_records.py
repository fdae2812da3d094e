"""The in-process limiter's reservation records: cheap for the garbage collector, bounded in memory,
and a settled record lives its own minute (as Redis's ZADD re-scores it), whenever the settle came."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta

from llmkeys_proxy import config
from llmkeys_proxy.limits import base, memory

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LIMITS = config.Limits(requests_per_minute=10**9, tokens_per_minute=10**12, tokens_per_month=10**15)
PROVIDER = base.ProviderLimit(provider_id="cred-a", limits=LIMITS)


def request_at(now: datetime, key_id: str = "key-a") -> base.ReserveRequest:
    return base.ReserveRequest(
        key_id=key_id,
        limits=LIMITS,
        pools=(),
        estimated_tokens=100,
        estimated_micro_usd=10,
        now=now,
        provider=PROVIDER,
    )


async def serve(limiter: memory.MemoryLimiter, count: int, start: datetime) -> None:
    """`count` requests reserved and settled, one per millisecond from `start`."""
    for index in range(count):
        now = start + timedelta(milliseconds=index)
        decision = await limiter.reserve(request_at(now))
        assert decision.reservation is not None
        await limiter.settle(decision.reservation, base.ActualUsage(input_tokens=10, output_tokens=5), now)


async def test_records_add_no_objects_for_the_collector_to_track() -> None:
    limiter = memory.MemoryLimiter()
    await serve(limiter, 100, T0)
    gc.collect()
    before = len(gc.get_objects())
    await serve(limiter, 5000, T0 + timedelta(seconds=1))
    gc.collect()
    # 5000 live reservations on two scopes (window entries and settled records): a few new containers
    # at most, not one object per record.
    grown = len(gc.get_objects()) - before
    assert grown < 100
    usage = await limiter.read_usage(["key-a"], [], T0 + timedelta(seconds=10))
    assert usage["key-a"].month.requests == 5100
    await limiter.close()


async def test_settled_requests_leave_nothing_behind_once_their_minute_passed() -> None:
    limiter = memory.MemoryLimiter(reservation_ttl_s=900)
    tracemalloc.start()
    try:
        # A first burst sizes the tables; each check comes well past the settled records' minute,
        # well before the reservations' 15 minutes.
        await serve(limiter, 10_000, T0)
        await limiter.reserve(request_at(T0 + timedelta(minutes=3)))
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        await serve(limiter, 10_000, T0 + timedelta(minutes=4))
        await limiter.reserve(request_at(T0 + timedelta(minutes=7)))
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Nothing per request survives its settled minute (about 100 bytes each would be 2 MB here).
    assert retained - baseline < 200_000
    await limiter.close()


async def test_a_late_settle_keeps_its_record_a_full_minute() -> None:
    ttl_s = 120
    limiter = memory.MemoryLimiter(reservation_ttl_s=ttl_s)
    decision = await limiter.reserve(request_at(T0))
    assert decision.reservation is not None
    actual = base.ActualUsage(input_tokens=40, output_tokens=2)
    settled_at = T0 + timedelta(seconds=ttl_s - 30)
    await limiter.settle(decision.reservation, actual, settled_at)
    # Past the reservation's own expiry, inside the settled record's minute: a retry is a no-op.
    await limiter.settle(decision.reservation, actual, T0 + timedelta(seconds=ttl_s + 10))
    usage = await limiter.read_usage(["key-a"], [], T0 + timedelta(seconds=ttl_s + 11))
    assert usage["key-a"].month.requests == 1
    assert usage["key-a"].month.input_tokens == 40
    await limiter.close()
