"""The OpenAI wire formats: Chat Completions, Completions, Embeddings and Responses, also under
Azure OpenAI's paths. Request fields (model, output caps, `stream_options.include_usage`), prompt
counting, usage, the SSE stream meters (with the injected usage chunk hidden), fallback text, the
error body and the model list the openai SDK reads.

Served by the openai, openai-compatible, azure and mock providers. Registered in
`apis/__init__.py`; `apis.bedrock` reads OpenAI-shaped InvokeModel answers with `response_text`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from llmkeys_proxy import config, errors, sse, tokens
from llmkeys_proxy.apis import base

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_RESPONSES_END = (b"response.completed", b"response.incomplete", b"response.failed")


def _content(counter: base.PromptCounter, content: object) -> None:
    """Chat/Responses message content: a string or a list of typed parts."""
    if isinstance(content, str) or content is None:
        counter.text(content)
        return
    if not isinstance(content, list):
        counter.text(content)
        return
    for part in content:
        if not isinstance(part, Mapping):
            counter.text(part)
            continue
        kind = part.get("type")
        if "text" in part and isinstance(part["text"], str):
            counter.text(part["text"])
        elif kind in ("refusal",):
            counter.text(part.get("refusal"))
        elif kind in ("image_url", "input_image", "input_audio", "file", "input_file", "image", "audio"):
            counter.fixed += base.NON_TEXT_PART_TOKENS
        else:
            counter.text(part)


def count_chat(counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            counter.fixed += base.TOKENS_PER_MESSAGE
            if not isinstance(message, Mapping):
                counter.text(message)
                continue
            for key, value in message.items():
                if key == "content":
                    _content(counter, value)
                elif key == "tool_calls" and isinstance(value, list):
                    for call in value:
                        function = call.get("function") if isinstance(call, Mapping) else None
                        if isinstance(function, Mapping):
                            counter.text(function.get("name"))
                            counter.text(function.get("arguments"))
                        else:
                            counter.text(call)
                else:
                    counter.text(value)
                    if key == "name":
                        counter.fixed += base.TOKENS_PER_NAME
        counter.fixed += base.REPLY_PRIMING_TOKENS
    for key in ("tools", "functions", "response_format"):
        if body.get(key):
            counter.text(body[key])


def count_responses(counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
    counter.text(body.get("instructions"))
    items = body.get("input")
    if isinstance(items, list):
        for item in items:
            counter.fixed += base.TOKENS_PER_MESSAGE
            if not isinstance(item, Mapping):
                counter.text(item)
                continue
            kind = item.get("type", "message")
            if kind == "message" or "role" in item:
                counter.text(item.get("role"))
                _content(counter, item.get("content"))
            elif kind == "function_call":
                counter.text(item.get("name"))
                counter.text(item.get("arguments"))
            elif kind == "function_call_output":
                _content(counter, item.get("output"))
            elif kind == "item_reference":
                continue
            else:
                counter.text(item)
    else:
        counter.text(items)
    counter.fixed += base.REPLY_PRIMING_TOKENS
    for key in ("tools", "text"):
        if body.get(key):
            counter.text(body[key])


def _prompt_list(counter: base.PromptCounter, value: object) -> None:
    """Completions `prompt` / embeddings `input`: str, list of str, token array or list of arrays."""
    if isinstance(value, str):
        counter.text(value)
    elif isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            counter.fixed += len(value)
            return
        for item in value:
            if isinstance(item, list):
                counter.fixed += len(item)
            else:
                counter.text(item)
    else:
        counter.text(value)


def openai_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Chat/Completions/Embeddings `usage` (prompt_tokens includes cached tokens)."""
    prompt = base.get(usage, "prompt_tokens_details")
    completion = base.get(usage, "completion_tokens_details")
    prompt_details: Mapping[str, Any] = prompt if isinstance(prompt, Mapping) else {}
    completion_details: Mapping[str, Any] = completion if isinstance(completion, Mapping) else {}
    return tokens.TokenCounts(
        input_tokens=base.count_of(usage.get("prompt_tokens")),
        cached_input_tokens=base.count_of(prompt_details.get("cached_tokens")),
        cache_write_tokens=base.count_of(prompt_details.get("cache_write_tokens")),
        output_tokens=base.count_of(usage.get("completion_tokens")),
        reasoning_tokens=base.count_of(completion_details.get("reasoning_tokens")),
    )


def openai_responses_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Responses API `usage` (input_tokens includes cached tokens)."""
    return tokens.TokenCounts(
        input_tokens=base.count_of(usage.get("input_tokens")),
        cached_input_tokens=base.count_of(base.get(usage, "input_tokens_details", "cached_tokens")),
        output_tokens=base.count_of(usage.get("output_tokens")),
        reasoning_tokens=base.count_of(base.get(usage, "output_tokens_details", "reasoning_tokens")),
    )


def usage_of(payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
    """Chat/Completions/Embeddings: the body's `usage`."""
    usage = payload.get("usage")
    return openai_usage(usage) if isinstance(usage, Mapping) else None


