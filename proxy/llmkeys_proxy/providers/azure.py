"""Adapter for Azure OpenAI (`azure-openai` credentials): deployment URLs or the v1 API, `api-key` upstream.

`base_url` is the resource endpoint (`https://<resource>.openai.azure.com`). With `api_version` set
(e.g. `2024-10-21`) requests go to the classic deployment URLs
`/openai/deployments/<deployment>/<operation>?api-version=<v>` (Responses: `/openai/responses`);
with no api_version (or `v1`) they go to the v1 API `/openai/v1/<operation>`, where the body's
`model` must be the deployment name. `deployments` maps model -> deployment name; a model without
an entry uses its own name as the deployment.
"""

from __future__ import annotations

import urllib.parse
from typing import ClassVar

from llmkeys_proxy import config, settings
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.providers import base

_OPERATIONS = frozenset({"chat/completions", "completions", "embeddings", "responses"})


class AzureOpenAIAdapter(base.HttpAdapter):
    """Forwards OpenAI-format requests to an Azure OpenAI resource."""

    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset(
        {"openai-chat", "openai-completions", "openai-embeddings", "openai-responses"}
    )
    injects_stream_usage: ClassVar[bool] = True

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        if not entry.base_url:
            raise ValueError(f"azure-openai credential {entry.id} has no baseURL (the resource endpoint)")
        self._root = entry.base_url.rstrip("/")
        if self._root.endswith("/openai/v1"):  # tolerate the v1 base URL the OpenAI SDK would use
            self._root = self._root[: -len("/openai/v1")]
        version = entry.api_version
        self._api_version = None if version in (None, "", "v1") else version
        self._auth = {"api-key": entry.api_key} if entry.api_key else {}

    def supports(self, api: apis_base.ApiFormat, operation: str) -> bool:
        return api in self.apis and operation in _OPERATIONS

    def upstream_model(self, model: str, route: config.ModelRoute) -> str:
        name = route.upstream_name or model
        return self.entry.deployments.get(name) or self.entry.deployments.get(model) or name

    def url(self, operation: str, deployment: str) -> str:
        """The upstream URL of `operation` for `deployment`."""
        if self._api_version is None:
            return f"{self._root}/openai/v1/{operation}"
        query = urllib.parse.urlencode({"api-version": self._api_version})
        if operation == "responses":
            return f"{self._root}/openai/responses?{query}"
        return (
            f"{self._root}/openai/deployments/{urllib.parse.quote(deployment, safe='')}/{operation}?{query}"
        )

    async def prepare(self, call: base.UpstreamCall) -> base.PreparedRequest:
        headers = call.headers
        headers.update(self._auth)
        return base.PreparedRequest("POST", self.url(call.operation, call.upstream_model), headers, call.body)
