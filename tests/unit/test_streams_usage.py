"""Stream meters over real wire formats of every provider: usage, completion, hiding, cut-off fallback."""

from __future__ import annotations

import base64
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from google import genai
from google.genai import types as genai_types
from tests.fakes import encoders

from llmkeys_proxy import apis, tokens
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


# --- OpenAI chat ------------------------------------------------------------------------------------

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


def test_openai_chat_passthrough_returns_same_objects() -> None:
    events, _ = chat_stream()
    capture = apis.meter("openai-chat", "gpt-4o-mini")
    for event in events:
        assert capture.feed(event) is event
    assert capture.finish() == b""
    assert capture.complete
    assert capture.usage == CHAT_USAGE
    assert capture.settled_counts(prompt_tokens=5) == CHAT_USAGE


def test_openai_chat_hidden_usage_chunk_same_objects_when_aligned() -> None:
    events, usage_event = chat_stream()
    capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
    for event in events:
        out = capture.feed(event)
        if event is usage_event:
            assert out == b""
        else:
            assert out is event
    assert capture.finish() == b""
    assert capture.usage == CHAT_USAGE
    assert capture.complete


def test_openai_chat_hidden_usage_chunk_at_every_split() -> None:
    events, usage_event = chat_stream()
    data = b"".join(events)
    expected = data.replace(usage_event, b"")
    for cuts in every_split(data):
        capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
        assert run(capture, data, cuts) == expected, cuts
        assert capture.usage == CHAT_USAGE
        assert capture.complete


def test_openai_chat_visible_usage_at_every_split() -> None:
    events, _ = chat_stream()
    data = b"".join(events)
    for cuts in every_split(data):
        capture = apis.meter("openai-chat", "gpt-4o-mini")
        assert run(capture, data, cuts) == data
        assert capture.usage == CHAT_USAGE
        assert capture.complete


def test_openai_chat_crlf_and_usage_with_spaces() -> None:
    events, _ = chat_stream()
    data = b"".join(events).replace(b'"usage":{', b'"usage": {').replace(b"\n", b"\r\n")
    for cuts in ([], [len(data) // 3, len(data) // 2], list(range(1, len(data), 7))):
        capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
        out = run(capture, data, cuts)
        assert capture.usage == CHAT_USAGE
        assert capture.complete
        assert b'"choices":[]' not in out
        assert out.endswith(b"data: [DONE]\r\n\r\n")


def test_openai_chat_hidden_stream_is_read_by_the_openai_sdk() -> None:
    events, _ = chat_stream()
    capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
    body = b"".join(capture.feed(e) for e in events) + capture.finish()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http_client:
        client = openai.OpenAI(api_key="test", base_url="http://proxy.test/v1", http_client=http_client)
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert all(chunk.choices for chunk in chunks)  # the usage-only chunk never reached the client
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(CHAT_TEXTS)


def test_openai_chat_cut_off_counts_passed_text() -> None:
    events, _ = chat_stream()
    passed = events[:3]  # role chunk + two content chunks, then the connection drops
    capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
    for event in passed:
        capture.feed(event)
    capture.feed(events[3][:25])  # half an event
    capture.finish()
    assert capture.usage is None
    assert not capture.complete
    expected_output = count(CHAT_TEXTS[1] + CHAT_TEXTS[2])
    assert capture.fallback_counts(prompt_tokens=42) == tokens.TokenCounts(
        input_tokens=42, output_tokens=expected_output
    )
    assert capture.settled_counts(prompt_tokens=42) == capture.fallback_counts(42)


def test_openai_chat_stream_without_usage_chunk_falls_back() -> None:
    events, _ = chat_stream(with_usage=False)
    capture = apis.meter("openai-chat", "gpt-4o-mini")
    for event in events:
        capture.feed(event)
    assert capture.complete
    assert capture.usage is None
    assert capture.settled_counts(7).output_tokens == count("".join(CHAT_TEXTS))


def test_openai_chat_tool_call_and_reasoning_text_counted_in_fallback() -> None:
    delta_events = [
        chat_chunk({"choices": [{"index": 0, "delta": {"reasoning_content": "Let me think."}}]}),
        chat_chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""},
                                }
                            ]
                        },
                    }
                ]
            }
        ),
        chat_chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                    }
                ]
            }
        ),
    ]
    capture = apis.meter("openai-chat", "gpt-4o")
    for event in delta_events:
        capture.feed(event)
    # Streamed pieces are tokenised as one text (as the model produced them).
    expected = count('Let me think.get_weather{"city":')
    assert capture.fallback_counts(3).output_tokens == expected


