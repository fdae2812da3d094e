"""The Gemini wire format (apis/gemini.py): prompt estimates, usage and the SSE / JSON-array stream meter."""

from __future__ import annotations

import httpx
import orjson
from google import genai
from google.genai import types as genai_types
from tests import wire_samples as ws

from llmkeys_proxy import apis, tokens
from llmkeys_proxy.apis import base as apis_base


def test_gemini_sse_running_totals_every_split() -> None:
    # The Gemini API separates SSE events with CRLF CRLF.
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in ws.GEMINI_CHUNKS)
    for cuts in ws.every_split(data):
        capture = apis.meter("gemini", "gemini-2.5-flash")
        assert ws.run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == ws.GEMINI_FINAL  # the last running total, not the sum


def test_gemini_json_array_stream_every_split() -> None:
    # streamGenerateContent without alt=sse: one pretty-printed JSON array, elements arriving over time.
    data = (
        b"[" + b"\n,\r\n".join(orjson.dumps(c, option=orjson.OPT_INDENT_2) for c in ws.GEMINI_CHUNKS) + b"\n]"
    )
    for cuts in ws.every_split(data):
        capture = apis.meter("gemini", "gemini-2.5-flash")
        assert ws.run(capture, data, cuts) == data
        assert capture.complete
        assert capture.usage == ws.GEMINI_FINAL


def test_gemini_cut_off_keeps_last_running_total_and_counts_more_text() -> None:
    capture = apis.meter("gemini", "gemini-2.5-flash")
    first = b"data: " + orjson.dumps(ws.GEMINI_CHUNKS[0]) + b"\r\n\r\n"
    capture.feed(first)
    capture.feed(
        b"data: "
        + orjson.dumps({"candidates": [{"content": {"parts": [{"text": " more words here"}]}}]})
        + b"\r\n\r\n"
    )
    assert not capture.complete
    assert capture.usage == tokens.TokenCounts(9, output_tokens=1)
    assert capture.settled_counts(50) == tokens.TokenCounts(9, output_tokens=ws.count("The more words here"))


def test_gemini_array_cut_off_mid_element() -> None:
    data = b"[" + b",".join(orjson.dumps(c) for c in ws.GEMINI_CHUNKS)
    capture = apis.meter("gemini", "gemini-2.5-flash")
    capture.feed(data[: len(data) - 20])
    assert not capture.complete
    assert capture.usage == tokens.TokenCounts(9, output_tokens=4)
    expected_text = ws.count('The quick "brown" {fox} [\\]')
    assert capture.settled_counts(1) == tokens.TokenCounts(9, output_tokens=max(4, expected_text))


def test_gemini_usage_matches_the_google_genai_sdk() -> None:
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in ws.GEMINI_CHUNKS)
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
        ws.count("You are a cat.")
        + 3
        + ws.count("Hello")
        + apis_base.NON_TEXT_PART_TOKENS
        + 3
        + ws.count('{"functionCall":{"name":"meow","args":{}}}')
    )
    assert apis.estimate_prompt_tokens("gemini", "gemini-2.5-flash", body) == expected
    embed = {"content": {"parts": [{"text": "embed me"}]}}
    assert apis.estimate_prompt_tokens("gemini", "gemini-embedding-001", embed) == ws.count("embed me")
