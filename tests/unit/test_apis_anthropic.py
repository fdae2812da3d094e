"""The Anthropic Messages wire format (apis/anthropic.py): estimates, usage and the SSE stream meter."""

from __future__ import annotations

import anthropic
import httpx2
from tests import wire_samples as ws

from llmkeys_proxy import apis, tokens
from llmkeys_proxy.apis import base as apis_base


def test_anthropic_stream_every_split_cumulative_deltas() -> None:
    # Two message_delta events with cumulative counts 10 then 15: the answer is 15, never 25.
    data = b"".join(ws.anthropic_stream([10, 15]))
    for cuts in ws.every_split(data):
        capture = apis.meter("anthropic-messages", "claude-sonnet-4-5")
        assert ws.run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == ws.ANTHROPIC_FINAL


def test_anthropic_usage_matches_the_anthropic_sdk() -> None:
    data = b"".join(ws.anthropic_stream([10, 15]))
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
    events = ws.anthropic_stream([])
    delta = ws.sse(
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
    events = ws.anthropic_stream([15])
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
    assert counts == tokens.TokenCounts(40, 10, 5, max(1, ws.count("Hello")))


def test_anthropic_cut_off_after_text_counts_text() -> None:
    capture = apis.meter("anthropic-messages", "claude-sonnet-4-5")
    long_text = ("word " * 50,)
    for event in ws.anthropic_stream([60], text=long_text)[:4]:
        capture.feed(event)
    assert capture.settled_counts(999) == tokens.TokenCounts(40, 10, 5, ws.count(long_text[0]))


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
        ws.count("You are terse.")
        + 3
        + ws.count("Hello, Claude")
        + 3
        + ws.count("Greet back")
        + ws.count("clock")
        + ws.count('{"tz":"UTC"}')
        + 3
        + ws.count("12:00")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
    )
    assert apis.estimate_prompt_tokens("anthropic-messages", "claude-sonnet-4-5", body) == expected
    assert apis.estimate_prompt_tokens("anthropic-messages", "claude-x", {"system": "S", "messages": []}) == (
        ws.count("S") + 3
    )
