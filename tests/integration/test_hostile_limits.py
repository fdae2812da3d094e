"""Hostile numbers against the limiter: output caps of 2^63 and beyond, and huge `n`, on a real Redis.

Such a request is a 400 `invalid_max_tokens` before the limiter is asked: never a 503, never served
unreserved under an Allow policy, never a rise of the limiter-unavailable metric, never a write
left in Redis but the refusal tallies by code; the next sane request is served and counted normally.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import redis
from tests import proxy_harness
from tests.fakes import loopback, openai_server

from llmkeys_proxy import config, sources
from llmkeys_proxy.limits import redis as redis_limits

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("policy", ["Reject", "Allow"])
async def test_absurd_output_caps_are_a_400_and_touch_no_counter(redis_url: str, policy: str) -> None:
    upstream = openai_server.FakeOpenAI()
    key = proxy_harness.issue_key(
        limits=config.Limits(tokens_per_day=100_000, spend_per_month_micro_usd=10_000_000),
        on_limiter_unavailable=policy,
    )
    absurd = [
        {"max_tokens": 2**63},
        {"max_completion_tokens": 2**64 + 5},
        {"max_tokens": 10**30},
        {"max_tokens": 1000, "n": 2**62},
        {"max_tokens": 100_000_001},
    ]
    async with loopback.serve_app(upstream.app()) as url:
        cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
        limiter = redis_limits.RedisLimiter(redis_url)
        async with proxy_harness.run_proxy(sources.StaticSource(cfg), limiter) as proxy:
            headers = {"Authorization": f"Bearer {key.key}"}
            async with httpx.AsyncClient(timeout=30) as http:
                for fields in absurd:
                    answer = await http.post(
                        proxy.url + "/v1/chat/completions",
                        headers=headers,
                        json={"model": "gpt-4o-mini", "messages": MESSAGES, **fields},
                    )
                    assert answer.status_code == 400, (fields, answer.text)
                    assert answer.json()["error"]["code"] == "invalid_max_tokens"
                assert upstream.requests == []
                # The refusals are tallied by code (status.usage.refusals), written by the settler
                # once settled (if at all); nothing else (no reservation, no usage counter) may exist.
                await proxy.settled()
                stored = redis.Redis.from_url(redis_url)
                written = sorted(k.decode() for k in stored.keys("*"))
                assert all(k.split("}:", 1)[1].startswith("t:") for k in written), written
                tallies = [stored.hgetall(k) for k in written]
                assert all(
                    set(t) == {b"r:invalid_max_tokens"}
                    and t[b"r:invalid_max_tokens"] == str(len(absurd)).encode()
                    for t in tallies
                ), tallies
                sane = await http.post(
                    proxy.url + "/v1/chat/completions",
                    headers=headers,
                    json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5},
                )
                assert sane.status_code == 200
                await proxy.settled()
                metrics = (await http.get(proxy.url + "/metrics")).text
            usage = await limiter.read_usage([key.key_id], [], datetime.now(UTC))
    assert "llmkeys_limiter_unavailable_total" not in metrics or all(
        line.endswith(" 0.0")
        for line in metrics.splitlines()
        if line.startswith("llmkeys_limiter_unavailable_total{")
    )
    day = usage[key.key_id].day
    assert day.requests == 1
    assert day.input_tokens + day.output_tokens == sane.json()["usage"]["total_tokens"]
