"""Prompt estimates, requested output caps and reported usage for every provider wire format."""

from __future__ import annotations

import random
import typing
from typing import Any

import multidict
import pytest

from llmkeys_proxy import apis, tokens
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.apis import bedrock


def count(text: str, model: str = "gpt-4o") -> int:
    return len(tokens.encoding_for_model(model).encode(text))


# The OpenAI cookbook's "How to count tokens with tiktoken" example; the API reported 129 prompt
# tokens for gpt-3.5-turbo / gpt-4 and 124 for gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)]
)
def test_chat_estimate_matches_cookbook(model: str, expected: int) -> None:
    assert apis.estimate_prompt_tokens(
        "openai-chat", model, {"model": model, "messages": COOKBOOK_MESSAGES}
    ) == (expected)


def test_chat_parts_images_and_tools() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"cat"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    }
    plain = apis.estimate_prompt_tokens("openai-chat", "gpt-4o", {"messages": body["messages"][:1]})
    assert plain == 3 + count("user") + count("What is in this picture?") + apis_base.NON_TEXT_PART_TOKENS + 3
    full = apis.estimate_prompt_tokens("openai-chat", "gpt-4o", body)
    expected_extra = (
        3
        + count("assistant")
        + count("lookup")
        + count('{"q":"cat"}')  # assistant tool call
        + 3
        + count("tool")
        + count("call_1")
        + count("a cat")  # tool result
    )
    assert full - plain == expected_extra + count(
        '[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]'
    )


def test_responses_estimate() -> None:
    assert apis.estimate_prompt_tokens("openai-responses", "gpt-4o", {"input": "Tell me a joke"}) == (
        count("Tell me a joke") + 3
    )
    body = {
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}, {"type": "input_image"}]},
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
        ],
    }
    expected = (
        count("Be brief.")
        + 3
        + count("user")
        + count("Hi")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
        + count("f")
        + count("{}")
        + 3
        + count("42")
        + 3
    )
    assert apis.estimate_prompt_tokens("openai-responses", "gpt-4o", body) == expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("prompt", "Say this is a test", None),
        ("prompt", ["one", "two"], None),
        ("prompt", [1, 2, 3, 4], 4),
        ("prompt", [[1, 2], [3, 4, 5]], 5),
    ],
)
def test_completions_estimate(field: str, value: Any, expected: int | None) -> None:
    got = apis.estimate_prompt_tokens("openai-completions", "gpt-3.5-turbo-instruct", {field: value})
    if expected is None:
        texts = [value] if isinstance(value, str) else value
        expected = sum(count(t, "gpt-3.5-turbo-instruct") for t in texts)
    assert got == expected


def test_embeddings_estimate() -> None:
    model = "text-embedding-3-small"
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": "hello world"}) == 2
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": ["hello world", "hi"]}) == 3
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": [[1, 2, 3], [4]]}) == 4
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": [5, 6]}) == 2


def test_anthropic_estimate() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Hello, Claude"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Greet back", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "clock", "input": {"tz": "UTC"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "12:00"}],
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                ],
            },
        ],
    }
    expected = (
        count("You are terse.")
        + 3
        + count("Hello, Claude")
        + 3
        + count("Greet back")
        + count("clock")
        + count('{"tz":"UTC"}')
        + 3
        + count("12:00")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
    )
    assert apis.estimate_prompt_tokens("anthropic-messages", "claude-sonnet-4-5", body) == expected
    assert apis.estimate_prompt_tokens("anthropic-messages", "claude-x", {"system": "S", "messages": []}) == (
        count("S") + 3
    )


def test_gemini_estimate() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "You are a cat."}]},
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "Hello"}, {"inlineData": {"mimeType": "image/png", "data": "AA"}}],
            },
            {"role": "model", "parts": [{"functionCall": {"name": "meow", "args": {}}}]},
        ],
        "generationConfig": {"maxOutputTokens": 100},
    }
    expected = (
        count("You are a cat.")
        + 3
        + count("Hello")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
        + count('{"functionCall":{"name":"meow","args":{}}}')
    )
    assert apis.estimate_prompt_tokens("gemini", "gemini-2.5-flash", body) == expected
    embed = {"content": {"parts": [{"text": "embed me"}]}}
    assert apis.estimate_prompt_tokens("gemini", "gemini-embedding-001", embed) == count("embed me")


def test_bedrock_converse_estimate() -> None:
    body = {
        "system": [{"text": "Be kind."}, {"cachePoint": {"type": "default"}}],
        "messages": [
            {
                "role": "user",
                "content": [{"text": "Hi"}, {"image": {"format": "png", "source": {"bytes": "AA"}}}],
            },
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {"a": 1}}}],
            },
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": "t", "content": [{"json": {"r": 2}}]}}],
            },
        ],
        "inferenceConfig": {"maxTokens": 512},
    }
    expected = (
        count("Be kind.")
        + 3
        + count("Hi")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
        + count("f")
        + count('{"a":1}')
        + 3
        + count('{"r":2}')
        + 3
    )
    assert apis.estimate_prompt_tokens(
        "bedrock-converse", "anthropic.claude-3-haiku-20240307-v1:0", body
    ) == (expected)


