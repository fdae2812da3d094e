"""The Anthropic Messages wire format (`POST /v1/messages`, `/v1/messages/count_tokens`): request
fields, prompt counting, usage (with its cache split), the SSE stream meter, the error body and the
model list the anthropic SDK reads.

Served by the anthropic and vertex providers; `apis.bedrock` reuses `count_messages`,
`anthropic_usage` and `MessagesMeter.payload_event` for Claude's payloads inside InvokeModel.
Registered in `apis/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from llmkeys_proxy import config, errors, sse, tokens
from llmkeys_proxy.apis import base

COUNT_TOKENS = "messages/count_tokens"


def _blocks(counter: base.PromptCounter, content: object) -> None:
    if isinstance(content, str) or not isinstance(content, list):
        counter.text(content)
        return
    for block in content:
        if not isinstance(block, Mapping):
            counter.text(block)
            continue
        kind = block.get("type")
        if kind == "text":
            counter.text(block.get("text"))
        elif kind == "thinking":
            counter.text(block.get("thinking"))
        elif kind == "tool_use":
            counter.text(block.get("name"))
            counter.text(block.get("input"))
        elif kind == "tool_result":
            _blocks(counter, block.get("content"))
        elif kind in ("image", "document", "redacted_thinking", "container_upload"):
            counter.fixed += base.NON_TEXT_PART_TOKENS
        else:
            counter.text(block)


def count_messages(counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
    _blocks(counter, body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            counter.fixed += base.TOKENS_PER_MESSAGE
            if isinstance(message, Mapping):
                _blocks(counter, message.get("content"))
            else:
                counter.text(message)
        counter.fixed += base.REPLY_PRIMING_TOKENS
    if body.get("tools"):
        counter.text(body["tools"])


def anthropic_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Anthropic `usage`: input_tokens excludes cache reads and writes."""
    return base.input_excluding_cache(
        usage.get("input_tokens"),
        usage.get("cache_read_input_tokens"),
        usage.get("cache_creation_input_tokens"),
        usage.get("output_tokens"),
    )


def collect_text(payload: Mapping[str, Any], texts: list[str]) -> bool:
    """Text of a content_block_delta / content_block_start event; False for any other event."""
    kind = payload.get("type")
    if kind == "content_block_delta":
        delta = payload.get("delta")
        if isinstance(delta, dict):
            for key in ("text", "thinking", "partial_json"):
                base.append_text(texts, delta.get(key))
        return True
    if kind == "content_block_start":
        block = payload.get("content_block")
        if isinstance(block, dict):
            base.append_text(texts, block.get("text"))
            base.append_text(texts, block.get("name"))
        return True
    return False


class MessagesMeter(base.StreamMeter):
    """An Anthropic SSE stream: usage from message_start and message_delta, complete at message_stop."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        # message_start usage merged with each (cumulative) message_delta usage.
        self._anthropic_usage: dict[str, Any] | None = None

    def _block(self, block: bytes, flush: bool) -> bytes:
        self._keep(block)
        if b"message_" in block or b"error" in block:
            self._events(block, flush)
        return block

    def _events(self, block: bytes, flush: bool) -> None:
        for event in sse.raw_events(block, flush=flush):
            name = event.event
            if name == b"message":  # no event line: the type is in the data
                if not any(m in event.data for m in (b"message_", b"error")):
                    continue
            elif name not in (b"message_start", b"message_delta", b"message_stop", b"error"):
                continue
            payload = base.loads(event.data)
            if isinstance(payload, dict):
                self.payload_event(payload)

    def payload_event(self, payload: Mapping[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._anthropic_usage = dict(usage)
                self._usage = anthropic_usage(self._anthropic_usage)
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # Cumulative counts: the latest value of each field replaces the earlier one.
                merged = self._anthropic_usage if self._anthropic_usage is not None else {}
                merged.update({k: v for k, v in usage.items() if v is not None})
                self._anthropic_usage = merged
                self._usage = anthropic_usage(merged)
                self._final = True
        elif kind == "message_stop":
            self._complete = True
        elif kind == "error":
            self._error = True

    def collect_text(self, payload: Mapping[str, Any], texts: list[str]) -> None:
        collect_text(payload, texts)


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicFamily(base.WireFamily):
    name: ClassVar[base.ApiFamily] = "anthropic"

    def error_body(self, error: errors.ProxyError) -> bytes:
        kind = _ANTHROPIC_TYPES.get(error.status, "api_error")
        return orjson.dumps(
            {"type": "error", "error": {"type": kind, "message": error.message, "code": error.code}}
        )

    def model_list(self, listed: list[tuple[str, config.ProviderEntry]]) -> object:
        models = [self.model_object(model, provider) for model, provider in listed]
        first, last = (listed[0][0], listed[-1][0]) if listed else (None, None)
        return {"data": models, "has_more": False, "first_id": first, "last_id": last}

    def model_object(self, model: str, provider: config.ProviderEntry) -> object:
        return {"type": "model", "id": model, "display_name": model, "created_at": "1970-01-01T00:00:00Z"}


FAMILY = AnthropicFamily()


class MessagesFormat(base.WireFormat):
    name: ClassVar[base.ApiFormat] = "anthropic-messages"
    family: ClassVar[base.WireFamily] = FAMILY
    free_operations: ClassVar[frozenset[str]] = frozenset({COUNT_TOKENS})

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        count_messages(counter, body)

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        return base.first_int(body, ("max_tokens",))

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        usage = payload.get("usage")
        return anthropic_usage(usage) if isinstance(usage, Mapping) else None

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return MessagesMeter(model)


MESSAGES = MessagesFormat()
FORMATS: tuple[base.WireFormat, ...] = (MESSAGES,)
ROUTES: tuple[base.RouteRow, ...] = (
    base.RouteRow("POST", "/v1/messages", base.Endpoint(MESSAGES, "messages")),
    base.RouteRow("POST", "/v1/messages/count_tokens", base.Endpoint(MESSAGES, COUNT_TOKENS, stream=False)),
)
