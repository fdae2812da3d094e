"""Adapter for Anthropic's Messages API (`anthropic` credentials); built by `providers.adapter_class`.

`base_url` follows the anthropic SDK's convention, without the version segment (default
`https://api.anthropic.com`; a trailing `/v1` is tolerated). The real key goes upstream as
`x-api-key` (the documented header; whatever the client sent is dropped by the pipeline), and
`anthropic-version` is forwarded as the client sent it (2023-06-01 when it sent none), together
with `anthropic-beta`. Usage, streams and the free count_tokens endpoint are the wire
format's: `apis.anthropic`.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from llmkeys_proxy import config, settings
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.providers import base

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"

#: Operation (as the pipeline names the inbound endpoint) -> upstream path.
PATHS: dict[str, str] = {
    "messages": "/v1/messages",
    "messages/count_tokens": "/v1/messages/count_tokens",
}


def root_url(base_url: str | None, default: str) -> str:
    """`base_url` without a trailing slash or `/v1` (SDK base URLs come both ways)."""
    root = (base_url or default).rstrip("/")
    return root.removesuffix("/v1")


class AnthropicAdapter(base.HttpAdapter):
    """Forwards Anthropic Messages requests unchanged, with the real key."""

    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset({"anthropic-messages"})

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        root = root_url(entry.base_url, DEFAULT_BASE_URL)
        self._urls = {operation: root + path for operation, path in PATHS.items()}
        self._auth = {"x-api-key": entry.api_key} if entry.api_key else {}

    def supports(self, api: apis_base.ApiFormat, operation: str) -> bool:
        return api in self.apis and operation in self._urls

    async def prepare(self, call: base.UpstreamCall) -> base.PreparedRequest:
        headers = call.headers
        if not any(name.lower() == "anthropic-version" for name in headers):
            headers["anthropic-version"] = DEFAULT_VERSION
        headers.update(self._auth)
        body = call.body
        if call.payload.get("model") != call.upstream_model:  # a route renames the model upstream
            body = orjson.dumps({**call.payload, "model": call.upstream_model})
        return base.PreparedRequest("POST", self._urls[call.operation], headers, body)
