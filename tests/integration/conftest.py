"""Fixtures shared by the integration tests: provider fakes speaking the real wire formats, served on
loopback for the length of one test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests import proxy_harness
from tests.fakes import anthropic_server, bedrock_server, gemini_server, loopback, openai_server


@pytest.fixture
async def fake_openai() -> AsyncIterator[tuple[openai_server.FakeOpenAI, str]]:
    """A fake OpenAI upstream and its base URL (handlers cancelled when the client goes away)."""
    upstream = openai_server.FakeOpenAI()
    async with loopback.serve_app(upstream.app(), cancel_handlers=True) as url:
        yield upstream, url


@pytest.fixture
async def native_fakes() -> AsyncIterator[proxy_harness.NativeFakes]:
    """Fake Anthropic, Gemini and Bedrock upstreams on loopback (see `proxy_harness.native_providers`)."""
    claude, google, aws = (
        anthropic_server.FakeAnthropic(),
        gemini_server.FakeGemini(),
        bedrock_server.FakeBedrock(),
    )
    async with (
        loopback.serve_app(claude.app()) as claude_url,
        loopback.serve_app(google.app()) as google_url,
        loopback.serve_app(aws.app()) as aws_url,
    ):
        yield proxy_harness.NativeFakes(claude, google, aws, claude_url, google_url, aws_url)
