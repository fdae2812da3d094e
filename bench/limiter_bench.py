"""Limiter overhead per request: reserve + settle against Redis on loopback, and in-process.

Called by `make bench` (bench/__main__.py runs `run(redis_url)` and prints the dict); also runnable
alone: `python -m bench.limiter_bench redis://127.0.0.1:6379/0`. Each request carries every key limit
plus one shared pool, so each phase is the full pipelined round trip (two scripts) the proxy pays.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import string
import sys
import time
from datetime import UTC, datetime

from llmkeys_proxy import config
from llmkeys_proxy.limits import base, memory
from llmkeys_proxy.limits import redis as redis_limits

_LIMITS = config.Limits(
    requests_per_minute=10_000_000,
    tokens_per_minute=10_000_000_000,
    tokens_per_day=10_000_000_000,
    tokens_per_month=10_000_000_000,
    spend_per_month_micro_usd=10_000_000_000,
)
_POOL = base.PoolLimit(
    "bench/monthly/team=bench", spend_per_month_micro_usd=10_000_000_000, tokens_per_month=None
)
_USAGE = base.ActualUsage(input_tokens=120, cached_input_tokens=20, output_tokens=80, micro_usd=450)


def _key_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))


async def _one(limiter: base.Limiter, key_id: str) -> tuple[float, float]:
    """Seconds spent in reserve and in settle for one request."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    decision = await limiter.reserve(
        base.ReserveRequest(
            key_id=key_id,
            limits=_LIMITS,
            pools=(_POOL,),
            estimated_tokens=1200,
            estimated_micro_usd=600,
            now=now,
        )
    )
    reserved = time.perf_counter()
    assert decision.reservation is not None
    await limiter.settle(decision.reservation, _USAGE, now)
    return reserved - started, time.perf_counter() - reserved


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(limiter: base.Limiter, requests: int) -> dict[str, float]:
    key_id = _key_id()
    for _ in range(50):  # warm up: connections, scripts loaded
        await _one(limiter, key_id)
    reserves, settles, totals = [], [], []
    for _ in range(requests):
        reserve_s, settle_s = await _one(limiter, key_id)
        reserves.append(reserve_s)
        settles.append(settle_s)
        totals.append(reserve_s + settle_s)
    return {
        "reserve_p50_ms": statistics.median(reserves) * 1000,
        "reserve_p99_ms": _percentile(reserves, 0.99) * 1000,
        "settle_p50_ms": statistics.median(settles) * 1000,
        "reserve+settle_p50_ms": statistics.median(totals) * 1000,
        "reserve+settle_p99_ms": _percentile(totals, 0.99) * 1000,
    }


async def _throughput(limiter: base.Limiter, concurrency: int, seconds: float) -> float:
    """reserve+settle pairs per second from one process with `concurrency` requests in flight."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        key_id = _key_id()  # keys of their own: what many clients of one proxy look like
        while time.perf_counter() < deadline:
            await _one(limiter, key_id)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def _run(redis_url: str, requests: int, seconds: float) -> dict[str, object]:
    result: dict[str, object] = {}
    redis_limiter = redis_limits.RedisLimiter(redis_url, operation_timeout_s=10, socket_timeout_s=10)
    try:
        sequential = await _sequential(redis_limiter, requests)
        result.update({f"redis {name}": value for name, value in sequential.items()})
        result["redis reserve+settle/s (64 in flight, 1 process)"] = await _throughput(
            redis_limiter, 64, seconds
        )
    finally:
        await redis_limiter.close()
    memory_limiter = memory.MemoryLimiter()
    try:
        sequential = await _sequential(memory_limiter, requests)
        result["memory reserve+settle_p50_us"] = sequential["reserve+settle_p50_ms"] * 1000
        result["memory reserve+settle/s (1 process)"] = await _throughput(memory_limiter, 64, seconds)
    finally:
        await memory_limiter.close()
    result["note"] = (
        "every key limit + 1 pool per request; redis on loopback; client and redis share the machine"
    )
    return result


def run(redis_url: str, *, requests: int = 2000, seconds: float = 2.0) -> dict[str, object]:
    """The limiter's share of per-request latency and its throughput, as a flat dict for the table."""
    return asyncio.run(_run(redis_url, requests, seconds))


if __name__ == "__main__":
    for name, value in run(sys.argv[1]).items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")
