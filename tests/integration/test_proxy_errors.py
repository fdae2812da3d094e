"""Every refusal and failure of the proxy: HTTP status, stable `code` and message in OpenAI's error shape,
as the official SDK sees them (exception class, code) and on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
from tests import proxy_harness, redis_server
from tests.fakes import loopback, openai_server

from llmkeys_proxy import config, settings, sources
from llmkeys_proxy.limits import redis as redis_limits

MESSAGES = [{"role": "user", "content": "hello"}]


async def post(
    proxy: proxy_harness.RunningProxy,
    key: str | None,
    body: Any,
    path: str = "/v1/chat/completions",
    **kwargs: Any,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))
    async with httpx.AsyncClient(timeout=30) as http:
        if isinstance(body, bytes):
            return await http.post(proxy.url + path, content=body, headers=headers, **kwargs)
        return await http.post(proxy.url + path, json=body, headers=headers, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    assert response.headers["x-request-id"]
    return error


async def test_bad_keys_get_one_indistinguishable_401(
    fake_openai: tuple[openai_server.FakeOpenAI, str],
) -> None:
    upstream, url = fake_openai
    good = proxy_harness.issue_key()
    revoked_secret = proxy_harness.issue_key().key.rsplit("-", 1)[1]
    cfg = proxy_harness.proxy_config([good], [proxy_harness.openai_provider(url, upstream.api_key)])
    wrong_secret = good.key.rsplit("-", 1)[0] + "-" + revoked_secret
    unknown_id = "sk-llmk-" + "z" * 12 + "-" + revoked_secret
    async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
        answers = [
            await post(proxy, presented, {"model": "gpt-4o-mini", "messages": MESSAGES})
            for presented in (None, "not-a-key", wrong_secret, unknown_id, good.key + "x")
        ]
        async with openai.AsyncOpenAI(
            api_key=wrong_secret, base_url=proxy.url + "/v1", max_retries=0
        ) as client:
            with pytest.raises(openai.AuthenticationError) as raised:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.code == "invalid_api_key"
    bodies = [error_of(a) for a in answers]
    assert {a.status_code for a in answers} == {401}
    # Same message whatever was wrong: no hint which part of the key failed.
    assert len({(b["code"], b["message"]) for b in bodies}) == 1 and bodies[0]["code"] == "invalid_api_key"
    assert not upstream.requests


@pytest.mark.parametrize(
    ("fields", "code", "message_part"),
    [
        ({"suspended": True}, "key_suspended", "suspended"),
        ({"expires_at": datetime(2020, 1, 1, tzinfo=UTC)}, "key_expired", "expired at 2020-01-01T00:00:00Z"),
        (
            {"policy_violation": "LLMPolicy prod requires owner field costCenter"},
            "key_policy_violation",
            "costCenter",
        ),
    ],
)
async def test_key_states_each_with_their_own_403(
    fake_openai: tuple[openai_server.FakeOpenAI, str], fields: dict[str, Any], code: str, message_part: str
) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key(**fields)
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    async with (
        proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy,
        openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client,
    ):
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.status_code == 403 and raised.value.code == code
    assert message_part in raised.value.message
    assert not upstream.requests


async def test_expiry_is_checked_at_request_time(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key(expires_at=datetime.now(UTC) + timedelta(seconds=1))
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        assert (await post(proxy, key.key, body)).status_code == 200
        # The config never changes: the proxy's own clock ends the key.
        deadline = asyncio.get_running_loop().time() + 30
        while (answer := await post(proxy, key.key, body)).status_code == 200:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
    assert answer.status_code == 403 and error_of(answer)["code"] == "key_expired"


async def test_routing_refusals(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key(model_allowlists=(("gpt-*", "o3"),), denied_models=("gpt-4o",))
    restricted = config.ProviderEntry(
        id="llmkeys/restricted",
        provider="openai",
        base_url=url + "/v1",
        api_key="y" * 20,
        models=(config.ModelRoute(name="o3"),),
    )
    cfg = proxy_harness.proxy_config(
        [key], [proxy_harness.openai_provider(url, upstream.api_key), restricted]
    )
    async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
        cases = {
            "claude-3": (403, "model_not_allowed"),  # outside the allowlist
            "gpt-4o": (403, "model_not_allowed"),  # denied wins over allowed
            "o3": (403, "provider_not_allowed"),  # only a credential the key may not use serves it
        }
        for model, (status, code) in cases.items():
            answer = await post(proxy, key.key, {"model": model, "messages": MESSAGES})
            assert (answer.status_code, error_of(answer)["code"]) == (status, code), model
            assert model in error_of(answer)["message"]
        # Allowed by the key, served by no credential at all.
        unserved = proxy_harness.issue_key(model_allowlists=(("*",),))
        proxy.state.source.set(proxy_harness.proxy_config([unserved], [restricted]))  # type: ignore[attr-defined]
        answer = await post(proxy, unserved.key, {"model": "mystery-1", "messages": MESSAGES})
        assert answer.status_code == 404 and error_of(answer)["code"] == "model_not_found"
        missing = await post(proxy, unserved.key, {"messages": MESSAGES})
        assert missing.status_code == 400 and error_of(missing)["code"] == "model_required"
    assert not upstream.requests


async def test_max_tokens_above_the_key_limit(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key(limits=config.Limits(max_tokens_per_request=256))
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    async with (
        proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy,
        openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client,
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1000)
        with pytest.raises(openai.BadRequestError):
            await client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=257)
        ok = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=256
        )
        uncapped = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.code == "max_tokens_exceeded" and "at most 256" in raised.value.message
    assert ok.choices[0].message.content and uncapped.choices[0].message.content
    assert len(upstream.requests) == 2
    # A request that names no cap gets the key's, so the limit holds for every client.
    assert upstream.requests[1].json()["max_completion_tokens"] == 256


async def test_malformed_json_and_body_too_large(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key()
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    tight = settings.ProxySettings(config_dir="/nonexistent", max_body_bytes=4096)
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), proxy_settings=tight) as proxy:
        broken = await post(
            proxy,
            key.key,
            b'{"model": "gpt-4o-mini", "messages": [',
            headers={"Content-Type": "application/json"},
        )
        not_object = await post(proxy, key.key, [1, 2])
        big = await post(
            proxy, key.key, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
        )

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        async with httpx.AsyncClient() as http:
            streamed_big = await http.post(
                proxy.url + "/v1/chat/completions",
                content=chunked(),
                headers={"Authorization": f"Bearer {key.key}"},
            )
    assert broken.status_code == 400 and error_of(broken)["code"] == "invalid_json"
    assert "messages" not in error_of(broken)["message"]  # the body is never echoed
    assert not_object.status_code == 400 and error_of(not_object)["code"] == "invalid_json"
    for answer in (big, streamed_big):
        assert answer.status_code == 413 and error_of(answer)["code"] == "request_too_large"
        assert "4096" in error_of(answer)["message"]
    assert not upstream.requests


async def test_upstream_failures(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key()
    wrong_credential = config.ProviderEntry(
        id="llmkeys/stale",
        provider="openai",
        base_url=url + "/v1",
        api_key="sk-proj-STALEcredential987654321",
        models=(config.ModelRoute(name="stale-*"),),
    )
    dead = config.ProviderEntry(
        id="llmkeys/dead",
        provider="openai-compatible",
        base_url=loopback.closed_port_url() + "/v1",
        api_key="sk-dead-credential-123456789",
        models=(config.ModelRoute(name="dead-*"),),
    )
    key = proxy_harness.issue_key(providers=("llmkeys/openai", "llmkeys/stale", "llmkeys/dead"))
    cfg = proxy_harness.proxy_config(
        [key], [proxy_harness.openai_provider(url, upstream.api_key), wrong_credential, dead]
    )
    fast = settings.ProxySettings(config_dir="/nonexistent", upstream_timeout_s=0.5)
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), proxy_settings=fast) as proxy:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        timeout = await post(proxy, key.key, body, headers={"x-fake-delay-s": "5"})
        server_error = await post(proxy, key.key, body, headers={"x-fake-status": "503"})
        client_error = await post(proxy, key.key, body, headers={"x-fake-status": "422"})
        refused_credential = await post(proxy, key.key, {"model": "stale-model", "messages": MESSAGES})
        unreachable = await post(proxy, key.key, {"model": "dead-model", "messages": MESSAGES})
        async with openai.AsyncOpenAI(api_key=key.key, base_url=proxy.url + "/v1", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as raised:
                await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    extra_headers={"x-fake-status": "500"},
                )
        await proxy.settled()
        usage = await proxy.limiter.read_usage([key.key_id], [], datetime.now(UTC))
    assert timeout.status_code == 504 and error_of(timeout)["code"] == "upstream_timeout"
    assert server_error.status_code == 503 and error_of(server_error)["code"] == "upstream_error"
    assert "503" in error_of(server_error)["message"]
    # A 4xx about the request itself: the provider's own answer, passed through.
    assert client_error.status_code == 422 and client_error.json()["error"]["code"] == "fake_failure"
    assert (
        refused_credential.status_code == 502
        and error_of(refused_credential)["code"] == "upstream_auth_failed"
    )
    # OpenAI's 401 quotes the end of the refused key; the client must not see any of it.
    assert "4321" not in refused_credential.text and "STALE" not in refused_credential.text
    assert unreachable.status_code == 502 and error_of(unreachable)["code"] == "upstream_unreachable"
    assert raised.value.status_code == 500 and raised.value.code == "upstream_error"
    # Failed calls are refunded: nothing was used.
    assert usage[key.key_id].month.requests == 0 and usage[key.key_id].month.input_tokens == 0


async def test_limits_deny_with_retry_headers(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> None:
    upstream, url = fake_openai
    limited = proxy_harness.issue_key(limits=config.Limits(requests_per_minute=1))
    broke = proxy_harness.issue_key(name="broke", limits=config.Limits(spend_per_month_micro_usd=1))
    cfg = proxy_harness.proxy_config([limited, broke], [proxy_harness.openai_provider(url, upstream.api_key)])
    async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        first = await post(proxy, limited.key, body)
        second = await post(proxy, limited.key, body)
        over_budget = await post(proxy, broke.key, body)
        async with openai.AsyncOpenAI(
            api_key=limited.key, base_url=proxy.url + "/v1", max_retries=0
        ) as client:
            with pytest.raises(openai.RateLimitError) as raised:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.status_code == 429 and error_of(second)["code"] == "rate_limit_exceeded"
    assert 1 <= int(second.headers["Retry-After"]) <= 60 and int(second.headers["retry-after-ms"]) > 0
    assert second.headers["x-ratelimit-limit-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in second.headers
    assert over_budget.status_code == 429 and error_of(over_budget)["code"] == "budget_exceeded"
    assert over_budget.headers["x-should-retry"] == "false"
    assert raised.value.code == "rate_limit_exceeded"
    assert len(upstream.requests) == 1


async def test_limiter_unavailable_reject_or_allow(fake_openai: tuple[openai_server.FakeOpenAI, str]) -> None:
    upstream, url = fake_openai
    strict = proxy_harness.issue_key(name="strict")
    lenient = proxy_harness.issue_key(name="lenient", on_limiter_unavailable="Allow")
    cfg = proxy_harness.proxy_config(
        [strict, lenient], [proxy_harness.openai_provider(url, upstream.api_key)]
    )
    unreachable_redis = redis_limits.RedisLimiter(
        loopback.closed_port_url().replace("http://", "redis://"), operation_timeout_s=1.0
    )
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), limiter=unreachable_redis) as proxy:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        rejected = await post(proxy, strict.key, body)
        allowed = await post(proxy, lenient.key, body)
        async with httpx.AsyncClient() as http:
            ready = await http.get(proxy.url + "/readyz")
            metrics_text = (await http.get(proxy.url + "/metrics")).text
    assert rejected.status_code == 503 and error_of(rejected)["code"] == "limiter_unavailable"
    assert allowed.status_code == 200 and allowed.json()["choices"]
    assert ready.status_code == 503 and ready.json()["limiter"] == "unreachable"
    assert 'llmkeys_limiter_unavailable_total{mode="Allow"} 1.0' in metrics_text
    assert 'llmkeys_limiter_unavailable_total{mode="Reject"} 1.0' in metrics_text
    assert len(upstream.requests) == 1


async def test_unknown_route_and_no_config_yet(tmp_path: Any) -> None:
    empty = sources.DirectorySource(tmp_path, interval_s=0.05)
    async with proxy_harness.run_proxy(empty) as proxy:
        key = proxy_harness.issue_key()
        not_loaded = await post(proxy, key.key, {"model": "gpt-4o-mini", "messages": MESSAGES})
        unknown = await post(proxy, key.key, {}, path="/v1/nothing-here")
        async with httpx.AsyncClient() as http:
            ready = await http.get(proxy.url + "/readyz")
    assert not_loaded.status_code == 503 and error_of(not_loaded)["code"] == "config_not_loaded"
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "not_found"
    assert ready.status_code == 503 and not ready.json()["config"]["loaded"]
    assert "providers.json" in ready.json()["config"]["error"]


async def test_allow_policy_counts_usage_once_redis_is_back(
    fake_openai: tuple[openai_server.FakeOpenAI, str], private_redis: redis_server.RedisServer
) -> None:
    upstream, url = fake_openai
    lenient = proxy_harness.issue_key(name="lenient", on_limiter_unavailable="Allow")
    cfg = proxy_harness.proxy_config([lenient], [proxy_harness.openai_provider(url, upstream.api_key)])
    limiter = redis_limits.RedisLimiter(private_redis.url, operation_timeout_s=0.5)
    async with proxy_harness.run_proxy(sources.StaticSource(cfg), limiter=limiter) as proxy:
        private_redis.kill()
        served = await post(proxy, lenient.key, {"model": "gpt-4o-mini", "messages": MESSAGES})
        assert served.status_code == 200
        await proxy.settled()
        private_redis.restart()
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # the limiter replays what it could not settle once Redis answers again
            await limiter.ping()
            month = (await limiter.read_usage([lenient.key_id], [], datetime.now(UTC)))[lenient.key_id].month
            if month.requests:
                break
            assert asyncio.get_running_loop().time() < deadline, "usage served under Allow was never counted"
            await asyncio.sleep(0.05)
    assert (month.requests, month.input_tokens) == (1, 1 + 7)
