"""What every wire format shares (apis/base.py): output caps and usage across formats, the meter skeleton's
folding, passthrough and hostile input."""

from __future__ import annotations

import random
import typing
from typing import Any

import pytest
from tests import wire_samples as ws

from llmkeys_proxy import apis, tokens
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.apis.base import ApiFormat


@pytest.mark.parametrize("api", list(ws.STREAM_BUILDERS))
def test_large_stream_folding_keeps_fallback_count(api: ApiFormat, monkeypatch: pytest.MonkeyPatch) -> None:
    # Raw bytes kept for the fallback are folded into a running count past a threshold: the count
    # must equal the unfolded one.
    data = ws.STREAM_BUILDERS[api]()
    reference = apis.meter(api, "gpt-4o")
    reference.feed(data)
    monkeypatch.setattr(apis_base, "_KEEP_BYTES", 1)
    folded = apis.meter(api, "gpt-4o")
    folded.feed(data)
    assert folded.fallback_counts(1) == reference.fallback_counts(1)
    assert reference.fallback_counts(1).output_tokens > 0


def test_finish_twice_and_empty_chunks() -> None:
    capture = apis.meter("openai-chat", "gpt-4o", hide_usage_chunk=True)
    empty = b""
    assert capture.feed(empty) is empty
    assert capture.feed(b"data: [DONE]") == b""  # held back: the event is not terminated yet
    assert capture.finish() == b"data: [DONE]"
    assert capture.finish() == b""
    assert capture.complete


def test_fallback_counts_is_repeatable() -> None:
    events, _ = ws.chat_stream()
    capture = apis.meter("openai-chat", "gpt-4o")
    capture.feed(events[2])
    first = capture.fallback_counts(1)
    assert capture.fallback_counts(1) == first
    capture.feed(events[3])
    assert capture.fallback_counts(1).output_tokens > first.output_tokens


def test_oversized_unterminated_event_switches_to_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apis_base, "MAX_SSE_EVENT_BYTES", 100)
    capture = apis.meter("openai-chat", "gpt-4o", hide_usage_chunk=True)
    first = b"data: " + b"x" * 60
    second = b"y" * 60
    assert capture.feed(first) == b""  # held back: maybe the usage chunk
    assert capture.feed(second) == first + second  # too big for an event: released, parsing stops
    later = b"data: [DONE]\n\n"
    assert capture.feed(later) is later
    assert capture.finish() == b""
    assert not capture.complete


@pytest.mark.parametrize("api", list(ws.STREAM_BUILDERS))
def test_mangled_streams_never_raise_and_forward_everything(api: ApiFormat) -> None:
    rng = random.Random(api)
    original = ws.STREAM_BUILDERS[api]()
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rng.randrange(1, 8)):
            position = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[position] = rng.randrange(256)
            elif action == 1:
                del data[position : position + rng.randrange(1, 40)]
            else:
                data[position:position] = rng.choice(ws.INSERTIONS)
        cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randrange(1, 12))))
        capture = apis.meter(api, "gpt-4o")
        assert ws.run(capture, bytes(data), cuts) == bytes(data)  # without hiding, every byte passes
        counts = capture.settled_counts(5)
        assert counts.input_tokens >= 0 and counts.output_tokens >= 0
        hiding = apis.meter(api, "gpt-4o", hide_usage_chunk=True)
        assert len(ws.run(hiding, bytes(data), cuts)) <= len(data)


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


@pytest.mark.parametrize(
    ("api", "payload", "expected"),
    [
        ("openai-chat", ws.OPENAI_CHAT_RESPONSE, tokens.TokenCounts(1117, 1024, 0, 46, 12)),
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
        ("openai-responses", ws.RESPONSES_RESPONSE, tokens.TokenCounts(328, 128, 0, 52, 20)),
        (
            "anthropic-messages",
            ws.ANTHROPIC_RESPONSE,
            tokens.TokenCounts(2095 + 2051 + 1000, 1000, 2051, 503, 0),
        ),
        ("gemini", ws.GEMINI_RESPONSE, tokens.TokenCounts(8, 4, 0, 6 + 1048, 1048)),
        ("bedrock-converse", ws.CONVERSE_RESPONSE, tokens.TokenCounts(530, 400, 100, 628, 0)),
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


def test_total_tokens() -> None:
    assert tokens.TokenCounts(10, 5, 0, 7, 2).total_tokens == 17


@pytest.mark.parametrize("api", list(typing.get_args(apis_base.ApiFormat)))
def test_hostile_bodies_never_raise(api: apis_base.ApiFormat) -> None:
    rng = random.Random(api)
    for _ in range(400):
        body = ws._random_json(rng)
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
    assert apis.estimate_prompt_tokens("openai-chat", "gpt-4o", body) >= ws.count("needle")
    assert apis.estimate_prompt_tokens("bedrock-invoke", "meta.llama3", {"prompt": deep}) == ws.count(
        "needle"
    )
