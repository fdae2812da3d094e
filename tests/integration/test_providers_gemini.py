"""Gemini API and Vertex AI through the proxy, driven by the official `google-genai` (and, for Claude on
Vertex, `anthropic`) SDKs against fakes speaking Google's wire formats and a fake OAuth token endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from tests import proxy_harness
from tests.fakes import anthropic_server, gemini_server, google_token_server, loopback

from llmkeys_proxy import config

GEMINI_ID = "llmkeys/gemini"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[gemini_server.FakeGemini, str]]:
    fake = gemini_server.FakeGemini()
    async with loopback.serve_app(fake.app()) as url:
        yield fake, url


def gemini_credential(fake: gemini_server.FakeGemini, url: str) -> config.ProviderEntry:
    return config.ProviderEntry(
        id=GEMINI_ID,
        provider="gemini",
        base_url=url,
        api_key=fake.api_key,
        models=(config.ModelRoute(name="gemini-*"), config.ModelRoute(name="text-embedding-*")),
    )


@pytest.fixture
async def proxy(
    upstream: tuple[gemini_server.FakeGemini, str],
) -> AsyncIterator[proxy_harness.RunningProxy]:
    fake, url = upstream
    async with proxy_harness.serve_providers(
        [gemini_credential(fake, url)], models=("gemini-*", "text-*")
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sdk(
    proxy: proxy_harness.RunningProxy, http: aiohttp.ClientSession, api_version: str = "v1"
) -> genai.Client:
    # Our own aiohttp session: the SDK's own subclass of ClientSession raises a DeprecationWarning.
    options: Any = {"base_url": proxy.url, "api_version": api_version, "aiohttp_client": http}
    return genai.Client(api_key=proxy.virtual_key, http_options=options)


@pytest.mark.parametrize("api_version", ["v1", "v1beta"])
async def test_generate_content_with_real_key_and_reported_usage(
    upstream: tuple[gemini_server.FakeGemini, str],
    proxy: proxy_harness.RunningProxy,
    http: aiohttp.ClientSession,
    api_version: str,
) -> None:
    fake, _ = upstream
    fake.cached_content_tokens = 6
    fake.thoughts_tokens = 3
    client = sdk(proxy, http, api_version)
    response = await client.aio.models.generate_content(
        model="gemini-3.5-flash", contents="why is the sky blue"
    )
    assert response.text == "".join(gemini_server.REPLY_PIECES)
    seen = fake.requests[-1]
    assert seen.path == "/v1beta/models/gemini-3.5-flash:generateContent"
    assert seen.headers["x-goog-api-key"] == fake.api_key
    proxy_harness.assert_never_sent(fake.requests, proxy)
    month = await proxy.month_usage()
    prompt = 5 + fake.prompt_overhead + 6  # promptTokenCount includes the cached tokens
    assert (month.input_tokens, month.cached_input_tokens) == (prompt, 6)
    assert month.output_tokens == len(gemini_server.REPLY_PIECES) + 3  # thoughts are billed as output


async def test_sse_stream_charges_last_running_total(
    upstream: tuple[gemini_server.FakeGemini, str],
    proxy: proxy_harness.RunningProxy,
    http: aiohttp.ClientSession,
) -> None:
    fake, _ = upstream
    client = sdk(proxy, http)
    pieces = []
    config_ = types.GenerateContentConfig(max_output_tokens=4)
    async for chunk in await client.aio.models.generate_content_stream(
        model="gemini-3.5-flash", contents="stream it", config=config_
    ):
        pieces.append(chunk.text or "")
    assert "".join(pieces) == "".join(gemini_server.REPLY_PIECES[:4])
    assert fake.requests[-1].query == {"alt": "sse"}
    month = await proxy.month_usage()
    assert month.input_tokens == 2 + fake.prompt_overhead
    assert month.output_tokens == 4  # running totals: the last one, never their sum (1+2+3+4)


async def test_json_array_stream_and_query_key(
    upstream: tuple[gemini_server.FakeGemini, str],
    proxy: proxy_harness.RunningProxy,
    http: aiohttp.ClientSession,
) -> None:
    fake, _ = upstream
    body = {"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]}
    url = f"{proxy.url}/v1beta/models/gemini-3.1-pro:streamGenerateContent?key={proxy.virtual_key}"
    async with http.post(url, json=body) as resp:
        assert resp.status == 200
        chunks = json.loads(await resp.read())
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks] == list(
        gemini_server.REPLY_PIECES
    )
    seen = fake.requests[-1]
    assert seen.query == {} and seen.headers["x-goog-api-key"] == fake.api_key
    proxy_harness.assert_never_sent(fake.requests, proxy)
    month = await proxy.month_usage()
    assert month.output_tokens == len(gemini_server.REPLY_PIECES)
    assert month.input_tokens == 3 + fake.prompt_overhead


async def test_stream_cut_off_is_counted_from_what_passed(
    upstream: tuple[gemini_server.FakeGemini, str],
    proxy: proxy_harness.RunningProxy,
    http: aiohttp.ClientSession,
) -> None:
    fake, _ = upstream
    fake.cut_stream_after_chunks = 2
    url = f"{proxy.url}/v1beta/models/gemini-3.1-pro:streamGenerateContent?alt=sse"
    received = b""
    async with http.post(url, json={"contents": [{"parts": [{"text": "a b"}]}]}, headers=_key(proxy)) as resp:
        # The proxy ends the client's response abruptly as well: a truncated chunked body.
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    assert received.count(b"data: ") == 2
    month = await proxy.month_usage()
    # The last running total seen (2 chunks) and tiktoken over "Hello from" agree: 2 tokens.
    assert month.output_tokens == 2
    assert month.input_tokens == 2 + fake.prompt_overhead


def _key(proxy: proxy_harness.RunningProxy) -> dict[str, str]:
    return {"x-goog-api-key": proxy.virtual_key}


async def test_count_tokens_and_embeddings(
    upstream: tuple[gemini_server.FakeGemini, str],
    proxy: proxy_harness.RunningProxy,
    http: aiohttp.ClientSession,
) -> None:
    fake, _ = upstream
    client = sdk(proxy, http)
    counted = await client.aio.models.count_tokens(
        model="gemini-3.5-flash", contents="count these four words"
    )
    assert counted.total_tokens == 4 + fake.prompt_overhead
    embedded = await client.aio.models.embed_content(
        model="text-embedding-005", contents=["first text", "second"]
    )
    assert embedded.embeddings is not None and len(embedded.embeddings) == 2
    assert fake.requests[-1].path == "/v1beta/models/text-embedding-005:batchEmbedContents"
    async with http.post(
        f"{proxy.url}/v1beta/models/text-embedding-005:embedContent",
        json={"content": {"parts": [{"text": "single"}]}},
        headers=_key(proxy),
    ) as resp:
        assert resp.status == 200
        assert len((await resp.json())["embedding"]["values"]) == gemini_server.EMBEDDING_DIMENSIONS
    month = await proxy.month_usage()
    assert month.requests == 3
    assert month.output_tokens == 0 and month.input_tokens > 0  # embeddings: estimated input only


async def test_errors_in_google_shape(
    upstream: tuple[gemini_server.FakeGemini, str],
    proxy: proxy_harness.RunningProxy,
    http: aiohttp.ClientSession,
) -> None:
    fake, _ = upstream
    client = sdk(proxy, http)
    with pytest.raises(genai_errors.ClientError) as denied:
        await client.aio.models.generate_content(model="text-bison", contents="x")
    assert denied.value.code == 404  # a model no credential serves
    outsider = genai.Client(
        api_key="sk-llmk-nope", http_options={"base_url": proxy.url, "aiohttp_client": http}
    )  # type: ignore[arg-type]
    with pytest.raises(genai_errors.ClientError) as unauthenticated:
        await outsider.aio.models.generate_content(model="gemini-3.5-flash", contents="x")
    assert unauthenticated.value.code == 401 and unauthenticated.value.status == "UNAUTHENTICATED"
    fake.fail_with = (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")
    with pytest.raises(genai_errors.ClientError) as exhausted:
        await client.aio.models.generate_content(model="gemini-3.5-flash", contents="x")
    assert exhausted.value.code == 429 and exhausted.value.status == "RESOURCE_EXHAUSTED"
    fake.fail_with = (500, "INTERNAL", "An internal error has occurred.")
    with pytest.raises(genai_errors.ServerError) as failed:
        await client.aio.models.generate_content(model="gemini-3.5-flash", contents="x")
    assert failed.value.code == 500 and "internal error" in (failed.value.message or "")
    assert len(fake.requests) == 2
    month = await proxy.month_usage()
    assert month.requests == 0 and month.total_tokens == 0  # refused upstream: refunded


async def test_a_refused_gateway_key_is_not_the_callers_fault(
    upstream: tuple[gemini_server.FakeGemini, str],
    proxy: proxy_harness.RunningProxy,
    http: aiohttp.ClientSession,
) -> None:
    fake, _ = upstream
    real_key = fake.api_key
    fake.api_key = "AIza-rotated-elsewhere"
    with pytest.raises(genai_errors.ServerError) as refused:
        await sdk(proxy, http).aio.models.generate_content(model="gemini-3.5-flash", contents="x")
    assert refused.value.code == 502
    assert refused.value.details["error"]["details"][0]["reason"] == "upstream_auth_failed"
    assert real_key not in str(refused.value.details)


async def test_model_not_allowed_and_max_tokens(
    upstream: tuple[gemini_server.FakeGemini, str], http: aiohttp.ClientSession
) -> None:
    fake, url = upstream
    async with proxy_harness.serve_providers(
        [gemini_credential(fake, url)],
        models=("gemini-3.5-*",),
        limits=config.Limits(max_tokens_per_request=100),
    ) as proxy:
        client = sdk(proxy, http)
        with pytest.raises(genai_errors.ClientError) as denied:
            await client.aio.models.generate_content(model="gemini-3.1-pro", contents="x")
        assert denied.value.code == 403 and denied.value.status == "PERMISSION_DENIED"
        assert denied.value.details["error"]["details"][0]["reason"] == "model_not_allowed"
        with pytest.raises(genai_errors.ClientError) as too_many:
            await client.aio.models.generate_content(
                model="gemini-3.5-flash",
                contents="x",
                config=types.GenerateContentConfig(max_output_tokens=500),
            )
        assert too_many.value.code == 400 and "100" in (too_many.value.message or "")
    assert fake.requests == []


# ------------------------------------------------------------------------------------------ Vertex


@pytest.fixture
async def vertex() -> AsyncIterator[
    tuple[gemini_server.FakeGemini, google_token_server.FakeGoogleToken, str, str]
]:
    """Fake token endpoint + fake Vertex; yields them, the service-account key file and Vertex's URL."""
    tokens = google_token_server.FakeGoogleToken()
    async with loopback.serve_app(tokens.app()) as token_url:
        tokens.token_uri = f"{token_url}/token"
        account = google_token_server.make_service_account(tokens.token_uri)
        tokens.accounts[account.client_email] = account.public_key
        fake = gemini_server.FakeGemini(token_server=tokens)
        async with loopback.serve_app(fake.app()) as url:
            yield fake, tokens, account.key_json, url


