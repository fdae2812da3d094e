"""Adapter for the Gemini API (`gemini` credentials: AI Studio keys); built by `providers.adapter_class`.

`base_url` follows the google-genai SDK's convention, without the version segment (default
`https://generativelanguage.googleapis.com`); requests go to `<base>/v1beta/models/<model>:<action>`
(v1beta serves everything v1 does), or to the version a base URL ends with. The real key travels
in `x-goog-api-key`; `?alt=sse` is kept, so a client gets SSE or the JSON-array stream as it asked.
Usage (`usageMetadata`, free countTokens) is the wire format's: `apis.gemini`; embeddings report
no usage, so the pipeline charges its estimate.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from llmkeys_proxy import config, settings
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.providers import base

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_VERSION = "v1beta"
OPERATIONS = frozenset(
    {"generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents"}
)
#: Query parameters passed upstream; everything else (credentials above all) stays behind.
FORWARDED_QUERY = ("alt",)
_VERSIONED = re.compile(r"/v\d+(?:(?:alpha|beta)\d*)?$")


def versioned_root(base_url: str | None, default: str, version: str) -> str:
    """`base_url` ending in an API version: its own when it names one, else `version`."""
    root = (base_url or default).rstrip("/")
    return root if _VERSIONED.search(root) else f"{root}/{version}"


def forwarded_query(query: Mapping[str, str]) -> str:
    """`?alt=sse`-style suffix with only the parameters that change the response format."""
    kept = {name: query[name] for name in FORWARDED_QUERY if name in query}
    return "?" + urllib.parse.urlencode(kept) if kept else ""


def rename_batch_models(body: bytes, payload: Mapping[str, Any], upstream_model: str) -> bytes:
    """batchEmbedContents names the model again in every request; it must match the path's."""
    requests = payload.get("requests")
    if not isinstance(requests, list) or not any(isinstance(r, Mapping) and "model" in r for r in requests):
        return body
    renamed = [
        {**r, "model": f"models/{upstream_model}"} if isinstance(r, Mapping) and "model" in r else r
        for r in requests
    ]
    return orjson.dumps({**payload, "requests": renamed})


class GeminiAdapter(base.HttpAdapter):
    """Forwards Gemini API requests to `<root>/models/<upstream model>:<action>` with the real key."""

    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset({"gemini"})

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        self._root = versioned_root(entry.base_url, DEFAULT_BASE_URL, DEFAULT_VERSION)
        self._auth = {"x-goog-api-key": entry.api_key} if entry.api_key else {}

    def supports(self, api: apis_base.ApiFormat, operation: str) -> bool:
        return api in self.apis and operation in OPERATIONS

    def url(self, operation: str, model: str, query: Mapping[str, str]) -> str:
        """Upstream URL of `operation` on `model`."""
        return f"{self._root}/models/{urllib.parse.quote(model, safe='')}:{operation}{forwarded_query(query)}"

    async def prepare(self, call: base.UpstreamCall) -> base.PreparedRequest:
        headers = call.headers
        headers.update(self._auth)
        body = call.body
        if call.operation == "batchEmbedContents" and call.upstream_model != call.model:
            body = rename_batch_models(body, call.payload, call.upstream_model)
        return base.PreparedRequest(
            "POST", self.url(call.operation, call.upstream_model, call.query), headers, body
        )

    async def send(self, call: base.UpstreamCall) -> base.UpstreamResponse:
        response = await super().send(call)
        if response.status == 400:
            # Google answers a bad API key with 400 API_KEY_INVALID. That is the gateway's key, not
            # the caller's request: shown as 401 so the pipeline reports upstream_auth_failed.
            # (The body stays cached in the response for the pipeline to read again.)
            body = await response.read()
            if b"API_KEY_INVALID" in body:
                response.status = 401
        return response
