"""The official openai SDK (sync, async, streaming, embeddings, completions, responses, models) through
the proxy to a fake OpenAI upstream: the upstream sees the real credential and never the virtual key,
the client never sees the real credential, usage is settled from what the provider reported."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anthropic
import httpx
import openai
import pytest
from tests import proxy_harness
from tests.fakes import openai_server

from llmkeys_proxy import config, sources

Setup = tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey, openai_server.FakeOpenAI]


@pytest.fixture
async def setup(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> AsyncIterator[Setup]:
    upstream, url = fake_openai
    key = proxy_harness.issue_key(limits=config.Limits(requests_per_minute=100, tokens_per_minute=100_000))
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
        yield proxy, key, upstream


def assert_no_virtual_key_upstream(upstream: openai_server.FakeOpenAI, key: proxy_harness.IssuedKey) -> None:
    secret = key.key.rsplit("-", 1)[1]
    assert upstream.requests, "the upstream saw no request"
    for recorded in upstream.requests:
        assert recorded.headers["authorization"] == f"Bearer {upstream.api_key}"
        for value in [*recorded.headers.values(), *recorded.query.values(), recorded.body.decode()]:
            assert secret not in value


async def usage_of(proxy: proxy_harness.RunningProxy, key: proxy_harness.IssuedKey) -> tuple[int, int, int]:
    """(requests, input tokens, output tokens) the limiter recorded for the key this month."""
    await proxy.settled()
    snapshot = (await proxy.limiter.read_usage([key.key_id], [], datetime.now(UTC)))[key.key_id]
    return snapshot.month.requests, snapshot.month.input_tokens, snapshot.month.output_tokens


async def test_sync_client_chat_real_credential_upstream_never_the_virtual_key(setup: Setup) -> None:
    proxy, key, upstream = setup

    def call() -> openai.types.chat.ChatCompletion:
        with openai.OpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "say hello to the proxy"}],
                extra_headers={"OpenAI-Organization": "org-client-guess", "Cookie": "session=1"},
            )
            # The client never sees the real credential, nor facts about the real account.
            assert upstream.api_key not in raw.http_response.text
            assert all(upstream.api_key not in v for v in raw.headers.values())
            assert "openai-organization" not in raw.headers
            assert raw.headers["x-ratelimit-limit-requests"] == "100"
            assert raw.headers["x-ratelimit-remaining-requests"] == "99"
            assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
            assert raw.headers["x-request-id"]
            assert raw.headers["x-upstream-request-id"].startswith("req_")
            return raw.parse()

    completion = await asyncio.to_thread(call)
    assert completion.choices[0].message.content == "".join(openai_server.REPLY_WORDS)
    assert_no_virtual_key_upstream(upstream, key)
    forwarded = upstream.requests[0]
    assert "openai-organization" not in forwarded.headers and "cookie" not in forwarded.headers
    # The original bytes went upstream (no rewrite needed).
    assert forwarded.json() == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "say hello to the proxy"}],
    }
    # Settled with the provider's usage (5 words + the fake's overhead of 7), not an estimate.
    assert await usage_of(proxy, key) == (1, 5 + 7, len(openai_server.REPLY_WORDS))


async def test_async_streaming_injects_and_hides_the_usage_chunk(setup: Setup) -> None:
    proxy, key, upstream = setup
    async with openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(openai_server.REPLY_WORDS)
    # The proxy asked upstream for usage, but this client did not: it never sees the usage chunk.
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert_no_virtual_key_upstream(upstream, key)
    assert await usage_of(proxy, key) == (1, 3 + 7, len(openai_server.REPLY_WORDS))


async def test_streaming_client_that_asks_for_usage_gets_it(setup: Setup) -> None:
    proxy, key, _upstream = setup
    async with openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=3,
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2 + 7 and chunks[-1].usage.completion_tokens == 3
    assert await usage_of(proxy, key) == (1, 9, 3)


async def test_sync_streaming_and_legacy_completions(setup: Setup) -> None:
    proxy, key, _upstream = setup

    def call() -> tuple[str, str]:
        with openai.OpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
            streamed = "".join(
                chunk.choices[0].text
                for chunk in client.completions.create(
                    model="gpt-3.5-turbo-instruct", prompt="x y z", stream=True
                )
                if chunk.choices
            )
            whole = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x y z", max_tokens=2)
            return streamed, whole.choices[0].text

    streamed, whole = await asyncio.to_thread(call)
    assert streamed == "".join(openai_server.REPLY_WORDS)
    assert whole == "".join(openai_server.REPLY_WORDS[:2])
    assert await usage_of(proxy, key) == (2, 2 * (3 + 7), len(openai_server.REPLY_WORDS) + 2)


async def test_embeddings_float_and_base64(setup: Setup) -> None:
    proxy, key, upstream = setup
    async with openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
        b64 = await client.embeddings.create(model="text-embedding-3-small", input=["alpha beta", "gamma"])
        floats = await client.embeddings.create(
            model="text-embedding-3-small", input="alpha", encoding_format="float"
        )
    assert len(b64.data) == 2 and len(b64.data[0].embedding) == openai_server.EMBEDDING_DIMENSIONS
    assert b64.data[1].embedding[0] == pytest.approx(0.2)
    assert floats.data[0].embedding[:2] == [0.1, 0.2]
    assert b64.usage.prompt_tokens == 3 + 7
    assert_no_virtual_key_upstream(upstream, key)
    assert await usage_of(proxy, key) == (2, (3 + 7) + (1 + 7), 0)


async def test_responses_api_whole_and_streamed(setup: Setup) -> None:
    proxy, key, upstream = setup
    async with openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
        whole = await client.responses.create(model="gpt-4o", input="tell me four words", max_output_tokens=4)
        async with client.responses.stream(model="gpt-4o", input="two words") as stream:
            deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert whole.output_text == "".join(openai_server.REPLY_WORDS[:4])
    assert whole.usage is not None and whole.usage.input_tokens == 4 + 7
    assert "".join(deltas) == final.output_text == "".join(openai_server.REPLY_WORDS)
    assert_no_virtual_key_upstream(upstream, key)
    # Responses streams report usage in response.completed: settled from it.
    assert await usage_of(proxy, key) == (2, (4 + 7) + (2 + 7), 4 + len(openai_server.REPLY_WORDS))


async def test_models_lists_only_what_the_key_may_use(
    fake_openai: tuple[openai_server.FakeOpenAI, str],
) -> None:
    upstream, url = fake_openai
    narrow = proxy_harness.issue_key(
        model_allowlists=(("gpt-4o-mini", "gpt-4o", "claude-*"),), denied_models=("gpt-4o",)
    )
    other = config.ProviderEntry(
        id="llmkeys/other",
        provider="openai",
        base_url=url + "/v1",
        api_key="sk-other-account-credential-4711",
        models=(config.ModelRoute(name="gpt-4.1"), config.ModelRoute(name="claude-x")),
    )
    provider = proxy_harness.openai_provider(
        url,
        upstream.api_key,
        models=(
            config.ModelRoute(name="gpt-4o-mini"),
            config.ModelRoute(name="gpt-4o"),
            config.ModelRoute(name="gpt-5"),
        ),
    )
    cfg = proxy_harness.proxy_config([narrow], [provider, other])
    async with (
        proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy,
        openai.AsyncOpenAI(api_key=narrow.key, base_url=proxy.url + "/v1", max_retries=0) as client,
    ):
        listed = [m.id async for m in client.models.list()]
        one = await client.models.retrieve("gpt-4o-mini")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-5")
        async with anthropic.AsyncAnthropic(api_key=narrow.key, base_url=proxy.url, max_retries=0) as claude:
            anthropic_listed = [m.id async for m in claude.models.list()]
            with pytest.raises(anthropic.AuthenticationError):
                await claude.with_options(api_key="sk-llmk-wrong").models.list()
    # gpt-4o is denied, gpt-5 not allowlisted, gpt-4.1 and claude-x only on a credential the key lacks.
    assert listed == ["gpt-4o-mini"] == anthropic_listed
    assert one.id == "gpt-4o-mini" and one.owned_by == "openai"


async def test_audit_line_and_metrics_hold_no_secrets(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    proxy, key, upstream = setup
    caplog.set_level(logging.INFO, logger="llmkeys.audit")
    async with openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "secret prompt text"}],
            extra_headers={"x-request-id": "trace-42"},
        )
    await proxy.settled()
    lines = [r.getMessage() for r in caplog.records if r.name == "llmkeys.audit"]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["request_id"] == "trace-42"
    assert record["key_id"] == key.key_id and record["namespace"] == "team-a" and record["name"] == "dev"
    assert record["owner"] == {"team": "payments", "user": "alice"}
    assert record["provider"] == "llmkeys/openai" and record["model"] == "gpt-4o-mini"
    assert record["status"] == 200 and record["code"] == "ok" and record["usage_source"] == "provider"
    assert record["input_tokens"] == 3 + 7 and record["output_tokens"] == len(openai_server.REPLY_WORDS)
    assert record["cost_micro_usd"] > 0 and record["latency_ms"] > 0
    for forbidden in (key.key, key.key.rsplit("-", 1)[1], upstream.api_key, "secret prompt text"):
        assert forbidden not in lines[0]
    async with httpx.AsyncClient() as http:
        text = (await http.get(proxy.url + "/metrics")).text
    labels = f'code="ok",key_id="{key.key_id}",model="gpt-4o-mini",namespace="team-a",'
    labels += 'provider="llmkeys/openai"'
    assert f"llmkeys_requests_total{{{labels}}} 1.0" in text
    assert 'kind="output"' in text
    assert key.key.rsplit("-", 1)[1] not in text and upstream.api_key not in text


async def test_health_and_readiness(setup: Setup) -> None:
    proxy, _key, _upstream = setup
    async with httpx.AsyncClient() as http:
        assert (await http.get(proxy.url + "/healthz")).status_code == 200
        ready = await http.get(proxy.url + "/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["limiter"] == "ok"
    assert body["config"]["loaded"] and body["config"]["healthy"] and body["config"]["keys"] == 1