def test_openai_completions_stream() -> None:
    def chunk(payload: dict[str, Any]) -> bytes:
        base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct"}
        return b"data: " + orjson.dumps(base | payload) + b"\n\n"

    events = [
        chunk({"choices": [{"text": "This is", "index": 0, "logprobs": None, "finish_reason": None}]}),
        chunk({"choices": [{"text": " a test.", "index": 0, "logprobs": None, "finish_reason": "stop"}]}),
        chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}),
        b"data: [DONE]\n\n",
    ]
    data = b"".join(events)
    capture = apis.meter("openai-completions", "gpt-3.5-turbo-instruct", hide_usage_chunk=True)
    assert run(capture, data, [10, 200]) == data.replace(events[2], b"")
    assert capture.usage == tokens.TokenCounts(input_tokens=5, output_tokens=4)
    cut = apis.meter("openai-completions", "gpt-3.5-turbo-instruct")
    cut.feed(events[0])
    assert cut.fallback_counts(5) == tokens.TokenCounts(
        5, output_tokens=count("This is", "gpt-3.5-turbo-instruct")
    )


def test_usage_on_content_chunk_is_kept_visible() -> None:
    # Some OpenAI-compatible servers report usage on the last content chunk: it cannot be dropped.
    event = chat_chunk(
        {
            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )
    capture = apis.meter("openai-chat", "gpt-4o", hide_usage_chunk=True)
    assert capture.feed(event) is event
    assert capture.usage == tokens.TokenCounts(3, output_tokens=1)
    assert capture.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert capture.settled_counts(99) == tokens.TokenCounts(3, output_tokens=1)


# --- OpenAI Responses -------------------------------------------------------------------------------

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


@pytest.mark.parametrize("final", ["response.completed", "response.incomplete", "response.failed"])
def test_responses_stream_every_split(final: str) -> None:
    data = b"".join(responses_stream(final))
    for cuts in every_split(data):
        capture = apis.meter("openai-responses", "gpt-4.1")
        assert run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == tokens.TokenCounts(37, 5, 0, 11, 2)
        assert capture.error is (final == "response.failed")


def test_responses_cut_off_counts_deltas_only() -> None:
    capture = apis.meter("openai-responses", "gpt-4.1")
    for event in responses_stream()[:-1]:
        assert capture.feed(event) is event
    assert not capture.complete
    assert capture.usage is None
    assert capture.settled_counts(30) == tokens.TokenCounts(30, output_tokens=count("Hi there, friend"))


def test_responses_in_stream_error_event() -> None:
    capture = apis.meter("openai-responses", "gpt-4.1")
    capture.feed(responses_stream()[0])
    capture.feed(
        sse("error", {"type": "error", "code": "server_error", "message": "boom", "sequence_number": 1})
    )
    assert capture.error
    assert not capture.complete


# --- Anthropic Messages -----------------------------------------------------------------------------


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


def test_anthropic_stream_every_split_cumulative_deltas() -> None:
    # Two message_delta events with cumulative counts 10 then 15: the answer is 15, never 25.
    data = b"".join(anthropic_stream([10, 15]))
    for cuts in every_split(data):
        capture = apis.meter("anthropic-messages", "claude-sonnet-4-5")
        assert run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == ANTHROPIC_FINAL


def test_anthropic_usage_matches_the_anthropic_sdk() -> None:
    data = b"".join(anthropic_stream([10, 15]))
    capture = apis.meter("anthropic-messages", "claude-sonnet-4-5")
    assert capture.feed(data) is data

    # This anthropic SDK release runs on httpx2 (it refuses httpx objects).
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as http_client:
        client = anthropic.Anthropic(api_key="test", base_url="http://proxy.test", http_client=http_client)
        with client.messages.stream(
            model="claude-opus-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = stream.get_final_message()
    sdk = final.usage
    assert capture.usage == tokens.TokenCounts(
        input_tokens=sdk.input_tokens
        + (sdk.cache_read_input_tokens or 0)
        + (sdk.cache_creation_input_tokens or 0),
        cached_input_tokens=sdk.cache_read_input_tokens or 0,
        cache_write_tokens=sdk.cache_creation_input_tokens or 0,
        output_tokens=sdk.output_tokens,
    )


def test_anthropic_message_delta_may_update_input_counts() -> None:
    events = anthropic_stream([])
    delta = sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"input_tokens": 30, "cache_read_input_tokens": None, "output_tokens": 7},
        },
    )
    capture = apis.meter("anthropic-messages", "claude-sonnet-4-5")
    for event in [*events[:-1], delta, events[-1]]:
        capture.feed(event)
    # input replaced (30), cache read kept from message_start (null does not erase), output 7.
    assert capture.usage == tokens.TokenCounts(
        input_tokens=45, cached_input_tokens=10, cache_write_tokens=5, output_tokens=7
    )


