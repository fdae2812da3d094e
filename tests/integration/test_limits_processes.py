"""Exactness across OS processes: three processes (tests/limits_hammer.py) share one real Redis and
fire 5N concurrent reserves at a key limited to N; exactly N are admitted. Same for tokens per minute,
and a spend cap with settlement whose measured overshoot is printed and bounded."""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from llmkeys_proxy.limits import redis as redis_limits

PROCESSES = 3
N = 40
WORKERS_PER_PROCESS = 20  # concurrent settle loops per process in the spend scenario
CAP = 100_000
ESTIMATE = 1000


def new_key_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))


@pytest.fixture
def workers(redis_url: str) -> Iterator[tuple[list[subprocess.Popen[str]], dict[str, str]]]:
    keys = {"rpm": new_key_id(), "tpm": new_key_id(), "spend": new_key_id()}
    counts = [5 * N // PROCESSES + (1 if i < 5 * N % PROCESSES else 0) for i in range(PROCESSES)]
    procs = []
    for index, count in enumerate(counts):
        command = [sys.executable, "-m", "tests.limits_hammer", "--url", redis_url]
        command += ["--rpm-key", keys["rpm"], "--tpm-key", keys["tpm"], "--spend-key", keys["spend"]]
        command += ["--n", str(N), "--count", str(count), "--seed", str(index)]
        procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        yield procs, keys
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def run_scenario(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Wait until every process is ready, release them together, collect their results."""
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        assert proc.stdout is not None
        tag, _, payload = proc.stdout.readline().partition(" ")
        assert tag == "result", f"worker failed (exit {proc.poll()})"
        results.append(json.loads(payload))
    return results


async def test_three_processes_share_every_limit_exactly(
    workers: tuple[list[subprocess.Popen[str]], dict[str, str]], redis_url: str
) -> None:
    procs, keys = workers

    rpm = run_scenario(procs)
    assert sum(r["admitted"] for r in rpm) == N
    assert {code for r in rpm for code in r["codes"]} == {"rate_limit_exceeded"}
    assert min(r["min_retry_after_s"] for r in rpm) > 0

    tpm = run_scenario(procs)
    assert sum(r["admitted"] for r in tpm) == N
    assert {code for r in tpm for code in r["codes"]} == {"token_limit_exceeded"}

    spend = run_scenario(procs)
    limiter = redis_limits.RedisLimiter(redis_url)
    try:
        usage = (await limiter.read_usage([keys["spend"]], [], datetime.now(UTC)))[keys["spend"]]
    finally:
        await limiter.close()
    recorded = usage.month.micro_usd
    assert recorded == sum(r["micro_usd"] for r in spend)  # nothing lost, nothing counted twice
    assert usage.month.requests == sum(r["requests"] for r in spend)
    overshoot = max(0, recorded - CAP)
    max_gap = max(r["max_gap"] for r in spend)
    in_flight = PROCESSES * WORKERS_PER_PROCESS
    print(
        f"\nspend cap {CAP} micro-USD, {usage.month.requests} requests settled by {PROCESSES} processes: "
        f"recorded {recorded}, overshoot {overshoot} micro-USD "
        f"(bound: {in_flight} in flight x largest actual-over-estimate gap {max_gap} "
        f"= {in_flight * max(0, max_gap)})"
    )
    # Never more than the estimate-vs-actual gap of the requests in flight.
    assert overshoot <= in_flight * max(0, max_gap)
    # And the cap was actually used: the last denial saw less than one estimate of room.
    assert recorded >= CAP - in_flight * ESTIMATE
