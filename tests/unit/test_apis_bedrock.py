"""The Bedrock wire formats (apis/bedrock.py): Converse and InvokeModel estimates, usage, stream meters."""

from __future__ import annotations

import multidict
from tests import wire_samples as ws
from tests.fakes import encoders

from llmkeys_proxy import apis, tokens
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.apis import bedrock


def test_bedrock_converse_stream_every_split() -> None:
    data = b"".join(ws.converse_frames())
    for cuts in ws.every_split(data):
        capture = apis.meter("bedrock-converse", "anthropic.claude-3-haiku-20240307-v1:0")
        assert ws.run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == tokens.TokenCounts(15, 3, 0, 5)


def test_bedrock_converse_cut_off_and_exception() -> None:
    frames = ws.converse_frames()
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
    assert capture.settled_counts(20) == tokens.TokenCounts(20, output_tokens=ws.count("Hello from Bedrock"))


def test_bedrock_corrupt_frame_is_forwarded_and_flagged() -> None:
    frame = bytearray(ws.converse_frames()[1])
    frame[-1] ^= 1
    capture = apis.meter("bedrock-converse", "m")
    assert capture.feed(bytes(frame)) == bytes(frame)
    assert capture.error
    later = ws.converse_frames()[-1]
    assert capture.feed(later) is later  # still forwarded; parsing stopped
    assert capture.usage is None


def test_bedrock_invoke_claude_stream_every_split() -> None:
    data = b"".join(ws.claude_invoke_frames())
    for cuts in ws.every_split(data):
        capture = apis.meter("bedrock-invoke", "anthropic.claude-3-haiku-20240307-v1:0")
        assert ws.run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == tokens.TokenCounts(20, output_tokens=7)


def test_bedrock_invoke_llama_uses_invocation_metrics() -> None:
    frames = [
        ws.invoke_chunk(
            {
                "generation": "Once upon",
                "prompt_token_count": 11,
                "generation_token_count": 2,
                "stop_reason": None,
            }
        ),
        ws.invoke_chunk(
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
    assert cut.settled_counts(11) == tokens.TokenCounts(11, output_tokens=ws.count("Once upon"))


def test_bedrock_invoke_claude_cut_off() -> None:
    capture = apis.meter("bedrock-invoke", "anthropic.claude-3-haiku")
    for frame in ws.claude_invoke_frames()[:3]:
        capture.feed(frame)
    assert not capture.complete
    assert capture.settled_counts(99) == tokens.TokenCounts(20, output_tokens=ws.count("Bonjour tout"))


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
        ws.count("Be kind.")
        + 3
        + ws.count("Hi")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
        + ws.count("f")
        + ws.count('{"a":1}')
        + 3
        + ws.count('{"r":2}')
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
    assert (
        apis.estimate_prompt_tokens("bedrock-invoke", "anthropic.claude", claude) == 3 + ws.count("Hello") + 3
    )
    nova = {
        "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
        "inferenceConfig": {"max_new_tokens": 9},
    }
    assert (
        apis.estimate_prompt_tokens("bedrock-invoke", "amazon.nova-lite-v1:0", nova)
        == 3 + ws.count("Hello") + 3
    )
    llama = {"prompt": "Tell me a story", "max_gen_len": 64, "temperature": 0.5}
    assert apis.estimate_prompt_tokens("bedrock-invoke", "meta.llama3", llama) == ws.count("Tell me a story")
    titan = {"inputText": "Summarise", "textGenerationConfig": {"maxTokenCount": 32}}
    assert apis.estimate_prompt_tokens("bedrock-invoke", "amazon.titan", titan) == ws.count("Summarise")


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
