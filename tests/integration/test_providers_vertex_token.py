"""Vertex AI token minting (llmkeys_proxy.providers.google_oauth) against a fake Google token endpoint
that verifies the RS256 assertion like Google does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from tests.fakes import google_token_server, loopback

from llmkeys_proxy.providers import google_oauth


@pytest.fixture
async def token_endpoint() -> AsyncIterator[google_token_server.FakeGoogleToken]:
    fake = google_token_server.FakeGoogleToken()
    async with loopback.serve_app(fake.app()) as url:
        fake.token_uri = f"{url}/token"
        yield fake


def _account(fake: google_token_server.FakeGoogleToken) -> google_token_server.TestServiceAccount:
    account = google_token_server.make_service_account(fake.token_uri)
    fake.accounts[account.client_email] = account.public_key
    return account


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_token_minted_cached_and_refreshed_by_expires_in(
    token_endpoint: google_token_server.FakeGoogleToken,
) -> None:
    account = _account(token_endpoint)
    token_endpoint.expires_in = 3599
    clock = Clock()
    token_endpoint.clock = clock
    source = google_oauth.AccessTokenSource(
        google_oauth.ServiceAccount.from_json(account.key_json), clock=clock
    )
    async with aiohttp.ClientSession() as session:
        first = await asyncio.gather(*(source.token(session) for _ in range(10)))
        assert len(set(first)) == 1 and token_endpoint.issued == [first[0]]
        clock.now += 3599 - google_oauth.REFRESH_MARGIN_S - 1
        assert await source.token(session) == first[0]
        clock.now += 2  # inside the refresh margin
        second = await source.token(session)
    assert second != first[0] and token_endpoint.issued == [first[0], second]
    claims = token_endpoint.assertions[0]
    assert claims["iss"] == account.client_email
    assert claims["aud"] == token_endpoint.token_uri
    assert claims["scope"] == google_oauth.CLOUD_PLATFORM_SCOPE
    assert claims["exp"] - claims["iat"] == 3600


async def test_short_lived_tokens_refresh_before_expiry(
    token_endpoint: google_token_server.FakeGoogleToken,
) -> None:
    account = _account(token_endpoint)
    token_endpoint.expires_in = 60  # shorter than the margin: refresh at 90% of the lifetime
    clock = Clock()
    token_endpoint.clock = clock
    source = google_oauth.AccessTokenSource(
        google_oauth.ServiceAccount.from_json(account.key_json), clock=clock
    )
    async with aiohttp.ClientSession() as session:
        token = await source.token(session)
        clock.now += 53
        assert await source.token(session) == token
        clock.now += 2
        assert await source.token(session) != token
        source.invalidate()
        await source.token(session)
    assert len(token_endpoint.issued) == 3


async def test_refused_assertion_raises_without_key_material(
    token_endpoint: google_token_server.FakeGoogleToken,
) -> None:
    account = _account(token_endpoint)
    impostor = google_token_server.make_service_account(token_endpoint.token_uri, email=account.client_email)
    source = google_oauth.AccessTokenSource(google_oauth.ServiceAccount.from_json(impostor.key_json))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(google_oauth.TokenError) as err:
            await source.token(session)
    message = str(err.value)
    assert "HTTP 400 invalid_grant" in message
    assert "PRIVATE KEY" not in message and json.loads(impostor.key_json)["private_key_id"] not in message
    assert token_endpoint.issued == []


async def test_unreachable_token_endpoint() -> None:
    account = google_token_server.make_service_account("http://127.0.0.1:9/token")
    source = google_oauth.AccessTokenSource(
        google_oauth.ServiceAccount.from_json(account.key_json), timeout_s=5
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(google_oauth.TokenError, match="unreachable"):
            await source.token(session)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not JSON"),
        ('{"type": "authorized_user", "client_id": "x"}', "not a service-account key"),
        ('{"type": "service_account", "client_email": "a@b"}', "lacks"),
        ('{"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n"}', None),
    ],
)
def test_service_account_parsing(text: str, match: str | None) -> None:
    if match is None:
        account = google_oauth.ServiceAccount.from_json(text)
        assert account.token_uri == google_oauth.DEFAULT_TOKEN_URI
        assert "PRIVATE" not in repr(account)
        with pytest.raises(google_oauth.TokenError, match="not a readable PEM key"):
            google_oauth.build_assertion(account)
        return
    with pytest.raises(google_oauth.TokenError, match=match):
        google_oauth.ServiceAccount.from_json(text)
