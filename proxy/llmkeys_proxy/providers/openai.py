"""Adapter for OpenAI and every OpenAI-compatible server (`openai`, `openai-compatible` credentials).

`base_url` follows the OpenAI SDK's convention and includes the version segment
(default `https://api.openai.com/v1`; e.g. `http://vllm:8000/v1` for a compatible server). The
real key goes upstream as `Authorization: Bearer`; a compatible server without auth may have none.
"""

from __future__ import annotations

from typing import ClassVar

from llmkeys_proxy import config, settings
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.providers import base

DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: Upstream path (below base_url) of each OpenAI-format operation.
PATHS: dict[str, str] = {
    "chat/completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
}


class OpenAIAdapter(base.HttpAdapter):
    """Forwards OpenAI-format requests unchanged to `<base_url>/<operation>`."""

    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset(
        {"openai-chat", "openai-completions", "openai-embeddings", "openai-responses"}
    )
    injects_stream_usage: ClassVar[bool] = True

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        root = entry.base_url or DEFAULT_BASE_URL
        self._urls = {operation: base.join_url(root, path) for operation, path in PATHS.items()}
        self._auth = {"Authorization": f"Bearer {entry.api_key}"} if entry.api_key else {}

    def supports(self, api: apis_base.ApiFormat, operation: str) -> bool:
        return api in self.apis and operation in self._urls

    async def prepare(self, call: base.UpstreamCall) -> base.PreparedRequest:
        headers = call.headers
        headers.update(self._auth)
        return base.PreparedRequest("POST", self._urls[call.operation], headers, call.body)
