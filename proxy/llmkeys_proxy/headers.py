"""Header policy of the proxy: what goes upstream, what comes back, the request id, and the
x-ratelimit-* / Retry-After headers that describe the key's own limits.

Used by `pipeline` (forwarding and refusals) and `app` (request ids on its own answers). The drop
lists are the security boundary for headers: the client's credentials and account selectors never
reach the provider, and facts about the real, shared account never reach the client.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from llmkeys_proxy import auth
from llmkeys_proxy.limits import base as limits_base

# Never forwarded upstream: hop-by-hop headers (RFC 9110 7.6.1), what aiohttp sets itself, the
# client's credentials, account selectors meaningless for the real account, client addresses.
_DROP_REQUEST_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "expect",
        "accept-encoding",
        "cookie",
        "openai-organization",
        "openai-project",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-request-id",
        *auth.CREDENTIAL_HEADERS,
    }
)
# Never passed back to the client: hop-by-hop, framing the proxy redoes, and facts about the real
# account (organisation ids, the shared account's rate limits: the key's own limits replace them).
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",
        "date",
        "server",
        "openai-organization",
        "openai-project",
        "anthropic-organization-id",
        "x-request-id",
        "retry-after",
        "retry-after-ms",
    }
)
_DROP_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def request_id_of(headers: CIMultiDictProxy[str]) -> str:
    """The caller's x-request-id when it is a sane token, else a fresh random id."""
    given = headers.get("x-request-id")
    if given and len(given) <= 128 and given.isascii() and given.isprintable() and " " not in given:
        return given
    return os.urandom(12).hex()


def _go_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): 17ms, 1.5s, 6m0s, 1h2m3s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole_minutes, secs = divmod(seconds, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if whole_minutes < 1:
        return secs_text
    hours, minutes = divmod(int(whole_minutes), 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m" + secs_text


def rate_limit_headers(rate: limits_base.RateState) -> dict[str, str]:
    """OpenAI-style x-ratelimit-* headers for the key's own limits (absent where it has none)."""
    headers: dict[str, str] = {}
    if rate.limit_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(rate.limit_requests)
    if rate.remaining_requests is not None:
        headers["x-ratelimit-remaining-requests"] = str(max(0, rate.remaining_requests))
    if rate.reset_requests_s is not None:
        headers["x-ratelimit-reset-requests"] = _go_duration(rate.reset_requests_s)
    if rate.limit_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(rate.limit_tokens)
    if rate.remaining_tokens is not None:
        headers["x-ratelimit-remaining-tokens"] = str(max(0, rate.remaining_tokens))
    if rate.reset_tokens_s is not None:
        headers["x-ratelimit-reset-tokens"] = _go_duration(rate.reset_tokens_s)
    return headers


def deny_headers(decision: limits_base.Decision, rate: dict[str, str]) -> dict[str, str]:
    headers = dict(rate)
    if decision.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(decision.retry_after_s * 1000)))
    if decision.exhausted:
        headers["x-should-retry"] = "false"
    return headers


def forward_headers(headers: CIMultiDictProxy[str], request_id: str) -> dict[str, str]:
    """The client headers that may go upstream (see `_DROP_REQUEST_HEADERS`), plus our request id
    and the content type of what the proxy verified the body to be (curl's default form type would
    make a provider refuse it)."""
    kept = {name: value for name, value in headers.items() if name.lower() not in _DROP_REQUEST_HEADERS}
    kept["Content-Type"] = "application/json"
    kept["X-Request-Id"] = request_id
    return kept


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Upstream response headers the client may see; the upstream's request id as x-upstream-request-id."""
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _DROP_RESPONSE_HEADERS or lower.startswith(_DROP_RESPONSE_PREFIXES):
            if lower == "x-request-id":
                kept["x-upstream-request-id"] = value
            continue
        kept.add(name, value)
    return kept
