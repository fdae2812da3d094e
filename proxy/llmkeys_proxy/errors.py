"""Proxy errors: the stable code table and the error body shape each API family's SDK understands.

Raised anywhere in the request pipeline as `ProxyError(code, message)`; rendered once by the route
handler with `error_response(family, error)`. The family follows the route the client called
(OpenAI and Azure routes get OpenAI's shape). A new family registers its shape in `_RENDERERS`.
Messages never contain keys, credentials or prompt text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import orjson
from aiohttp import web

ApiFamily = Literal["openai", "anthropic", "gemini", "bedrock"]


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorCode:
    """One row of the documented code table (README "Error codes")."""

    status: int
    type: str  # OpenAI-style error type
    meaning: str


#: Stable error codes. Clients may branch on them; never rename one, only add.
CODES: dict[str, ErrorCode] = {
    "invalid_api_key": ErrorCode(401, "invalid_request_error", "missing, malformed, unknown or revoked key"),
    "key_suspended": ErrorCode(403, "permission_error", "the VirtualKey is suspended"),
    "key_expired": ErrorCode(403, "permission_error", "the VirtualKey is past its expiry"),
    "key_inactive": ErrorCode(
        403, "permission_error", "the VirtualKey was unused past its LLMPolicy's inactivity.suspendAfter"
    ),
    "key_policy_violation": ErrorCode(403, "permission_error", "the VirtualKey breaks an LLMPolicy"),
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


def _openai_body(error: ProxyError) -> bytes:
    return orjson.dumps(
        {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    )


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _anthropic_body(error: ProxyError) -> bytes:
    kind = _ANTHROPIC_TYPES.get(error.status, "api_error")
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": error.message, "code": error.code}}
    )


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _gemini_body(error: ProxyError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "code": error.status,
                "message": error.message,
                "status": _GOOGLE_STATUS.get(error.status, "INTERNAL"),
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": error.code,
                        "domain": "llmkeys.io",
                    }
                ],
            }
        }
    )


def _bedrock_body(error: ProxyError) -> bytes:
    # botocore reads the exception name from the x-amzn-ErrorType header (set below) and `message`.
    return orjson.dumps({"message": error.message, "code": error.code})


_BEDROCK_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    413: "ValidationException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
}

_RENDERERS: dict[str, Callable[[ProxyError], bytes]] = {
    "openai": _openai_body,
    "anthropic": _anthropic_body,
    "gemini": _gemini_body,
    "bedrock": _bedrock_body,
}


def error_body(family: ApiFamily, error: ProxyError) -> bytes:
    """The JSON body for `error` in the shape of `family`."""
    return _RENDERERS[family](error)


def error_response(family: ApiFamily, error: ProxyError) -> web.Response:
    """A complete JSON error response (status, body and the error's extra headers)."""
    response = web.Response(
        status=error.status, body=error_body(family, error), content_type="application/json"
    )
    if error.headers:
        response.headers.update(error.headers)
    if family == "bedrock":
        response.headers["x-amzn-ErrorType"] = _BEDROCK_TYPES.get(error.status, "InternalServerException")
    return response
