"""One Redis URL for the proxy and the operator: LLMKEYS_REDIS_PASSWORD put into LLMKEYS_REDIS_URL
by `limits.redis.url_with_password`, which both `server.build_limiter` and `usage_sync` use."""

from __future__ import annotations

import pytest
from tests import redis_server

from llmkeys_operator import usage_sync
from llmkeys_proxy import server, settings
from llmkeys_proxy.limits import redis as redis_limits


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        ("redis://redis:6379/0", None, "redis://redis:6379/0"),
        ("redis://redis:6379/0", "", "redis://redis:6379/0"),
        ("redis://redis:6379/0", "p@ss/word", "redis://:p%40ss%2Fword@redis:6379/0"),
        ("rediss://user:old@redis.example.com:6380", "new", "rediss://user:new@redis.example.com:6380"),
        # An escaped username stays escaped once (it used to become %2540 in the proxy only).
        ("redis://team%40a:old@redis:6379/0", "pw", "redis://team%40a:pw@redis:6379/0"),
        ("redis://[::1]:6379/2?cluster=true", "pw", "redis://:pw@[::1]:6379/2?cluster=true"),
    ],
)
def test_url_with_password(url: str, password: str | None, expected: str) -> None:
    assert redis_limits.url_with_password(url, password) == expected


async def test_proxy_and_operator_sign_in_as_the_same_user(private_redis: redis_server.RedisServer) -> None:
    """A real redis-server with an ACL user whose name needs escaping in a URL: the proxy's limiter
    and the operator's usage sync both authenticate as it."""
    reply = private_redis.command(b"ACL", b"SETUSER", b"team@a", b"on", b">s3cr3t", b"~*", b"&*", b"+@all")
    assert reply.startswith(b"+OK")
    url = f"redis://team%40a@127.0.0.1:{private_redis.port}/0"
    proxy_settings = settings.ProxySettings(config_dir="-", redis_url=url, redis_password="s3cr3t")
    limiters = [server.build_limiter(proxy_settings), usage_sync.open_limiter(url, "s3cr3t")]
    try:
        assert [await limiter.ping() for limiter in limiters] == [True, True]
        wrong = usage_sync.open_limiter(url, "not-it")
        limiters.append(wrong)
        assert await wrong.ping() is False  # the check can fail: authentication really happens
    finally:
        for limiter in limiters:
            await limiter.close()
