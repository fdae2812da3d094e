"""The proxy's route table: every proxied method and path, what it means to the pipeline, and where
the model comes from; `app.create_app` mounts `ROUTES` with `handler(row)`.

Each row says: method, aiohttp path, the `pipeline.Endpoint` (wire format, operation the adapters
know, error family, whether it always streams) and which path parameter names the model (None: the
body's `model`; Azure deployment paths map the deployment back to its model). Where the SDKs call:
- openai: `POST /v1/{chat/completions,completions,embeddings,responses}`; Azure OpenAI under
  `/openai/v1/...` (v1 API) and `/openai/deployments/{deployment}/...` (classic, ?api-version=).
- anthropic: `POST /v1/messages`, `POST /v1/messages/count_tokens` (model in the body).
- google-genai: `POST /{v1|v1beta}/models/{model}:{action}` (this SDK generation defaults to v1).
- boto3 bedrock-runtime: `POST /model/{modelId}/{operation}` (model id percent-encoded in the path).
A credential of another family never serves a route: `routing` answers endpoint_not_supported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from aiohttp import web

from llmkeys_proxy import pipeline, usage
from llmkeys_proxy.state import STATE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHAT = pipeline.Endpoint("openai-chat", "chat/completions")
COMPLETIONS = pipeline.Endpoint("openai-completions", "completions")
EMBEDDINGS = pipeline.Endpoint("openai-embeddings", "embeddings")
RESPONSES = pipeline.Endpoint("openai-responses", "responses")


ANTHROPIC_MESSAGES = pipeline.Endpoint("anthropic-messages", "messages", "anthropic")
ANTHROPIC_COUNT_TOKENS = pipeline.Endpoint(
    "anthropic-messages", "messages/count_tokens", "anthropic", stream=False
)

#: Gemini action -> whether it streams.
GEMINI_ACTIONS: dict[str, bool] = {
    "generateContent": False,
    "streamGenerateContent": True,
    "countTokens": False,
    "embedContent": False,
    "batchEmbedContents": False,
}
GEMINI_VERSIONS = ("v1", "v1beta")

#: Bedrock operation -> (wire format, streams).
BEDROCK_OPERATIONS: dict[str, tuple[usage.ApiFormat, bool]] = {
    "converse": ("bedrock-converse", False),
    "converse-stream": ("bedrock-converse", True),
    "invoke": ("bedrock-invoke", False),
    "invoke-with-response-stream": ("bedrock-invoke", True),
    "count-tokens": ("bedrock-converse", False),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyRoute:
    """One proxied route: method, aiohttp path, endpoint meaning, and where the model comes from."""

    method: str
    path: str
    endpoint: pipeline.Endpoint
    #: match_info name holding the model (None: the body's `model`).
    model_param: str | None = None
    #: The path names an Azure deployment: map it back to a model name.
    azure_deployment: bool = False


_OPENAI_ROUTES = [
    ProxyRoute("POST", "/v1/chat/completions", CHAT),
    ProxyRoute("POST", "/v1/completions", COMPLETIONS),
    ProxyRoute("POST", "/v1/embeddings", EMBEDDINGS),
    ProxyRoute("POST", "/v1/responses", RESPONSES),
    # Azure OpenAI, v1 API (the plain OpenAI SDK with base_url=<endpoint>/openai/v1).
    ProxyRoute("POST", "/openai/v1/chat/completions", CHAT),
    ProxyRoute("POST", "/openai/v1/completions", COMPLETIONS),
    ProxyRoute("POST", "/openai/v1/embeddings", EMBEDDINGS),
    ProxyRoute("POST", "/openai/v1/responses", RESPONSES),
    # Azure OpenAI, classic deployment URLs (AzureOpenAI SDK; ?api-version=...).
    ProxyRoute("POST", "/openai/deployments/{deployment}/chat/completions", CHAT, "deployment", True),
    ProxyRoute("POST", "/openai/deployments/{deployment}/completions", COMPLETIONS, "deployment", True),
    ProxyRoute("POST", "/openai/deployments/{deployment}/embeddings", EMBEDDINGS, "deployment", True),
    ProxyRoute("POST", "/openai/responses", RESPONSES),
]


def _native_routes() -> list[ProxyRoute]:
    rows = [
        ProxyRoute("POST", "/v1/messages", ANTHROPIC_MESSAGES),
        ProxyRoute("POST", "/v1/messages/count_tokens", ANTHROPIC_COUNT_TOKENS),
    ]
    for version in GEMINI_VERSIONS:
        for action, streams in GEMINI_ACTIONS.items():
            endpoint = pipeline.Endpoint("gemini", action, "gemini", stream=streams)
            rows.append(ProxyRoute("POST", f"/{version}/models/{{model}}:{action}", endpoint, "model"))
    for operation, (api, streams) in BEDROCK_OPERATIONS.items():
        endpoint = pipeline.Endpoint(api, operation, "bedrock", stream=streams)
        rows.append(ProxyRoute("POST", f"/model/{{model}}/{operation}", endpoint, "model"))
    return rows


ROUTES: tuple[ProxyRoute, ...] = (*_OPENAI_ROUTES, *_native_routes())


def handler(route: ProxyRoute) -> Handler:
    """The aiohttp handler of one row: the model from the body, the path, or an Azure deployment."""
    endpoint = route.endpoint
    param = route.model_param
    if param is None:

        async def from_body(request: web.Request) -> web.StreamResponse:
            return await pipeline.handle(request, endpoint)

        return from_body

    async def from_path(request: web.Request) -> web.StreamResponse:
        model = request.match_info[param]
        table = request.app[STATE].table
        if route.azure_deployment and table is not None:
            model = table.deployment_models.get(model, model)
        return await pipeline.handle(request, endpoint, model)

    return from_path
