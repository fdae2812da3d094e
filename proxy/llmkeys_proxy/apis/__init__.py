"""The wire formats the proxy serves, one module per family, and their registry.

`FORMATS` maps each `ApiFormat` to its `WireFormat`, `FAMILIES` each family name to its
`WireFamily`, and `ROUTES` holds every family's route rows (mounted by `routes`). Adding a format
is one module here (a `WireFormat` subclass, its family, its `ROUTES`) plus its line below. The
dispatch functions are for callers that hold a format *name* (the mock provider, tests); the
pipeline holds an `Endpoint` and calls its `wire` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from llmkeys_proxy import errors, tokens
from llmkeys_proxy.apis import anthropic, base, bedrock, gemini, openai

_MODULES = (openai, anthropic, gemini, bedrock)

FORMATS: dict[base.ApiFormat, base.WireFormat] = {wire.name: wire for m in _MODULES for wire in m.FORMATS}
FAMILIES: dict[base.ApiFamily, base.WireFamily] = {m.FAMILY.name: m.FAMILY for m in _MODULES}
ROUTES: tuple[base.RouteRow, ...] = tuple(row for m in _MODULES for row in m.ROUTES)


def estimate_prompt_tokens(api: base.ApiFormat, model: str, body: Mapping[str, Any]) -> int:
    """See `WireFormat.estimate_prompt_tokens`."""
    return FORMATS[api].estimate_prompt_tokens(model, body)


def requested_output_tokens(api: base.ApiFormat, body: Mapping[str, Any]) -> int | None:
    """See `WireFormat.requested_output_tokens`."""
    return FORMATS[api].requested_output_tokens(body)


def usage_from_json(api: base.ApiFormat, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
    """See `WireFormat.usage_of` (for Bedrock InvokeModel prefer `bedrock.usage_from_bedrock_headers`)."""
    return FORMATS[api].usage_of(payload)


def meter(api: base.ApiFormat, model: str, *, hide_usage_chunk: bool = False) -> base.StreamMeter:
    """A fresh stream meter of format `api` (see `WireFormat.meter`)."""
    return FORMATS[api].meter(model, hide_usage_chunk)


def error_body(family: base.ApiFamily, error: errors.ProxyError) -> bytes:
    """The JSON body for `error` in the shape of `family`."""
    return FAMILIES[family].error_body(error)


def error_response(family: base.ApiFamily, error: errors.ProxyError) -> web.Response:
    """A complete JSON error response in the shape of `family`."""
    return FAMILIES[family].error_response(error)
