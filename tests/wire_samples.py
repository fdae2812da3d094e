"""Wire-format samples for the apis unit tests (tests/unit/test_apis_*.py): provider-shaped streams and
bodies, and the helpers that feed a stream meter at every split."""

from __future__ import annotations

import base64
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from tests.fakes import encoders

from llmkeys_proxy import tokens
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.apis.base import ApiFormat


def count(text: str, model: str = "gpt-4o") -> int:
    return len(tokens.encoding_for_model(model).encode(text))


def run(capture: apis_base.StreamMeter, data: bytes, cuts: list[int]) -> bytes:
    """Feed `data` split at `cuts`; returns what the client would receive."""
    out = []
    bounds = [0, *cuts, len(data)]
    for start, end in itertools.pairwise(bounds):
        out.append(capture.feed(data[start:end]))
    out.append(capture.finish())
    return b"".join(out)


def every_split(data: bytes) -> Iterator[list[int]]:
    for cut in range(1, len(data)):
        yield [cut]
    yield list(range(1, len(data)))


CHAT_TEXTS = ["", "Hello", '! I say \\"usage\\": {', " and data: [DONE] inside", " text."]


def chat_chunk(payload: dict[str, Any]) -> bytes:
    base = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    return b"data: " + orjson.dumps(base | payload) + b"\n\n"


def chat_stream(*, with_usage: bool = True, texts: list[str] = CHAT_TEXTS) -> tuple[list[bytes], bytes]:
    """(events as sent, the usage event)."""
    events = [
        chat_chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": text, "refusal": None}
                        if i == 0
                        else {"content": text},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
                "usage": None,
            }
        )
        for i, text in enumerate(texts)
    ]
    events.append(
        chat_chunk(
            {"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], "usage": None}
        )
    )
    usage_event = chat_chunk(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 19,
                "completion_tokens": 10,
                "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
        }
    )
    if with_usage:
        events.append(usage_event)
    events.append(b"data: [DONE]\n\n")
    return events, usage_event


CHAT_USAGE = tokens.TokenCounts(input_tokens=19, output_tokens=10)


RESPONSE_OBJECT = {
    "id": "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654",
    "object": "response",
    "created_at": 1741290958,
    "status": "in_progress",
    "model": "gpt-4.1-2025-04-14",
    "output": [],
    "usage": None,
}


RESPONSES_USAGE = {
    "input_tokens": 37,
    "input_tokens_details": {"cached_tokens": 5},
    "output_tokens": 11,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 48,
}


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def responses_stream(final: str = "response.completed") -> list[bytes]:
    item = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    events = [
        ("response.created", {"response": RESPONSE_OBJECT}),
        ("response.in_progress", {"response": RESPONSE_OBJECT}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        (
            "response.content_part.added",
            {
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": ""},
            },
        ),
        (
            "response.output_text.delta",
            {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hi"},
        ),
        (
            "response.output_text.delta",
            {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": " there, friend"},
        ),
        (
            "response.output_text.done",
            {"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": "Hi there, friend"},
        ),
        (final, {"response": RESPONSE_OBJECT | {"status": final.split(".")[1], "usage": RESPONSES_USAGE}}),
    ]
    return [sse(name, {"type": name, "sequence_number": i} | body) for i, (name, body) in enumerate(events)]


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


def anthropic_stream(
    deltas: list[int], *, text: tuple[str, ...] = ("Hello", "! How can I help?")
) -> list[bytes]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 10,
                "output_tokens": 1,
            },
        },
    }
    events = [
        sse("message_start", start),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    for piece in text:
        events.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    for output in deltas:
        events.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": output},
                },
            )
        )
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


ANTHROPIC_FINAL = tokens.TokenCounts(
    input_tokens=40, cached_input_tokens=10, cache_write_tokens=5, output_tokens=15
)


def gemini_chunk(
    text: str, candidates: int, *, finish: bool = False, thoughts: int | None = None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    metadata: dict[str, Any] = {
        "promptTokenCount": 9,
        "candidatesTokenCount": candidates,
        "totalTokenCount": 9 + candidates,
    }
    if thoughts is not None:
        metadata["thoughtsTokenCount"] = thoughts
    return {
        "candidates": [candidate],
        "usageMetadata": metadata,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    }


GEMINI_CHUNKS = [
    gemini_chunk("The", 1),
    gemini_chunk(' quick "brown" {fox} [\\]', 4),
    gemini_chunk(" jumps.", 6, finish=True, thoughts=25),
]


GEMINI_FINAL = tokens.TokenCounts(input_tokens=9, output_tokens=31, reasoning_tokens=25)


def converse_frames() -> list[bytes]:
    return [
        encoders.aws_event("messageStart", {"role": "assistant", "p": "abcdefgh"}),
        encoders.aws_event(
            "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}, "p": "ab"}
        ),
        encoders.aws_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " from Bedrock"}}),
        encoders.aws_event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdef"}),
        encoders.aws_event("messageStop", {"stopReason": "end_turn", "p": "abc"}),
        encoders.aws_event(
            "metadata",
            {
                "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17, "cacheReadInputTokens": 3},
                "metrics": {"latencyMs": 312},
                "p": "abcdefghijk",
            },
        ),
    ]


def invoke_chunk(event: dict[str, Any]) -> bytes:
    return encoders.event_message(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
        orjson.dumps({"bytes": base64.b64encode(orjson.dumps(event)).decode(), "p": "abcd"}),
    )


def claude_invoke_frames(*, with_metrics: bool = True) -> list[bytes]:
    stop: dict[str, Any] = {"type": "message_stop"}
    if with_metrics:
        stop["amazon-bedrock-invocationMetrics"] = {
            "inputTokenCount": 20,
            "outputTokenCount": 7,
            "invocationLatency": 500,
            "firstByteLatency": 200,
        }
    return [
        invoke_chunk(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_bdrk_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-3-haiku-20240307",
                    "content": [],
                    "usage": {"input_tokens": 20, "output_tokens": 1},
                },
            }
        ),
        invoke_chunk(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        ),
        invoke_chunk(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Bonjour tout"},
            }
        ),
        invoke_chunk({"type": "content_block_stop", "index": 0}),
        invoke_chunk(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}
        ),
        invoke_chunk(stop),
    ]


STREAM_BUILDERS: dict[ApiFormat, Callable[[], bytes]] = {
    "openai-chat": lambda: b"".join(chat_stream()[0]),
    "openai-responses": lambda: b"".join(responses_stream()),
    "anthropic-messages": lambda: b"".join(anthropic_stream([15])),
    "gemini": lambda: b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in GEMINI_CHUNKS),
    "bedrock-converse": lambda: b"".join(converse_frames()),
    "bedrock-invoke": lambda: b"".join(claude_invoke_frames()),
}


INSERTIONS = [b"\n\n", b"\r", b'"usage":{', b"data: [DONE]", b"{", b'"', b'"choices":[]']


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