def vertex_credential(key_json: str, url: str) -> config.ProviderEntry:
    return config.ProviderEntry(
        id="llmkeys/vertex",
        provider="vertex-ai",
        base_url=url,
        api_key=key_json,
        project="proj-1",
        location="europe-west4",
        models=(config.ModelRoute(name="gemini-*"), config.ModelRoute(name="claude-*")),
    )


async def test_vertex_gemini_with_minted_token(
    vertex: tuple[gemini_server.FakeGemini, google_token_server.FakeGoogleToken, str, str],
    http: aiohttp.ClientSession,
) -> None:
    fake, tokens, key_json, url = vertex
    async with proxy_harness.serve_providers([vertex_credential(key_json, url)]) as proxy:
        client = sdk(proxy, http)
        response = await client.aio.models.generate_content(model="gemini-3.5-flash", contents="hello vertex")
        assert response.text == "".join(gemini_server.REPLY_PIECES)
        pieces = [
            chunk.text or ""
            async for chunk in await client.aio.models.generate_content_stream(
                model="gemini-3.5-flash", contents="s"
            )
        ]
        assert "".join(pieces) == "".join(gemini_server.REPLY_PIECES)
        counted = await client.aio.models.count_tokens(model="gemini-3.5-flash", contents="a b")
        assert counted.total_tokens == 2 + fake.prompt_overhead
        with pytest.raises(genai_errors.ClientError) as unsupported:
            await client.aio.models.embed_content(model="gemini-embedding", contents=["x"])
        assert unsupported.value.code == 400
        month = await proxy.month_usage()
    base = "/v1/projects/proj-1/locations/europe-west4/publishers/google/models/gemini-3.5-flash"
    assert [r.path for r in fake.requests] == [
        f"{base}:generateContent",
        f"{base}:streamGenerateContent",
        f"{base}:countTokens",
    ]
    assert len(tokens.issued) == 1  # one token minted, then reused
    assert {r.headers["authorization"] for r in fake.requests} == {f"Bearer {tokens.issued[0]}"}
    assert "x-goog-api-key" not in fake.requests[0].headers
    proxy_harness.assert_never_sent(fake.requests, proxy)
    assert month.requests == 3
    assert month.output_tokens == 2 * len(gemini_server.REPLY_PIECES)


