"""Proxy errors: the stable code table and the `ProxyError` every refusal raises.

Raised anywhere in the request pipeline as `ProxyError(code, message)`; rendered once, in the shape
of the caller's API family (`apis.<family>.FAMILY.error_response`): the family follows the route
the client called (OpenAI and Azure routes get OpenAI's shape). Messages never contain keys,
credentials or prompt text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorCode:
    """One row of the documented code table (README "Error codes")."""

    status: int
    type: str  # OpenAI-style error type
    meaning: str


#: Stable error codes. Clients may branch on them; never rename one, only add.
CODES: dict[str, ErrorCode] = {
    "invalid_api_key": ErrorCode(401, "invalid_request_error", "missing, malformed, unknown or revoked key"),
    "token_invalid": ErrorCode(
        401, "invalid_request_error", "a token (JWT) that does not parse or lacks iss, sub, aud, exp or iat"
    ),
    "token_algorithm_not_allowed": ErrorCode(
        401, "invalid_request_error", "the token's alg is not RS256 or ES256 (none, HS256, ...)"
    ),
    "token_issuer_untrusted": ErrorCode(
        401, "invalid_request_error", "the token's issuer is not trusted here"
    ),
    "token_unknown_kid": ErrorCode(
        401, "invalid_request_error", "no key of the issuer's JWKS (refreshed) has the token's kid"
    ),
    "token_signature_invalid": ErrorCode(
        401, "invalid_request_error", "the token's signature does not verify"
    ),
    "token_audience_invalid": ErrorCode(
        401, "invalid_request_error", "the token is not for this gateway's audience"
    ),
    "token_expired": ErrorCode(401, "invalid_request_error", "the token's exp has passed (beyond the skew)"),
    "token_not_yet_valid": ErrorCode(
        401, "invalid_request_error", "the token's nbf or iat lies in the future (beyond the skew)"
    ),
    "token_not_bound": ErrorCode(
        401, "invalid_request_error", "a valid token whose identity (and claims) no VirtualKey binds"
    ),
    "token_issuer_unavailable": ErrorCode(
        503, "server_error", "the issuer's keys cannot be fetched and none are cached; retry"
    ),
    "key_suspended": ErrorCode(403, "permission_error", "the VirtualKey is suspended"),
    "key_expired": ErrorCode(403, "permission_error", "the VirtualKey is past its expiry"),
    "key_inactive": ErrorCode(
        403, "permission_error", "the VirtualKey was unused past its LLMPolicy's inactivity.suspendAfter"
    ),
    "key_policy_violation": ErrorCode(403, "permission_error", "the VirtualKey breaks an LLMPolicy"),
    "key_pending_approval": ErrorCode(
        403, "permission_error", "an LLMPolicy requires approval and the VirtualKey has none (yet)"
    ),
    "key_approval_denied": ErrorCode(403, "permission_error", "an approver denied the VirtualKey"),
    "model_not_allowed": ErrorCode(403, "permission_error", "the key's allowlists do not admit the model"),
    "provider_not_allowed": ErrorCode(
        403, "permission_error", "the model is served only by credentials the key may not use"
    ),
    "model_not_found": ErrorCode(404, "invalid_request_error", "no credential serves the (allowed) model"),
    "endpoint_not_supported": ErrorCode(
        400, "invalid_request_error", "the provider serving the model has no such endpoint"
    ),
    "model_required": ErrorCode(400, "invalid_request_error", "the request names no model"),
    "invalid_json": ErrorCode(400, "invalid_request_error", "the body is not a JSON object"),
    "max_tokens_exceeded": ErrorCode(
        400,
        "invalid_request_error",
        "requested output tokens above the key's (or its credential's) maxTokensPerRequest",
    ),
    "request_too_large": ErrorCode(413, "invalid_request_error", "body above LLMKEYS_MAX_BODY_BYTES"),
    "bad_request": ErrorCode(
        400, "invalid_request_error", "the HTTP parser refused the request (malformed, or a line too long)"
    ),
    "request_timeout": ErrorCode(
        408, "invalid_request_error", "the body did not arrive within LLMKEYS_BODY_TIMEOUT_S"
    ),
    "invalid_max_tokens": ErrorCode(
        400,
        "invalid_request_error",
        "the output cap (times the completions asked for) is above 100,000,000, more than any model produces",
    ),
    "metrics_unauthorized": ErrorCode(
        401, "invalid_request_error", "/metrics without the bearer token LLMKEYS_METRICS_TOKEN"
    ),
    "not_found": ErrorCode(404, "invalid_request_error", "no such route"),
    "rate_limit_exceeded": ErrorCode(429, "rate_limit_error", "requests per minute reached"),
    "token_limit_exceeded": ErrorCode(429, "rate_limit_error", "tokens per minute/day/month reached"),
    "budget_exceeded": ErrorCode(429, "insufficient_quota", "the key's monthly spend cap reached"),
    "pool_budget_exceeded": ErrorCode(429, "insufficient_quota", "a shared (team) budget is exhausted"),
    "provider_limit_exceeded": ErrorCode(
        429, "rate_limit_error", "the provider credential's shared (account-wide) limit reached"
    ),
    "limiter_unavailable": ErrorCode(
        503, "server_error", "the limiter (Redis) is unreachable; policy Reject"
    ),
    "config_not_loaded": ErrorCode(503, "server_error", "the proxy has not loaded its config yet"),
    "upstream_timeout": ErrorCode(504, "server_error", "the provider did not answer in time"),
    "upstream_unreachable": ErrorCode(502, "server_error", "the provider could not be connected to"),
    "upstream_error": ErrorCode(502, "server_error", "the provider answered 5xx (status passed through)"),
    "upstream_response_too_large": ErrorCode(
        502, "server_error", "the provider's decompressed answer is above LLMKEYS_MAX_UPSTREAM_RESPONSE_BYTES"
    ),
    "upstream_auth_failed": ErrorCode(
        502, "server_error", "the provider refused the gateway's real credential (401/403 upstream)"
    ),
    "internal_error": ErrorCode(500, "server_error", "a bug in the proxy; see its logs"),
}


class ProxyError(Exception):
    """A request the proxy refuses or cannot serve; carries a stable code from `CODES`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        row = CODES[code]
        self.code = code
        self.message = message
        self.status = status if status is not None else row.status
        self.type = row.type
        self.param = param
        self.headers = headers
