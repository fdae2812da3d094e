"""Azure OpenAI through the proxy: the AzureOpenAI SDK on the deployment routes, the plain OpenAI SDK on
the v1 routes, against a fake Azure resource; `api-key` with the real credential upstream, the
virtual key never; deployments mapped both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import openai
import pytest
from tests import proxy_harness
from tests.fakes import azure_server, loopback, openai_server

from llmkeys_proxy import config, sources

API_VERSION = "2024-10-21"
MESSAGES = [{"role": "user", "content": "hello azure"}]


@pytest.fixture
async def fake_azure() -> AsyncIterator[tuple[azure_server.FakeAzureOpenAI, str]]:
    upstream = azure_server.FakeAzureOpenAI(api_key="0123456789abcdef0123456789abcdef")
    async with loopback.serve_app(upstream.app(), cancel_handlers=True) as url:
        yield upstream, url


def azure_provider(url: str, api_key: str, api_version: str | None) -> config.ProviderEntry:
    return config.ProviderEntry(
        id="llmkeys/azure",
        provider="azure-openai",
        base_url=url,
        api_key=api_key,
        api_version=api_version,
        deployments={"gpt-4o-mini": "prod-gpt4o-mini", "text-embedding-3-small": "prod-embed"},
        models=(config.ModelRoute(name="gpt-4o-mini"), config.ModelRoute(name="text-embedding-3-small")),
    )


def assert_real_credential_only(upstream: azure_server.FakeAzureOpenAI, key: proxy_harness.IssuedKey) -> None:
    secret = key.key.rsplit("-", 1)[1]
    assert upstream.requests
    for recorded in upstream.requests:
        assert recorded.headers["api-key"] == upstream.api_key
        assert "authorization" not in recorded.headers
        assert all(secret not in v for v in [*recorded.headers.values(), recorded.body.decode()])


async def test_azure_sdk_on_deployment_routes(fake_azure: tuple[azure_server.FakeAzureOpenAI, str]) -> None:
    upstream, url = fake_azure
    key = proxy_harness.issue_key(
        providers=("llmkeys/azure",), model_allowlists=(("gpt-4o-mini", "text-embedding-*"),)
    )
    cfg = proxy_harness.proxy_config([key], [azure_provider(url, upstream.api_key, API_VERSION)])
    async with (
        proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy,
        openai.AsyncAzureOpenAI(
            api_key=key.key, api_version=API_VERSION, azure_endpoint=proxy.url, max_retries=0
        ) as client,
    ):
        whole = await client.chat.completions.create(model="prod-gpt4o-mini", messages=MESSAGES)
        stream = await client.chat.completions.create(model="prod-gpt4o-mini", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
        embedded = await client.embeddings.create(model="prod-embed", input="one two")
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        await proxy.settled()
        usage = (await proxy.limiter.read_usage([key.key_id], [], datetime.now(UTC)))[key.key_id].month
    assert whole.choices[0].message.content == "".join(openai_server.REPLY_WORDS)
    # Azure's content-filter chunk (empty choices) reaches the client; the injected usage chunk does not.
    assert chunks[0].choices == [] and chunks[0].usage is None
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert all(c.usage is None for c in chunks)
    assert len(embedded.data) == 1
    assert denied.value.code == "model_not_allowed"
    paths = [(r.path, r.query.get("api-version")) for r in upstream.requests]
    assert paths == [
        ("/openai/deployments/prod-gpt4o-mini/chat/completions", API_VERSION),
        ("/openai/deployments/prod-gpt4o-mini/chat/completions", API_VERSION),
        ("/openai/deployments/prod-embed/embeddings", API_VERSION),
    ]
    assert_real_credential_only(upstream, key)
    # Settled from Azure's reported usage: 2 words + overhead 7 per call.
    assert usage.requests == 3 and usage.input_tokens == 3 * (2 + 7)


async def test_openai_sdk_on_azure_v1_routes_and_v1_upstream(
    fake_azure: tuple[azure_server.FakeAzureOpenAI, str],
) -> None:
    upstream, url = fake_azure
    key = proxy_harness.issue_key(providers=("llmkeys/azure",))
    cfg = proxy_harness.proxy_config([key], [azure_provider(url, upstream.api_key, None)])
    async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
        for base in ("/openai/v1", "/v1"):
            async with openai.AsyncOpenAI(
                api_key=key.key, base_url=proxy.url + base, max_retries=0
            ) as client:
                answer = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                response = await client.responses.create(model="gpt-4o-mini", input="hi there")
            assert answer.choices[0].message.content == "".join(openai_server.REPLY_WORDS)
            assert response.output_text == answer.choices[0].message.content
    # The v1 API wants the deployment as `model`: the proxy rewrote the body for it.
    assert [(r.path, r.json()["model"]) for r in upstream.requests] == [
        ("/openai/v1/chat/completions", "prod-gpt4o-mini"),
        ("/openai/v1/responses", "prod-gpt4o-mini"),
    ] * 2
    assert all("api-version" not in r.query for r in upstream.requests)
    assert_real_credential_only(upstream, key)


async def test_openai_route_to_classic_azure_upstream_streams_responses(
    fake_azure: tuple[azure_server.FakeAzureOpenAI, str],
) -> None:
    upstream, url = fake_azure
    key = proxy_harness.issue_key(providers=("llmkeys/azure",))
    cfg = proxy_harness.proxy_config([key], [azure_provider(url, upstream.api_key, API_VERSION)])
    async with (
        proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy,
        openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client,
    ):
        async with client.responses.stream(model="gpt-4o-mini", input="a b c") as stream:
            final = await stream.get_final_response()
        await proxy.settled()
        usage = (await proxy.limiter.read_usage([key.key_id], [], datetime.now(UTC)))[key.key_id].month
    assert final.output_text == "".join(openai_server.REPLY_WORDS)
    assert upstream.requests[0].path == "/openai/responses"
    assert upstream.requests[0].query["api-version"] == API_VERSION
    assert usage.input_tokens == 3 + 7 and usage.output_tokens == len(openai_server.REPLY_WORDS)
