"""RedisLimiter when Redis goes away, hangs, restarts empty, or wants auth and TLS (real redis-servers)."""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import string
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from tests import redis_server

from llmkeys_proxy import config
from llmkeys_proxy.limits import base
from llmkeys_proxy.limits import redis as redis_limits

NOW = datetime(2031, 5, 20, 10, 0, tzinfo=UTC)
#: A liveness bound, not a speed assertion: a dead Redis must never hang a request.
GIVE_UP_S = 15


def new_key_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))


def request_for(key_id: str, **kwargs: object) -> base.ReserveRequest:
    defaults: dict[str, object] = dict(
        limits=config.Limits(requests_per_minute=100, spend_per_month_micro_usd=10_000),
        pools=(),
        estimated_tokens=10,
        estimated_micro_usd=100,
        now=NOW,
    )
    defaults.update(kwargs)
    return base.ReserveRequest(key_id=key_id, **defaults)  # type: ignore[arg-type]


@pytest.fixture
async def limiter(private_redis: redis_server.RedisServer) -> AsyncIterator[redis_limits.RedisLimiter]:
    limiter = redis_limits.RedisLimiter(private_redis.url, operation_timeout_s=2.0)
    yield limiter
    await limiter.close()


async def test_killed_redis_raises_limiter_unavailable_for_every_call(
    private_redis: redis_server.RedisServer, limiter: redis_limits.RedisLimiter
) -> None:
    key = new_key_id()
    decision = await limiter.reserve(request_for(key))
    assert decision.reservation is not None
    private_redis.kill()
    async with asyncio.timeout(GIVE_UP_S):
        with pytest.raises(base.LimiterUnavailable) as raised:
            await limiter.reserve(request_for(key))
        assert str(private_redis.port) not in str(raised.value)
        with pytest.raises(base.LimiterUnavailable):
            await limiter.settle(decision.reservation, base.ActualUsage(input_tokens=1), NOW)
        with pytest.raises(base.LimiterUnavailable):
            await limiter.refund(decision.reservation, NOW)
        with pytest.raises(base.LimiterUnavailable):
            await limiter.read_usage([key], [], NOW)
        with pytest.raises(base.LimiterUnavailable):
            await limiter.seed_usage([base.SeedTarget(key)], NOW)
        assert not await limiter.ping()


async def test_restarted_empty_redis_recovers_month_counters_from_the_seed(
    private_redis: redis_server.RedisServer, limiter: redis_limits.RedisLimiter
) -> None:
    key = new_key_id()
    pool = base.PoolLimit(
        "team-budget/monthly/team=ml", spend_per_month_micro_usd=50_000, tokens_per_month=None
    )
    limits = config.Limits(spend_per_month_micro_usd=10_000)
    for _ in range(3):
        decision = await limiter.reserve(
            request_for(key, limits=limits, pools=(pool,), estimated_micro_usd=2000)
        )
        assert decision.reservation is not None
        await limiter.settle(decision.reservation, base.ActualUsage(input_tokens=7, micro_usd=2000), NOW)
    before = await limiter.read_usage([key], [pool.pool_id], NOW)
    assert before[key].month.micro_usd == 6000

    # What the operator wrote to status from `before`, now in the config entry.
    key_seed = config.UsageSeed(period="2031-05", requests=3, tokens=21, micro_usd=6000)
    pool_seed = config.UsageSeed(period="2031-05", requests=3, tokens=21, micro_usd=6000)
    seeded_pool = base.PoolLimit(pool.pool_id, 50_000, None, month_usage_seed=pool_seed)

    private_redis.restart()
    async with asyncio.timeout(GIVE_UP_S):
        # The pool's dead connections are replaced and the lost scripts loaded again, transparently.
        assert await limiter.ping()
        denied = await limiter.reserve(
            request_for(
                key, limits=limits, pools=(seeded_pool,), estimated_micro_usd=4001, month_usage_seed=key_seed
            )
        )
        assert denied.code == "budget_exceeded"  # 6000 recovered + 4001 > 10000
        decision = await limiter.reserve(
            request_for(
                key, limits=limits, pools=(seeded_pool,), estimated_micro_usd=4000, month_usage_seed=key_seed
            )
        )
        assert decision.reservation is not None
        await limiter.settle(decision.reservation, base.ActualUsage(input_tokens=7, micro_usd=4000), NOW)
        after = await limiter.read_usage([key], [pool.pool_id], NOW)
    assert after[key].month.micro_usd == 10_000
    assert after[key].month.requests == 4
    assert after[pool.pool_id].month.micro_usd == 10_000


