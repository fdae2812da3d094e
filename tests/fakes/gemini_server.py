"""A fake Gemini API and Vertex AI (Google publisher models) speaking the real wire formats; used by
the provider integration tests.

Gemini API (`/{v1|v1beta}/models/{model}:{action}`, key in `x-goog-api-key` or `?key=`) and Vertex AI
(`/{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:{action}`, OAuth Bearer
token issued by `google_token_server.FakeGoogleToken`). Actions: generateContent,
streamGenerateContent (`alt=sse`: SSE of whole responses; otherwise one JSON array streamed in
pieces), countTokens, embedContent, batchEmbedContents. usageMetadata in streams carries RUNNING
totals, like Google's. Errors use Google's `{"error": {"code", "message", "status"}}` shape.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from aiohttp import web
from tests.fakes import anthropic_server, google_token_server

REPLY_PIECES = ("Hello", " from", " the", " fake", " Gemini", ".")
EMBEDDING_DIMENSIONS = 8


def google_error(status: int, grpc_status: str, message: str, reason: str | None = None) -> web.Response:
    """An error in Google's documented JSON shape."""
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc_status}
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    return web.json_response({"error": error}, status=status)


def text_of(contents: Any) -> int:
    """Deterministic token stand-in: words in all text parts of `contents` (role fields excluded)."""
    return anthropic_server.word_tokens(contents)


@dataclasses.dataclass
class FakeGemini:
    """One fake Google account: the Gemini API key it accepts and/or the token endpoint whose tokens
    its Vertex routes accept. `app()` builds the aiohttp application."""

    api_key: str = "AIza-fake-upstream-real-credential"
    token_server: google_token_server.FakeGoogleToken | None = None
    #: Added to the word count of the prompt so reported usage never equals a tiktoken estimate.
    prompt_overhead: int = 5
    cached_content_tokens: int = 0
    thoughts_tokens: int = 0
    #: (status, gRPC status, message): fail every request with it.
    fail_with: tuple[int, str, str] | None = None
    #: Streams: drop the connection after this many chunks (no final usage).
    cut_stream_after_chunks: int | None = None
    requests: list[anthropic_server.RecordedRequest] = dataclasses.field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version:v1|v1beta}/models/{target}", self._gemini_api)
        app.router.add_post(
            "/{version:v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/models/{target}",
            self._vertex,
        )
        return app

    # ------------------------------------------------------------------------------------ auth

    async def _gemini_api(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(anthropic_server.record(request, body))
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key != self.api_key:
            return google_error(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
            )
        return await self._dispatch(request, body)

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(anthropic_server.record(request, body))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if self.token_server is None or not auth.startswith("Bearer ") or not self.token_server.valid(token):
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            )
        return await self._dispatch(request, body)

    # -------------------------------------------------------------------------------- actions

    async def _dispatch(self, request: web.Request, body: bytes) -> web.StreamResponse:
        model, _, action = request.match_info["target"].partition(":")
        if self.fail_with is not None:
            return google_error(*self.fail_with)
        try:
            payload = json.loads(body)
        except ValueError:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(payload, dict):
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if action == "generateContent":
            count = self.output_tokens(payload)
            text = "".join(REPLY_PIECES[:count])
            return web.json_response(self._response(model, payload, text, count, final=True))
        if action == "streamGenerateContent":
            return await self._stream(request, model, payload)
        if action == "countTokens":
            contents = payload.get("contents") or (payload.get("generateContentRequest") or {}).get(
                "contents"
            )
            total = text_of(contents) + self.prompt_overhead
            return web.json_response(
                {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
            )
        if action == "embedContent":
            return web.json_response({"embedding": {"values": self._vector(payload.get("content"))}})
        if action == "batchEmbedContents":
            requests = payload.get("requests") or []
            return web.json_response(
                {"embeddings": [{"values": self._vector(r.get("content"))} for r in requests]}
            )
        return google_error(404, "NOT_FOUND", f"Method {action} not found.")

    def prompt_tokens(self, payload: dict[str, Any]) -> int:
        """promptTokenCount this fake reports (includes cached content, like Google's)."""
        return (
            text_of(payload.get("contents"))
            + text_of(payload.get("systemInstruction"))
            + self.prompt_overhead
            + self.cached_content_tokens
        )

    def output_tokens(self, payload: dict[str, Any]) -> int:
        """candidatesTokenCount of a complete answer: one per piece, capped by maxOutputTokens."""
        cap = (payload.get("generationConfig") or {}).get("maxOutputTokens")
        return min(len(REPLY_PIECES), int(cap or len(REPLY_PIECES)))

    def _usage(self, payload: dict[str, Any], candidates: int) -> dict[str, Any]:
        prompt = self.prompt_tokens(payload)
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates + self.thoughts_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if self.cached_content_tokens:
            usage["cachedContentTokenCount"] = self.cached_content_tokens
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        return usage

    def _response(
        self, model: str, payload: dict[str, Any], text: str, candidates: int, *, final: bool
    ) -> dict[str, Any]:
        """A GenerateContentResponse with `text`, usage for `candidates` output tokens so far."""
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if final:
            complete = self.output_tokens(payload) == len(REPLY_PIECES)
            candidate["finishReason"] = "STOP" if complete else "MAX_TOKENS"
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(payload, candidates),
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:20],
        }

    def _vector(self, content: Any) -> list[float]:
        words = text_of(content)
        return [round((words + i) / 10, 3) for i in range(EMBEDDING_DIMENSIONS)]

    async def _stream(self, request: web.Request, model: str, payload: dict[str, Any]) -> web.StreamResponse:
        sse = request.query.get("alt") == "sse"
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if sse else "application/json; charset=UTF-8"}
        )
        await resp.prepare(request)
        count = self.output_tokens(payload)
        for index in range(1, count + 1):
            if index - 1 == self.cut_stream_after_chunks:
                return anthropic_server.cut_connection(request, resp)
            # Running totals: each chunk's usageMetadata counts everything generated so far.
            piece = REPLY_PIECES[index - 1]
            chunk = json.dumps(self._response(model, payload, piece, index, final=index == count))
            if sse:
                await resp.write(f"data: {chunk}\r\n\r\n".encode())
            else:
                await resp.write((("[" if index == 1 else ",\r\n") + chunk).encode())
        if not sse:
            await resp.write(b"]")
        await resp.write_eof()
        return resp
