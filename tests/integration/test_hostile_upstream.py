"""Hostile upstreams: a gzip bomb, a provider trickling a byte at a time, one echoing the gateway's real
credential in its body, its headers and across stream chunks.

A misbehaving fake upstream speaks OpenAI's wire format; the proxy in front of it must bound the
damage (502 upstream_response_too_large, 504 upstream_timeout) while another client's /healthz stays
fast, and must never pass the credential on.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web
from tests import hostile, proxy_harness
from tests.fakes import loopback

from llmkeys_proxy import config, settings, sources

CREDENTIAL = "sk-proj-HOSTILEupstreamECHOEScredential0123456789"
MESSAGES = [{"role": "user", "content": "hello"}]
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def _completion(text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": USAGE,
    }


#: 64 MiB of zeros in about 64 KB of gzip: small on the wire, huge once unpacked (built once, not
#: on the event loop the proxy shares with the fake during the test).
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


async def _bomb(request: web.Request) -> web.Response:
    return web.Response(body=BOMB, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def _trickle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for byte in json.dumps(_completion("slow")).encode():
        await response.write(bytes([byte]))
        await asyncio.sleep(0.2)
    return response


async def _echo(request: web.Request) -> web.StreamResponse:
    payload = await request.json()
    headers = {"x-echo": f"Bearer {CREDENTIAL}"}
    if not payload.get("stream"):
        return web.json_response(_completion(f"your key is {CREDENTIAL}"), headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
    await response.prepare(request)
    event = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini"}
    text = f"data: {json.dumps({**event, 'choices': [{'index': 0, 'delta': {'content': CREDENTIAL}}]})}\n\n"
    middle = len(text) // 2  # the credential split across two chunks
    for part in (text[:middle], text[middle:]):
        await response.write(part.encode())
        await asyncio.sleep(0.05)
    done = {**event, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": USAGE}
    await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
    return response


#: Usage a hostile upstream may report (the client picks one through a header the proxy forwards).
ABSURD_USAGE: dict[str, dict[str, object]] = {
    "negative": {"prompt_tokens": -1000, "completion_tokens": 2, "total_tokens": -998},
    "text": {"prompt_tokens": "lots", "completion_tokens": 2, "total_tokens": 5},
    "huge": {"prompt_tokens": 3, "completion_tokens": 2**70, "total_tokens": 2**70},
    "fraction": {"prompt_tokens": 3.5, "completion_tokens": 2, "total_tokens": 5.5},
}


async def _absurd(request: web.Request) -> web.StreamResponse:
    payload = await request.json()
    usage = ABSURD_USAGE[request.headers["x-usage-variant"]]
    if not payload.get("stream"):
        return web.json_response({**_completion("four words of answer"), "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    event = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini"}
    delta = {**event, "choices": [{"index": 0, "delta": {"content": "four words of answer"}}]}
    done = {**event, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
    await response.write(
        f"data: {json.dumps(delta)}\n\ndata: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode()
    )
    return response


@pytest.fixture
async def proxied() -> AsyncIterator[
    tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey, dict[str, str]]
]:
    app = web.Application()
    app.router.add_post("/bomb/v1/chat/completions", _bomb)
    app.router.add_post("/trickle/v1/chat/completions", _trickle)
    app.router.add_post("/echo/v1/chat/completions", _echo)
    app.router.add_post("/absurd/v1/chat/completions", _absurd)
    names = ("bomb", "trickle", "echo", "absurd")
    key = proxy_harness.issue_key(providers=tuple(f"llmkeys/{name}" for name in names))
    tight = settings.ProxySettings(
        config_dir="/nonexistent", upstream_response_timeout_s=1.5, max_upstream_response_bytes=1024 * 1024
    )
    async with loopback.serve_app(app) as url:
        providers = [
            proxy_harness.openai_provider(
                f"{url}/{name}", CREDENTIAL, provider_id=f"llmkeys/{name}", models=(_route(f"gpt-{name}"),)
            )
            for name in names
        ]
        cfg = proxy_harness.proxy_config([key], providers)
        async with proxy_harness.run_proxy(sources.StaticSource(cfg), proxy_settings=tight) as proxy:
            yield proxy, key, {"Authorization": f"Bearer {key.key}"}


def _route(name: str) -> config.ModelRoute:
    return config.ModelRoute(name=name, upstream_name="gpt-4o-mini")


async def test_a_gzip_bomb_is_refused_without_stalling_anyone(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey, dict[str, str]],
) -> None:
    proxy, key, auth = proxied
    async with hostile.healthz_probe(proxy.url) as probe, httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            proxy.url + "/v1/chat/completions", headers=auth, json={"model": "gpt-bomb", "messages": MESSAGES}
        )
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_response_too_large"
    assert probe.failures == 0 and probe.worst < 1.0
    month = (await proxy.limiter.read_usage([key.key_id], [], _now()))[key.key_id].month
    assert month.input_tokens + month.output_tokens == 0  # refunded: nothing charged


async def test_a_trickling_upstream_meets_the_total_deadline(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey, dict[str, str]],
) -> None:
    proxy, _, auth = proxied
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with hostile.healthz_probe(proxy.url) as probe, httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            proxy.url + "/v1/chat/completions",
            headers=auth,
            json={"model": "gpt-trickle", "messages": MESSAGES},
        )
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    assert loop.time() - started < 5  # the body alone would take ~40 s at a byte per 0.2 s
    assert probe.failures == 0 and probe.worst < 1.0


async def test_the_real_credential_never_reaches_the_client(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey, dict[str, str]],
) -> None:
    proxy, key, auth = proxied
    async with httpx.AsyncClient(timeout=30) as http:
        whole = await http.post(
            proxy.url + "/v1/chat/completions", headers=auth, json={"model": "gpt-echo", "messages": MESSAGES}
        )
        streamed = await http.post(
            proxy.url + "/v1/chat/completions",
            headers=auth,
            json={"model": "gpt-echo", "messages": MESSAGES, "stream": True},
        )
    for answer in (whole, streamed):
        assert answer.status_code == 200
        seen = answer.text + "".join(f"{n}: {v}" for n, v in answer.headers.items())
        assert CREDENTIAL not in seen
        assert CREDENTIAL[:20] not in seen
        assert "[redacted]" in answer.text and "[redacted]" in answer.headers["x-echo"]
    assert whole.json()["usage"] == USAGE
    assert "data: [DONE]" in streamed.text
    await proxy.settled()
    month = (await proxy.limiter.read_usage([key.key_id], [], _now()))[key.key_id].month
    assert month.requests == 2 and month.input_tokens == 6 and month.output_tokens == 4


def _now() -> datetime:
    return datetime.now(UTC)


async def test_absurd_reported_usage_is_counted_locally_never_charged_as_zero(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, key, auth = proxied
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(timeout=30) as http:
        for variant in ABSURD_USAGE:
            for stream in (False, True):
                answer = await http.post(
                    proxy.url + "/v1/chat/completions",
                    headers={**auth, "x-usage-variant": variant},
                    json={"model": "gpt-absurd", "messages": MESSAGES, "stream": stream},
                )
                assert answer.status_code == 200, (variant, stream, answer.text)
    await proxy.settled()
    audited = [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == "llmkeys.audit" and '"kind":"request"' in record.getMessage()
    ]
    assert len(audited) == 2 * len(ABSURD_USAGE)  # every request has its audit line
    for line in audited:
        assert line["usage_source"] == "estimate"
        assert line["input_tokens"] > 0 and line["output_tokens"] > 0 and line["cost_micro_usd"] > 0
    assert "reported unusable usage" in caplog.text
    month = (await proxy.limiter.read_usage([key.key_id], [], _now()))[key.key_id].month
    assert month.requests == 2 * len(ABSURD_USAGE)
    assert 0 < month.input_tokens < 1000 and 0 < month.output_tokens < 1000 and month.micro_usd > 0
