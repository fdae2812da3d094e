"""The Bedrock Runtime wire formats (`POST /model/{modelId}/{operation}`, boto3 bedrock-runtime):
Converse and InvokeModel. Request fields, prompt counting (Nova, Claude, Llama, Titan bodies),
usage from bodies and `X-Amzn-Bedrock-*` headers, the event-stream meters, and the error shape
botocore reads (`x-amzn-ErrorType` plus `message`).

Served by the bedrock provider. Claude's native payloads inside InvokeModel are Anthropic
Messages: counted and metered with `apis.anthropic`. Registered in `apis/__init__.py`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from llmkeys_proxy import errors, eventstream, tokens
from llmkeys_proxy.apis import anthropic, base, openai

COUNT_TOKENS = "count-tokens"


def _blocks(counter: base.PromptCounter, blocks: object) -> None:
    if not isinstance(blocks, list):
        counter.text(blocks)
        return
    for block in blocks:
        if not isinstance(block, Mapping):
            counter.text(block)
        elif "text" in block:
            counter.text(block["text"])
        elif "json" in block:
            counter.text(block["json"])
        elif "toolUse" in block:
            tool_use = block["toolUse"]
            counter.text(tool_use.get("name") if isinstance(tool_use, Mapping) else None)
            counter.text(tool_use.get("input") if isinstance(tool_use, Mapping) else tool_use)
        elif "toolResult" in block:
            result = block["toolResult"]
            _blocks(counter, result.get("content") if isinstance(result, Mapping) else result)
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"]
            text = reasoning.get("reasoningText") if isinstance(reasoning, Mapping) else None
            counter.text(text.get("text") if isinstance(text, Mapping) else None)
        elif "cachePoint" in block or "guardContent" in block:
            continue
        elif any(k in block for k in ("image", "document", "video")):
            counter.fixed += base.NON_TEXT_PART_TOKENS
        else:
            counter.text(block)


def count_converse(counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
    _blocks(counter, body.get("system", []))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            counter.fixed += base.TOKENS_PER_MESSAGE
            if isinstance(message, Mapping):
                _blocks(counter, message.get("content"))
        counter.fixed += base.REPLY_PRIMING_TOKENS
    if body.get("toolConfig"):
        counter.text(body["toolConfig"])


def count_invoke(counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
    # InvokeModel bodies are the model's native format: Claude (Anthropic Messages), Nova
    # (Converse-like), Llama/Mistral (`prompt`), Titan (`inputText`), Cohere (`message`).
    messages = body.get("messages")
    if isinstance(messages, list):
        if _has_untyped_blocks(messages):
            count_converse(counter, body)  # Nova: Converse-shaped blocks ({"text": ...})
        else:
            anthropic.count_messages(counter, body)  # Claude: typed blocks or plain string content
    else:
        counter.all_strings({k: v for k, v in body.items() if k != "anthropic_version"})


def _has_untyped_blocks(messages: list[Any]) -> bool:
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            return any(isinstance(block, Mapping) and "type" not in block for block in content)
    return False


def bedrock_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Converse `usage`: inputTokens excludes cache reads and writes."""
    return base.input_excluding_cache(
        usage.get("inputTokens"),
        usage.get("cacheReadInputTokens"),
        usage.get("cacheWriteInputTokens"),
        usage.get("outputTokens"),
    )