async def test_settlements_redis_missed_are_replayed_when_it_returns(
    private_redis: redis_server.RedisServer, limiter: redis_limits.RedisLimiter
) -> None:
    key = new_key_id()
    seed = config.UsageSeed(period="2031-05", requests=2, tokens=20, micro_usd=200)
    decision = await limiter.reserve(request_for(key, month_usage_seed=seed))
    assert decision.reservation is not None
    private_redis.kill()
    actual = base.ActualUsage(input_tokens=3, output_tokens=2, micro_usd=50)
    with pytest.raises(base.LimiterUnavailable):
        await limiter.settle(decision.reservation, actual, NOW)
    # Served under policy Allow while Redis was away: counted too.
    allowed = request_for(key, month_usage_seed=seed)
    with pytest.raises(base.LimiterUnavailable):
        await limiter.settle(base.unreserved(allowed), actual, NOW)
    assert limiter.settle_backlog == 2

    private_redis.restart()
    async with asyncio.timeout(GIVE_UP_S):
        assert await limiter.ping()  # the first answer starts the replay
        while limiter.settle_backlog:
            await asyncio.sleep(0.02)
    month = (await limiter.read_usage([key], [], NOW))[key].month
    # Re-seeded (Redis came back empty), then both settlements counted once.
    assert (month.requests, month.micro_usd, month.total_tokens) == (4, 300, 30)


async def test_hanging_redis_times_out_as_unavailable() -> None:
    """A server that accepts connections and never answers (a network black hole)."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = redis_limits.RedisLimiter(
        f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.3, connect_timeout_s=0.3, operation_timeout_s=1.0
    )
    try:
        async with asyncio.timeout(GIVE_UP_S):
            with pytest.raises(base.LimiterUnavailable):
                await limiter.reserve(request_for(new_key_id()))
            assert not await limiter.ping()
    finally:
        await limiter.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


def test_malformed_url_error_does_not_echo_the_url() -> None:
    with pytest.raises(ValueError) as raised:
        redis_limits.RedisLimiter("redis://:hunter2/x@127.0.0.1:6379/0")
    assert "hunter2" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


async def test_password_and_tls(tmp_path: pathlib.Path) -> None:
    password = "s3cret/pass word"
    tls = redis_server.make_tls_files(tmp_path)
    with redis_server.RedisServer(password=password, tls=tls) as server:
        limiter = redis_limits.RedisLimiter(server.url)
        try:
            decision = await limiter.reserve(request_for(new_key_id()))
            assert decision.allowed
        finally:
            await limiter.close()
        wrong = server.url.replace("s3cret", "wrong")
        limiter = redis_limits.RedisLimiter(wrong)
        try:
            with pytest.raises(base.LimiterUnavailable) as raised:
                await limiter.reserve(request_for(new_key_id()))
            assert "wrong" not in str(raised.value)
        finally:
            await limiter.close()
        plain = server.url.replace("rediss://", "redis://").partition("?")[0]
        limiter = redis_limits.RedisLimiter(plain, operation_timeout_s=2.0)
        try:
            with pytest.raises(base.LimiterUnavailable):
                await limiter.reserve(request_for(new_key_id()))
        finally:
            await limiter.close()
