"""The built-in `mock` provider: answers OpenAI-format calls locally, for the offline demo and tests.

Deterministic: the reply is always `MOCK_REPLY` (cut to the requested output cap, then
`finish_reason: "length"`), embeddings are derived from a hash of the input. Usage is exact for
what it sends: prompt tokens are the tiktoken count the proxy's estimator makes (the OpenAI
cookbook recipe), output tokens are the tiktoken tokens of the reply. Streams send one chunk per
token and honour `stream_options.include_usage`. `mock_latency_ms` on the credential delays the
response and each streamed chunk. Nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import orjson
from multidict import CIMultiDict

from llmkeys_proxy import apis, config, settings, tokens
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.providers import base

MOCK_REPLY = (
    "Hello! This is the llmkeys mock provider: no real model was called, "
    "and this reply is the same every time."
)
DEFAULT_EMBEDDING_DIMENSIONS = 16


def _id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


class MockUpstreamResponse(base.UpstreamResponse):
    """A locally generated response (whole body or SSE chunks)."""

    def __init__(
        self,
        status: int,
        content_type: str,
        body: bytes = b"",
        chunks: Iterator[bytes] | None = None,
        delay_s: float = 0,
    ) -> None:
        self.status = status
        self.headers = CIMultiDict({"Content-Type": content_type, "x-request-id": _id("req_mock_")})
        self.error = None
        self._body = body
        self._chunks = chunks
        self._delay_s = delay_s

    async def read(self) -> bytes:
        if self._chunks is not None:
            return b"".join(self._chunks)
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            yield self._body
            return
        for chunk in self._chunks:
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield chunk

    def close(self) -> None:
        return None


def _sse(payload: Mapping[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


class MockAdapter(base.ProviderAdapter):
    """Serves chat, completions, embeddings and responses without any upstream."""

    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset(
        {"openai-chat", "openai-completions", "openai-embeddings", "openai-responses"}
    )
    injects_stream_usage: ClassVar[bool] = True

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        self._delay_s = entry.mock_latency_ms / 1000

    def reply_tokens(self, model: str, cap: int | None) -> list[str]:
        """The reply as token strings, cut to `cap` tokens."""
        encoding = tokens.encoding_for_model(model)
        ids = encoding.encode_ordinary(MOCK_REPLY)
        if cap is not None:
            ids = ids[:cap]
        return [encoding.decode([token]) for token in ids]

    async def send(self, call: base.UpstreamCall) -> base.UpstreamResponse:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        payload = call.payload
        model = call.upstream_model
        # Large prompts off the event loop, like the pipeline's own counting (10 MB takes seconds).
        if len(call.body) > 64 * 1024:
            prompt_tokens = await asyncio.to_thread(apis.estimate_prompt_tokens, call.api, model, payload)
        else:
            prompt_tokens = apis.estimate_prompt_tokens(call.api, model, payload)
        if call.api == "openai-embeddings":
            return self._embeddings(payload, model, prompt_tokens)
        cap = apis.requested_output_tokens(call.api, payload)
        pieces = self.reply_tokens(model, cap)
        finish = "length" if len(pieces) < len(self.reply_tokens(model, None)) else "stop"
        if call.api == "openai-responses":
            return self._responses(call, model, prompt_tokens, pieces, finish)
        chat = call.api == "openai-chat"
        counts = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        ident = _id("chatcmpl-mock-" if chat else "cmpl-mock-")
        created = int(time.time())
        if not call.stream:
            text = "".join(pieces)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                if chat
                else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            )
            body = {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": counts,
            }
            return MockUpstreamResponse(200, "application/json", orjson.dumps(body))
        stream_options = payload.get("stream_options")
        include_usage = isinstance(stream_options, Mapping) and stream_options.get("include_usage") is True
        return MockUpstreamResponse(
            200,
            "text/event-stream",
            chunks=self._chat_chunks(
                ident, created, model, chat, pieces, finish, counts if include_usage else None
            ),
            delay_s=self._delay_s,
        )

    def _chat_chunks(
        self,
        ident: str,
        created: int,
        model: str,
        chat: bool,
        pieces: list[str],
        finish: str,
        counts: dict[str, Any] | None,
    ) -> Iterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": ident, "object": kind, "created": created, "model": model}
        if chat:
            yield _sse(
                {
                    **head,
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    ],
                }
            )
        for piece in pieces:
            choice = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            yield _sse({**head, "choices": [choice]})
        last = (
            {"index": 0, "delta": {}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": "", "finish_reason": finish}
        )
        yield _sse({**head, "choices": [last]})
        if counts is not None:
            yield _sse({**head, "choices": [], "usage": counts})
        yield b"data: [DONE]\n\n"

    def _embeddings(
        self, payload: Mapping[str, Any], model: str, prompt_tokens: int
    ) -> base.UpstreamResponse:
        raw = payload.get("input")
        inputs: list[Any] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        dimensions = payload.get("dimensions")
        size = (
            dimensions
            if isinstance(dimensions, int) and 0 < dimensions <= 4096
            else DEFAULT_EMBEDDING_DIMENSIONS
        )
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(orjson.dumps(item), size)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{size}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        body = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return MockUpstreamResponse(200, "application/json", orjson.dumps(body))

    def _responses(
        self, call: base.UpstreamCall, model: str, prompt_tokens: int, pieces: list[str], finish: str
    ) -> base.UpstreamResponse:
        text = "".join(pieces)
        status = "completed" if finish == "stop" else "incomplete"
        response_id = _id("resp_mock_")
        message_id = _id("msg_mock_")
        counts = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(pieces),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + len(pieces),
        }
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        message = {
            "type": "message",
            "id": message_id,
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        done = _response_object(response_id, model, status, [message], counts)
        if status == "incomplete":
            done["incomplete_details"] = {"reason": "max_output_tokens"}
        if not call.stream:
            return MockUpstreamResponse(200, "application/json", orjson.dumps(done))
        return MockUpstreamResponse(
            200,
            "text/event-stream",
            chunks=_response_events(response_id, message_id, model, pieces, done),
            delay_s=self._delay_s,
        )


def _response_object(
    response_id: str, model: str, status: str, output: list[Any], counts: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
        "usage": counts,
    }


def _response_events(
    response_id: str, message_id: str, model: str, pieces: list[str], done: dict[str, Any]
) -> Iterator[bytes]:
    sequence = 0

    def event(kind: str, body: dict[str, Any]) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **body}
        sequence += 1
        return _sse(payload, kind)

    started = _response_object(response_id, model, "in_progress", [], None)
    yield event("response.created", {"response": started})
    yield event("response.in_progress", {"response": started})
    item = {"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []}
    yield event("response.output_item.added", {"output_index": 0, "item": item})
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    position = {"item_id": message_id, "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", {**position, "part": empty_part})
    for piece in pieces:
        yield event("response.output_text.delta", {**position, "delta": piece, "logprobs": []})
    text = "".join(pieces)
    yield event("response.output_text.done", {**position, "text": text, "logprobs": []})
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    yield event("response.content_part.done", {**position, "part": part})
    yield event("response.output_item.done", {"output_index": 0, "item": done["output"][0]})
    final = "response.completed" if done["status"] == "completed" else "response.incomplete"
    yield event(final, {"response": done})


def _vector(seed: bytes, size: int) -> list[float]:
    """A deterministic unit-ish vector from a hash of the input."""
    out: list[float] = []
    counter = 0
    while len(out) < size:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        out.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    return out[:size]