def test_bedrock_invoke_estimate_native_bodies() -> None:
    claude = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }
    assert apis.estimate_prompt_tokens("bedrock-invoke", "anthropic.claude", claude) == 3 + count("Hello") + 3
    nova = {
        "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
        "inferenceConfig": {"max_new_tokens": 9},
    }
    assert (
        apis.estimate_prompt_tokens("bedrock-invoke", "amazon.nova-lite-v1:0", nova) == 3 + count("Hello") + 3
    )
    llama = {"prompt": "Tell me a story", "max_gen_len": 64, "temperature": 0.5}
    assert apis.estimate_prompt_tokens("bedrock-invoke", "meta.llama3", llama) == count("Tell me a story")
    titan = {"inputText": "Summarise", "textGenerationConfig": {"maxTokenCount": 32}}
    assert apis.estimate_prompt_tokens("bedrock-invoke", "amazon.titan", titan) == count("Summarise")


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        ("openai-chat", {"max_tokens": 100}, 100),
        ("openai-chat", {"max_completion_tokens": 50, "max_tokens": 100}, 50),
        ("openai-chat", {"max_completion_tokens": 50, "n": 3}, 150),
        ("openai-chat", {}, None),
        ("openai-chat", {"max_tokens": True}, None),
        ("openai-chat", {"max_tokens": -1}, None),
        ("openai-chat", {"max_tokens": "100"}, None),
        ("openai-completions", {"max_tokens": 16, "n": 2, "best_of": 4}, 64),
        ("openai-embeddings", {"input": "x"}, 0),
        ("openai-responses", {"max_output_tokens": 300}, 300),
        ("anthropic-messages", {"max_tokens": 1024}, 1024),
        ("gemini", {"generationConfig": {"maxOutputTokens": 200, "candidateCount": 2}}, 400),
        ("gemini", {"generation_config": {"max_output_tokens": 70}}, 70),
        ("gemini", {"contents": []}, None),
        ("bedrock-converse", {"inferenceConfig": {"maxTokens": 512}}, 512),
        ("bedrock-invoke", {"max_tokens": 10}, 10),
        ("bedrock-invoke", {"max_gen_len": 20}, 20),
        ("bedrock-invoke", {"inferenceConfig": {"max_new_tokens": 30}}, 30),
        ("bedrock-invoke", {"textGenerationConfig": {"maxTokenCount": 40}}, 40),
    ],
)
def test_requested_output_tokens(
    api: apis_base.ApiFormat, body: dict[str, Any], expected: int | None
) -> None:
    assert apis.requested_output_tokens(api, body) == expected


# --- reported usage, from real response bodies -------------------------------------------------------

OPENAI_CHAT_RESPONSE = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The image shows a wooden boardwalk.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 12,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}

RESPONSES_RESPONSE = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
    "object": "response",
    "created_at": 1741476777,
    "status": "completed",
    "model": "gpt-4o-2024-08-06",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "A unicorn story.", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 328,
        "input_tokens_details": {"cached_tokens": 128},
        "output_tokens": 52,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 380,
    },
}

ANTHROPIC_RESPONSE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "cache_creation_input_tokens": 2051,
        "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 2051, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 503,
        "service_tier": "standard",
    },
}

GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {"parts": [{"text": "AI learns patterns from data."}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 6,
        "totalTokenCount": 1062,
        "cachedContentTokenCount": 4,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
        "thoughtsTokenCount": 1048,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "a2SoaO_6Lc6Qz7IPqOTf0Q0",
}

CONVERSE_RESPONSE = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Hello there."}]}},
    "stopReason": "end_turn",
    "usage": {
        "inputTokens": 30,
        "outputTokens": 628,
        "totalTokens": 1158,
        "cacheReadInputTokens": 400,
        "cacheWriteInputTokens": 100,
    },
    "metrics": {"latencyMs": 1275},
}