def response_text(payload: Mapping[str, Any]) -> list[str]:
    """Generated text of a whole Chat/Completions (`choices`) or Responses (`output`) body."""
    texts: list[str] = []
    choices = payload.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(content, str):
                texts.append(content)
    output = payload.get("output")
    if isinstance(output, list):
        for item in output:
            parts = item.get("content") if isinstance(item, dict) else None
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


def _is_done_line(block: bytes, pos: int) -> bool:
    """`data: [DONE]` is the whole line around `pos` (not text inside a chunk)."""
    line_start = max(block.rfind(b"\n", 0, pos), block.rfind(b"\r", 0, pos)) + 1
    return block[line_start:pos].rstrip() == b"data:" and block[pos + 6 : pos + 8].strip() == b""


class ChatMeter(base.StreamMeter):
    """A Chat Completions / Completions (or Embeddings) SSE stream: usage from the usage chunk,
    complete at `data: [DONE]`; with `hide_usage_chunk`, the usage-only chunk the proxy asked for
    is dropped from what the client receives."""

    def _block(self, block: bytes, flush: bool) -> bytes:
        """Whole events of a chat/completions stream; returns the block, or a copy without the
        dropped usage event. Every chunk says `"usage":null` once include_usage is on: only a
        usage OBJECT leads to parsing."""
        self._keep(block)
        done = block.rfind(b"[DONE]")
        if done >= 0 and _is_done_line(block, done):
            self._complete = True
        if block.count(b'"usage"') > block.count(b'"usage":null') and _USAGE_OBJECT.search(block):
            return self._usage_events(block, flush)
        return block

    def _usage_events(self, block: bytes, flush: bool) -> bytes:
        drop: list[tuple[int, int]] = []
        for match in _USAGE_OBJECT.finditer(block):
            # Parse only the event around the match, not the whole block.
            start = sse.event_start(block, match.start())
            if drop and start < drop[-1][1]:
                continue
            for event in sse.raw_events(block[start:], flush=flush):
                self._usage_event(event.data, start + event.start, start + event.end, drop)
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

    def _usage_event(self, data: bytes, start: int, end: int, drop: list[tuple[int, int]]) -> None:
        payload = base.loads(data)
        if not isinstance(payload, dict):
            return
        counts = usage_of(payload)
        if counts is None:
            return
        self._usage = counts
        if payload.get("choices") == []:
            # The dedicated final usage chunk (servers that report running usage on content
            # chunks are final only at [DONE]).
            self._final = True
            if self._hide:
                drop.append((start, end))

    def collect_text(self, payload: Mapping[str, Any], texts: list[str]) -> None:
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            base.append_text(texts, choice.get("text"))
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for key in ("content", "reasoning_content", "reasoning", "refusal"):
                base.append_text(texts, delta.get(key))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        base.append_text(texts, function.get("name"))
                        base.append_text(texts, function.get("arguments"))


class ResponsesMeter(base.StreamMeter):
    """A Responses API SSE stream: usage and the end in response.completed / incomplete / failed."""

    def _block(self, block: bytes, flush: bool) -> bytes:
        self._keep(block)
        if (
            b"response.completed" in block
            or b"response.incomplete" in block
            or b"response.failed" in block
            or b"error" in block
        ):
            self._events(block, flush)
        return block

    def _events(self, block: bytes, flush: bool) -> None:
        for event in sse.raw_events(block, flush=flush):
            name = event.event
            if name == b"message":  # no event line: the type is in the data
                if not any(m in event.data for m in _RESPONSES_END) and b"error" not in event.data:
                    continue
                payload = base.loads(event.data)
                name = str(payload.get("type", "")).encode() if isinstance(payload, dict) else b""
            elif name not in _RESPONSES_END and name != b"error":
                continue
            else:
                payload = base.loads(event.data)
            if name == b"error":
                self._error = True
                continue
            if name not in _RESPONSES_END:
                continue
            self._complete = True
            if name == b"response.failed":
                self._error = True
            if isinstance(payload, dict):
                counts = responses_usage_of(payload)
                if counts is not None:
                    self._usage = counts
                    self._final = True

    def collect_text(self, payload: Mapping[str, Any], texts: list[str]) -> None:
        kind = payload.get("type")
        if isinstance(kind, str) and kind.endswith(".delta"):
            base.append_text(texts, payload.get("delta"))