def bedrock_invocation_metrics(metrics: Mapping[str, Any]) -> tokens.TokenCounts:
    """`amazon-bedrock-invocationMetrics` of InvokeModelWithResponseStream's last chunk."""
    return base.input_excluding_cache(
        metrics.get("inputTokenCount"),
        metrics.get("cacheReadInputTokenCount"),
        metrics.get("cacheWriteInputTokenCount"),
        metrics.get("outputTokenCount"),
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return headers.get(name.lower()) if value is None else value


def usage_from_bedrock_headers(headers: Mapping[str, str]) -> tokens.TokenCounts | None:
    """InvokeModel reports usage in `X-Amzn-Bedrock-{Input,Output}-Token-Count` (+ cache) headers.

    Works with case-insensitive mappings (aiohttp, httpx) and with plain dicts in either the
    documented or the lower-case spelling."""

    def number(name: str) -> int | None:
        value = _header(headers, name)
        if value is None or not value.strip().isdigit():
            return None
        count = int(value)
        return count if count <= base.MAX_REPORTED_TOKENS else base.INVALID_COUNT

    inputs = number("X-Amzn-Bedrock-Input-Token-Count")
    outputs = number("X-Amzn-Bedrock-Output-Token-Count")
    if inputs is None and outputs is None:
        return None
    cache_read = number("X-Amzn-Bedrock-Cache-Read-Input-Token-Count") or 0
    cache_write = number("X-Amzn-Bedrock-Cache-Write-Input-Token-Count") or 0
    return tokens.TokenCounts(
        input_tokens=(inputs or 0) + cache_read + cache_write,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=outputs or 0,
    )


def invoke_usage(payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
    metrics = payload.get("amazon-bedrock-invocationMetrics")
    if isinstance(metrics, Mapping):
        return bedrock_invocation_metrics(metrics)
    usage = payload.get("usage")
    if isinstance(usage, Mapping):
        if "inputTokens" in usage or "outputTokens" in usage:  # Nova
            return bedrock_usage(usage)
        return anthropic.anthropic_usage(usage)  # Claude
    if "prompt_token_count" in payload or "generation_token_count" in payload:  # Llama
        return tokens.TokenCounts(
            input_tokens=base.count_of(payload.get("prompt_token_count")),
            output_tokens=base.count_of(payload.get("generation_token_count")),
        )
    if "inputTextTokenCount" in payload:  # Titan
        results = payload.get("results")
        output = (
            sum(base.count_of(r.get("tokenCount")) for r in results if isinstance(r, Mapping))
            if isinstance(results, list)
            else 0
        )
        return tokens.TokenCounts(
            input_tokens=base.count_of(payload.get("inputTextTokenCount")), output_tokens=output
        )
    return None


def _delta_text(payload: Mapping[str, Any], texts: list[str]) -> None:
    delta = payload.get("delta")
    if not isinstance(delta, dict):
        return
    base.append_text(texts, delta.get("text"))
    tool_use = delta.get("toolUse")
    if isinstance(tool_use, dict):
        base.append_text(texts, tool_use.get("input"))
    reasoning = delta.get("reasoningContent")
    if isinstance(reasoning, dict):
        base.append_text(texts, reasoning.get("text"))


class EventStreamMeter(base.StreamMeter):
    """A vnd.amazon.eventstream response: frames decoded as they pass, each event handled by `_event`."""

    _kept_sse = False

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._frames = eventstream.EventStreamParser()

    def feed(self, chunk: bytes) -> bytes:
        if not chunk or self._passthrough:
            return chunk
        self._feed_event_stream(chunk)
        return chunk

    def finish(self) -> bytes:
        self._finished = True
        return b""

    def _block(self, block: bytes, flush: bool) -> bytes:
        raise AssertionError("an event stream has no SSE blocks")

    def _feed_event_stream(self, chunk: bytes) -> None:
        assert self._frames is not None
        try:
            messages = self._frames.feed(chunk)
        except eventstream.EventStreamError:
            self._error = True
            return
        for message in messages:
            if message.message_type != "event":
                self._error = True
                continue
            self._event(message)

    def _event(self, message: eventstream.EventStreamMessage) -> None:
        raise NotImplementedError


class ConverseMeter(EventStreamMeter):
    """ConverseStream: usage in the `metadata` event; text from contentBlock* events."""

    def _event(self, message: eventstream.EventStreamMessage) -> None:
        event_type = message.event_type
        if event_type == "metadata":
            payload = base.loads(message.payload)
            usage = payload.get("usage") if isinstance(payload, dict) else None
            if isinstance(usage, dict):
                self._usage = bedrock_usage(usage)
                self._final = True
            self._complete = True
        elif event_type in ("contentBlockDelta", "contentBlockStart"):
            self._keep(message.payload)

    def collect_text(self, payload: Mapping[str, Any], texts: list[str]) -> None:
        if "delta" in payload:
            _delta_text(payload, texts)
        start = payload.get("start")
        tool_use = start.get("toolUse") if isinstance(start, dict) else None
        if isinstance(tool_use, dict):
            base.append_text(texts, tool_use.get("name"))


class InvokeMeter(EventStreamMeter, anthropic.MessagesMeter):
    """InvokeModelWithResponseStream: `chunk` events carry the model's native JSON (base64); Claude's
    are Anthropic Messages events, and Bedrock appends `amazon-bedrock-invocationMetrics` to the
    last chunk of every model."""

    def _event(self, message: eventstream.EventStreamMessage) -> None:
        if message.event_type != "chunk":
            return
        envelope = base.loads(message.payload)
        encoded = envelope.get("bytes") if isinstance(envelope, dict) else None
        if not isinstance(encoded, str):
            return
        try:
            native = base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            return
        self._keep(native)
        if b"invocationMetrics" in native or b"message_" in native or b'"error"' in native:
            payload = base.loads(native)
            if not isinstance(payload, dict):
                return
            if "type" in payload:
                self.payload_event(payload)
            metrics = payload.get("amazon-bedrock-invocationMetrics")
            if isinstance(metrics, dict):
                # Bedrock appends these to every model's last chunk; Claude's own usage (message_start
                # + message_delta, with its cache split) is preferred when it was seen.
                if self._anthropic_usage is None:
                    self._usage = bedrock_invocation_metrics(metrics)
                self._final = self._complete = True

    def collect_text(self, payload: Mapping[str, Any], texts: list[str]) -> None:
        if anthropic.collect_text(payload, texts):
            return
        # Other native formats: Llama `generation`, Titan `outputText`, Claude v2 `completion`,
        # Mistral `outputs[].text`, Nova `contentBlockDelta.delta.text`.
        for key in ("generation", "outputText", "completion"):
            base.append_text(texts, payload.get(key))
        outputs = payload.get("outputs")
        if isinstance(outputs, list):
            for output in outputs:
                if isinstance(output, dict):
                    base.append_text(texts, output.get("text"))
        block_delta = payload.get("contentBlockDelta")
        if isinstance(block_delta, dict):
            _delta_text(block_delta, texts)


_BEDROCK_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    413: "ValidationException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
}


class BedrockFamily(base.WireFamily):
    name: ClassVar[base.ApiFamily] = "bedrock"

    def error_body(self, error: errors.ProxyError) -> bytes:
        # botocore reads the exception name from the x-amzn-ErrorType header (set below) and `message`.
        return orjson.dumps({"message": error.message, "code": error.code})

    def error_headers(self, error: errors.ProxyError) -> Mapping[str, str]:
        return {"x-amzn-ErrorType": _BEDROCK_TYPES.get(error.status, "InternalServerException")}


FAMILY = BedrockFamily()


class ConverseFormat(base.WireFormat):
    name: ClassVar[base.ApiFormat] = "bedrock-converse"
    family: ClassVar[base.WireFamily] = FAMILY
    free_operations: ClassVar[frozenset[str]] = frozenset({COUNT_TOKENS})

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        count_converse(counter, body)

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        return base.first_int(body, ("inferenceConfig", "maxTokens"))

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        usage = payload.get("usage")
        return bedrock_usage(usage) if isinstance(usage, Mapping) else None

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return ConverseMeter(model)


class InvokeFormat(base.WireFormat):
    name: ClassVar[base.ApiFormat] = "bedrock-invoke"
    family: ClassVar[base.WireFamily] = FAMILY

    def count_prompt(self, counter: base.PromptCounter, body: Mapping[str, Any]) -> None:
        count_invoke(counter, body)

    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        return base.first_int(
            body,
            ("max_tokens",),  # Claude, Mistral
            ("max_gen_len",),  # Llama
            ("inferenceConfig", "max_new_tokens"),  # Nova
            ("inferenceConfig", "maxTokens"),
            ("textGenerationConfig", "maxTokenCount"),  # Titan
            ("max_tokens_to_sample",),  # Claude text completions
        )

    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        return invoke_usage(payload)

    def response_usage(
        self, operation: str, headers: Mapping[str, str], body: bytes
    ) -> tokens.TokenCounts | None:
        # Every model family reports InvokeModel usage in headers; the body format varies.
        from_headers = usage_from_bedrock_headers(headers)
        if from_headers is not None:
            return from_headers
        return super().response_usage(operation, headers, body)

    def output_text(self, payload: Mapping[str, Any]) -> list[str]:
        # OpenAI-compatible models (gpt-oss) answer InvokeModel in Chat Completions' shape.
        return openai.response_text(payload)

    def meter(self, model: str, hide_usage_chunk: bool) -> base.StreamMeter:
        return InvokeMeter(model)


CONVERSE = ConverseFormat()
INVOKE = InvokeFormat()
FORMATS: tuple[base.WireFormat, ...] = (CONVERSE, INVOKE)
#: Operation -> (wire format, streams).
OPERATIONS: dict[str, tuple[base.WireFormat, bool]] = {
    "converse": (CONVERSE, False),
    "converse-stream": (CONVERSE, True),
    "invoke": (INVOKE, False),
    "invoke-with-response-stream": (INVOKE, True),
    COUNT_TOKENS: (CONVERSE, False),
}
ROUTES: tuple[base.RouteRow, ...] = tuple(
    base.RouteRow(
        "POST", f"/model/{{model}}/{operation}", base.Endpoint(wire, operation, stream=streams), "model"
    )
    for operation, (wire, streams) in OPERATIONS.items()
)
