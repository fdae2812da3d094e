"""The Gemini wire format (`POST /{v1|v1beta}/models/{model}:{action}`, google-genai): request fields,
prompt counting, `usageMetadata`, the stream meter (SSE or a streamed JSON array) and the
google.rpc error body.

Served by the gemini and vertex providers. Registered in `apis/__init__.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from llmkeys_proxy import errors, sse, tokens
from llmkeys_proxy.apis import base

COUNT_TOKENS = "countTokens"
#: Action -> whether it streams.
ACTIONS: dict[str, bool] = {
    "generateContent": False,
    "streamGenerateContent": True,
    COUNT_TOKENS: False,
    "embedContent": False,
    "batchEmbedContents": False,
}
VERSIONS = ("v1", "v1beta")


def _parts(counter: base.PromptCounter, content: object) -> None:
    parts = content.get("parts") if isinstance(content, Mapping) else content
    if isinstance(parts, str):
        counter.text(parts)
        return
    if not isinstance(parts, list):
        return
    for part in parts:
        if not isinstance(part, Mapping):
            counter.text(part)
        elif "text" in part:
            counter.text(part["text"])
        elif any(k in part for k in ("inlineData", "inline_data", "fileData", "file_data")):
            counter.fixed += base.NON_TEXT_PART_TOKENS
        else:
            counter.text(part)


def count_request(counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
    _parts(counter, body.get("systemInstruction", body.get("system_instruction")))
    contents = body.get("contents")
    if isinstance(contents, Mapping):
        contents = [contents]
    if isinstance(contents, list):
        for content in contents:
            counter.fixed += base.TOKENS_PER_MESSAGE
            _parts(counter, content)
    # embedContent: {"content": {...}}; batchEmbedContents: {"requests": [{"content": ...}]}
    if "content" in body:
        _parts(counter, body["content"])
    requests = body.get("requests")
    if isinstance(requests, list):
        for request in requests:
            if isinstance(request, Mapping):
                _parts(counter, request.get("content"))
    if body.get("tools"):
        counter.text(body["tools"])


def gemini_usage(metadata: Mapping[str, Any]) -> tokens.TokenCounts:
    """Gemini `usageMetadata`: prompt includes cached content; thoughts are billed as output."""
    thoughts = base.count_of(metadata.get("thoughtsTokenCount"))
    return tokens.TokenCounts(
        input_tokens=base.count_of(metadata.get("promptTokenCount"))
        + base.count_of(metadata.get("toolUsePromptTokenCount")),
        cached_input_tokens=base.count_of(metadata.get("cachedContentTokenCount")),
        output_tokens=base.count_of(metadata.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
    )


class _JsonArrayElements:
    """Splits a streamed top-level JSON array (Gemini without alt=sse) into element byte strings."""

    __slots__ = ("_buffer", "_depth", "_in_string", "_scan", "_start")

    _OUTSIDE = re.compile(rb'[\[\]{}"]')
    _INSIDE = re.compile(rb'["\\]')

    def __init__(self) -> None:
        self._buffer = b""
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._start = -1

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data
        elements: list[bytes] = []
        pos = self._scan
        size = len(buffer)
        while pos < size:
            if self._in_string:
                match = self._INSIDE.search(buffer, pos)
                if match is None:
                    pos = size
                    break
                if match.group() == b"\\":
                    if match.end() >= size:
                        pos = match.start()  # escape split across reads: rescan it next time
                        break
                    pos = match.end() + 1
                    continue
                self._in_string = False
                pos = match.end()
                continue
            match = self._OUTSIDE.search(buffer, pos)
            if match is None:
                pos = size
                break
            char = match.group()
            pos = match.end()
            if char == b'"':
                self._in_string = True
            elif char in (b"{", b"["):
                self._depth += 1
                if self._depth == 2:
                    self._start = match.start()
            else:
                self._depth -= 1
                if self._depth == 1 and self._start >= 0:
                    elements.append(buffer[self._start : pos])
                    self._start = -1
        # Keep only what an unfinished element still needs.
        keep_from = self._start if self._start >= 0 else pos
        self._buffer = buffer[keep_from:]
        self._scan = pos - keep_from
        if self._start >= 0:
            self._start = 0
        return elements


class GeminiMeter(base.StreamMeter):
    """A Gemini stream, SSE (`alt=sse`) or one JSON array streamed element by element. Usage
    metadata are running totals: only where the last one was seen is kept (block, position; -1 = the
    block is the JSON document), and it is parsed only when `usage` is read."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._gemini_last: tuple[bytes, int] | None = None
        self._gemini_array: _JsonArrayElements | None = None
        self._sniffed = False

    @property
    def usage(self) -> tokens.TokenCounts | None:
        if self._gemini_last is not None:
            block, pos = self._gemini_last
            self._gemini_last = None
            payload = base.loads(block if pos < 0 else (sse.event_data_at(block, pos) or b""))
            if isinstance(payload, dict):
                counts = usage_of(payload)
                if counts is not None:
                    self._usage = counts
        return self._usage

    def feed(self, chunk: bytes) -> bytes:
        if not chunk or self._passthrough:
            return chunk
        if not self._sniffed:
            stripped = chunk.lstrip()
            if not stripped:
                return chunk
            self._sniffed = True
            if stripped[:1] == b"[":
                self._gemini_array = _JsonArrayElements()
                self._kept_sse = False
        if self._gemini_array is not None:
            for element in self._gemini_array.feed(chunk):
                self._element(element)
            return chunk
        return super().feed(chunk)

    def finish(self) -> bytes:
        if self._gemini_array is not None:
            self._finished = True
            return b""
        return super().finish()

    def _block(self, block: bytes, flush: bool) -> bytes:
        self._keep(block)
        pos = block.rfind(b'"usageMetadata"')
        if pos >= 0:
            self._gemini_last = (block, pos)
        if b'"finishReason"' in block:
            self._complete = self._final = True
        return block

    def _element(self, element: bytes) -> None:
        self._keep(element)
        if b'"usageMetadata"' in element:
            self._gemini_last = (element, -1)
        if b'"finishReason"' in element:
            self._complete = self._final = True

    def collect_text(self, payload: Mapping[str, Any], texts: list[str]) -> None:
        candidates = payload.get("candidates")
        if not isinstance(candidates, list):
            return
        for candidate in candidates:
            content = candidate.get("content") if isinstance(candidate, dict) else None
            parts = content.get("parts") if isinstance(content, dict) else None
            if isinstance(parts, list):
                for part in parts:
                    if isinstance(part, dict):
                        base.append_text(texts, part.get("text"))
                        base.append_text(texts, part.get("functionCall"))