@pytest.mark.parametrize(
    ("api", "payload", "expected"),
    [
        ("openai-chat", OPENAI_CHAT_RESPONSE, tokens.TokenCounts(1117, 1024, 0, 46, 12)),
        (
            "openai-completions",
            {
                "object": "text_completion",
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            },
            tokens.TokenCounts(5, output_tokens=7),
        ),
        (
            "openai-embeddings",
            {
                "object": "list",
                "data": [],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            },
            tokens.TokenCounts(8),
        ),
        ("openai-responses", RESPONSES_RESPONSE, tokens.TokenCounts(328, 128, 0, 52, 20)),
        (
            "anthropic-messages",
            ANTHROPIC_RESPONSE,
            tokens.TokenCounts(2095 + 2051 + 1000, 1000, 2051, 503, 0),
        ),
        ("gemini", GEMINI_RESPONSE, tokens.TokenCounts(8, 4, 0, 6 + 1048, 1048)),
        ("bedrock-converse", CONVERSE_RESPONSE, tokens.TokenCounts(530, 400, 100, 628, 0)),
        (
            "bedrock-invoke",
            {"type": "message", "content": [], "usage": {"input_tokens": 10, "output_tokens": 3}},
            tokens.TokenCounts(10, output_tokens=3),
        ),
        (
            "bedrock-invoke",
            {
                "generation": "hi",
                "prompt_token_count": 12,
                "generation_token_count": 4,
                "stop_reason": "stop",
            },
            tokens.TokenCounts(12, output_tokens=4),
        ),
        (
            "bedrock-invoke",
            {"inputTextTokenCount": 5, "results": [{"tokenCount": 9, "outputText": "x"}]},
            tokens.TokenCounts(5, output_tokens=9),
        ),
        (
            "bedrock-invoke",
            {"output": {}, "usage": {"inputTokens": 7, "outputTokens": 2, "totalTokens": 9}},
            tokens.TokenCounts(7, output_tokens=2),
        ),
    ],
)
def test_usage_from_json(
    api: apis_base.ApiFormat, payload: dict[str, Any], expected: tokens.TokenCounts
) -> None:
    assert apis.usage_from_json(api, payload) == expected


def test_usage_from_json_without_usage() -> None:
    assert apis.usage_from_json("openai-chat", {"choices": [], "usage": None}) is None
    assert apis.usage_from_json("anthropic-messages", {"type": "error", "error": {}}) is None
    assert apis.usage_from_json("gemini", {"candidates": []}) is None
    assert apis.usage_from_json("bedrock-invoke", {"foo": 1}) is None


def test_responses_usage_from_stream_event_wrapper() -> None:
    event = {"type": "response.completed", "sequence_number": 9, "response": RESPONSES_RESPONSE}
    assert apis.usage_from_json("openai-responses", event) == tokens.TokenCounts(328, 128, 0, 52, 20)


def test_usage_from_bedrock_headers() -> None:
    headers = {
        "X-Amzn-Bedrock-Input-Token-Count": "20",
        "X-Amzn-Bedrock-Output-Token-Count": "5",
        "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": "100",
    }
    assert bedrock.usage_from_bedrock_headers(headers) == tokens.TokenCounts(120, 100, 0, 5, 0)
    assert bedrock.usage_from_bedrock_headers({}) is None
    lower = {"x-amzn-bedrock-input-token-count": "3", "x-amzn-bedrock-output-token-count": "4"}
    assert bedrock.usage_from_bedrock_headers(lower) == tokens.TokenCounts(3, output_tokens=4)
    assert bedrock.usage_from_bedrock_headers({"X-Amzn-Bedrock-Input-Token-Count": "junk"}) is None
    aiohttp_style = multidict.CIMultiDict({"x-AMZN-bedrock-output-token-count": "8"})
    assert bedrock.usage_from_bedrock_headers(aiohttp_style) == tokens.TokenCounts(0, output_tokens=8)


def test_total_tokens() -> None:
    assert tokens.TokenCounts(10, 5, 0, 7, 2).total_tokens == 17


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 6 else 4)
    if kind == 0:
        return rng.choice(["", "hi", "data: [DONE]", "<|endoftext|>", "é" * rng.randrange(5)])
    if kind == 1:
        return rng.choice([0, -1, 3, 2**70, 1.5, float("-0.0")])
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return rng.choice(["text", "image", "type", "content", "parts"])
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [
        "messages",
        "content",
        "role",
        "type",
        "text",
        "parts",
        "contents",
        "input",
        "prompt",
        "system",
        "tool_calls",
        "function",
        "toolUse",
        "toolResult",
        "name",
        "max_tokens",
        "generationConfig",
        "maxOutputTokens",
        "inferenceConfig",
        "maxTokens",
        "n",
        "instructions",
        "tools",
        "requests",
    ]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


@pytest.mark.parametrize("api", list(typing.get_args(apis_base.ApiFormat)))
def test_hostile_bodies_never_raise(api: apis_base.ApiFormat) -> None:
    rng = random.Random(api)
    for _ in range(400):
        body = _random_json(rng)
        if not isinstance(body, dict):
            body = {"messages": body, "input": body, "contents": body, "prompt": body}
        assert apis.estimate_prompt_tokens(api, "gpt-4o", body) >= 0
        requested = apis.requested_output_tokens(api, body)
        assert requested is None or requested >= 0
        counts = apis.usage_from_json(api, body)
        assert counts is None or min(counts.input_tokens, counts.output_tokens) >= 0


def test_deeply_nested_body_is_counted_without_recursion_errors() -> None:
    deep: Any = "needle"
    for _ in range(5000):
        deep = [deep]
    body = {"messages": [{"role": "user", "content": deep}]}
    assert apis.estimate_prompt_tokens("openai-chat", "gpt-4o", body) >= count("needle")
    assert apis.estimate_prompt_tokens("bedrock-invoke", "meta.llama3", {"prompt": deep}) == count("needle")
