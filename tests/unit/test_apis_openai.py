"""The OpenAI wire formats (apis/openai.py): estimates, usage, Chat/Completions/Responses stream meters."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from tests import wire_samples as ws

from llmkeys_proxy import apis, tokens
from llmkeys_proxy.apis import base as apis_base


def test_openai_chat_passthrough_returns_same_objects() -> None:
    events, _ = ws.chat_stream()
    capture = apis.meter("openai-chat", "gpt-4o-mini")
    for event in events:
        assert capture.feed(event) is event
    assert capture.finish() == b""
    assert capture.complete
    assert capture.usage == ws.CHAT_USAGE
    assert capture.settled_counts(prompt_tokens=5) == ws.CHAT_USAGE


def test_openai_chat_hidden_usage_chunk_same_objects_when_aligned() -> None:
    events, usage_event = ws.chat_stream()
    capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
    for event in events:
        out = capture.feed(event)
        if event is usage_event:
            assert out == b""
        else:
            assert out is event
    assert capture.finish() == b""
    assert capture.usage == ws.CHAT_USAGE
    assert capture.complete


def test_openai_chat_hidden_usage_chunk_at_every_split() -> None:
    events, usage_event = ws.chat_stream()
    data = b"".join(events)
    expected = data.replace(usage_event, b"")
    for cuts in ws.every_split(data):
        capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
        assert ws.run(capture, data, cuts) == expected, cuts
        assert capture.usage == ws.CHAT_USAGE
        assert capture.complete


def test_openai_chat_visible_usage_at_every_split() -> None:
    events, _ = ws.chat_stream()
    data = b"".join(events)
    for cuts in ws.every_split(data):
        capture = apis.meter("openai-chat", "gpt-4o-mini")
        assert ws.run(capture, data, cuts) == data
        assert capture.usage == ws.CHAT_USAGE
        assert capture.complete


def test_openai_chat_crlf_and_usage_with_spaces() -> None:
    events, _ = ws.chat_stream()
    data = b"".join(events).replace(b'"usage":{', b'"usage": {').replace(b"\n", b"\r\n")
    for cuts in ([], [len(data) // 3, len(data) // 2], list(range(1, len(data), 7))):
        capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
        out = ws.run(capture, data, cuts)
        assert capture.usage == ws.CHAT_USAGE
        assert capture.complete
        assert b'"choices":[]' not in out
        assert out.endswith(b"data: [DONE]\r\n\r\n")


def test_openai_chat_hidden_stream_is_read_by_the_openai_sdk() -> None:
    events, _ = ws.chat_stream()
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
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(ws.CHAT_TEXTS)


def test_openai_chat_cut_off_counts_passed_text() -> None:
    events, _ = ws.chat_stream()
    passed = events[:3]  # role chunk + two content chunks, then the connection drops
    capture = apis.meter("openai-chat", "gpt-4o-mini", hide_usage_chunk=True)
    for event in passed:
        capture.feed(event)
    capture.feed(events[3][:25])  # half an event
    capture.finish()
    assert capture.usage is None
    assert not capture.complete
    expected_output = ws.count(ws.CHAT_TEXTS[1] + ws.CHAT_TEXTS[2])
    assert capture.fallback_counts(prompt_tokens=42) == tokens.TokenCounts(
        input_tokens=42, output_tokens=expected_output
    )
    assert capture.settled_counts(prompt_tokens=42) == capture.fallback_counts(42)


def test_openai_chat_stream_without_usage_chunk_falls_back() -> None:
    events, _ = ws.chat_stream(with_usage=False)
    capture = apis.meter("openai-chat", "gpt-4o-mini")
    for event in events:
        capture.feed(event)
    assert capture.complete
    assert capture.usage is None
    assert capture.settled_counts(7).output_tokens == ws.count("".join(ws.CHAT_TEXTS))


def test_openai_chat_tool_call_and_reasoning_text_counted_in_fallback() -> None:
    delta_events = [
        ws.chat_chunk({"choices": [{"index": 0, "delta": {"reasoning_content": "Let me think."}}]}),
        ws.chat_chunk(
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
        ws.chat_chunk(
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
    expected = ws.count('Let me think.get_weather{"city":')
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
    assert ws.run(capture, data, [10, 200]) == data.replace(events[2], b"")
    assert capture.usage == tokens.TokenCounts(input_tokens=5, output_tokens=4)
    cut = apis.meter("openai-completions", "gpt-3.5-turbo-instruct")
    cut.feed(events[0])
    assert cut.fallback_counts(5) == tokens.TokenCounts(
        5, output_tokens=ws.count("This is", "gpt-3.5-turbo-instruct")
    )


def test_usage_on_content_chunk_is_kept_visible() -> None:
    # Some OpenAI-compatible servers report usage on the last content chunk: it cannot be dropped.
    event = ws.chat_chunk(
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


@pytest.mark.parametrize("final", ["response.completed", "response.incomplete", "response.failed"])
def test_responses_stream_every_split(final: str) -> None:
    data = b"".join(ws.responses_stream(final))
    for cuts in ws.every_split(data):
        capture = apis.meter("openai-responses", "gpt-4.1")
        assert ws.run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == tokens.TokenCounts(37, 5, 0, 11, 2)
        assert capture.error is (final == "response.failed")


def test_responses_cut_off_counts_deltas_only() -> None:
    capture = apis.meter("openai-responses", "gpt-4.1")
    for event in ws.responses_stream()[:-1]:
        assert capture.feed(event) is event
    assert not capture.complete
    assert capture.usage is None
    assert capture.settled_counts(30) == tokens.TokenCounts(30, output_tokens=ws.count("Hi there, friend"))


def test_responses_in_stream_error_event() -> None:
    capture = apis.meter("openai-responses", "gpt-4.1")
    capture.feed(ws.responses_stream()[0])
    capture.feed(
        ws.sse("error", {"type": "error", "code": "server_error", "message": "boom", "sequence_number": 1})
    )
    assert capture.error
    assert not capture.complete


def test_responses_usage_matches_the_openai_sdk() -> None:
    data = b"".join(ws.responses_stream())
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


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)]
)
def test_chat_estimate_matches_cookbook(model: str, expected: int) -> None:
    assert apis.estimate_prompt_tokens(
        "openai-chat", model, {"model": model, "messages": ws.COOKBOOK_MESSAGES}
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
    assert (
        plain
        == 3 + ws.count("user") + ws.count("What is in this picture?") + apis_base.NON_TEXT_PART_TOKENS + 3
    )
    full = apis.estimate_prompt_tokens("openai-chat", "gpt-4o", body)
    expected_extra = (
        3
        + ws.count("assistant")
        + ws.count("lookup")
        + ws.count('{"q":"cat"}')  # assistant tool call
        + 3
        + ws.count("tool")
        + ws.count("call_1")
        + ws.count("a cat")  # tool result
    )
    assert full - plain == expected_extra + ws.count(
        '[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]'
    )


def test_responses_estimate() -> None:
    assert apis.estimate_prompt_tokens("openai-responses", "gpt-4o", {"input": "Tell me a joke"}) == (
        ws.count("Tell me a joke") + 3
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
        ws.count("Be brief.")
        + 3
        + ws.count("user")
        + ws.count("Hi")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
        + ws.count("f")
        + ws.count("{}")
        + 3
        + ws.count("42")
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
        expected = sum(ws.count(t, "gpt-3.5-turbo-instruct") for t in texts)
    assert got == expected


def test_embeddings_estimate() -> None:
    model = "text-embedding-3-small"
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": "hello world"}) == 2
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": ["hello world", "hi"]}) == 3
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": [[1, 2, 3], [4]]}) == 4
    assert apis.estimate_prompt_tokens("openai-embeddings", model, {"input": [5, 6]}) == 2


def test_responses_usage_from_stream_event_wrapper() -> None:
    event = {"type": "response.completed", "sequence_number": 9, "response": ws.RESPONSES_RESPONSE}
    assert apis.usage_from_json("openai-responses", event) == tokens.TokenCounts(328, 128, 0, 52, 20)
