"""Adapter for Vertex AI (`vertex-ai` credentials: a service-account key); built by `providers.adapter_class`.

Clients call the proxy in Gemini API form (`/v1beta/models/<m>:generateContent`, ...) or Anthropic
form (`/v1/messages`); this adapter sends them to the credential's project and location:
`<root>/v1/projects/<p>/locations/<l>/publishers/google/models/<m>:<action>` for Gemini models and
`.../publishers/anthropic/models/<m>:rawPredict|streamRawPredict` for Claude (the body loses
`model` and gains `anthropic_version: vertex-2023-10-16`, as Vertex requires). The root is
`https://<location>-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for `global`)
unless `base_url` overrides it. Authorization is an OAuth access token minted from the service
account (`google_oauth.AccessTokenSource`, cached until shortly before `expires_in`); an upstream
401 drops the cached token and the request is sent once more with a fresh one.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from llmkeys_proxy import config, errors, settings
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.providers import base, gemini, google_oauth

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
GEMINI_OPERATIONS = frozenset({"generateContent", "streamGenerateContent", "countTokens"})
ANTHROPIC_OPERATIONS = frozenset({"messages", "messages/count_tokens"})


def default_root(location: str) -> str:
    """The regional (or global) Vertex AI endpoint."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


class VertexAdapter(base.HttpAdapter):
    """Gemini and Claude models of one Google Cloud project, with a service account's tokens."""

    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset({"gemini", "anthropic-messages"})

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        if not entry.api_key:
            raise ValueError(f"vertex-ai credential {entry.id} has no service-account key")
        try:
            account = google_oauth.ServiceAccount.from_json(entry.api_key)
        except google_oauth.TokenError as exc:
            raise ValueError(f"vertex-ai credential {entry.id}: {exc}") from None
        project = entry.project or account.project_id
        if not project:
            raise ValueError(f"vertex-ai credential {entry.id} names no project (spec.vertex.project)")
        location = entry.location or "global"
        root = gemini.versioned_root(entry.base_url, default_root(location), "v1")
        self._publishers = f"{root}/projects/{project}/locations/{location}/publishers"
        self._tokens = google_oauth.AccessTokenSource(account)

    def supports(self, api: apis_base.ApiFormat, operation: str) -> bool:
        if api == "gemini":
            return operation in GEMINI_OPERATIONS
        return api == "anthropic-messages" and operation in ANTHROPIC_OPERATIONS

    def url(self, call: base.UpstreamCall) -> str:
        """Upstream URL of `call` (publisher and method follow its wire format)."""
        model = call.upstream_model
        if call.api == "gemini":
            query = gemini.forwarded_query(call.query)
            return f"{self._publishers}/google/models/{model}:{call.operation}{query}"
        if call.operation == "messages/count_tokens":
            return f"{self._publishers}/anthropic/models/count-tokens:rawPredict"
        method = "streamRawPredict" if call.stream else "rawPredict"
        return f"{self._publishers}/anthropic/models/{model}:{method}"

    def body(self, call: base.UpstreamCall) -> bytes:
        """Claude on Vertex: the model is in the URL and the version in the body."""
        if call.api != "anthropic-messages":
            return call.body
        payload = dict(call.payload)
        if call.operation == "messages/count_tokens":
            payload["model"] = call.upstream_model
        else:
            payload.pop("model", None)
        payload.setdefault("anthropic_version", VERTEX_ANTHROPIC_VERSION)
        return orjson.dumps(payload)

    async def prepare(self, call: base.UpstreamCall) -> base.PreparedRequest:
        if self._session is None:
            self._session = self._new_session()
        try:
            token = await self._tokens.token(self._session)
        except google_oauth.TokenError as exc:
            raise errors.ProxyError(
                "upstream_auth_failed", f"Could not obtain a Vertex AI access token: {exc}"
            ) from None
        headers = {k: v for k, v in call.headers.items() if k.lower() != "anthropic-version"}
        headers["Authorization"] = f"Bearer {token}"
        return base.PreparedRequest("POST", self.url(call), headers, self.body(call))

    async def send(self, call: base.UpstreamCall) -> base.UpstreamResponse:
        response = await super().send(call)
        if response.status != 401:
            return response
        # A token revoked or expired early: mint a fresh one and try once more.
        response.close()
        self._tokens.invalidate()
        return await super().send(call)

    def secret_values(self) -> tuple[bytes, ...]:
        # The whole key file is never echoed, but its private key and id could be quoted back.
        values = list(super().secret_values())
        try:
            account = google_oauth.ServiceAccount.from_json(self.entry.api_key or "")
        except google_oauth.TokenError:
            return tuple(values)
        values.append(account.private_key_pem.encode())
        return tuple(values)
