"""Hostile clients against the proxy's listener: slow heads, slow bodies, silent connections, oversized
headers and URLs carrying keys, garbage the HTTP parser refuses, /metrics without its token.

Each test runs a real proxy on loopback, attacks it, and checks that the attack is bounded (connections
closed by the deadlines) while another client's /healthz stays fast, and that nothing secret is
logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tests import hostile, proxy_harness
from tests.fakes import loopback, openai_server

from llmkeys_proxy import config, server, settings, sources
from llmkeys_proxy.limits import base as limits_base

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey]]:
    upstream = openai_server.FakeOpenAI()
    key = proxy_harness.issue_key()
    tight = settings.ProxySettings(
        config_dir="/nonexistent",
        header_timeout_s=1.0,
        idle_timeout_s=2.0,
        body_timeout_s=1.0,
        metrics_token="metrics-token-for-the-scraper",
    )
    async with loopback.serve_app(upstream.app()) as url:
        cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
        async with proxy_harness.run_proxy(sources.StaticSource(cfg), proxy_settings=tight) as proxy:
            yield proxy, key


async def _trickle(writer: asyncio.StreamWriter, byte: bytes, interval_s: float) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while not writer.is_closing():
            writer.write(byte)
            await writer.drain()
            await asyncio.sleep(interval_s)


async def test_slow_head_slow_body_and_silent_connections_are_closed_by_their_deadlines(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey],
) -> None:
    proxy, key = proxied
    per_kind = 100
    readers: list[asyncio.StreamReader] = []
    writers: list[asyncio.StreamWriter] = []
    tricklers: list[asyncio.Task[None]] = []
    async with hostile.healthz_probe(proxy.url) as probe:
        for _ in range(per_kind):  # silent: connect, send nothing
            reader, writer = await hostile.open_raw(proxy.url)
            readers.append(reader)
            writers.append(writer)
        for _ in range(per_kind):  # slow head: a header byte every 0.2 s, never the blank line
            reader, writer = await hostile.open_raw(proxy.url)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            readers.append(reader)
            writers.append(writer)
            tricklers.append(asyncio.create_task(_trickle(writer, b"a", 0.2)))
        for _ in range(per_kind):  # slow body: a whole valid head, then a body byte every 0.2 s
            reader, writer = await hostile.open_raw(proxy.url)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {key.key}\r\nContent-Length: 100000\r\n\r\n".encode()
            )
            readers.append(reader)
            writers.append(writer)
            tricklers.append(asyncio.create_task(_trickle(writer, b" ", 0.2)))
        # Deadlines of 1-2 s: everything is closed well within 6 s (aiohttp alone: an hour).
        closed = await asyncio.gather(*(hostile.closed_by_peer(reader, 6.0) for reader in readers))
    for task in tricklers:
        task.cancel()
    for writer in writers:
        writer.close()
    held = [kind for kind, done in zip(_kinds(per_kind), closed, strict=True) if not done]
    assert held == [], f"{len(held)} connections still open: {sorted(set(held))}"
    assert probe.failures == 0
    assert probe.worst < 1.0, f"/healthz took {probe.worst:.2f} s during the attack"


def _kinds(per_kind: int) -> list[str]:
    return ["silent"] * per_kind + ["slow head"] * per_kind + ["slow body"] * per_kind


async def test_a_slow_body_gets_request_timeout_in_json(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey],
) -> None:
    proxy, key = proxied
    reader, writer = await hostile.open_raw(proxy.url)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key.key}\r\nContent-Length: 1000\r\n\r\n{{".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in body


async def test_oversized_headers_and_urls_carrying_a_key_are_refused_in_json_and_never_logged(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, key = proxied
    secret = key.key.rsplit("-", 1)[1]
    caplog.set_level(logging.DEBUG)
    padding = "A" * 9000
    async with httpx.AsyncClient(timeout=10) as http:
        answers = [
            await http.post(
                proxy.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key.key}{padding}"},
                json={"model": "gpt-4o-mini", "messages": MESSAGES},
            ),
            await http.post(
                proxy.url + "/v1beta/models/gemini-2.0-flash:generateContent",
                headers={"x-goog-api-key": key.key + padding},
                json={},
            ),
            await http.post(
                proxy.url + f"/v1beta/models/gemini-2.0-flash:generateContent?key={key.key}&pad={padding}",
                json={},
            ),
        ]
    for answer in answers:
        assert answer.status_code in (400, 431), answer.text
        assert answer.json()["error"]["code"] == "bad_request"
        assert secret[:8] not in answer.text
        assert "aiohttp" not in answer.headers.get("Server", "")
    logged = caplog.text + "".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert "refused a malformed request" in logged
    # Not the key, not a prefix of its secret (a truncated header shows the start only).
    assert secret[:8] not in logged
    assert key.key[: len("sk-llmk-") + 12] + "-" + secret[:4] not in logged


async def test_parser_errors_are_json_and_never_echo_the_input_or_name_the_server(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey],
) -> None:
    proxy, _ = proxied
    for garbage in (b"GET /\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01 not http at all\r\n\r\n"):
        reader, writer = await hostile.open_raw(proxy.url)
        writer.write(garbage)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", answer
        assert b"application/json" in head
        assert b"aiohttp" not in head and b"Python" not in head
        assert b'"code":"bad_request"' in body
        assert b"not http" not in body and b"\x00" not in body
    async with httpx.AsyncClient() as http:
        normal = await http.get(proxy.url + "/healthz")
    assert normal.headers["Server"] == "llmkeys"


async def test_metrics_need_the_configured_token(
    proxied: tuple[proxy_harness.RunningProxy, proxy_harness.IssuedKey],
) -> None:
    proxy, _ = proxied
    async with httpx.AsyncClient() as http:
        anonymous = await http.get(proxy.url + "/metrics")
        wrong = await http.get(proxy.url + "/metrics", headers={"Authorization": "Bearer guess"})
        scraper = await http.get(
            proxy.url + "/metrics", headers={"Authorization": "Bearer metrics-token-for-the-scraper"}
        )
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "metrics_unauthorized"
        assert "llmkeys_key_info" not in refused.text
    assert scraper.status_code == 200
    assert "llmkeys_key_info" in scraper.text


def test_reservation_ttl_is_a_setting_bounded_by_the_upstream_deadline() -> None:
    with pytest.raises(ValueError, match="LLMKEYS_RESERVATION_TTL_S"):
        settings.ProxySettings.from_env(
            {"LLMKEYS_CONFIG_DIR": "/x", "LLMKEYS_RESERVATION_TTL_S": "300"}
        )  # below the default 600 s non-streamed deadline
    settings.ProxySettings.from_env(
        {
            "LLMKEYS_CONFIG_DIR": "/x",
            "LLMKEYS_RESERVATION_TTL_S": "120",
            "LLMKEYS_UPSTREAM_RESPONSE_TIMEOUT_S": "100",
        }
    )


async def test_a_dead_proxys_reservation_frees_the_budget_after_the_configured_ttl() -> None:
    proxy_settings = settings.ProxySettings(
        config_dir="/x", reservation_ttl_s=120, upstream_response_timeout_s=100
    )
    limiter = server.build_limiter(proxy_settings)
    limits = config.Limits(tokens_per_day=1000)
    start = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)

    def ask(at: datetime) -> limits_base.ReserveRequest:
        return limits_base.ReserveRequest(
            key_id="k" * 12, limits=limits, pools=(), estimated_tokens=900, estimated_micro_usd=0, now=at
        )

    try:
        held = await limiter.reserve(ask(start))  # then the proxy holding it dies: never settled
        assert held.allowed
        assert not (await limiter.reserve(ask(start + timedelta(seconds=110)))).allowed
        assert (await limiter.reserve(ask(start + timedelta(seconds=125)))).allowed
    finally:
        await limiter.close()