async def test_vertex_revoked_token_is_replaced(
    vertex: tuple[gemini_server.FakeGemini, google_token_server.FakeGoogleToken, str, str],
    http: aiohttp.ClientSession,
) -> None:
    _, tokens, key_json, url = vertex
    async with proxy_harness.serve_providers([vertex_credential(key_json, url)]) as proxy:
        client = sdk(proxy, http)
        await client.aio.models.generate_content(model="gemini-3.5-flash", contents="one")
        tokens.revoked.add(tokens.issued[0])
        response = await client.aio.models.generate_content(model="gemini-3.5-flash", contents="two")
        assert response.text
        # A key file the token endpoint refuses: the caller learns it is the gateway's credential.
        tokens.accounts.clear()
        tokens.revoked.add(tokens.issued[1])
        with pytest.raises(genai_errors.ServerError) as refused:
            await client.aio.models.generate_content(model="gemini-3.5-flash", contents="three")
        assert refused.value.code == 502
        assert "PRIVATE KEY" not in (refused.value.message or "")
    assert len(tokens.issued) == 2


async def test_claude_on_vertex_through_the_anthropic_sdk(
    vertex: tuple[gemini_server.FakeGemini, google_token_server.FakeGoogleToken, str, str],
) -> None:
    _, tokens, key_json, _ = vertex
    claude = anthropic_server.FakeAnthropic(token_server=tokens)
    messages = [{"role": "user", "content": "hi there"}]
    async with (
        loopback.serve_app(claude.app()) as url,
        proxy_harness.serve_providers([vertex_credential(key_json, url)]) as proxy,
    ):
        async with anthropic.AsyncAnthropic(
            api_key=proxy.virtual_key, base_url=proxy.url, max_retries=0
        ) as client:
            message = await client.messages.create(
                model="claude-sonnet-5-5", max_tokens=20, messages=messages
            )
            assert message.content[0].text == "".join(anthropic_server.REPLY_WORDS)  # type: ignore[union-attr]
            async with client.messages.stream(
                model="claude-sonnet-5-5", max_tokens=3, messages=messages
            ) as stream:
                streamed = "".join([piece async for piece in stream.text_stream])
            assert streamed == "".join(anthropic_server.REPLY_WORDS[:3])
            counted = await client.messages.count_tokens(model="claude-sonnet-5-5", messages=messages)
            assert counted.input_tokens == 2 + claude.input_overhead
        month = await proxy.month_usage()
    base = "/v1/projects/proj-1/locations/europe-west4/publishers/anthropic/models"
    assert [r.path for r in claude.requests] == [
        f"{base}/claude-sonnet-5-5:rawPredict",
        f"{base}/claude-sonnet-5-5:streamRawPredict",
        f"{base}/count-tokens:rawPredict",
    ]
    first = claude.requests[0].json()
    assert first["anthropic_version"] == "vertex-2023-10-16" and "model" not in first
    assert claude.requests[2].json()["model"] == "claude-sonnet-5-5"
    assert all(r.headers["authorization"] == f"Bearer {tokens.issued[0]}" for r in claude.requests)
    proxy_harness.assert_never_sent(claude.requests, proxy)
    assert month.requests == 3
    assert month.output_tokens == len(anthropic_server.REPLY_WORDS) + 3
