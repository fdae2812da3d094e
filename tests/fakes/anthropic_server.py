"""A fake Anthropic Messages API speaking the real wire format; started by provider integration tests.

POST /v1/messages (JSON and SSE streaming with message_start -> content_block_* -> ping ->
message_delta (cumulative usage) -> message_stop) and POST /v1/messages/count_tokens; the same
answers as Claude on Vertex AI (`.../publishers/anthropic/models/{m}:rawPredict|streamRawPredict`,
OAuth token, `anthropic_version` in the body) when given a token endpoint. Every request
is recorded (headers included) so tests can assert which credential arrived upstream. Knobs make
it fail, cut a stream, or send an `event: error` after HTTP 200. Token counts are deterministic and
deliberately differ from tiktoken's, so a test can tell provider-reported usage from an estimate.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from aiohttp import web
from tests.fakes import google_token_server

REPLY_WORDS = ("Hello", " from", " the", " fake", " Anthropic", " upstream", ".")


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def record(request: web.Request, body: bytes) -> RecordedRequest:
    """Snapshot a request (raw path, lower-cased headers, body)."""
    return RecordedRequest(
        method=request.method,
        path=request.raw_path.split("?", 1)[0],
        query=dict(request.query),
        headers={name.lower(): value for name, value in request.headers.items()},
        body=body,
    )


def word_tokens(value: Any) -> int:
    """Deterministic stand-in for a tokenizer: whitespace-separated words in every string inside,
    structural fields (role, type) left out."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(word_tokens(v) for k, v in value.items() if k not in ("role", "type"))
    if isinstance(value, list):
        return sum(word_tokens(v) for v in value)
    return 0


def anthropic_error(status: int, error_type: str, message: str) -> web.Response:
    """An error in Anthropic's documented shape."""
    body = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": _req_id()}
    return web.json_response(body, status=status)


def _req_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


@dataclasses.dataclass
class FakeAnthropic:
    """State and knobs of one fake Anthropic account; `app()` builds the aiohttp application."""

    api_key: str = "sk-ant-upstream-real-credential"
    #: Added to the word count of the prompt, so reported input never equals a tiktoken estimate.
    input_overhead: int = 7
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    #: Set to (status, error type, message) to fail every request with it.
    fail_with: tuple[int, str, str] | None = None
    #: Streams: close the connection (no message_delta / message_stop) after this many delta events.
    cut_stream_after_deltas: int | None = None
    #: Streams: send `event: error` (overloaded_error) after this many delta events.
    error_after_deltas: int | None = None
    #: Accepts the OAuth tokens of this endpoint on the Claude-on-Vertex routes.
    token_server: google_token_server.FakeGoogleToken | None = None
    requests: list[RecordedRequest] = dataclasses.field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_post(
            "/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{target}", self._vertex
        )
        return app

    def input_tokens(self, payload: dict[str, Any]) -> int:
        """What this fake reports as (uncached) input tokens for a request body."""
        return word_tokens(payload.get("messages")) + word_tokens(payload.get("system")) + self.input_overhead

    def output_tokens(self, payload: dict[str, Any]) -> int:
        """What this fake reports as output tokens: one per reply piece, capped by max_tokens."""
        return min(len(REPLY_WORDS), int(payload.get("max_tokens") or len(REPLY_WORDS)))

    async def _admit(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        body = await request.read()
        self.requests.append(record(request, body))
        bearer = request.headers.get("Authorization", "")
        if request.headers.get("x-api-key") != self.api_key and bearer != f"Bearer {self.api_key}":
            return None, anthropic_error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return None, anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
        if self.fail_with is not None:
            status, error_type, message = self.fail_with
            return None, anthropic_error(status, error_type, message)
        try:
            payload = json.loads(body)
        except ValueError:
            return None, anthropic_error(400, "invalid_request_error", "request body is not valid JSON")
        if not isinstance(payload, dict) or not payload.get("model"):
            return None, anthropic_error(400, "invalid_request_error", "model: field required")
        return payload, None

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        payload, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        assert payload is not None
        return web.json_response({"input_tokens": self.input_tokens(payload)})

    def _usage(self, payload: dict[str, Any], output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens(payload),
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        payload, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        assert payload is not None
        return await self._reply(request, payload)

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        """Claude on Vertex AI: model and streaming in the URL, version in the body, OAuth token."""
        body = await request.read()
        self.requests.append(record(request, body))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.token_server is None or not self.token_server.valid(token):
            return anthropic_error(401, "authentication_error", "invalid authentication credentials")
        model, _, method = request.match_info["target"].partition(":")
        payload = json.loads(body)
        if payload.get("anthropic_version") != "vertex-2023-10-16":
            return anthropic_error(
                400, "invalid_request_error", "anthropic_version: vertex-2023-10-16 required"
            )
        if model == "count-tokens" and method == "rawPredict":
            return web.json_response({"input_tokens": self.input_tokens(payload)})
        if "model" in payload:
            return anthropic_error(400, "invalid_request_error", "model: Extra inputs are not permitted")
        if method not in ("rawPredict", "streamRawPredict"):
            return anthropic_error(404, "not_found_error", f"unknown method {method}")
        return await self._reply(request, {**payload, "model": model, "stream": method == "streamRawPredict"})

    async def _reply(self, request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        pieces = REPLY_WORDS[: self.output_tokens(payload)]
        stop_reason = "end_turn" if len(pieces) == len(REPLY_WORDS) else "max_tokens"
        message_id = "msg_" + uuid.uuid4().hex[:24]
        headers = {"request-id": _req_id(), "anthropic-organization-id": "org-fake"}
        if not payload.get("stream"):
            return web.json_response(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": payload["model"],
                    "content": [{"type": "text", "text": "".join(pieces)}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": self._usage(payload, len(pieces)),
                },
                headers=headers,
            )
        resp = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        start_usage = self._usage(payload, 1)
        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": payload["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        await send(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        await send("ping", {"type": "ping"})
        for sent, piece in enumerate(pieces):
            if sent == self.cut_stream_after_deltas:
                return cut_connection(request, resp)
            if sent == self.error_after_deltas:
                await send(
                    "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                )
                await resp.write_eof()
                return resp
            await send(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        # Cumulative usage, as the API sends it: the totals so far, never an increment.
        final_usage = {k: v for k, v in self._usage(payload, len(pieces)).items() if k != "service_tier"}
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": final_usage,
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp


def cut_connection(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Drop the TCP connection mid-response, as a crashed upstream or broken network would."""
    if request.transport is not None:
        request.transport.abort()
    return resp
