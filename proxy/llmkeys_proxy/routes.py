"""The proxy's route table: every proxied method and path, what it means to the pipeline, and where
the model comes from; `app.create_app` mounts `ROUTES` with `handler(row)`. The rows are written
by the wire-format families (`apis/openai.py`, `anthropic.py`, `gemini.py`, `bedrock.py`).

Each row (`apis.base.RouteRow`) says: method, aiohttp path, the `Endpoint` (wire format, operation
the adapters know, whether it always streams) and which path parameter names the model (None: the
body's `model`; Azure deployment paths map the deployment back to its model). Where the SDKs call:
- openai: `POST /v1/{chat/completions,completions,embeddings,responses}`; Azure OpenAI under
  `/openai/v1/...` (v1 API) and `/openai/deployments/{deployment}/...` (classic, ?api-version=).
- anthropic: `POST /v1/messages`, `POST /v1/messages/count_tokens` (model in the body).
- google-genai: `POST /{v1|v1beta}/models/{model}:{action}` (this SDK generation defaults to v1).
- boto3 bedrock-runtime: `POST /model/{modelId}/{operation}` (model id percent-encoded in the path).
A credential of another family never serves a route: `routing` answers endpoint_not_supported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from llmkeys_proxy import apis, pipeline
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.state import STATE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Every family's rows (apis/*.py), mounted by `app.create_app`.
ROUTES: tuple[apis_base.RouteRow, ...] = apis.ROUTES


def handler(route: apis_base.RouteRow) -> Handler:
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
