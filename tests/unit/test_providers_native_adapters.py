"""Pure parts of the Anthropic, Gemini, Vertex AI and Bedrock adapters: upstream URLs, credential
headers, body rewrites and configuration errors (no network)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from tests.fakes import google_token_server

from llmkeys_proxy import config, settings
from llmkeys_proxy.providers import anthropic, base, bedrock, gemini, vertex

SETTINGS = settings.ProxySettings(config_dir="-")


def entry(provider: config.ProviderType, **fields: Any) -> config.ProviderEntry:
    return config.ProviderEntry(id=f"llmkeys/{provider}", provider=provider, **fields)


def call(api: Any, operation: str, payload: dict[str, Any], **fields: Any) -> base.UpstreamCall:
    values: dict[str, Any] = {
        "api": api,
        "operation": operation,
        "model": payload.get("model", "m"),
        "upstream_model": payload.get("model", "m"),
        "stream": bool(payload.get("stream")),
        "body": orjson.dumps(payload),
        "payload": payload,
        "headers": {"Content-Type": "application/json", "X-Request-Id": "r1"},
        "query": {},
        "request_id": "r1",
    }
    values.update(fields)
    return base.UpstreamCall(**values)


async def test_anthropic_default_url_key_header_version_and_rename() -> None:
    adapter = anthropic.AnthropicAdapter(entry("anthropic", api_key="sk-ant-real"), SETTINGS)
    prepared = await adapter.prepare(
        call("anthropic-messages", "messages", {"model": "claude-x", "max_tokens": 5})
    )
    assert prepared.url == "https://api.anthropic.com/v1/messages"
    assert prepared.headers["x-api-key"] == "sk-ant-real"
    assert prepared.headers["anthropic-version"] == anthropic.DEFAULT_VERSION
    renamed = call(
        "anthropic-messages", "messages", {"model": "house", "max_tokens": 5}, upstream_model="claude-y"
    )
    renamed.headers["Anthropic-Version"] = "2026-10-21"
    prepared = await adapter.prepare(renamed)
    assert json.loads(prepared.body) == {"model": "claude-y", "max_tokens": 5}
    assert (
        prepared.headers["Anthropic-Version"] == "2026-10-21" and "anthropic-version" not in prepared.headers
    )
    assert adapter.supports("anthropic-messages", "messages/count_tokens")
    assert not adapter.supports("openai-chat", "chat/completions")


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        (None, "https://api.anthropic.com/v1/messages"),
        ("https://gw.example/anthropic/", "https://gw.example/anthropic/v1/messages"),
        ("https://gw.example/anthropic/v1", "https://gw.example/anthropic/v1/messages"),
    ],
)
async def test_anthropic_base_urls(base_url: str | None, expected: str) -> None:
    adapter = anthropic.AnthropicAdapter(entry("anthropic", api_key="k", base_url=base_url), SETTINGS)
    assert (await adapter.prepare(call("anthropic-messages", "messages", {"model": "c"}))).url == expected


@pytest.mark.parametrize(
    ("base_url", "expected_root"),
    [
        (None, "https://generativelanguage.googleapis.com/v1beta"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9/v1beta"),
        ("https://gw.example/google/v1alpha/", "https://gw.example/google/v1alpha"),
        ("https://gw.example/v1", "https://gw.example/v1"),
    ],
)
def test_gemini_versioned_root(base_url: str | None, expected_root: str) -> None:
    assert gemini.versioned_root(base_url, gemini.DEFAULT_BASE_URL, "v1beta") == expected_root


async def test_gemini_url_keeps_only_alt_and_sends_real_key() -> None:
    adapter = gemini.GeminiAdapter(entry("gemini", api_key="AIza-real"), SETTINGS)
    streamed = call("gemini", "streamGenerateContent", {"contents": []}, upstream_model="gemini-3.5-flash")
    streamed.query = {"alt": "sse", "key": "sk-llmk-should-never-pass", "$fields": "x"}
    prepared = await adapter.prepare(streamed)
    assert prepared.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-3.5-flash:streamGenerateContent?alt=sse"
    )
    assert prepared.headers["x-goog-api-key"] == "AIza-real"


def test_gemini_batch_embed_models_follow_the_rename() -> None:
    payload = {"requests": [{"model": "models/house-embed", "content": {"parts": [{"text": "a"}]}}, {"x": 1}]}
    body = gemini.rename_batch_models(orjson.dumps(payload), payload, "text-embedding-005")
    assert json.loads(body)["requests"] == [
        {"model": "models/text-embedding-005", "content": {"parts": [{"text": "a"}]}},
        {"x": 1},
    ]
    untouched = orjson.dumps({"requests": [{"content": {}}]})
    assert gemini.rename_batch_models(untouched, json.loads(untouched), "m") is untouched


def _vertex(key_json: str, **fields: Any) -> vertex.VertexAdapter:
    values: dict[str, Any] = {"api_key": key_json, "project": "p1", "location": "us-central1"}
    values.update(fields)
    return vertex.VertexAdapter(entry("vertex-ai", **values), SETTINGS)


@pytest.fixture(scope="module")
def key_json() -> str:
    return google_token_server.make_service_account("https://oauth2.example/token").key_json


def test_vertex_urls_and_claude_body(key_json: str) -> None:
    adapter = _vertex(key_json)
    publishers = (
        "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/publishers"
    )
    generate = call(
        "gemini", "streamGenerateContent", {}, upstream_model="gemini-3.5-flash", query={"alt": "sse"}
    )
    assert (
        adapter.url(generate) == f"{publishers}/google/models/gemini-3.5-flash:streamGenerateContent?alt=sse"
    )
    claude = call("anthropic-messages", "messages", {"model": "claude-x", "stream": True, "max_tokens": 3})
    assert adapter.url(claude) == f"{publishers}/anthropic/models/claude-x:streamRawPredict"
    assert json.loads(adapter.body(claude)) == {
        "stream": True,
        "max_tokens": 3,
        "anthropic_version": vertex.VERTEX_ANTHROPIC_VERSION,
    }
    count = call("anthropic-messages", "messages/count_tokens", {"model": "claude-x", "messages": []})
    assert adapter.url(count) == f"{publishers}/anthropic/models/count-tokens:rawPredict"
    assert json.loads(adapter.body(count))["model"] == "claude-x"
    assert not adapter.supports("gemini", "embedContent")
    glob = _vertex(key_json, location=None, project=None)  # project from the key file, location global
    assert glob.url(generate).startswith(
        "https://aiplatform.googleapis.com/v1/projects/proj/locations/global/"
    )
    assert adapter.secret_values() and all(b"PRIVATE KEY" in v or b"{" in v for v in adapter.secret_values())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"api_key": None}, "no service-account key"),
        ({"api_key": "not json"}, "not JSON"),
        (
            {"api_key": json.dumps({"type": "service_account", "client_email": "a@b", "private_key": "x"})},
            "names no project",
        ),
    ],
)
def test_vertex_configuration_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        vertex.VertexAdapter(entry("vertex-ai", **{"project": None, **fields}), SETTINGS)
    assert "private_key" not in str(err.value)


async def test_bedrock_bearer_and_encoded_model_ids() -> None:
    adapter = bedrock.BedrockAdapter(entry("bedrock", api_key="ABSK-real", region="eu-west-1"), SETTINGS)
    arn = "arn:aws:bedrock:eu-west-1:1:inference-profile/eu.anthropic.claude-x-v1:0"
    client_call = call("bedrock-converse", "converse", {"messages": []}, upstream_model=arn)
    client_call.headers["X-Amz-Date"] = "20200101T000000Z"  # a client's own signing headers never pass
    prepared = await adapter.prepare(client_call)
    assert str(prepared.url) == (
        "https://bedrock-runtime.eu-west-1.amazonaws.com/model/"
        "arn%3Aaws%3Abedrock%3Aeu-west-1%3A1%3Ainference-profile%2Feu.anthropic.claude-x-v1%3A0/converse"
    )
    assert prepared.headers["Authorization"] == "Bearer ABSK-real"
    assert "X-Amz-Date" not in prepared.headers


async def test_bedrock_sigv4_headers() -> None:
    fields = {
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "secret",
        "aws_session_token": "tok",
    }
    adapter = bedrock.BedrockAdapter(
        entry("bedrock", api_key="ignored-when-keys-exist", region="us-east-2", secret_fields=fields),
        SETTINGS,
    )
    prepared = await adapter.prepare(
        call("bedrock-invoke", "invoke", {"max_tokens": 1}, upstream_model="m:0")
    )
    auth = prepared.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
    assert "/us-east-2/bedrock/aws4_request" in auth
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "content-type", "x-amz-date", "x-amz-security-token", "x-request-id"} <= set(signed)
    assert prepared.headers["Host"] == "bedrock-runtime.us-east-2.amazonaws.com"
    assert prepared.headers["X-Amz-Security-Token"] == "tok"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"api_key": "k"}, "names no region"),
        ({"region": "us-east-1"}, "neither an access key pair nor an API key"),
    ],
)
def test_bedrock_configuration_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bedrock.BedrockAdapter(entry("bedrock", **fields), SETTINGS)