def test_anthropic_error_mid_stream_uses_message_start_and_counted_text() -> None:
    events = anthropic_stream([15])
    capture = apis.meter("anthropic-messages", "claude-sonnet-4-5")
    for event in events[:4]:  # message_start, block start, ping, first delta
        capture.feed(event)
    capture.feed(
        b"event: error\n"
        b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )
    capture.finish()
    assert capture.error
    assert not capture.complete
    assert capture.usage == tokens.TokenCounts(40, 10, 5, 1)  # what message_start said so far
    counts = capture.settled_counts(prompt_tokens=999)
    assert counts == tokens.TokenCounts(40, 10, 5, max(1, count("Hello")))


def test_anthropic_cut_off_after_text_counts_text() -> None:
    capture = apis.meter("anthropic-messages", "claude-sonnet-4-5")
    long_text = ("word " * 50,)
    for event in anthropic_stream([60], text=long_text)[:4]:
        capture.feed(event)
    assert capture.settled_counts(999) == tokens.TokenCounts(40, 10, 5, count(long_text[0]))


# --- Gemini -----------------------------------------------------------------------------------------


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


def test_gemini_sse_running_totals_every_split() -> None:
    # The Gemini API separates SSE events with CRLF CRLF.
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in GEMINI_CHUNKS)
    for cuts in every_split(data):
        capture = apis.meter("gemini", "gemini-2.5-flash")
        assert run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == GEMINI_FINAL  # the last running total, not the sum


def test_gemini_json_array_stream_every_split() -> None:
    # streamGenerateContent without alt=sse: one pretty-printed JSON array, elements arriving over time.
    data = b"[" + b"\n,\r\n".join(orjson.dumps(c, option=orjson.OPT_INDENT_2) for c in GEMINI_CHUNKS) + b"\n]"
    for cuts in every_split(data):
        capture = apis.meter("gemini", "gemini-2.5-flash")
        assert run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == GEMINI_FINAL


