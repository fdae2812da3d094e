"""The provider-native API routes (Anthropic, Gemini, Bedrock) the proxy serves besides OpenAI's;
app.py turns each row into a `ProxyRoute`.

Each row says: method, aiohttp path, what the endpoint means to the pipeline (wire format,
operation the adapters know, error family, whether it always streams) and which path parameter
names the model (None: the body's `model`). Where the SDKs call:
- anthropic: `POST /v1/messages`, `POST /v1/messages/count_tokens` (model in the body).
- google-genai: `POST /{v1|v1beta}/models/{model}:{action}` (this SDK generation defaults to v1).
- boto3 bedrock-runtime: `POST /model/{modelId}/{operation}` (model id percent-encoded in the path).
A credential of another family never serves these routes: `routing` answers endpoint_not_supported.
"""

from __future__ import annotations

from typing import NamedTuple

from llmkeys_proxy import pipeline, usage


class NativeRoute(NamedTuple):
    """One route: method, aiohttp path, meaning, and the path parameter naming the model."""

    method: str
    path: str
    endpoint: pipeline.Endpoint
    model_param: str | None = None


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


def _routes() -> list[NativeRoute]:
    rows = [
        NativeRoute("POST", "/v1/messages", ANTHROPIC_MESSAGES),
        NativeRoute("POST", "/v1/messages/count_tokens", ANTHROPIC_COUNT_TOKENS),
    ]
    for version in GEMINI_VERSIONS:
        for action, streams in GEMINI_ACTIONS.items():
            endpoint = pipeline.Endpoint("gemini", action, "gemini", stream=streams)
            rows.append(NativeRoute("POST", f"/{version}/models/{{model}}:{action}", endpoint, "model"))
    for operation, (api, streams) in BEDROCK_OPERATIONS.items():
        endpoint = pipeline.Endpoint(api, operation, "bedrock", stream=streams)
        rows.append(NativeRoute("POST", f"/model/{{model}}/{operation}", endpoint, "model"))
    return rows


ROUTES: tuple[NativeRoute, ...] = tuple(_routes())