def responses_usage_of(payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
    usage = payload.get("usage")
    if not isinstance(usage, Mapping):
        # A streaming event (response.completed, ...) wraps the response object.
        usage = base.get(payload, "response", "usage")
    return openai_responses_usage(usage) if isinstance(usage, Mapping) else None


class OpenAIFamily(base.WireFamily):
    name: ClassVar[base.ApiFamily] = "openai"

    def error_body(self, error: errors.ProxyError) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": error.message,
                    "type": error.type,
                    "param": error.param,
                    "code": error.code,
                }
            }
        )

    def model_list(self, listed: list[tuple[str, config.ProviderEntry]]) -> object:
        return {"object": "list", "data": [self.model_object(model, provider) for model, provider in listed]}

    def model_object(self, model: str, provider: config.ProviderEntry) -> object:
        return {"id": model, "object": "model", "created": 0, "owned_by": provider.provider}


FAMILY = OpenAIFamily()


class _OpenAIFormat(base.WireFormat):
    family: ClassVar[base.WireFamily] = FAMILY
    model_in_body: ClassVar[bool] = True

    def output_text(self, payload: Mapping[str, Any]) -> list[str]:
        return response_text(payload)


class ChatFormat(_OpenAIFormat):
    name: ClassVar[base.ApiFormat] = "openai-chat"
    output_cap_field: ClassVar[str | None] = "max_completion_tokens"
    asks_for_stream_usage: ClassVar[bool] = True

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        count_chat(counter, body)

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        cap = base.first_int(body, ("max_completion_tokens",), ("max_tokens",))
        return None if cap is None else cap * base.choices(body, "n")

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        return usage_of(payload)

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return ChatMeter(model, hide_usage_chunk=hide_usage_chunk)


class CompletionsFormat(_OpenAIFormat):
    name: ClassVar[base.ApiFormat] = "openai-completions"
    output_cap_field: ClassVar[str | None] = "max_tokens"
    asks_for_stream_usage: ClassVar[bool] = True

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        _prompt_list(counter, body.get("prompt"))
        counter.text(body.get("suffix"))

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        cap = base.first_int(body, ("max_tokens",))
        return None if cap is None else cap * base.choices(body, "n", "best_of")

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        return usage_of(payload)

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return ChatMeter(model, hide_usage_chunk=hide_usage_chunk)


class EmbeddingsFormat(_OpenAIFormat):
    name: ClassVar[base.ApiFormat] = "openai-embeddings"

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        _prompt_list(counter, body.get("input"))

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        return 0  # embeddings produce no output

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        return usage_of(payload)

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return ChatMeter(model)


class ResponsesFormat(_OpenAIFormat):
    name: ClassVar[base.ApiFormat] = "openai-responses"
    output_cap_field: ClassVar[str | None] = "max_output_tokens"

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        count_responses(counter, body)

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        return base.first_int(body, ("max_output_tokens",))

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        return responses_usage_of(payload)

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return ResponsesMeter(model)


CHAT = ChatFormat()
COMPLETIONS = CompletionsFormat()
EMBEDDINGS = EmbeddingsFormat()
RESPONSES = ResponsesFormat()
FORMATS: tuple[base.WireFormat, ...] = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)

_CHAT = base.Endpoint(CHAT, "chat/completions")
_COMPLETIONS = base.Endpoint(COMPLETIONS, "completions")
_EMBEDDINGS = base.Endpoint(EMBEDDINGS, "embeddings")
_RESPONSES = base.Endpoint(RESPONSES, "responses")
ROUTES: tuple[base.RouteRow, ...] = (
    base.RouteRow("POST", "/v1/chat/completions", _CHAT),
    base.RouteRow("POST", "/v1/completions", _COMPLETIONS),
    base.RouteRow("POST", "/v1/embeddings", _EMBEDDINGS),
    base.RouteRow("POST", "/v1/responses", _RESPONSES),
    # Azure OpenAI, v1 API (the plain OpenAI SDK with base_url=<endpoint>/openai/v1).
    base.RouteRow("POST", "/openai/v1/chat/completions", _CHAT),
    base.RouteRow("POST", "/openai/v1/completions", _COMPLETIONS),
    base.RouteRow("POST", "/openai/v1/embeddings", _EMBEDDINGS),
    base.RouteRow("POST", "/openai/v1/responses", _RESPONSES),
    # Azure OpenAI, classic deployment URLs (AzureOpenAI SDK; ?api-version=...).
    base.RouteRow("POST", "/openai/deployments/{deployment}/chat/completions", _CHAT, "deployment", True),
    base.RouteRow("POST", "/openai/deployments/{deployment}/completions", _COMPLETIONS, "deployment", True),
    base.RouteRow("POST", "/openai/deployments/{deployment}/embeddings", _EMBEDDINGS, "deployment", True),
    base.RouteRow("POST", "/openai/responses", _RESPONSES),
)
