"""A workload that only has the key Secret's environment (envFrom) reaches Anthropic, Gemini and Bedrock
through the proxy with the SDKs' default constructors: the env entries the operator writes are the
ones these SDKs read."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import boto3
import botocore.config
import pytest
from google import genai
from tests import proxy_harness
from tests.fakes import bedrock_server, gemini_server, tls

from llmkeys_operator import keysecret


async def test_default_sdk_clients_from_the_key_secret_env(
    native_fakes: proxy_harness.NativeFakes,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claude, google, aws = native_fakes.anthropic, native_fakes.gemini, native_fakes.bedrock
    providers = proxy_harness.native_providers(native_fakes)
    certificate = tls.make_self_signed(tmp_path)
    async with proxy_harness.serve_providers(providers, ssl_context=certificate.server_context()) as proxy:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "GOOGLE_API_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in keysecret.env_entries(proxy.virtual_key, proxy.url).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(certificate.cert))
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))  # httpx (anthropic) trusts it

        async with anthropic.AsyncAnthropic(max_retries=0) as claude_client:
            message = await claude_client.messages.create(
                model="claude-haiku-4-5", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
            )
        assert message.usage.output_tokens == 3

        connector = aiohttp.TCPConnector(ssl=certificate.client_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            google_client = genai.Client(http_options={"aiohttp_client": session})  # type: ignore[arg-type]
            answer = await google_client.aio.models.generate_content(model="gemini-3.5-flash", contents="hi")
        assert answer.text == "".join(gemini_server.REPLY_PIECES)

        aws_client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )
        try:
            out = await asyncio.to_thread(
                aws_client.converse,
                modelId="amazon.nova-lite-v1:0",
                messages=[{"role": "user", "content": [{"text": "hi"}]}],
            )
        finally:
            aws_client.close()
        assert out["usage"]["outputTokens"] == len(bedrock_server.REPLY_PIECES)
        month = await proxy.month_usage()

    assert month.requests == 3
    for fake in (claude, google, aws):
        assert len(fake.requests) == 1
        proxy_harness.assert_never_sent(fake.requests, proxy)
