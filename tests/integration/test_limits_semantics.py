"""The limiter semantics, one suite run against both backends: in-process, a real redis-server, and
a one-node Redis Cluster (where any script touching two hash slots fails: the layout is cluster safe).

Time is injected (`now`), so window edges and UTC day/month rollovers are tested exactly, without sleeping.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as redis_asyncio
import redis.exceptions as redis_exceptions
from tests import redis_server

from llmkeys_proxy import config
from llmkeys_proxy.limits import base, memory
from llmkeys_proxy.limits import redis as redis_limits

T0 = datetime(2031, 3, 14, 12, 0, 0, tzinfo=UTC)
RESERVATION_TTL_S = 120.0


@dataclass
class Backend:
    name: str
    limiter: base.Limiter
    #: Lose every counter, as a Redis restarted empty (or a restarted standalone process); returns the
    #: limiter to use afterwards.
    wipe: Callable[[], Awaitable[base.Limiter]]


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        holder: list[base.Limiter] = [memory.MemoryLimiter(reservation_ttl_s=RESERVATION_TTL_S)]

        async def wipe_memory() -> base.Limiter:
            holder.append(memory.MemoryLimiter(reservation_ttl_s=RESERVATION_TTL_S))
            return holder[-1]

        yield Backend("memory", holder[0], wipe_memory)
        for limiter in holder:
            await limiter.close()
    else:
        # "redis-cluster": a one-node Redis Cluster, where a script touching two slots fails.
        server_fixture = "redis_cluster_node" if request.param == "redis-cluster" else "redis_session_server"
        server: redis_server.RedisServer = request.getfixturevalue(server_fixture)
        server.flushall()
        redis_limiter = redis_limits.RedisLimiter(
            server.url,
            reservation_ttl_s=RESERVATION_TTL_S,
            operation_timeout_s=10,
            socket_timeout_s=10,
            cluster=request.param == "redis-cluster",  # the cluster client: slot routing, MOVED handling
        )

        async def wipe_redis() -> base.Limiter:
            server.flushall()
            return redis_limiter

        yield Backend(request.param, redis_limiter, wipe_redis)
        await redis_limiter.close()


def new_key_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))


def request_for(
    key_id: str,
    now: datetime,
    *,
    tokens: int = 0,
    micro_usd: int = 0,
    pools: tuple[base.PoolLimit, ...] = (),
    month_seed: config.UsageSeed | None = None,
    day_seed: config.UsageSeed | None = None,
    **limits: int,
) -> base.ReserveRequest:
    return base.ReserveRequest(
        key_id=key_id,
        limits=config.Limits(**limits),
        pools=pools,
        estimated_tokens=tokens,
        estimated_micro_usd=micro_usd,
        now=now,
        month_usage_seed=month_seed,
        day_usage_seed=day_seed,
    )


def admitted(decision: base.Decision) -> base.Reservation:
    assert decision.allowed, decision
    assert decision.reservation is not None
    return decision.reservation


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- requests per minute ------------------------------------------------------------------------------


async def test_rpm_admits_exactly_n_per_rolling_minute(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    for _ in range(3):
        admitted(await limiter.reserve(request_for(key, at(0), requests_per_minute=3)))
    denied = await limiter.reserve(request_for(key, at(0), requests_per_minute=3))
    assert not denied.allowed
    assert denied.code == "rate_limit_exceeded"
    assert denied.retry_after_s == 60.0
    assert not denied.exhausted
    assert denied.rate.limit_requests == 3
    assert denied.rate.remaining_requests == 0
    # One millisecond before the first admission leaves the window it still counts.
    edge = await limiter.reserve(request_for(key, at(59.999), requests_per_minute=3))
    assert not edge.allowed
    assert edge.retry_after_s == pytest.approx(0.001)
    # At exactly 60 s all three have left: three more fit, not four.
    for _ in range(3):
        admitted(await limiter.reserve(request_for(key, at(60), requests_per_minute=3)))
    assert not (await limiter.reserve(request_for(key, at(60), requests_per_minute=3))).allowed


async def test_rpm_retry_after_is_when_the_oldest_admission_leaves(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    for second in (0, 10, 20):
        admitted(await limiter.reserve(request_for(key, at(second), requests_per_minute=3)))
    denied = await limiter.reserve(request_for(key, at(30), requests_per_minute=3))
    assert denied.retry_after_s == pytest.approx(30.0)
    admitted(await limiter.reserve(request_for(key, at(60), requests_per_minute=3)))
    denied = await limiter.reserve(request_for(key, at(61), requests_per_minute=3))
    assert denied.retry_after_s == pytest.approx(9.0)


async def test_rpm_sliding_log_matches_the_definition(backend: Backend) -> None:
    """Random arrivals: admitted exactly when fewer than N admissions lie in (t - 60 s, t]."""
    key = new_key_id()
    rng = random.Random(4)
    limit = 5
    arrivals_ms = sorted(rng.randrange(0, 300_000) for _ in range(150))
    admitted_ms: list[int] = []
    for arrival in arrivals_ms:
        decision = await backend.limiter.reserve(
            request_for(key, T0 + timedelta(milliseconds=arrival), requests_per_minute=limit)
        )
        in_window = sum(1 for t in admitted_ms if t > arrival - 60_000)
        assert decision.allowed == (in_window < limit), (arrival, in_window)
        if decision.allowed:
            admitted_ms.append(arrival)
    # No half-open 60 s window holds more than N admissions.
    for start in admitted_ms:
        assert sum(1 for t in admitted_ms if start <= t < start + 60_000) <= limit
    assert len(admitted_ms) > limit  # the test exercised the window sliding


async def test_zero_rpm_never_admits(backend: Backend) -> None:
    denied = await backend.limiter.reserve(request_for(new_key_id(), at(0), requests_per_minute=0))
    assert denied.code == "rate_limit_exceeded"
    assert denied.retry_after_s is None
    assert denied.exhausted


async def test_concurrent_reserves_admit_exactly_n(backend: Backend) -> None:
    key = new_key_id()
    decisions = await asyncio.gather(
        *(backend.limiter.reserve(request_for(key, at(0), requests_per_minute=10)) for _ in range(50))
    )
    assert sum(d.allowed for d in decisions) == 10
    assert {d.code for d in decisions if not d.allowed} == {"rate_limit_exceeded"}


# -- tokens per minute --------------------------------------------------------------------------------


async def test_tpm_reservations_count_and_settle_adjusts_the_entry(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    first = admitted(await limiter.reserve(request_for(key, at(0), tokens=400, tokens_per_minute=1000)))
    second = await limiter.reserve(request_for(key, at(1), tokens=400, tokens_per_minute=1000))
    assert second.rate.limit_tokens == 1000
    assert second.rate.remaining_tokens == 200
    denied = await limiter.reserve(request_for(key, at(2), tokens=400, tokens_per_minute=1000))
    assert denied.code == "token_limit_exceeded"
    assert not denied.exhausted
    assert denied.retry_after_s == pytest.approx(58.0)  # when the first 400 leave
    await limiter.settle(first, base.ActualUsage(input_tokens=60, output_tokens=40), at(3))
    admitted(await limiter.reserve(request_for(key, at(4), tokens=400, tokens_per_minute=1000)))
    denied = await limiter.reserve(request_for(key, at(5), tokens=200, tokens_per_minute=1000))
    assert not denied.allowed  # 100 + 400 + 400 + 200 > 1000
    admitted(await limiter.reserve(request_for(key, at(5), tokens=100, tokens_per_minute=1000)))


async def test_tpm_retry_after_walks_until_enough_tokens_leave(backend: Backend) -> None:
    key = new_key_id()
    for second, tokens in ((0, 100), (10, 100), (20, 700)):
        admitted(
            await backend.limiter.reserve(request_for(key, at(second), tokens=tokens, tokens_per_minute=1000))
        )
    denied = await backend.limiter.reserve(request_for(key, at(30), tokens=250, tokens_per_minute=1000))
    assert denied.retry_after_s == pytest.approx(40.0)  # the first two leave at 60 and 70 s


async def test_request_larger_than_tpm_is_never_admitted(backend: Backend) -> None:
    denied = await backend.limiter.reserve(
        request_for(new_key_id(), at(0), tokens=2000, tokens_per_minute=1000)
    )
    assert denied.code == "token_limit_exceeded"
    assert denied.retry_after_s is None
    assert denied.exhausted


# -- UTC calendar periods -------------------------------------------------------------------------------


async def test_day_tokens_roll_over_at_utc_midnight(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    late = datetime(2031, 3, 14, 23, 59, 59, 500_000, tzinfo=UTC)
    reservation = admitted(await limiter.reserve(request_for(key, late, tokens=600, tokens_per_day=1000)))
    await limiter.settle(reservation, base.ActualUsage(input_tokens=500, output_tokens=200), late)
    denied = await limiter.reserve(request_for(key, late, tokens=400, tokens_per_day=1000))
    assert denied.code == "token_limit_exceeded"
    assert denied.exhausted
    assert denied.retry_after_s is None
    midnight = datetime(2031, 3, 15, tzinfo=UTC)
    admitted(await limiter.reserve(request_for(key, midnight, tokens=1000, tokens_per_day=1000)))
    usage = (await limiter.read_usage([key], [], late))[key]
    assert (usage.day.period, usage.day.input_tokens, usage.day.output_tokens) == ("2031-03-14", 500, 200)
    usage = (await limiter.read_usage([key], [], midnight))[key]
    assert (usage.day.period, usage.day.requests, usage.day.total_tokens) == ("2031-03-15", 0, 0)
    assert (usage.month.period, usage.month.total_tokens) == ("2031-03", 700)


async def test_month_tokens_and_spend_roll_over_at_utc_month_start(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    limits = {"tokens_per_month": 10_000, "spend_per_month_micro_usd": 5_000_000}
    last_second = datetime(2031, 12, 31, 23, 59, 59, tzinfo=UTC)
    reservation = admitted(
        await limiter.reserve(request_for(key, last_second, tokens=9000, micro_usd=4_000_000, **limits))
    )
    await limiter.settle(
        reservation, base.ActualUsage(input_tokens=9000, output_tokens=0, micro_usd=4_900_000), last_second
    )
    tokens_denied = await limiter.reserve(request_for(key, last_second, tokens=1001, micro_usd=1, **limits))
    assert tokens_denied.code == "token_limit_exceeded"
    assert tokens_denied.exhausted
    spend_denied = await limiter.reserve(
        request_for(key, last_second, tokens=10, micro_usd=100_001, **limits)
    )
    assert spend_denied.code == "budget_exceeded"
    assert spend_denied.exhausted
    assert spend_denied.retry_after_s is None
    new_year = datetime(2032, 1, 1, tzinfo=UTC)
    admitted(await limiter.reserve(request_for(key, new_year, tokens=10_000, micro_usd=5_000_000, **limits)))
    usage = (await limiter.read_usage([key], [], new_year))[key]
    assert usage.month.period == "2032-01"
    assert usage.month.micro_usd == 0  # reservations are not usage


async def test_spend_cap_counts_reservations_in_flight(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    first = admitted(
        await limiter.reserve(request_for(key, at(0), micro_usd=400, spend_per_month_micro_usd=1000))
    )
    admitted(await limiter.reserve(request_for(key, at(0), micro_usd=400, spend_per_month_micro_usd=1000)))
    denied = await limiter.reserve(request_for(key, at(0), micro_usd=400, spend_per_month_micro_usd=1000))
    assert denied.code == "budget_exceeded"
    await limiter.settle(first, base.ActualUsage(input_tokens=1, micro_usd=100), at(1))
    admitted(await limiter.reserve(request_for(key, at(2), micro_usd=400, spend_per_month_micro_usd=1000)))
    usage = (await limiter.read_usage([key], [], at(3)))[key]
    assert usage.month.micro_usd == 100
    assert usage.month.requests == 1


# -- pools -----------------------------------------------------------------------------------------------


async def test_two_keys_of_one_team_share_the_pool(backend: Backend) -> None:
    limiter = backend.limiter
    pool = base.PoolLimit(
        "payments-budget/monthly/team=payments", spend_per_month_micro_usd=1000, tokens_per_month=None
    )
    alice, bob = new_key_id(), new_key_id()
    mine = dict(spend_per_month_micro_usd=10_000)
    reservation = admitted(
        await limiter.reserve(request_for(alice, at(0), micro_usd=600, pools=(pool,), **mine))
    )
    await limiter.settle(
        reservation, base.ActualUsage(input_tokens=10, output_tokens=5, micro_usd=600), at(1)
    )
    denied = await limiter.reserve(request_for(bob, at(2), micro_usd=500, pools=(pool,), **mine))
    assert denied.code == "pool_budget_exceeded"
    assert denied.exhausted
    assert pool.pool_id in denied.message
    reservation = admitted(
        await limiter.reserve(request_for(bob, at(3), micro_usd=400, pools=(pool,), **mine))
    )
    await limiter.settle(reservation, base.ActualUsage(input_tokens=1, output_tokens=1, micro_usd=400), at(4))
    assert not (await limiter.reserve(request_for(alice, at(5), micro_usd=1, pools=(pool,), **mine))).allowed
    usage = await limiter.read_usage([alice, bob], [pool.pool_id], at(6))
    assert usage[pool.pool_id].month.micro_usd == 1000
    assert usage[pool.pool_id].month.requests == 2
    assert usage[alice].month.micro_usd == 600
    assert usage[bob].month.micro_usd == 400


async def test_pool_token_cap(backend: Backend) -> None:
    pool = base.PoolLimit("p/tokens/team=x", spend_per_month_micro_usd=None, tokens_per_month=1000)
    admitted(await backend.limiter.reserve(request_for(new_key_id(), at(0), tokens=800, pools=(pool,))))
    denied = await backend.limiter.reserve(request_for(new_key_id(), at(0), tokens=201, pools=(pool,)))
    assert denied.code == "pool_budget_exceeded"


async def test_pool_denial_leaves_nothing_held_on_the_key(backend: Backend) -> None:
    limiter = backend.limiter
    pool = base.PoolLimit("p/b/team=small", spend_per_month_micro_usd=100, tokens_per_month=None)
    key = new_key_id()
    limits = dict(requests_per_minute=1, tokens_per_minute=100, spend_per_month_micro_usd=1000)
    denied = await limiter.reserve(
        request_for(key, at(0), tokens=100, micro_usd=500, pools=(pool,), **limits)
    )
    assert denied.code == "pool_budget_exceeded"
    # The denied request's minute slot, tokens and spend were given back.
    admitted(
        await limiter.reserve(request_for(key, at(1), tokens=100, micro_usd=100, pools=(pool,), **limits))
    )


async def test_key_denial_leaves_nothing_held_on_the_pool(backend: Backend) -> None:
    limiter = backend.limiter
    pool = base.PoolLimit("p/b/team=shared", spend_per_month_micro_usd=1000, tokens_per_month=1000)
    for _ in range(3):
        denied = await limiter.reserve(
            request_for(
                new_key_id(), at(0), tokens=500, micro_usd=500, pools=(pool,), spend_per_month_micro_usd=10
            )
        )
        assert denied.code == "budget_exceeded"
    admitted(
        await limiter.reserve(request_for(new_key_id(), at(1), tokens=1000, micro_usd=1000, pools=(pool,)))
    )


# -- settle and refund ---------------------------------------------------------------------------------------


async def test_refund_frees_tokens_and_spend_but_the_request_still_counts(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    limits = dict(
        requests_per_minute=2, tokens_per_minute=1000, tokens_per_day=1000, spend_per_month_micro_usd=1000
    )
    first = admitted(await limiter.reserve(request_for(key, at(0), tokens=900, micro_usd=900, **limits)))
    await limiter.refund(first, at(1))
    admitted(await limiter.reserve(request_for(key, at(2), tokens=900, micro_usd=900, **limits)))
    denied = await limiter.reserve(request_for(key, at(3), tokens=1, micro_usd=1, **limits))
    assert denied.code == "rate_limit_exceeded"  # the refunded request went upstream: it counts per minute
    usage = (await limiter.read_usage([key], [], at(4)))[key]
    assert usage.day.requests == 0
    assert usage.month.micro_usd == 0


async def test_settle_and_refund_are_idempotent(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    pool = base.PoolLimit("p/b/team=idem", spend_per_month_micro_usd=10_000, tokens_per_month=None)
    reservation = admitted(
        await limiter.reserve(request_for(key, at(0), tokens=50, micro_usd=50, pools=(pool,)))
    )
    actual = base.ActualUsage(input_tokens=30, cached_input_tokens=10, output_tokens=20, micro_usd=70)
    await limiter.settle(reservation, actual, at(1))
    await limiter.settle(reservation, actual, at(2))
    await limiter.refund(reservation, at(3))
    usage = await limiter.read_usage([key], [pool.pool_id], at(4))
    for scope in (key, pool.pool_id):
        month = usage[scope].month
        assert (month.requests, month.input_tokens, month.cached_input_tokens) == (1, 30, 10)
        assert (month.output_tokens, month.micro_usd) == (20, 70)
        assert month.last_used_at == at(1)


async def test_crashed_reservations_expire(backend: Backend) -> None:
    """A proxy that reserved and died never settles; its hold is released after the reservation TTL."""
    key = new_key_id()
    limiter = backend.limiter
    pool = base.PoolLimit("p/b/team=crash", spend_per_month_micro_usd=1000, tokens_per_month=None)
    admitted(
        await limiter.reserve(
            request_for(key, at(0), tokens=900, micro_usd=900, pools=(pool,), tokens_per_day=1000)
        )
    )
    assert not (await limiter.reserve(request_for(key, at(60), tokens=200, tokens_per_day=1000))).allowed
    assert not (
        await limiter.reserve(request_for(new_key_id(), at(60), micro_usd=200, pools=(pool,)))
    ).allowed
    after_ttl = at(RESERVATION_TTL_S + 1)
    admitted(await limiter.reserve(request_for(key, after_ttl, tokens=1000, tokens_per_day=1000)))
    admitted(await limiter.reserve(request_for(new_key_id(), after_ttl, micro_usd=1000, pools=(pool,))))


async def test_settle_after_the_reservation_expired_still_counts(backend: Backend) -> None:
    key = new_key_id()
    limiter = backend.limiter
    reservation = admitted(await limiter.reserve(request_for(key, at(0), tokens=500, tokens_per_day=1000)))
    admitted(
        await limiter.reserve(request_for(key, at(RESERVATION_TTL_S + 10), tokens=1, tokens_per_day=1000))
    )
    await limiter.settle(reservation, base.ActualUsage(input_tokens=200, output_tokens=100), at(200))
    usage = (await limiter.read_usage([key], [], at(201)))[key]
    assert usage.day.total_tokens == 300
    # 300 used + 1 still reserved: 699 more fit, 700 do not.
    assert not (await limiter.reserve(request_for(key, at(202), tokens=700, tokens_per_day=1000))).allowed
    admitted(await limiter.reserve(request_for(key, at(202), tokens=699, tokens_per_day=1000)))


async def test_requests_served_without_a_reservation_are_counted(backend: Backend) -> None:
    """Limiter unavailable under policy Allow: the proxy settles a stand-in reservation afterwards."""
    key = new_key_id()
    pool = base.PoolLimit("p/b/team=allow", spend_per_month_micro_usd=1000, tokens_per_month=None)
    request = request_for(key, at(0), tokens=10, micro_usd=10, pools=(pool,), spend_per_month_micro_usd=1000)
    actual = base.ActualUsage(input_tokens=6, output_tokens=4, micro_usd=900)
    await backend.limiter.settle(base.unreserved(request), actual, at(1))
    usage = await backend.limiter.read_usage([key], [pool.pool_id], at(2))
    assert (usage[key].month.requests, usage[key].month.total_tokens, usage[key].month.micro_usd) == (
        1,
        10,
        900,
    )
    assert usage[pool.pool_id].month.micro_usd == 900
    denied = await backend.limiter.reserve(
        request_for(key, at(3), micro_usd=101, spend_per_month_micro_usd=1000)
    )
    assert denied.code == "budget_exceeded"


# -- re-seeding after a loss ------------------------------------------------------------------------


async def test_reserve_reseeds_lost_month_and_day_counters(backend: Backend) -> None:
    key = new_key_id()
    limiter = await backend.wipe()
    month_seed = config.UsageSeed(period="2031-03", requests=10, tokens=9000, micro_usd=900)
    day_seed = config.UsageSeed(period="2031-03-14", requests=2, tokens=500, micro_usd=50)
    limits = dict(tokens_per_month=10_000, tokens_per_day=2000, spend_per_month_micro_usd=1000)
    seeded = dict(month_seed=month_seed, day_seed=day_seed)
    denied = await limiter.reserve(request_for(key, at(0), tokens=1001, **seeded, **limits))
    assert denied.code == "token_limit_exceeded"
    denied = await limiter.reserve(request_for(key, at(0), tokens=1, micro_usd=101, **seeded, **limits))
    assert denied.code == "budget_exceeded"
    reservation = admitted(
        await limiter.reserve(request_for(key, at(0), tokens=1000, micro_usd=100, **seeded, **limits))
    )
    await limiter.settle(
        reservation, base.ActualUsage(input_tokens=600, output_tokens=400, micro_usd=100), at(1)
    )
    usage = (await limiter.read_usage([key], [], at(2)))[key]
    assert (usage.month.requests, usage.month.total_tokens, usage.month.micro_usd) == (11, 10_000, 1000)
    assert usage.month.seeded_tokens == 9000
    assert (usage.day.requests, usage.day.total_tokens, usage.day.micro_usd) == (3, 1500, 150)
    # Seeds only fill absent counters: a later (larger) seed is never added on top.
    bigger = config.UsageSeed(period="2031-03", requests=99, tokens=99, micro_usd=99)
    await limiter.reserve(request_for(key, at(3), tokens=0, month_seed=bigger))
    assert (await limiter.read_usage([key], [], at(4)))[key].month.requests == 11


async def test_seed_of_another_period_is_ignored(backend: Backend) -> None:
    key = new_key_id()
    last_month = config.UsageSeed(period="2031-02", requests=5, tokens=5000, micro_usd=5000)
    admitted(
        await backend.limiter.reserve(
            request_for(key, at(0), tokens=1000, month_seed=last_month, tokens_per_month=1000)
        )
    )
    usage = (await backend.limiter.read_usage([key], [], at(1)))[key]
    assert usage.month.requests == 0
    assert usage.month.seeded_tokens == 0


async def test_settle_on_an_emptied_backend_reseeds_before_counting(backend: Backend) -> None:
    """A request in flight while Redis restarts: its settle must not create a fresh, seedless month."""
    key = new_key_id()
    pool = base.PoolLimit(
        "p/b/team=restart",
        spend_per_month_micro_usd=10_000,
        tokens_per_month=None,
        month_usage_seed=config.UsageSeed(period="2031-03", requests=3, micro_usd=3000),
    )
    month_seed = config.UsageSeed(period="2031-03", requests=7, tokens=700, micro_usd=7000)
    reservation = admitted(
        await backend.limiter.reserve(
            request_for(key, at(0), tokens=10, micro_usd=10, pools=(pool,), month_seed=month_seed)
        )
    )
    limiter = await backend.wipe()
    await limiter.settle(reservation, base.ActualUsage(input_tokens=5, output_tokens=5, micro_usd=20), at(1))
    usage = await limiter.read_usage([key], [pool.pool_id], at(2))
    assert (usage[key].month.requests, usage[key].month.total_tokens, usage[key].month.micro_usd) == (
        8,
        710,
        7020,
    )
    assert (usage[pool.pool_id].month.requests, usage[pool.pool_id].month.micro_usd) == (4, 3020)


async def test_seed_usage_fills_only_absent_counters(backend: Backend) -> None:
    key, other = new_key_id(), new_key_id()
    limiter = await backend.wipe()
    admitted(await limiter.reserve(request_for(other, at(0), tokens=1)))
    targets = [
        base.SeedTarget(key, month=config.UsageSeed(period="2031-03", requests=4, tokens=40, micro_usd=400)),
        base.SeedTarget(
            other, month=config.UsageSeed(period="2031-03", requests=9, tokens=90, micro_usd=900)
        ),
        base.SeedTarget(
            "p/b/team=seed", is_pool=True, month=config.UsageSeed(period="2031-03", micro_usd=123)
        ),
    ]
    assert await limiter.seed_usage(targets, at(1)) == 2
    assert await limiter.seed_usage(targets, at(2)) == 0
    usage = await limiter.read_usage([key, other], ["p/b/team=seed"], at(3))
    assert usage[key].month.micro_usd == 400
    assert usage[other].month.micro_usd == 0  # its counter existed: not seeded
    assert usage["p/b/team=seed"].month.micro_usd == 123


async def test_read_usage_of_unknown_scopes_is_zero(backend: Backend) -> None:
    usage = await backend.limiter.read_usage(["aaaaaaaaaaaa"], ["p/none"], at(0))
    assert usage["aaaaaaaaaaaa"].month == base.PeriodUsage(period="2031-03")
    assert usage["p/none"].day == base.PeriodUsage(period="2031-03-14")
    assert await backend.limiter.ping()


async def test_the_cluster_node_refuses_scripts_that_cross_slots(
    redis_cluster_node: redis_server.RedisServer,
) -> None:
    """What makes the "redis-cluster" runs above meaningful: a layout mistake would fail there."""
    client = redis_asyncio.Redis.from_url(redis_cluster_node.url)
    try:
        # Scripts with a shebang, as the limiter's, are checked by the server.
        script = "#!lua\nredis.call('SET', KEYS[1], 1); redis.call('SET', ARGV[1], 1); return 1"
        assert await client.eval(script, 1, "llmk:{abc}:x", "llmk:{abc}:y") == 1  # type: ignore[misc]
        with pytest.raises(redis_exceptions.ResponseError, match="same slot"):
            await client.eval(script, 1, "llmk:{abc}:x", "llmk:{pool:abc}:y")  # type: ignore[misc]
    finally:
        await client.aclose()


async def test_cluster_mode_from_the_url(redis_cluster_node: redis_server.RedisServer) -> None:
    limiter = redis_limits.RedisLimiter(redis_cluster_node.url + "?cluster=true&socket_keepalive=true")
    try:
        pool = base.PoolLimit("p/b/team=url", spend_per_month_micro_usd=10, tokens_per_month=None)
        reservation = admitted(
            await limiter.reserve(request_for(new_key_id(), at(0), micro_usd=10, pools=(pool,)))
        )
        await limiter.settle(reservation, base.ActualUsage(input_tokens=1, micro_usd=10), at(1))
        assert (await limiter.read_usage([], [pool.pool_id], at(2)))[pool.pool_id].month.micro_usd == 10
    finally:
        await limiter.close()


# -- tallies (status and reports) ------------------------------------------------------------------------


async def test_tallies_add_up_per_day_and_month_bounded_and_the_day_before_stays_readable(
    backend: Backend,
) -> None:
    limiter = backend.limiter
    key = new_key_id()
    pool_id = "teams/monthly/payments"
    late = datetime(2031, 3, 14, 23, 0, tzinfo=UTC)
    reservation = admitted(await limiter.reserve(request_for(key, late, tokens=10)))
    await limiter.settle(reservation, base.ActualUsage(input_tokens=7, output_tokens=3, micro_usd=40), late)
    await limiter.record_tallies(
        [
            base.Tally(key, {"r:rate_limit_exceeded": 2, "m:gpt-5.4:q": 1, "m:gpt-5.4:t": 10}),
            base.Tally(pool_id, {"r:pool_budget_exceeded": 1}, is_pool=True),
        ],
        late,
    )
    next_day = datetime(2031, 3, 15, 1, 0, tzinfo=UTC)
    await limiter.record_tallies([base.Tally(key, {"r:rate_limit_exceeded": 1})], next_day)
    # More distinct fields than the bound: the first ones stay, the rest are not added.
    flood = {f"m:model-{n}:q": 1 for n in range(base.TALLY_FIELDS_MAX + 10)}
    await limiter.record_tallies([base.Tally(key, flood)], next_day)

    usage = await limiter.read_usage([key], [pool_id], next_day)
    mine = usage[key]
    assert mine.month_tallies["r:rate_limit_exceeded"] == 3 and mine.month_tallies["m:gpt-5.4:t"] == 10
    assert len(mine.month_tallies) == base.TALLY_FIELDS_MAX
    assert mine.day_tallies["r:rate_limit_exceeded"] == 1 and "m:gpt-5.4:q" not in mine.day_tallies
    assert len(mine.day_tallies) == base.TALLY_FIELDS_MAX
    assert mine.previous_day is not None
    assert (mine.previous_day.period, mine.previous_day.requests, mine.previous_day.total_tokens) == (
        "2031-03-14",
        1,
        10,
    )
    assert (mine.day.requests, mine.month.requests) == (0, 1)
    assert usage[pool_id].month_tallies == {"r:pool_budget_exceeded": 1}
    two_days_later = datetime(2031, 3, 16, 1, 0, tzinfo=UTC)
    assert (await limiter.read_usage([key], [], two_days_later))[key].previous_day is None
