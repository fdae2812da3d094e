"""A key over its limit is refused in each family's own error shape, which each official SDK maps to
its rate-limit error: anthropic.RateLimitError, google-genai 429 RESOURCE_EXHAUSTED, boto3
ThrottlingException; the upstreams never see the refused calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import anthropic
import boto3
import botocore.config
import botocore.exceptions
import pytest
from google import genai
from google.genai import errors as genai_errors
from tests import proxy_harness
from tests.fakes import tls

from llmkeys_proxy import config


async def test_rate_limited_key_in_every_family_shape(
    native_fakes: proxy_harness.NativeFakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claude, google, aws = native_fakes.anthropic, native_fakes.gemini, native_fakes.bedrock
    certificate = tls.make_self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))  # the SDKs' own TLS contexts trust it
    providers = proxy_harness.native_providers(native_fakes, id_prefix="p")
    async with proxy_harness.serve_providers(
        providers, ssl_context=certificate.server_context(), limits=config.Limits(requests_per_minute=1)
    ) as proxy:
        connector = aiohttp.TCPConnector(ssl=certificate.client_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            # The one request this minute.
            options = {"base_url": proxy.url, "aiohttp_client": session}
            google_client = genai.Client(api_key=proxy.virtual_key, http_options=options)  # type: ignore[arg-type]
            await google_client.aio.models.generate_content(model="gemini-3.5-flash", contents="x")
            with pytest.raises(genai_errors.ClientError) as gemini_refusal:
                await google_client.aio.models.generate_content(model="gemini-3.5-flash", contents="x")
        assert gemini_refusal.value.code == 429 and gemini_refusal.value.status == "RESOURCE_EXHAUSTED"
        assert gemini_refusal.value.details["error"]["details"][0]["reason"] == "rate_limit_exceeded"

        async with anthropic.AsyncAnthropic(
            api_key=proxy.virtual_key, base_url=proxy.url, max_retries=0
        ) as sdk:
            with pytest.raises(anthropic.RateLimitError) as claude_refusal:
                await sdk.messages.create(
                    model="claude-haiku-4-5", max_tokens=3, messages=[{"role": "user", "content": "x"}]
                )
        assert claude_refusal.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(claude_refusal.value.response.headers["retry-after"]) >= 1

        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", proxy.virtual_key)
        aws_client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=proxy.url,
            verify=str(certificate.cert),
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )
        try:
            with pytest.raises(botocore.exceptions.ClientError) as aws_refusal:
                await asyncio.to_thread(
                    aws_client.converse,
                    modelId="amazon.nova-lite-v1:0",
                    messages=[{"role": "user", "content": []}],
                )
        finally:
            aws_client.close()
        assert aws_refusal.value.response["Error"]["Code"] == "ThrottlingException"
        assert aws_refusal.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429

    assert (len(claude.requests), len(google.requests), len(aws.requests)) == (0, 1, 0)