def usage_of(payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
    metadata = payload.get("usageMetadata")
    return gemini_usage(metadata) if isinstance(metadata, Mapping) else None


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiFamily(base.WireFamily):
    name: ClassVar[base.ApiFamily] = "gemini"

    def error_body(self, error: errors.ProxyError) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "code": error.status,
                    "message": error.message,
                    "status": _GOOGLE_STATUS.get(error.status, "INTERNAL"),
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": error.code,
                            "domain": "llmkeys.io",
                        }
                    ],
                }
            }
        )


FAMILY = GeminiFamily()


class GenerateContentFormat(base.WireFormat):
    name: ClassVar[base.ApiFormat] = "gemini"
    family: ClassVar[base.WireFamily] = FAMILY
    free_operations: ClassVar[frozenset[str]] = frozenset({COUNT_TOKENS})

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        count_request(counter, body)

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        cap = base.first_int(
            body,
            ("generationConfig", "maxOutputTokens"),
            ("generation_config", "max_output_tokens"),
            ("generationConfig", "max_output_tokens"),
        )
        n = max(
            base.choices(body, "generationConfig.candidateCount"),
            base.choices(body, "generation_config.candidate_count"),
        )
        return None if cap is None else cap * n

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        return usage_of(payload)

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return GeminiMeter(model)


GENERATE_CONTENT = GenerateContentFormat()
FORMATS: tuple[base.WireFormat, ...] = (GENERATE_CONTENT,)
ROUTES: tuple[base.RouteRow, ...] = tuple(
    base.RouteRow(
        "POST",
        f"/{version}/models/{{model}}:{action}",
        base.Endpoint(GENERATE_CONTENT, action, stream=streams),
        "model",
    )
    for version in VERSIONS
    for action, streams in ACTIONS.items()
)
