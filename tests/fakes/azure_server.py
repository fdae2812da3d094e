"""A fake Azure OpenAI resource: OpenAI's wire format behind Azure's URLs and `api-key` header.

Serves the classic deployment URLs `/openai/deployments/{deployment}/{chat/completions|completions|
embeddings}?api-version=...` (400 without api-version, 404 for an unknown deployment), the v1 API
`/openai/v1/...` (the body's `model` is the deployment) and `/openai/responses?api-version=...`.
Azure also streams chunks with empty `choices` (content-filter results); `filter_chunks` adds one
up front. Run alone: `python -m tests.fakes.openai_server --azure --port N`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web
from tests.fakes import openai_server

DEFAULT_DEPLOYMENTS = {"prod-gpt4o-mini": "gpt-4o-mini", "prod-embed": "text-embedding-3-small"}


@dataclasses.dataclass
class FakeAzureOpenAI(openai_server.FakeOpenAI):
    """An Azure OpenAI resource; `deployments` maps deployment name -> model."""

    deployments: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_DEPLOYMENTS))
    #: Send a prompt-filter-results chunk (empty `choices`) first in every chat stream, as Azure does.
    filter_chunks: bool = True

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for operation, handler in (
            ("chat/completions", self._chat),
            ("completions", self._completions),
            ("embeddings", self._embeddings),
        ):
            app.router.add_post(f"/openai/deployments/{{deployment}}/{operation}", self._classic(handler))
            app.router.add_post(f"/openai/v1/{operation}", self._v1(handler))
        app.router.add_post("/openai/responses", self._classic(self._responses))
        app.router.add_post("/openai/v1/responses", self._v1(self._responses))
        return app

    def authorised(self, request: web.Request) -> bool:
        return request.headers.get("api-key") == self.api_key

    def model_from_path(self, request: web.Request) -> str | None:
        return request.match_info.get("deployment")

    def stream_preamble(self) -> list[dict[str, Any]]:
        if not self.filter_chunks:
            return []
        filters = {
            name: {"filtered": False, "severity": "safe"}
            for name in ("hate", "self_harm", "sexual", "violence")
        }
        return [
            {
                "id": "",
                "object": "",
                "created": 0,
                "model": "",
                "choices": [],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}],
            }
        ]

    def _classic(self, handler: openai_server.Handler) -> openai_server.Handler:
        async def classic(request: web.Request) -> web.StreamResponse:
            if not request.query.get("api-version"):
                return openai_server.openai_error(
                    400, "Missing required query parameter: api-version", "BadRequest"
                )
            deployment = request.match_info.get("deployment")
            if deployment is not None and deployment not in self.deployments:
                return openai_server.openai_error(
                    404, "The API deployment for this resource does not exist.", "DeploymentNotFound"
                )
            return await handler(request)

        return classic

    def _v1(self, handler: openai_server.Handler) -> openai_server.Handler:
        async def v1(request: web.Request) -> web.StreamResponse:
            if request.query.get("api-version"):
                return openai_server.openai_error(
                    400, "api-version is not allowed on the v1 API", "BadRequest"
                )
            try:
                model = json.loads(await request.read()).get("model")
            except (ValueError, AttributeError):
                model = None
            if model is not None and model not in self.deployments:
                return openai_server.openai_error(
                    404, "The API deployment for this resource does not exist.", "DeploymentNotFound"
                )
            return await handler(request)

        return v1
