"""Prompt estimates, requested output caps and usage extraction from every provider's JSON.

The proxy's request pipeline uses `estimate_prompt_tokens` + `requested_output_tokens` to size a
reservation before forwarding, and `usage_from_json` to settle a non-streamed response with the
usage the provider reported (`streams.StreamUsage` does the same for streams). Local counts are
estimates: a provider's reported usage always wins when there is one.
Counting itself (the verified offline encodings) is `tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from llmkeys_proxy import tokens

ApiFormat = Literal[
    "openai-chat",
    "openai-completions",
    "openai-embeddings",
    "openai-responses",
    "anthropic-messages",
    "gemini",
    "bedrock-converse",
    "bedrock-invoke",
]

# Rough allowances for request parts tiktoken cannot count. Reservations only need the right order
# of magnitude; settlement replaces them with the provider's reported usage.
#: An image, audio clip, video or file part: OpenAI charges 85..~1,100 tokens per image, Anthropic up
#: to ~1,600, Gemini 258 per image; PDFs and audio can be more (underestimates are settled later).
NON_TEXT_PART_TOKENS = 1024
#: Per-message framing of chat formats (OpenAI cookbook: 3 per message, 3 to prime the reply).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

# --------------------------------------------------------------------------------------------------
# Request estimates


class _Counter:
    """Accumulates text (counted in one tiktoken call) and fixed allowances for one request."""

    __slots__ = ("fixed", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fixed = 0

    def text(self, value: object) -> None:
        if isinstance(value, str):
            if value:
                self.texts.append(value)
        elif value is not None:
            # Tool schemas, function arguments, structured payloads: their JSON text is a fair proxy.
            try:
                self.texts.append(orjson.dumps(value, default=str).decode())
            except orjson.JSONEncodeError:  # nested deeper than orjson writes: count its strings
                _all_strings(self, value)

    def total(self, model: str) -> int:
        if not self.texts:
            return self.fixed
        encode = tokens.encoding_for_model(model).encode_ordinary
        # Each value separately, as the cookbook recipe does: joining would merge tokens at the seams.
        return self.fixed + sum(len(encode(text)) for text in self.texts)


def _openai_content(counter: _Counter, content: object) -> None:
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
            counter.fixed += NON_TEXT_PART_TOKENS
        else:
            counter.text(part)


def _openai_chat(counter: _Counter, body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            counter.fixed += TOKENS_PER_MESSAGE
            if not isinstance(message, Mapping):
                counter.text(message)
                continue
            for key, value in message.items():
                if key == "content":
                    _openai_content(counter, value)
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
                        counter.fixed += TOKENS_PER_NAME
        counter.fixed += REPLY_PRIMING_TOKENS
    for key in ("tools", "functions", "response_format"):
        if body.get(key):
            counter.text(body[key])


def _openai_responses(counter: _Counter, body: Mapping[str, Any]) -> None:
    counter.text(body.get("instructions"))
    items = body.get("input")
    if isinstance(items, list):
        for item in items:
            counter.fixed += TOKENS_PER_MESSAGE
            if not isinstance(item, Mapping):
                counter.text(item)
                continue
            kind = item.get("type", "message")
            if kind == "message" or "role" in item:
                counter.text(item.get("role"))
                _openai_content(counter, item.get("content"))
            elif kind == "function_call":
                counter.text(item.get("name"))
                counter.text(item.get("arguments"))
            elif kind == "function_call_output":
                _openai_content(counter, item.get("output"))
            elif kind == "item_reference":
                continue
            else:
                counter.text(item)
    else:
        counter.text(items)
    counter.fixed += REPLY_PRIMING_TOKENS
    for key in ("tools", "text"):
        if body.get(key):
            counter.text(body[key])


def _prompt_list(counter: _Counter, value: object) -> None:
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


def _anthropic_blocks(counter: _Counter, content: object) -> None:
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
            _anthropic_blocks(counter, block.get("content"))
        elif kind in ("image", "document", "redacted_thinking", "container_upload"):
            counter.fixed += NON_TEXT_PART_TOKENS
        else:
            counter.text(block)


def _anthropic(counter: _Counter, body: Mapping[str, Any]) -> None:
    _anthropic_blocks(counter, body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            counter.fixed += TOKENS_PER_MESSAGE
            if isinstance(message, Mapping):
                _anthropic_blocks(counter, message.get("content"))
            else:
                counter.text(message)
        counter.fixed += REPLY_PRIMING_TOKENS
    if body.get("tools"):
        counter.text(body["tools"])


def _gemini_parts(counter: _Counter, content: object) -> None:
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
            counter.fixed += NON_TEXT_PART_TOKENS
        else:
            counter.text(part)


def _gemini(counter: _Counter, body: Mapping[str, Any]) -> None:
    _gemini_parts(counter, body.get("systemInstruction", body.get("system_instruction")))
    contents = body.get("contents")
    if isinstance(contents, Mapping):
        contents = [contents]
    if isinstance(contents, list):
        for content in contents:
            counter.fixed += TOKENS_PER_MESSAGE
            _gemini_parts(counter, content)
    # embedContent: {"content": {...}}; batchEmbedContents: {"requests": [{"content": ...}]}
    if "content" in body:
        _gemini_parts(counter, body["content"])
    requests = body.get("requests")
    if isinstance(requests, list):
        for request in requests:
            if isinstance(request, Mapping):
                _gemini_parts(counter, request.get("content"))
    if body.get("tools"):
        counter.text(body["tools"])


def _bedrock_blocks(counter: _Counter, blocks: object) -> None:
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
            _bedrock_blocks(counter, result.get("content") if isinstance(result, Mapping) else result)
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"]
            text = reasoning.get("reasoningText") if isinstance(reasoning, Mapping) else None
            counter.text(text.get("text") if isinstance(text, Mapping) else None)
        elif "cachePoint" in block or "guardContent" in block:
            continue
        elif any(k in block for k in ("image", "document", "video")):
            counter.fixed += NON_TEXT_PART_TOKENS
        else:
            counter.text(block)


def _bedrock_converse(counter: _Counter, body: Mapping[str, Any]) -> None:
    _bedrock_blocks(counter, body.get("system", []))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            counter.fixed += TOKENS_PER_MESSAGE
            if isinstance(message, Mapping):
                _bedrock_blocks(counter, message.get("content"))
        counter.fixed += REPLY_PRIMING_TOKENS
    if body.get("toolConfig"):
        counter.text(body["toolConfig"])


def _all_strings(counter: _Counter, value: object) -> None:
    """Unknown body shapes: every string value counts (keys and numbers do not). Iterative, so a
    hostile nesting depth cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            counter.text(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _bedrock_invoke(counter: _Counter, body: Mapping[str, Any]) -> None:
    # InvokeModel bodies are the model's native format: Claude (Anthropic Messages), Nova
    # (Converse-like), Llama/Mistral (`prompt`), Titan (`inputText`), Cohere (`message`).
    messages = body.get("messages")
    if isinstance(messages, list):
        if _has_untyped_blocks(messages):
            _bedrock_converse(counter, body)  # Nova: Converse-shaped blocks ({"text": ...})
        else:
            _anthropic(counter, body)  # Claude: typed blocks or plain string content
    else:
        _all_strings(counter, {k: v for k, v in body.items() if k != "anthropic_version"})


def _has_untyped_blocks(messages: list[Any]) -> bool:
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            return any(isinstance(block, Mapping) and "type" not in block for block in content)
    return False


def estimate_prompt_tokens(api: ApiFormat, model: str, body: Mapping[str, Any]) -> int:
    """Estimated input tokens of a request body, for the reservation made before forwarding.

    Text is counted with tiktoken (exact for OpenAI models, an approximation for Claude/Gemini);
    chat formats add the cookbook framing (3 per message, +1 per `name`, +3 reply priming); tool
    schemas and structured arguments count as their JSON text; each image/audio/file part counts
    `NON_TEXT_PART_TOKENS`.
    """
    counter = _Counter()
    if api == "openai-chat":
        _openai_chat(counter, body)
    elif api == "openai-responses":
        _openai_responses(counter, body)
    elif api == "openai-completions":
        _prompt_list(counter, body.get("prompt"))
        counter.text(body.get("suffix"))
    elif api == "openai-embeddings":
        _prompt_list(counter, body.get("input"))
    elif api == "anthropic-messages":
        _anthropic(counter, body)
    elif api == "gemini":
        _gemini(counter, body)
    elif api == "bedrock-converse":
        _bedrock_converse(counter, body)
    elif api == "bedrock-invoke":
        _bedrock_invoke(counter, body)
    else:
        _all_strings(counter, body)
    return counter.total(model)


def _int(value: object) -> int | None:
    """A non-negative integer from JSON (bools are not numbers here); floats like 100.0 are accepted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


def _get(body: Mapping[str, Any], *path: str) -> object:
    value: object = body
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _first_int(body: Mapping[str, Any], *paths: tuple[str, ...]) -> int | None:
    for path in paths:
        value = _int(_get(body, *path))
        if value is not None:
            return value
    return None


def _choices(body: Mapping[str, Any], *keys: str) -> int:
    """Number of completions asked for (n / best_of / candidateCount): each is billed."""
    best = 1
    for key in keys:
        value = _int(_get(body, *key.split(".")))
        if value is not None and value > best:
            best = value
    return best


def requested_output_tokens(api: ApiFormat, body: Mapping[str, Any]) -> int | None:
    """The output cap the request asks for (times the number of completions asked for), or None when
    it names none (the caller then reserves the key's default). Embeddings produce no output: 0."""
    cap: int | None
    if api == "openai-embeddings":
        return 0
    if api == "openai-chat":
        cap = _first_int(body, ("max_completion_tokens",), ("max_tokens",))
        n = _choices(body, "n")
    elif api == "openai-completions":
        cap = _first_int(body, ("max_tokens",))
        n = _choices(body, "n", "best_of")
    elif api == "openai-responses":
        cap = _first_int(body, ("max_output_tokens",))
        n = 1
    elif api == "anthropic-messages":
        cap = _first_int(body, ("max_tokens",))
        n = 1
    elif api == "gemini":
        cap = _first_int(
            body,
            ("generationConfig", "maxOutputTokens"),
            ("generation_config", "max_output_tokens"),
            ("generationConfig", "max_output_tokens"),
        )
        n = max(
            _choices(body, "generationConfig.candidateCount"),
            _choices(body, "generation_config.candidate_count"),
        )
    elif api == "bedrock-converse":
        cap = _first_int(body, ("inferenceConfig", "maxTokens"))
        n = 1
    elif api == "bedrock-invoke":
        cap = _first_int(
            body,
            ("max_tokens",),  # Claude, Mistral
            ("max_gen_len",),  # Llama
            ("inferenceConfig", "max_new_tokens"),  # Nova
            ("inferenceConfig", "maxTokens"),
            ("textGenerationConfig", "maxTokenCount"),  # Titan
            ("max_tokens_to_sample",),  # Claude text completions
        )
        n = 1
    else:
        return None
    return None if cap is None else cap * n


# --------------------------------------------------------------------------------------------------
# Reported usage


def _n(value: object) -> int:
    return _int(value) or 0


def openai_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Chat/Completions/Embeddings `usage` (prompt_tokens includes cached tokens)."""
    prompt = _get(usage, "prompt_tokens_details")
    completion = _get(usage, "completion_tokens_details")
    prompt_details: Mapping[str, Any] = prompt if isinstance(prompt, Mapping) else {}
    completion_details: Mapping[str, Any] = completion if isinstance(completion, Mapping) else {}
    return tokens.TokenCounts(
        input_tokens=_n(usage.get("prompt_tokens")),
        cached_input_tokens=_n(prompt_details.get("cached_tokens")),
        cache_write_tokens=_n(prompt_details.get("cache_write_tokens")),
        output_tokens=_n(usage.get("completion_tokens")),
        reasoning_tokens=_n(completion_details.get("reasoning_tokens")),
    )


def openai_responses_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Responses API `usage` (input_tokens includes cached tokens)."""
    return tokens.TokenCounts(
        input_tokens=_n(usage.get("input_tokens")),
        cached_input_tokens=_n(_get(usage, "input_tokens_details", "cached_tokens")),
        output_tokens=_n(usage.get("output_tokens")),
        reasoning_tokens=_n(_get(usage, "output_tokens_details", "reasoning_tokens")),
    )


def _input_excluding_cache(
    input_tokens: Any, cache_read: Any, cache_write: Any, output: Any
) -> tokens.TokenCounts:
    """Counts of the providers whose input excludes cache reads and writes (Anthropic, Bedrock):
    both are added back, so `input_tokens` means all input everywhere."""
    read, write = _n(cache_read), _n(cache_write)
    return tokens.TokenCounts(
        input_tokens=_n(input_tokens) + read + write,
        cached_input_tokens=read,
        cache_write_tokens=write,
        output_tokens=_n(output),
    )


def anthropic_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Anthropic `usage`: input_tokens excludes cache reads and writes."""
    return _input_excluding_cache(
        usage.get("input_tokens"),
        usage.get("cache_read_input_tokens"),
        usage.get("cache_creation_input_tokens"),
        usage.get("output_tokens"),
    )


def gemini_usage(metadata: Mapping[str, Any]) -> tokens.TokenCounts:
    """Gemini `usageMetadata`: prompt includes cached content; thoughts are billed as output."""
    thoughts = _n(metadata.get("thoughtsTokenCount"))
    return tokens.TokenCounts(
        input_tokens=_n(metadata.get("promptTokenCount")) + _n(metadata.get("toolUsePromptTokenCount")),
        cached_input_tokens=_n(metadata.get("cachedContentTokenCount")),
        output_tokens=_n(metadata.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
    )


def bedrock_usage(usage: Mapping[str, Any]) -> tokens.TokenCounts:
    """Converse `usage`: inputTokens excludes cache reads and writes."""
    return _input_excluding_cache(
        usage.get("inputTokens"),
        usage.get("cacheReadInputTokens"),
        usage.get("cacheWriteInputTokens"),
        usage.get("outputTokens"),
    )


def bedrock_invocation_metrics(metrics: Mapping[str, Any]) -> tokens.TokenCounts:
    """`amazon-bedrock-invocationMetrics` of InvokeModelWithResponseStream's last chunk."""
    return _input_excluding_cache(
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
        return int(value) if value is not None and value.strip().isdigit() else None

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


def _bedrock_invoke_usage(payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
    metrics = payload.get("amazon-bedrock-invocationMetrics")
    if isinstance(metrics, Mapping):
        return bedrock_invocation_metrics(metrics)
    usage = payload.get("usage")
    if isinstance(usage, Mapping):
        if "inputTokens" in usage or "outputTokens" in usage:  # Nova
            return bedrock_usage(usage)
        return anthropic_usage(usage)  # Claude
    if "prompt_token_count" in payload or "generation_token_count" in payload:  # Llama
        return tokens.TokenCounts(
            input_tokens=_n(payload.get("prompt_token_count")),
            output_tokens=_n(payload.get("generation_token_count")),
        )
    if "inputTextTokenCount" in payload:  # Titan
        results = payload.get("results")
        output = (
            sum(_n(r.get("tokenCount")) for r in results if isinstance(r, Mapping))
            if isinstance(results, list)
            else 0
        )
        return tokens.TokenCounts(input_tokens=_n(payload.get("inputTextTokenCount")), output_tokens=output)
    return None


def usage_from_json(api: ApiFormat, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
    """Provider-reported usage of a non-streamed response body, or None when it carries none.

    For Bedrock InvokeModel prefer `usage_from_bedrock_headers` (every model family sets them)."""
    if api in ("openai-chat", "openai-completions", "openai-embeddings"):
        usage = payload.get("usage")
        return openai_usage(usage) if isinstance(usage, Mapping) else None
    if api == "openai-responses":
        usage = payload.get("usage")
        if not isinstance(usage, Mapping):
            # A streaming event (response.completed, ...) wraps the response object.
            usage = _get(payload, "response", "usage")
        return openai_responses_usage(usage) if isinstance(usage, Mapping) else None
    if api == "anthropic-messages":
        usage = payload.get("usage")
        return anthropic_usage(usage) if isinstance(usage, Mapping) else None
    if api == "gemini":
        metadata = payload.get("usageMetadata")
        return gemini_usage(metadata) if isinstance(metadata, Mapping) else None
    if api == "bedrock-converse":
        usage = payload.get("usage")
        return bedrock_usage(usage) if isinstance(usage, Mapping) else None
    if api == "bedrock-invoke":
        return _bedrock_invoke_usage(payload)
    return None
