"""The bench's fake upstream (bench/upstream.py) speaks OpenAI's wire format, checked with the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest
from bench import upstream

API_KEY = "sk-upstream-test"


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    server = await upstream.listen("127.0.0.1", 0, API_KEY)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    server.close()
    await server.wait_closed()


async def test_chat_completion_with_usage(base_url: str) -> None:
    async with openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="gpt-bench", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert completion.model == "gpt-bench"
    assert completion.choices[0].message.content
    assert (
        completion.usage is not None and completion.usage.completion_tokens == upstream.STREAM_CONTENT_CHUNKS
    )


async def test_stream_sends_twenty_chunks_then_usage_when_asked(base_url: str) -> None:
    async with openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-bench",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    content = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(content) == upstream.STREAM_CONTENT_CHUNKS
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + upstream.STREAM_CONTENT_CHUNKS


async def test_wrong_credential_is_refused(base_url: str) -> None:
    async with openai.AsyncOpenAI(api_key="sk-wrong", base_url=base_url, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="gpt-bench", messages=[{"role": "user", "content": "x"}]
            )


async def test_keep_alive_serves_many_requests_on_one_connection(base_url: str) -> None:
    async with openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, max_retries=0) as client:
        results = await asyncio.gather(
            *(
                client.chat.completions.create(model="gpt-bench", messages=[{"role": "user", "content": "x"}])
                for _ in range(20)
            )
        )
        models = await client.models.list()
    assert all(result.usage is not None for result in results)
    assert [model.id for model in models.data] == ["gpt-bench"]
