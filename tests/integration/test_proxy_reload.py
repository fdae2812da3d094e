"""Config reload from a directory while a stream is in flight; streams cut off, abandoned by the client
or still running at shutdown are all settled."""

from __future__ import annotations

import asyncio
import pathlib
import time
from datetime import UTC, datetime

import httpx
import openai
import pytest
from tests import proxy_harness
from tests.fakes import openai_server

from llmkeys_proxy import apis, config, sources, tokens
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.limits import memory
from llmkeys_proxy.limits import redis as redis_limits

MESSAGES = [{"role": "user", "content": "stream to me"}]


async def month_usage(limiter: limits_base.Limiter, key: proxy_harness.IssuedKey) -> tuple[int, int, int]:
    snapshot = (await limiter.read_usage([key.key_id], [], datetime.now(UTC)))[key.key_id].month
    return snapshot.requests, snapshot.input_tokens, snapshot.output_tokens


async def wait_for(predicate_s: str, check: object, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {predicate_s}"
        await asyncio.sleep(0.02)


async def test_reload_takes_effect_without_dropping_an_inflight_stream(
    fake_openai: tuple[openai_server.FakeOpenAI, str], tmp_path: pathlib.Path
) -> None:
    upstream, url = fake_openai
    upstream.hold = asyncio.Event()
    streamer = proxy_harness.issue_key(name="streamer")
    newcomer = proxy_harness.issue_key(name="newcomer", suspended=True)
    provider = proxy_harness.openai_provider(url, upstream.api_key)
    sources.write_config_dir(tmp_path, proxy_harness.proxy_config([streamer, newcomer], [provider]))
    source = sources.DirectorySource(tmp_path)  # the production poll interval (0.5 s)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    async with proxy_harness.run_proxy(source) as proxy, httpx.AsyncClient(timeout=30) as http:
        assert (
            await http.post(
                proxy.url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {newcomer.key}"},
            )
        ).status_code == 403
        async with openai.AsyncOpenAI(
            api_key=streamer.key, base_url=proxy.url + "/v1", max_retries=0
        ) as client:
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            received = []
            async for chunk in stream:
                received.append(chunk)
                if any(c.choices and c.choices[0].delta.content for c in received):
                    break
            await asyncio.wait_for(upstream.holding.wait(), 30)
            old_adapter = proxy.state.adapters[provider.id]

            # Reload: the newcomer is unsuspended, the credential entry changes (a new adapter).
            changed = provider.model_copy(update={"models": (*provider.models, config.ModelRoute(name="o3"))})
            active = config.KeyEntry(**{**newcomer.entry.model_dump(), "suspended": False})
            written_at = time.monotonic()
            sources.write_config_dir(
                tmp_path, config.ProxyConfig(keys=(streamer.entry, active), providers=(changed,))
            )

            async def newcomer_served() -> bool:
                answer = await http.post(
                    proxy.url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {newcomer.key}"},
                )
                return answer.status_code == 200

            await wait_for("the reload", newcomer_served)
            reload_s = time.monotonic() - written_at
            print(f"\nreload took effect after {reload_s:.2f} s (poll interval 0.5 s)")
            assert proxy.state.adapters[provider.id] is not old_adapter
            assert old_adapter in proxy.state.retiring  # still serving the held stream

            upstream.hold.set()
            async for chunk in stream:
                received.append(chunk)
        text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
        assert text == "".join(openai_server.REPLY_WORDS)  # the in-flight stream completed intact
        await proxy.settled()
        assert old_adapter not in proxy.state.retiring
        assert reload_s < 5

        # A broken document: the last good config keeps serving; /readyz reports it.
        (tmp_path / sources.PROVIDERS_FILE).write_text("{ not json")

        async def reported() -> bool:
            return (await http.get(proxy.url + "/readyz")).json()["config"]["healthy"] is False

        await wait_for("the error report", reported)
        ready = await http.get(proxy.url + "/readyz")
        assert ready.status_code == 200 and "providers.json" in ready.json()["config"]["error"]
        assert await newcomer_served()
        sources.write_config_dir(
            tmp_path, config.ProxyConfig(keys=(streamer.entry, active), providers=(changed,))
        )

        async def healthy() -> bool:
            return (await http.get(proxy.url + "/readyz")).json()["config"]["healthy"] is True

        await wait_for("recovery", healthy)


async def test_stream_cut_off_upstream_is_charged_from_what_passed(
    fake_openai: tuple[openai_server.FakeOpenAI, str],
) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key()
    limiter = memory.MemoryLimiter()
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), limiter=limiter) as proxy:
        async with openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-cut-after": "3"}
            )
            received = []
            with pytest.raises(openai.APIError):
                async for chunk in stream:
                    received.append(chunk)
        await proxy.settled()
        text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
        assert text == "".join(openai_server.REPLY_WORDS[:3])
        prompt = apis.estimate_prompt_tokens("openai-chat", "gpt-4o-mini", {"messages": MESSAGES})
        # Never $0: the prompt estimate plus tiktoken's count of what streamed before the cut.
        assert await month_usage(limiter, key) == (1, prompt, tokens.count_tokens("gpt-4o-mini", text))


