"""Provider-wide limits over HTTP: two virtual keys routed to one ProviderCredential with `limits` share
that credential's budget (the shared upstream account), on the Redis limiter, driven by the openai SDK."""

from __future__ import annotations

from datetime import UTC, datetime

import openai
import pytest
from tests import proxy_harness
from tests.fakes import openai_server

from llmkeys_proxy import config, sources
from llmkeys_proxy.limits import redis as redis_limits

MESSAGES = [{"role": "user", "content": "hello"}]


async def test_two_keys_share_the_credential_limits(
    fake_openai: tuple[openai_server.FakeOpenAI, str], redis_url: str
) -> None:
    upstream, url = fake_openai
    shared_limits = config.Limits(requests_per_minute=3, tokens_per_day=1_000_000, max_tokens_per_request=50)
    credential = proxy_harness.openai_provider(url, upstream.api_key, limits=shared_limits)
    # Each key alone could send far more: only the credential's limits hold them back.
    alice = proxy_harness.issue_key("alice", limits=config.Limits(requests_per_minute=100))
    bob = proxy_harness.issue_key("bob", owner={"team": "search"})
    cfg = proxy_harness.proxy_config([alice, bob], [credential])
    limiter = redis_limits.RedisLimiter(redis_url, operation_timeout_s=10, socket_timeout_s=10)
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), limiter) as proxy:
        async with (
            openai.AsyncOpenAI(api_key=alice.key, base_url=proxy.url + "/v1", max_retries=0) as as_alice,
            openai.AsyncOpenAI(api_key=bob.key, base_url=proxy.url + "/v1", max_retries=0) as as_bob,
        ):
            # Above the credential's output cap: refused before anything is reserved or sent.
            with pytest.raises(openai.BadRequestError) as too_long:
                await as_bob.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=51)
            assert too_long.value.code == "max_tokens_exceeded"
            assert "provider credential" in too_long.value.message and "at most 50" in too_long.value.message

            for client in (as_alice, as_alice):
                answer = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=5
                )
                assert answer.choices[0].message.content
            # Naming no output cap: the credential's cap is sent (the lower of the key's and its).
            await as_bob.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert upstream.requests[-1].json()["max_completion_tokens"] == 50
            for client in (as_bob, as_alice):
                with pytest.raises(openai.RateLimitError) as refused:
                    await client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5
                    )
                assert refused.value.code == "provider_limit_exceeded"
                assert "llmkeys/openai" in refused.value.message
                headers = refused.value.response.headers
                assert 1 <= int(headers["retry-after"]) <= 60
                assert "x-should-retry" not in headers  # a minute window: retrying later helps
        await proxy.settled()
        usage = await proxy.limiter.read_usage(
            [alice.key_id, bob.key_id], [], datetime.now(UTC), provider_ids=[credential.id]
        )
    assert len(upstream.requests) == 3
    assert (usage[alice.key_id].day.requests, usage[bob.key_id].day.requests) == (2, 1)
    shared_day = usage[credential.id].day
    assert shared_day.requests == 3
    assert shared_day.total_tokens == (
        usage[alice.key_id].day.total_tokens + usage[bob.key_id].day.total_tokens
    )
    assert shared_day.total_tokens > 0
