"""The fake upstreams of the other provider families speak the real wire formats: the official SDKs,
pointed straight at them (no proxy), parse everything they send. Guards the fakes the proxy tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest
from tests.fakes import anthropic_server, loopback


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
