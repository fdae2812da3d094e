"""A worker PROCESS for tests/integration/test_limits_processes.py: hammers one Redis with concurrent
reserves (and settles) through `RedisLimiter`, in lock-step with its sibling processes.

Protocol on stdio, one line each: for every scenario the worker prints `ready`, waits for `go` on
stdin (so all processes start together), runs, and prints `result <json>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from datetime import UTC, datetime
from typing import Any

from llmkeys_proxy import config
from llmkeys_proxy.limits import base
from llmkeys_proxy.limits import redis as redis_limits


def request(key_id: str, limits: config.Limits, tokens: int, micro_usd: int) -> base.ReserveRequest:
    return base.ReserveRequest(
        key_id=key_id,
        limits=limits,
        pools=(),
        estimated_tokens=tokens,
        estimated_micro_usd=micro_usd,
        now=datetime.now(UTC),
    )


async def burst(
    limiter: base.Limiter, key_id: str, limits: config.Limits, count: int, tokens: int
) -> dict[str, Any]:
    """`count` reserves at once; how many were admitted, and the denials' codes and retry times."""
    decisions = await asyncio.gather(
        *(limiter.reserve(request(key_id, limits, tokens, 0)) for _ in range(count))
    )
    denied = [d for d in decisions if not d.allowed]
    return {
        "admitted": sum(d.allowed for d in decisions),
        "codes": sorted({d.code or "" for d in denied}),
        "min_retry_after_s": min((d.retry_after_s or 0.0 for d in denied), default=None),
    }


async def spend(
    limiter: base.Limiter, key_id: str, cap: int, estimate: int, workers: int, seed: int
) -> dict[str, Any]:
    """Workers reserve `estimate`, hold it briefly, settle a random actual cost around it; until denied."""
    limits = config.Limits(spend_per_month_micro_usd=cap)
    rng = random.Random(seed)
    settled: list[int] = []
    gaps: list[int] = []

    async def worker() -> None:
        while True:
            decision = await limiter.reserve(request(key_id, limits, 10, estimate))
            if not decision.allowed:
                assert decision.code == "budget_exceeded", decision
                return
            assert decision.reservation is not None
            await asyncio.sleep(rng.random() * 0.004)
            actual = rng.randint(estimate // 2, estimate * 3 // 2)
            await limiter.settle(
                decision.reservation,
                base.ActualUsage(input_tokens=5, output_tokens=5, micro_usd=actual),
                datetime.now(UTC),
            )
            settled.append(actual)
            gaps.append(actual - estimate)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return {"requests": len(settled), "micro_usd": sum(settled), "max_gap": max(gaps, default=0)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--rpm-key", required=True)
    parser.add_argument("--tpm-key", required=True)
    parser.add_argument("--spend-key", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    limiter = redis_limits.RedisLimiter(
        args.url, operation_timeout_s=20, socket_timeout_s=20, max_connections=32
    )
    try:
        await limiter.ping()
        scenarios = [
            lambda: burst(limiter, args.rpm_key, config.Limits(requests_per_minute=args.n), args.count, 1),
            lambda: burst(
                limiter, args.tpm_key, config.Limits(tokens_per_minute=100 * args.n), args.count, 100
            ),
            lambda: spend(limiter, args.spend_key, cap=100_000, estimate=1000, workers=20, seed=args.seed),
        ]
        loop = asyncio.get_running_loop()
        for scenario in scenarios:
            print("ready", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() != "go":
                return
            print("result", json.dumps(await scenario()), flush=True)
    finally:
        await limiter.close()


if __name__ == "__main__":
    asyncio.run(main())
