"""Anthropic Messages through the proxy, driven by the official `anthropic` SDK against a fake upstream
speaking Anthropic's wire format: real key upstream, usage from the provider, errors in Anthropic's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest
from tests import proxy_harness
from tests.fakes import anthropic_server, loopback

from llmkeys_proxy import config, tokens

MESSAGES = [{"role": "user", "content": "tell me about llamas"}]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[anthropic_server.FakeAnthropic, str]]:
    fake = anthropic_server.FakeAnthropic()
    async with loopback.serve_app(fake.app()) as url:
        yield fake, url


def credential(fake: anthropic_server.FakeAnthropic, url: str, **fields: object) -> config.ProviderEntry:
    return config.ProviderEntry(
        id="llmkeys/anthropic",
        provider="anthropic",
        base_url=url,
        api_key=fake.api_key,
        models=(config.ModelRoute(name="claude-*"),),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def proxy(
    upstream: tuple[anthropic_server.FakeAnthropic, str],
) -> AsyncIterator[proxy_harness.RunningProxy]:
    fake, url = upstream
    async with proxy_harness.serve_providers([credential(fake, url)], models=("claude-*",)) as running:
        yield running


def client(proxy: proxy_harness.RunningProxy, **options: object) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=proxy.virtual_key, base_url=proxy.url, max_retries=0, **options)  # type: ignore[arg-type]


async def test_messages_reach_upstream_with_real_key_and_charge_reported_usage(
    upstream: tuple[anthropic_server.FakeAnthropic, str], proxy: proxy_harness.RunningProxy
) -> None:
    fake, _ = upstream
    fake.cache_read_input_tokens = 11
    fake.cache_creation_input_tokens = 4
    async with client(proxy) as sdk:
        message = await sdk.messages.create(model="claude-sonnet-5-5", max_tokens=50, messages=MESSAGES)
    assert message.content[0].type == "text"
    assert message.content[0].text == "".join(anthropic_server.REPLY_WORDS)
    seen = fake.requests[-1]
    assert seen.headers["x-api-key"] == fake.api_key
    assert "authorization" not in seen.headers
    assert seen.headers["anthropic-version"]  # the SDK's version header goes through
    assert seen.json() == {"model": "claude-sonnet-5-5", "max_tokens": 50, "messages": MESSAGES}
    proxy_harness.assert_never_sent(fake.requests, proxy)

    month = await proxy.month_usage()
    reported_input = 4 + fake.input_overhead  # "tell me about llamas" + the fake's overhead
    assert month.requests == 1
    # Anthropic's input excludes cache reads and writes: the proxy adds them back.
    assert month.input_tokens == reported_input + 11 + 4
    assert month.cached_input_tokens == 11
    assert month.output_tokens == len(anthropic_server.REPLY_WORDS)


async def test_streaming_uses_cumulative_message_delta_usage(
    upstream: tuple[anthropic_server.FakeAnthropic, str], proxy: proxy_harness.RunningProxy
) -> None:
    fake, _ = upstream
    async with (
        client(proxy) as sdk,
        sdk.messages.stream(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "".join(anthropic_server.REPLY_WORDS[:5])
    assert final.usage.output_tokens == 5 and final.stop_reason == "max_tokens"
    assert fake.requests[-1].json()["stream"] is True
    month = await proxy.month_usage()
    assert month.input_tokens == 4 + fake.input_overhead
    assert month.output_tokens == 5  # the last cumulative count, not a sum of counts


async def test_stream_cut_off_is_charged_from_what_passed(
    upstream: tuple[anthropic_server.FakeAnthropic, str], proxy: proxy_harness.RunningProxy
) -> None:
    fake, _ = upstream
    fake.cut_stream_after_deltas = 3
    received: list[str] = []
    async with client(proxy) as sdk:
        # The proxy ends the client's stream abruptly too; the transport error type is the SDK's
        # HTTP stack's own.
        with pytest.raises(Exception, match=r"incomplete chunked read|peer closed"):
            async with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES) as s:
                async for piece in s.text_stream:
                    received.append(piece)
    assert received == list(anthropic_server.REPLY_WORDS[:3])
    month = await proxy.month_usage()
    # message_start reported the input; the output is counted with tiktoken from the text that passed.
    assert month.input_tokens == 4 + fake.input_overhead
    assert month.output_tokens == tokens.count_tokens("claude-haiku-4-5", "".join(received))


async def test_count_tokens_is_forwarded_and_free(
    upstream: tuple[anthropic_server.FakeAnthropic, str], proxy: proxy_harness.RunningProxy
) -> None:
    fake, _ = upstream
    async with client(proxy) as sdk:
        counted = await sdk.messages.count_tokens(model="claude-opus-5", messages=MESSAGES)
    assert counted.input_tokens == 4 + fake.input_overhead
    assert fake.requests[-1].path == "/v1/messages/count_tokens"
    assert fake.requests[-1].headers["x-api-key"] == fake.api_key
    month = await proxy.month_usage()
    assert month.requests == 1 and month.total_tokens == 0


async def test_upstream_errors_keep_anthropic_shape(
    upstream: tuple[anthropic_server.FakeAnthropic, str], proxy: proxy_harness.RunningProxy
) -> None:
    fake, _ = upstream
    async with client(proxy) as sdk:
        fake.fail_with = (400, "invalid_request_error", "max_tokens: must be positive")
        with pytest.raises(anthropic.BadRequestError) as bad:
            await sdk.messages.create(model="claude-haiku-4-5", max_tokens=1, messages=MESSAGES)
        assert bad.value.body == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: must be positive"},
            "request_id": bad.value.body["request_id"],  # type: ignore[index]
        }
        fake.fail_with = (529, "overloaded_error", "Overloaded")
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            await sdk.messages.create(model="claude-haiku-4-5", max_tokens=1, messages=MESSAGES)
        assert overloaded.value.status_code == 529
        assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        fake.fail_with = None
        fake.error_after_deltas = 2
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            async with sdk.messages.stream(
                model="claude-haiku-4-5", max_tokens=9, messages=MESSAGES
            ) as stream:
                async for _ in stream.text_stream:
                    pass
    month = await proxy.month_usage()
    assert month.requests == 1  # the two refused calls were refunded; the broken stream was served


async def test_upstream_refusing_the_real_key_is_not_the_callers_fault(
    upstream: tuple[anthropic_server.FakeAnthropic, str], proxy: proxy_harness.RunningProxy
) -> None:
    fake, _ = upstream
    fake.api_key = "sk-ant-rotated-elsewhere"
    async with client(proxy) as sdk:
        with pytest.raises(anthropic.APIStatusError) as err:
            await sdk.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    assert err.value.status_code == 502
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["code"] == "upstream_auth_failed"
    assert "sk-ant-upstream-real-credential" not in str(body)


async def test_proxy_refusals_in_anthropic_shape(proxy: proxy_harness.RunningProxy) -> None:
    async with anthropic.AsyncAnthropic(api_key="sk-llmk-unknown", base_url=proxy.url, max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
            await sdk.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    assert unauthenticated.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    async with client(proxy) as sdk:
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await sdk.messages.create(model="gpt-6-luna", max_tokens=5, messages=MESSAGES)
    assert denied.value.body["error"]["code"] == "model_not_allowed"  # type: ignore[index]
    # The x-api-key header (older SDKs, curl) authenticates as well as Bearer.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 3, "messages": MESSAGES},
            headers={"x-api-key": proxy.virtual_key, "anthropic-version": "2023-06-01"},
        ) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["usage"]["output_tokens"] == 3


async def test_renamed_model_and_other_family_credentials(
    upstream: tuple[anthropic_server.FakeAnthropic, str],
) -> None:
    fake, url = upstream
    renamed = credential(fake, url).model_copy(
        update={"models": (config.ModelRoute(name="house-claude", upstream_name="claude-sonnet-5-5"),)}
    )
    openai_only = config.ProviderEntry(
        id="llmkeys/vllm",
        provider="openai-compatible",
        base_url="http://127.0.0.1:9/v1",
        models=(config.ModelRoute(name="llama-*"),),
    )
    async with proxy_harness.serve_providers([renamed, openai_only]) as proxy, client(proxy) as sdk:
        message = await sdk.messages.create(model="house-claude", max_tokens=5, messages=MESSAGES)
        assert message.content
        assert fake.requests[-1].json()["model"] == "claude-sonnet-5-5"
        # A model served only by an OpenAI-compatible credential is not reachable through /v1/messages.
        with pytest.raises(anthropic.BadRequestError) as unsupported:
            await sdk.messages.create(model="llama-4", max_tokens=5, messages=MESSAGES)
        assert unsupported.value.body["error"]["code"] == "endpoint_not_supported"  # type: ignore[index]
        # And the other way round: a Claude model is not served on OpenAI's routes by an anthropic
        # credential.
        async with openai.AsyncOpenAI(
            api_key=proxy.virtual_key, base_url=f"{proxy.url}/v1", max_retries=0
        ) as oai:
            with pytest.raises(openai.BadRequestError) as cross:
                await oai.chat.completions.create(
                    model="house-claude", messages=[{"role": "user", "content": "x"}]
                )
        assert cross.value.code == "endpoint_not_supported"
    assert len(fake.requests) == 1