async def test_client_disconnect_mid_stream_still_settles(
    fake_openai: tuple[openai_server.FakeOpenAI, str],
) -> None:
    upstream, url = fake_openai
    upstream.hold = asyncio.Event()
    key = proxy_harness.issue_key()
    limiter = memory.MemoryLimiter()
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), limiter=limiter) as proxy:
        async with httpx.AsyncClient(timeout=30) as http:
            request = http.build_request(
                "POST",
                proxy.url + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
                headers={"Authorization": f"Bearer {key.key}"},
            )
            response = await http.send(request, stream=True)
            async for piece in response.aiter_bytes():
                if b"Hello" in piece:
                    break
            await response.aclose()  # the client goes away mid-stream
        await asyncio.wait_for(upstream.holding.wait(), 30)
        upstream.hold.set()

        async def settled() -> bool:
            return (await month_usage(limiter, key))[0] == 1

        await wait_for("settlement", settled)
        _requests, input_tokens, output_tokens = await month_usage(limiter, key)
        assert input_tokens > 0 and output_tokens >= 1


async def test_graceful_shutdown_finishes_and_settles_inflight_streams(
    fake_openai: tuple[openai_server.FakeOpenAI, str], redis_url: str
) -> None:
    upstream, url = fake_openai
    upstream.hold = asyncio.Event()
    key = proxy_harness.issue_key()
    # Redis keeps the counters after the app closed its limiter at shutdown, so they can be read after.
    limiter = redis_limits.RedisLimiter(redis_url)
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    chunks: list[openai.types.chat.ChatCompletionChunk] = []
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), limiter=limiter) as proxy:
        client = openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0)

        async def consume() -> None:
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            async for chunk in stream:
                chunks.append(chunk)

        async def release_once_closed() -> None:
            # Release the held stream only once the server stopped accepting connections.
            await proxy.stop.wait()
            host, port = proxy.url.removeprefix("http://").split(":")
            while True:
                try:
                    _, writer = await asyncio.open_connection(host, int(port))
                except OSError:
                    break
                writer.close()
                await writer.wait_closed()
                await asyncio.sleep(0.01)
            upstream.hold.set()

        consumer = asyncio.create_task(consume())
        releaser = asyncio.create_task(release_once_closed())
        await asyncio.wait_for(upstream.holding.wait(), 30)
        # Leaving the block stops the server: the held stream must finish, then settle.
    await releaser
    await consumer
    await client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
        openai_server.REPLY_WORDS
    )
    reader = redis_limits.RedisLimiter(redis_url)  # the app closed its own limiter at shutdown
    try:
        assert await month_usage(reader, key) == (1, 3 + 7, len(openai_server.REPLY_WORDS))
    finally:
        await reader.close()
