"""The fake upstreams of the other provider families speak the real wire formats: the official SDKs,
pointed straight at them (no proxy), parse everything they send. Guards the fakes the proxy tests use."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import anthropic
import boto3
import botocore.config
import botocore.eventstream
import botocore.exceptions
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from tests.fakes import anthropic_server, bedrock_server, gemini_server, loopback, tls


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[tuple[anthropic_server.FakeAnthropic, str]]:
    fake = anthropic_server.FakeAnthropic()
    async with loopback.serve_app(fake.app()) as url:
        yield fake, url


async def test_anthropic_sdk_reads_fake_messages(
    fake_anthropic: tuple[anthropic_server.FakeAnthropic, str],
) -> None:
    fake, url = fake_anthropic
    fake.cache_read_input_tokens = 4
    async with anthropic.AsyncAnthropic(api_key=fake.api_key, base_url=url, max_retries=0) as client:
        msg = await client.messages.create(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "one two three"}]
        )
        assert msg.content[0].type == "text" and msg.content[0].text == "".join(anthropic_server.REPLY_WORDS)
        assert msg.usage.input_tokens == 3 + fake.input_overhead
        assert msg.usage.cache_read_input_tokens == 4
        async with client.messages.stream(
            model="claude-test", max_tokens=3, messages=[{"role": "user", "content": "a b"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "".join(anthropic_server.REPLY_WORDS[:3])
        assert final.usage.output_tokens == 3 and final.stop_reason == "max_tokens"
        count = await client.messages.count_tokens(
            model="claude-test", messages=[{"role": "user", "content": "x y"}]
        )
        assert count.input_tokens == 2 + fake.input_overhead
    # This SDK generation sends its api_key as a Bearer token (older ones used X-Api-Key).
    assert fake.requests[0].headers["authorization"] == f"Bearer {fake.api_key}"


async def test_anthropic_fake_errors_and_cuts(
    fake_anthropic: tuple[anthropic_server.FakeAnthropic, str],
) -> None:
    fake, url = fake_anthropic
    async with anthropic.AsyncAnthropic(api_key="wrong", base_url=url, max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    async with anthropic.AsyncAnthropic(api_key=fake.api_key, base_url=url, max_retries=0) as client:
        fake.error_after_deltas = 2
        with pytest.raises(anthropic.APIStatusError) as err:
            async with client.messages.stream(
                model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                async for _ in stream.text_stream:
                    pass
        assert "overloaded" in str(err.value).lower()
        fake.error_after_deltas = None
        fake.cut_stream_after_deltas = 2
        received: list[str] = []
        with pytest.raises(Exception, match="peer closed connection"):
            async with client.messages.stream(
                model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                async for piece in stream.text_stream:
                    received.append(piece)
        assert received == list(anthropic_server.REPLY_WORDS[:2])
        fake.cut_stream_after_deltas = None
        fake.fail_with = (529, "overloaded_error", "Overloaded")
        with pytest.raises(anthropic.APIStatusError) as status_err:
            await client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert status_err.value.status_code == 529


# ------------------------------------------------------------------------------------------ Gemini


@pytest.fixture
async def fake_gemini() -> AsyncIterator[tuple[gemini_server.FakeGemini, str]]:
    fake = gemini_server.FakeGemini()
    async with loopback.serve_app(fake.app()) as url:
        yield fake, url


@pytest.mark.parametrize("api_version", ["v1", "v1beta"])
async def test_genai_sdk_reads_fake_gemini(
    fake_gemini: tuple[gemini_server.FakeGemini, str], api_version: str
) -> None:
    fake, url = fake_gemini
    fake.thoughts_tokens = 2
    session = aiohttp.ClientSession()  # our own session: the SDK's subclass of it warns
    options = {"base_url": url, "api_version": api_version, "aiohttp_client": session}
    client = genai.Client(api_key=fake.api_key, http_options=options)  # type: ignore[arg-type]
    try:
        response = await client.aio.models.generate_content(model="gemini-test", contents="one two")
        assert response.text == "".join(gemini_server.REPLY_PIECES)
        assert response.usage_metadata is not None
        assert response.usage_metadata.prompt_token_count == 2 + fake.prompt_overhead
        assert response.usage_metadata.thoughts_token_count == 2
        pieces = []
        last_usage = None
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-test", contents="x", config=types.GenerateContentConfig(max_output_tokens=4)
        ):
            pieces.append(chunk.text)
            last_usage = chunk.usage_metadata
        assert "".join(p or "" for p in pieces) == "".join(gemini_server.REPLY_PIECES[:4])
        assert last_usage is not None and last_usage.candidates_token_count == 4
        count = await client.aio.models.count_tokens(model="gemini-test", contents="a b c")
        assert count.total_tokens == 3 + fake.prompt_overhead
        embedded = await client.aio.models.embed_content(model="text-embedding-test", contents=["a", "b c"])
        assert embedded.embeddings is not None and len(embedded.embeddings) == 2
    finally:
        await client.aio.aclose()
        client.close()
        await session.close()
    assert fake.requests[0].path == f"/{api_version}/models/gemini-test:generateContent"
    assert fake.requests[0].headers["x-goog-api-key"] == fake.api_key
    assert fake.requests[1].query.get("alt") == "sse"


async def test_gemini_fake_json_array_stream_and_errors(
    fake_gemini: tuple[gemini_server.FakeGemini, str],
) -> None:
    fake, url = fake_gemini
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{url}/v1beta/models/g:streamGenerateContent?key={fake.api_key}",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        ) as resp:
            chunks = json.loads(await resp.read())
        assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks] == list(
            gemini_server.REPLY_PIECES
        )
        # Running totals: the last chunk's usage covers the whole answer.
        assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == len(gemini_server.REPLY_PIECES)
        async with session.post(f"{url}/v1beta/models/g:generateContent", json={}) as resp:
            body = await resp.json()
        assert resp.status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        client = genai.Client(
            api_key=fake.api_key,
            http_options={"base_url": url, "aiohttp_client": session},  # type: ignore[arg-type]
        )
        fake.fail_with = (429, "RESOURCE_EXHAUSTED", "Quota exceeded")
        with pytest.raises(genai_errors.ClientError) as err:
            await client.aio.models.generate_content(model="g", contents="x")
        assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"
        await client.aio.aclose()
        client.close()


# ----------------------------------------------------------------------------------------- Bedrock


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tls.TlsFiles:
    return tls.make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def fake_bedrock(tls_files: tls.TlsFiles) -> AsyncIterator[tuple[bedrock_server.FakeBedrock, str]]:
    fake = bedrock_server.FakeBedrock(access_key_id="AKIAFAKE", secret_access_key="fake-secret-access-key")
    # HTTPS: boto3 refuses to send a Bearer token over plain HTTP.
    async with loopback.serve_app(fake.app(), tls_files.server_context()) as url:
        yield fake, url


@pytest.fixture
def boto_client(tls_files: tls.TlsFiles) -> Iterator[Callable[..., Any]]:
    """Makes bedrock-runtime clients trusting the test certificate; closes them before the fake
    stops (an open keep-alive TLS connection would outlive the server)."""
    made: list[Any] = []

    def make(url: str, **credentials: str) -> Any:
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=url,
            verify=str(tls_files.cert),
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
            **credentials,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


async def test_boto3_bearer_reads_fake_bedrock(
    fake_bedrock: tuple[bedrock_server.FakeBedrock, str],
    boto_client: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, url = fake_bedrock
    assert fake.api_key is not None
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", fake.api_key)
    client = boto_client(url)
    messages = [{"role": "user", "content": [{"text": "one two three"}]}]
    out = await asyncio.to_thread(client.converse, modelId=MODEL, messages=messages)
    assert out["output"]["message"]["content"][0]["text"] == "".join(bedrock_server.REPLY_PIECES)
    assert out["usage"]["inputTokens"] == 3 + fake.input_overhead
    assert fake.requests[-1].headers["authorization"] == f"Bearer {fake.api_key}"
    assert fake.requests[-1].path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"

    def read_converse_stream() -> tuple[str, dict[str, Any]]:
        stream = client.converse_stream(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 4})
        text, metadata = "", {}
        for event in stream["stream"]:
            if "contentBlockDelta" in event:
                text += event["contentBlockDelta"]["delta"]["text"]
            if "metadata" in event:
                metadata = event["metadata"]
        return text, metadata

    text, metadata = await asyncio.to_thread(read_converse_stream)
    assert text == "".join(bedrock_server.REPLY_PIECES[:4]) and metadata["usage"]["outputTokens"] == 4

    claude_body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    invoked = await asyncio.to_thread(client.invoke_model, modelId=MODEL, body=claude_body)
    headers = invoked["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == "3"
    assert json.loads(invoked["body"].read())["usage"]["output_tokens"] == 3

    def read_invoke_stream() -> list[dict[str, Any]]:
        response = client.invoke_model_with_response_stream(modelId=MODEL, body=claude_body)
        return [json.loads(event["chunk"]["bytes"]) for event in response["body"]]

    events = await asyncio.to_thread(read_invoke_stream)
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 3


async def test_boto3_sigv4_accepted_by_fake_bedrock_and_errors(
    fake_bedrock: tuple[bedrock_server.FakeBedrock, str],
    boto_client: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, url = fake_bedrock
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    messages = [{"role": "user", "content": [{"text": "x"}]}]
    good = boto_client(url, aws_access_key_id="AKIAFAKE", aws_secret_access_key="fake-secret-access-key")
    await asyncio.to_thread(good.converse, modelId=MODEL, messages=messages)
    assert fake.signature_checks == ["ok"]
    bad = boto_client(url, aws_access_key_id="AKIAFAKE", aws_secret_access_key="wrong")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        await asyncio.to_thread(bad.converse, modelId=MODEL, messages=messages)
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"
    fake.fail_with = (429, "ThrottlingException", "Too many requests")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        await asyncio.to_thread(good.converse, modelId=MODEL, messages=messages)
    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    fake.fail_with = None
    fake.exception_after_deltas = 2

    def read_stream() -> None:
        stream = good.converse_stream(modelId=MODEL, messages=messages)["stream"]
        try:
            for _ in stream:
                pass
        finally:
            stream.close()  # release the connection the failed stream still holds

    with pytest.raises(botocore.exceptions.EventStreamError, match="throttlingException"):
        await asyncio.to_thread(read_stream)


def test_eventstream_frames_parse_with_botocore() -> None:
    frames = bedrock_server.event_frame(
        "messageStart", {"role": "assistant"}
    ) + bedrock_server.exception_frame("validationException", "bad")
    buffer = botocore.eventstream.EventStreamBuffer()
    buffer.add_data(frames[:5])
    assert list(buffer) == []
    buffer.add_data(frames[5:])
    messages = list(buffer)
    assert messages[0].headers[":event-type"] == "messageStart"
    assert json.loads(messages[0].payload)["role"] == "assistant"
    assert messages[1].headers[":message-type"] == "exception"