def test_gemini_cut_off_keeps_last_running_total_and_counts_more_text() -> None:
    capture = apis.meter("gemini", "gemini-2.5-flash")
    first = b"data: " + orjson.dumps(GEMINI_CHUNKS[0]) + b"\r\n\r\n"
    capture.feed(first)
    capture.feed(
        b"data: "
        + orjson.dumps({"candidates": [{"content": {"parts": [{"text": " more words here"}]}}]})
        + b"\r\n\r\n"
    )
    assert not capture.complete
    assert capture.usage == tokens.TokenCounts(9, output_tokens=1)
    assert capture.settled_counts(50) == tokens.TokenCounts(9, output_tokens=count("The more words here"))


def test_gemini_array_cut_off_mid_element() -> None:
    data = b"[" + b",".join(orjson.dumps(c) for c in GEMINI_CHUNKS)
    capture = apis.meter("gemini", "gemini-2.5-flash")
    capture.feed(data[: len(data) - 20])
    assert not capture.complete
    assert capture.usage == tokens.TokenCounts(9, output_tokens=4)
    expected_text = count('The quick "brown" {fox} [\\]')
    assert capture.settled_counts(1) == tokens.TokenCounts(9, output_tokens=max(4, expected_text))


# --- Bedrock ----------------------------------------------------------------------------------------


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


def test_bedrock_converse_stream_every_split() -> None:
    data = b"".join(converse_frames())
    for cuts in every_split(data):
        capture = apis.meter("bedrock-converse", "anthropic.claude-3-haiku-20240307-v1:0")
        assert run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == tokens.TokenCounts(15, 3, 0, 5)


def test_bedrock_converse_cut_off_and_exception() -> None:
    frames = converse_frames()
    capture = apis.meter("bedrock-converse", "anthropic.claude-3-haiku")
    for frame in frames[:3]:
        assert capture.feed(frame) is frame
    exception = encoders.event_message(
        {
            ":message-type": "exception",
            ":exception-type": "modelStreamErrorException",
            ":content-type": "application/json",
        },
        b'{"message":"stream error"}',
    )
    capture.feed(exception)
    assert capture.error
    assert not capture.complete
    assert capture.settled_counts(20) == tokens.TokenCounts(20, output_tokens=count("Hello from Bedrock"))


def test_bedrock_corrupt_frame_is_forwarded_and_flagged() -> None:
    frame = bytearray(converse_frames()[1])
    frame[-1] ^= 1
    capture = apis.meter("bedrock-converse", "m")
    assert capture.feed(bytes(frame)) == bytes(frame)
    assert capture.error
    later = converse_frames()[-1]
    assert capture.feed(later) is later  # still forwarded; parsing stopped
    assert capture.usage is None


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


def test_bedrock_invoke_claude_stream_every_split() -> None:
    data = b"".join(claude_invoke_frames())
    for cuts in every_split(data):
        capture = apis.meter("bedrock-invoke", "anthropic.claude-3-haiku-20240307-v1:0")
        assert run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == tokens.TokenCounts(20, output_tokens=7)


def test_bedrock_invoke_llama_uses_invocation_metrics() -> None:
    frames = [
        invoke_chunk(
            {
                "generation": "Once upon",
                "prompt_token_count": 11,
                "generation_token_count": 2,
                "stop_reason": None,
            }
        ),
        invoke_chunk(
            {
                "generation": " a time",
                "prompt_token_count": None,
                "generation_token_count": 4,
                "stop_reason": "stop",
                "amazon-bedrock-invocationMetrics": {"inputTokenCount": 11, "outputTokenCount": 4},
            }
        ),
    ]
    capture = apis.meter("bedrock-invoke", "meta.llama3-8b-instruct-v1:0")
    cut = apis.meter("bedrock-invoke", "meta.llama3-8b-instruct-v1:0")
    for frame in frames:
        capture.feed(frame)
    cut.feed(frames[0])
    assert capture.complete
    assert capture.usage == tokens.TokenCounts(11, output_tokens=4)
    assert not cut.complete
    assert cut.settled_counts(11) == tokens.TokenCounts(11, output_tokens=count("Once upon"))


