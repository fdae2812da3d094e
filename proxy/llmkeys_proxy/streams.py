"""Usage capture from a teed streamed response, for every wire format the proxy serves.

The proxy's forwarding loop passes every upstream chunk through `StreamUsage.feed` on its way to
the client and settles the request with `StreamUsage.usage` (what the provider reported) or, for a
stream cut off before its usage arrived, `StreamUsage.fallback_counts` (tiktoken over the text that
passed). Hot path: bytes are forwarded untouched (the same object) and only the few events that
carry usage or end the stream are JSON-parsed, found by cheap substring tests over whole events;
text for the fallback is extracted only when the fallback is actually asked for.
Framing is format-free and lives in `sse` (server-sent events) and `eventstream` (AWS).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import orjson

from llmkeys_proxy import eventstream, sse, tokens
from llmkeys_proxy import usage as usage_mod
from llmkeys_proxy.usage import ApiFormat

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_SSE_APIS = (
    "openai-chat",
    "openai-completions",
    "openai-embeddings",
    "openai-responses",
    "anthropic-messages",
)
_RESPONSES_END = (b"response.completed", b"response.incomplete", b"response.failed")
#: Raw response bytes kept for a possible fallback count before they are folded into a token count.
_KEEP_BYTES = 1 << 20
#: An unterminated SSE event larger than this means the body is not SSE (or is hostile): parsing
#: stops and bytes pass through untouched, so memory stays bounded.
MAX_SSE_EVENT_BYTES = 4 << 20


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _is_done_line(block: bytes, pos: int) -> bool:
    """`data: [DONE]` is the whole line around `pos` (not text inside a chunk)."""
    line_start = max(block.rfind(b"\n", 0, pos), block.rfind(b"\r", 0, pos)) + 1
    return block[line_start:pos].rstrip() == b"data:" and block[pos + 6 : pos + 8].strip() == b""


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


class StreamUsage:
    """Tees one streamed response: forwards its bytes and captures the usage it reports.

    `hide_usage_chunk` (OpenAI chat/completions): the proxy injected
    `stream_options.include_usage`; the usage-only chunk (`"choices": []` with a usage object) is
    dropped from what the client receives. Partial events are then held back until complete, so
    `feed` may return fewer (or more) bytes than it was given; `finish` returns the rest.
    """

    def __init__(self, api: ApiFormat, model: str, *, hide_usage_chunk: bool = False) -> None:
        self.api: ApiFormat = api
        self.model = model
        self._hide = hide_usage_chunk and api in ("openai-chat", "openai-completions")
        self._carry = b""
        self._complete = False
        self._final = False
        self._error = False
        self._usage: tokens.TokenCounts | None = None
        # Anthropic: message_start usage merged with each (cumulative) message_delta usage.
        self._anthropic_usage: dict[str, Any] | None = None
        # Gemini: where the last usageMetadata was seen (block, position; -1 = the block is the
        # JSON document); running totals, so only the last is parsed, when `usage` is read.
        self._gemini_last: tuple[bytes, int] | None = None
        self._gemini_array: _JsonArrayElements | None = None
        self._sniffed = api != "gemini"
        self._events = (
            eventstream.EventStreamParser() if api in ("bedrock-converse", "bedrock-invoke") else None
        )
        self._block = {
            "openai-responses": self._responses_block,
            "anthropic-messages": self._anthropic_block,
            "gemini": self._gemini_block,
        }.get(api, self._openai_block)
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._folded_output_tokens = 0
        self._finished = False
        self._passthrough = False

    # -- public ---------------------------------------------------------------------------------

    @property
    def usage(self) -> tokens.TokenCounts | None:
        """Provider-reported usage seen so far (final once the stream is complete)."""
        if self._gemini_last is not None:
            block, pos = self._gemini_last
            self._gemini_last = None
            payload = _loads(block if pos < 0 else (sse.event_data_at(block, pos) or b""))
            if isinstance(payload, dict):
                counts = usage_mod.usage_from_json("gemini", payload)
                if counts is not None:
                    self._usage = counts
        return self._usage

    @property
    def complete(self) -> bool:
        """The stream reached its proper end ([DONE], message_stop, response.completed, ...)."""
        return self._complete

    @property
    def error(self) -> bool:
        """The provider reported an error inside the stream (after HTTP 200)."""
        return self._error

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward to the client for this upstream chunk (the same object when unchanged)."""
        if not chunk or self._passthrough:
            return chunk
        if self._events is not None:
            self._feed_event_stream(chunk)
            return chunk
        if not self._sniffed:
            stripped = chunk.lstrip()
            if not stripped:
                return chunk
            self._sniffed = True
            if stripped[:1] == b"[":
                self._gemini_array = _JsonArrayElements()
        if self._gemini_array is not None:
            for element in self._gemini_array.feed(chunk):
                self._gemini_payload(element)
            return chunk
        data = self._carry + chunk if self._carry else chunk
        # Fast path: upstreams flush whole events, so a read usually ends on a boundary.
        cut = len(data) if data.endswith(b"\n\n") or data.endswith(b"\n\r\n") else sse.last_event_end(data)
        if cut < 0:
            if len(data) > MAX_SSE_EVENT_BYTES:
                self._passthrough = True
                self._carry = b""
                return data if self._hide else chunk
            self._carry = data
            return b"" if self._hide else chunk
        if cut == len(data):
            block, self._carry = data, b""
        else:
            block, self._carry = data[:cut], data[cut:]
        out = self._block(block, False)
        if not self._hide:
            return chunk
        return chunk if out is chunk else out

    def finish(self) -> bytes:
        """End of the upstream stream: process what was held back and return it for the client."""
        if self._finished:
            return b""
        self._finished = True
        if self._events is not None or self._gemini_array is not None:
            return b""
        tail, self._carry = self._carry, b""
        if not tail:
            return b""
        out = self._block(tail, True)
        return out if self._hide else b""

    def fallback_counts(self, prompt_tokens: int) -> tokens.TokenCounts:
        """Usage of a stream cut off before its final usage: provider-reported parts where known
        (e.g. Anthropic's message_start input), else `prompt_tokens`; output counted with tiktoken
        from the text that passed (reasoning the provider never streamed cannot be seen)."""
        self._folded_output_tokens += self._count_kept()
        counted = self._folded_output_tokens
        reported = self.usage
        if reported is None:
            return tokens.TokenCounts(input_tokens=prompt_tokens, output_tokens=counted)
        return tokens.TokenCounts(
            input_tokens=reported.input_tokens or prompt_tokens,
            cached_input_tokens=reported.cached_input_tokens,
            cache_write_tokens=reported.cache_write_tokens,
            output_tokens=max(reported.output_tokens, counted),
            reasoning_tokens=reported.reasoning_tokens,
        )

    def settled_counts(self, prompt_tokens: int) -> tokens.TokenCounts:
        """What to charge: the provider's final usage when it arrived, else `fallback_counts`."""
        usage = self.usage
        if usage is not None and (self._final or self._complete):
            return usage
        return self.fallback_counts(prompt_tokens)

    # -- SSE formats ----------------------------------------------------------------------------

    def _keep(self, data: bytes) -> None:
        self._kept.append(data)
        self._kept_size += len(data)
        if self._kept_size > _KEEP_BYTES:
            self._folded_output_tokens += self._count_kept()

    def _openai_block(self, block: bytes, flush: bool) -> bytes:
        """Whole events of a chat/completions stream; returns the block, or a copy without the
        dropped usage event. Every chunk says `"usage":null` once include_usage is on: only a
        usage OBJECT leads to parsing."""
        self._keep(block)
        done = block.rfind(b"[DONE]")
        if done >= 0 and _is_done_line(block, done):
            self._complete = True
        if block.count(b'"usage"') > block.count(b'"usage":null') and _USAGE_OBJECT.search(block):
            return self._openai_usage(block, flush)
        return block

    def _responses_block(self, block: bytes, flush: bool) -> bytes:
        self._keep(block)
        if (
            b"response.completed" in block
            or b"response.incomplete" in block
            or b"response.failed" in block
            or b"error" in block
        ):
            self._responses_events(block, flush)
        return block

    def _anthropic_block(self, block: bytes, flush: bool) -> bytes:
        self._keep(block)
        if b"message_" in block or b"error" in block:
            self._anthropic_events(block, flush)
        return block

    def _gemini_block(self, block: bytes, flush: bool) -> bytes:
        self._keep(block)
        pos = block.rfind(b'"usageMetadata"')
        if pos >= 0:
            self._gemini_last = (block, pos)
        if b'"finishReason"' in block:
            self._complete = self._final = True
        return block

    def _openai_usage(self, block: bytes, flush: bool) -> bytes:
        drop: list[tuple[int, int]] = []
        for match in _USAGE_OBJECT.finditer(block):
            # Parse only the event around the match, not the whole block.
            start = sse.event_start(block, match.start())
            if drop and start < drop[-1][1]:
                continue
            for event in sse.raw_events(block[start:], flush=flush):
                self._openai_event(event.data, start + event.start, start + event.end, drop)
                break
        if not drop:
            return block
        parts: list[bytes] = []
        pos = 0
        for start, end in drop:
            parts.append(block[pos:start])
            pos = end
        parts.append(block[pos:])
        return b"".join(parts)

    def _openai_event(self, data: bytes, start: int, end: int, drop: list[tuple[int, int]]) -> None:
        payload = _loads(data)
        if not isinstance(payload, dict):
            return
        counts = usage_mod.usage_from_json(self.api, payload)
        if counts is None:
            return
        self._usage = counts
        if payload.get("choices") == []:
            # The dedicated final usage chunk (servers that report running usage on content
            # chunks are final only at [DONE]).
            self._final = True
            if self._hide:
                drop.append((start, end))

    def _responses_events(self, block: bytes, flush: bool) -> None:
        for event in sse.raw_events(block, flush=flush):
            name = event.event
            if name == b"message":  # no event line: the type is in the data
                if not any(m in event.data for m in _RESPONSES_END) and b"error" not in event.data:
                    continue
                payload = _loads(event.data)
                name = str(payload.get("type", "")).encode() if isinstance(payload, dict) else b""
            elif name not in _RESPONSES_END and name != b"error":
                continue
            else:
                payload = _loads(event.data)
            if name == b"error":
                self._error = True
                continue
            if name not in _RESPONSES_END:
                continue
            self._complete = True
            if name == b"response.failed":
                self._error = True
            if isinstance(payload, dict):
                counts = usage_mod.usage_from_json("openai-responses", payload)
                if counts is not None:
                    self._usage = counts
                    self._final = True

    def _anthropic_events(self, block: bytes, flush: bool) -> None:
        for event in sse.raw_events(block, flush=flush):
            name = event.event
            if name == b"message":  # no event line: the type is in the data
                if not any(m in event.data for m in (b"message_", b"error")):
                    continue
            elif name not in (b"message_start", b"message_delta", b"message_stop", b"error"):
                continue
            payload = _loads(event.data)
            if isinstance(payload, dict):
                self._anthropic_payload(payload)

    def _anthropic_payload(self, payload: Mapping[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._anthropic_usage = dict(usage)
                self._usage = usage_mod.anthropic_usage(self._anthropic_usage)
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # Cumulative counts: the latest value of each field replaces the earlier one.
                merged = self._anthropic_usage if self._anthropic_usage is not None else {}
                merged.update({k: v for k, v in usage.items() if v is not None})
                self._anthropic_usage = merged
                self._usage = usage_mod.anthropic_usage(merged)
                self._final = True
        elif kind == "message_stop":
            self._complete = True
        elif kind == "error":
            self._error = True

    # -- Gemini -----------------------------------------------------------------------------------

    def _gemini_payload(self, element: bytes) -> None:
        self._keep(element)
        if b'"usageMetadata"' in element:
            self._gemini_last = (element, -1)
        if b'"finishReason"' in element:
            self._complete = self._final = True

    # -- AWS event stream -----------------------------------------------------------------------

    def _feed_event_stream(self, chunk: bytes) -> None:
        assert self._events is not None
        try:
            messages = self._events.feed(chunk)
        except eventstream.EventStreamError:
            self._error = True
            return
        for message in messages:
            if message.message_type != "event":
                self._error = True
                continue
            if self.api == "bedrock-converse":
                self._converse_event(message)
            else:
                self._invoke_chunk(message)

    def _converse_event(self, message: eventstream.EventStreamMessage) -> None:
        event_type = message.event_type
        if event_type == "metadata":
            payload = _loads(message.payload)
            usage = payload.get("usage") if isinstance(payload, dict) else None
            if isinstance(usage, dict):
                self._usage = usage_mod.bedrock_usage(usage)
                self._final = True
            self._complete = True
        elif event_type in ("contentBlockDelta", "contentBlockStart"):
            self._keep(message.payload)

    def _invoke_chunk(self, message: eventstream.EventStreamMessage) -> None:
        if message.event_type != "chunk":
            return
        envelope = _loads(message.payload)
        encoded = envelope.get("bytes") if isinstance(envelope, dict) else None
        if not isinstance(encoded, str):
            return
        try:
            native = base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            return
        self._keep(native)
        if b"invocationMetrics" in native or b"message_" in native or b'"error"' in native:
            payload = _loads(native)
            if not isinstance(payload, dict):
                return
            if "type" in payload:
                self._anthropic_payload(payload)
            metrics = payload.get("amazon-bedrock-invocationMetrics")
            if isinstance(metrics, dict):
                # Bedrock appends these to every model's last chunk; Claude's own usage (message_start
                # + message_delta, with its cache split) is preferred when it was seen.
                if self._anthropic_usage is None:
                    self._usage = usage_mod.bedrock_invocation_metrics(metrics)
                self._final = self._complete = True

    # -- fallback text ----------------------------------------------------------------------------

    def _count_kept(self) -> int:
        if not self._kept:
            return 0
        kept, self._kept, self._kept_size = self._kept, [], 0
        texts: list[str] = []
        if self.api in _SSE_APIS or (self.api == "gemini" and self._gemini_array is None):
            for block in kept:
                for event in sse.raw_events(block, flush=True):
                    payload = _loads(event.data)
                    if isinstance(payload, dict):
                        _collect_text(self.api, payload, texts)
        else:
            for item in kept:  # one JSON document each
                payload = _loads(item)
                if isinstance(payload, dict):
                    _collect_text(self.api, payload, texts)
        if not texts:
            return 0
        # Streamed pieces are one contiguous output: tokenise them together, as the model did.
        return tokens.count_tokens(self.model, "".join(texts))


def _append(texts: list[str], value: object) -> None:
    if isinstance(value, str) and value:
        texts.append(value)
    elif isinstance(value, dict | list) and value:
        texts.append(orjson.dumps(value).decode())


def _collect_text(api: ApiFormat, payload: Mapping[str, Any], texts: list[str]) -> None:
    """Generated text (incl. visible reasoning and tool-call arguments) of one streamed event."""
    if api in ("openai-chat", "openai-completions", "openai-embeddings"):
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            _append(texts, choice.get("text"))
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for key in ("content", "reasoning_content", "reasoning", "refusal"):
                _append(texts, delta.get(key))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        _append(texts, function.get("name"))
                        _append(texts, function.get("arguments"))
    elif api == "openai-responses":
        kind = payload.get("type")
        if isinstance(kind, str) and kind.endswith(".delta"):
            _append(texts, payload.get("delta"))
    elif api in ("anthropic-messages", "bedrock-invoke"):
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                for key in ("text", "thinking", "partial_json"):
                    _append(texts, delta.get(key))
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict):
                _append(texts, block.get("text"))
                _append(texts, block.get("name"))
        elif api == "bedrock-invoke":
            # Other native formats: Llama `generation`, Titan `outputText`, Claude v2 `completion`,
            # Mistral `outputs[].text`, Nova `contentBlockDelta.delta.text`.
            for key in ("generation", "outputText", "completion"):
                _append(texts, payload.get(key))
            outputs = payload.get("outputs")
            if isinstance(outputs, list):
                for output in outputs:
                    if isinstance(output, dict):
                        _append(texts, output.get("text"))
            block_delta = payload.get("contentBlockDelta")
            if isinstance(block_delta, dict):
                _bedrock_delta_text(block_delta, texts)
    elif api == "gemini":
        candidates = payload.get("candidates")
        if not isinstance(candidates, list):
            return
        for candidate in candidates:
            content = candidate.get("content") if isinstance(candidate, dict) else None
            parts = content.get("parts") if isinstance(content, dict) else None
            if isinstance(parts, list):
                for part in parts:
                    if isinstance(part, dict):
                        _append(texts, part.get("text"))
                        _append(texts, part.get("functionCall"))
    elif api == "bedrock-converse":
        if "delta" in payload:
            _bedrock_delta_text(payload, texts)
        start = payload.get("start")
        tool_use = start.get("toolUse") if isinstance(start, dict) else None
        if isinstance(tool_use, dict):
            _append(texts, tool_use.get("name"))


def _bedrock_delta_text(payload: Mapping[str, Any], texts: list[str]) -> None:
    delta = payload.get("delta")
    if not isinstance(delta, dict):
        return
    _append(texts, delta.get("text"))
    tool_use = delta.get("toolUse")
    if isinstance(tool_use, dict):
        _append(texts, tool_use.get("input"))
    reasoning = delta.get("reasoningContent")
    if isinstance(reasoning, dict):
        _append(texts, reasoning.get("text"))