def test_bedrock_invoke_claude_cut_off() -> None:
    capture = apis.meter("bedrock-invoke", "anthropic.claude-3-haiku")
    for frame in claude_invoke_frames()[:3]:
        capture.feed(frame)
    assert not capture.complete
    assert capture.settled_counts(99) == tokens.TokenCounts(20, output_tokens=count("Bonjour tout"))


# --- general ----------------------------------------------------------------------------------------

STREAM_BUILDERS: dict[ApiFormat, Callable[[], bytes]] = {
    "openai-chat": lambda: b"".join(chat_stream()[0]),
    "openai-responses": lambda: b"".join(responses_stream()),
    "anthropic-messages": lambda: b"".join(anthropic_stream([15])),
    "gemini": lambda: b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in GEMINI_CHUNKS),
    "bedrock-converse": lambda: b"".join(converse_frames()),
    "bedrock-invoke": lambda: b"".join(claude_invoke_frames()),
}


@pytest.mark.parametrize("api", list(STREAM_BUILDERS))
def test_large_stream_folding_keeps_fallback_count(api: ApiFormat, monkeypatch: pytest.MonkeyPatch) -> None:
    # Raw bytes kept for the fallback are folded into a running count past a threshold: the count
    # must equal the unfolded one.
    data = STREAM_BUILDERS[api]()
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
    events, _ = chat_stream()
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


INSERTIONS = [b"\n\n", b"\r", b'"usage":{', b"data: [DONE]", b"{", b'"', b'"choices":[]']


@pytest.mark.parametrize("api", list(STREAM_BUILDERS))
def test_mangled_streams_never_raise_and_forward_everything(api: ApiFormat) -> None:
    rng = random.Random(api)
    original = STREAM_BUILDERS[api]()
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
                data[position:position] = rng.choice(INSERTIONS)
        cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randrange(1, 12))))
        capture = apis.meter(api, "gpt-4o")
        assert run(capture, bytes(data), cuts) == bytes(data)  # without hiding, every byte passes
        counts = capture.settled_counts(5)
        assert counts.input_tokens >= 0 and counts.output_tokens >= 0
        hiding = apis.meter(api, "gpt-4o", hide_usage_chunk=True)
        assert len(run(hiding, bytes(data), cuts)) <= len(data)


def test_responses_usage_matches_the_openai_sdk() -> None:
    data = b"".join(responses_stream())
    capture = apis.meter("openai-responses", "gpt-4.1")
    assert capture.feed(data) is data

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http_client:
        client = openai.OpenAI(api_key="test", base_url="http://proxy.test/v1", http_client=http_client)
        events = list(client.responses.create(model="gpt-4.1", input="hi", stream=True))
    final = events[-1]
    assert final.type == "response.completed"
    sdk = final.response.usage
    assert sdk is not None
    assert capture.usage == tokens.TokenCounts(
        input_tokens=sdk.input_tokens,
        cached_input_tokens=sdk.input_tokens_details.cached_tokens,
        output_tokens=sdk.output_tokens,
        reasoning_tokens=sdk.output_tokens_details.reasoning_tokens,
    )


def test_gemini_usage_matches_the_google_genai_sdk() -> None:
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in GEMINI_CHUNKS)
    capture = apis.meter("gemini", "gemini-2.5-flash")
    assert capture.feed(data) is data

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params.get("alt") == "sse"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http_client:
        client = genai.Client(
            api_key="test",
            http_options=genai_types.HttpOptions(base_url="http://proxy.test", httpx_client=http_client),
        )
        chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    sdk = chunks[-1].usage_metadata
    assert sdk is not None
    assert capture.usage == tokens.TokenCounts(
        input_tokens=sdk.prompt_token_count or 0,
        output_tokens=(sdk.candidates_token_count or 0) + (sdk.thoughts_token_count or 0),
        reasoning_tokens=sdk.thoughts_token_count or 0,
    )
    assert "".join(c.text or "" for c in chunks) == 'The quick "brown" {fox} [\\] jumps.'
