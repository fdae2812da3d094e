"""Pure parts of the proxy: settings, error shapes, key extraction and verification, routing, the
body/header rules of the pipeline, config documents on disk, the Azure URL forms and the mock provider."""

from __future__ import annotations

import json
import os
import pathlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmkeys_proxy import (
    apis,
    auth,
    config,
    errors,
    headers,
    keys,
    routing,
    settings,
    sources,
    tokens,
)
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.limits import redis as redis_limits
from llmkeys_proxy.providers import azure, base, mock
from llmkeys_proxy.providers import openai as openai_adapter

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SETTINGS = settings.ProxySettings(config_dir="/nowhere")


def header_map(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def make_key(secret: str, **fields: object) -> config.KeyEntry:
    values: dict[str, object] = {
        "key_id": "abcdefabcdef",
        "hashes": (config.SecretHash(sha256=keys.hash_secret(secret)),),
        "namespace": "ns",
        "name": "k",
        "providers": ("p/openai",),
        "model_allowlists": (("*",),),
    }
    values.update(fields)
    return config.KeyEntry(**values)  # type: ignore[arg-type]


# -- settings ---------------------------------------------------------------------------------------


def test_settings_from_env_with_overrides_and_secrets_out_of_repr() -> None:
    env = {
        "LLMKEYS_PORT": "9090",
        "LLMKEYS_WORKERS": "3",
        "LLMKEYS_CONFIG_SOURCE": "kubernetes",
        "LLMKEYS_REDIS_URL": "redis://user:hunter2@redis:6379/0",
        "LLMKEYS_REDIS_PASSWORD": "s3cr3t/pw",
        "LLMKEYS_UPSTREAM_TIMEOUT_S": "12.5",
        "LLMKEYS_LOG_LEVEL": "debug",
        "LLMKEYS_MAX_BODY_BYTES": "",
    }
    loaded = settings.ProxySettings.from_env(env, port=7000)
    assert loaded.port == 7000 and loaded.workers == 3 and loaded.config_source == "kubernetes"
    assert loaded.upstream_timeout_s == 12.5 and loaded.log_level == "DEBUG"
    assert loaded.max_body_bytes == 10 * 1024 * 1024
    assert "hunter2" not in repr(loaded) and "s3cr3t" not in repr(loaded)
    # The password variable replaces the URL's, quoted.
    assert (
        redis_limits.url_with_password(loaded.redis_url, loaded.redis_password)
        == "redis://user:s3cr3t%2Fpw@redis:6379/0"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMKEYS_CONFIG_SOURCE": "directory"}, "LLMKEYS_CONFIG_DIR"),
        ({"LLMKEYS_CONFIG_SOURCE": "etcd"}, "kubernetes or directory"),
        ({"LLMKEYS_CONFIG_SOURCE": "kubernetes", "LLMKEYS_PORT": "eighty"}, "LLMKEYS_PORT"),
        ({"LLMKEYS_CONFIG_SOURCE": "kubernetes", "LLMKEYS_REDIS_URL": "http://pw@x"}, "redis://"),
    ],
)
def test_settings_refuse_bad_values_without_echoing_secrets(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        settings.ProxySettings.from_env(env)
    assert "pw@" not in str(raised.value)


# -- errors -----------------------------------------------------------------------------------------


def test_error_shapes_per_family() -> None:
    error = errors.ProxyError("model_not_allowed", "no", param="model")
    assert json.loads(apis.error_body("openai", error)) == {
        "error": {"message": "no", "type": "permission_error", "param": "model", "code": "model_not_allowed"}
    }
    assert json.loads(apis.error_body("anthropic", error)) == {
        "type": "error",
        "error": {"type": "permission_error", "message": "no", "code": "model_not_allowed"},
    }
    gemini = json.loads(apis.error_body("gemini", error))["error"]
    assert gemini["code"] == 403 and gemini["status"] == "PERMISSION_DENIED"
    assert gemini["details"][0]["reason"] == "model_not_allowed"
    bedrock = apis.error_response("bedrock", errors.ProxyError("rate_limit_exceeded", "slow down"))
    assert bedrock.status == 429 and bedrock.headers["x-amzn-ErrorType"] == "ThrottlingException"
    passthrough = errors.ProxyError("upstream_error", "boom", status=503)
    assert passthrough.status == 503 and passthrough.type == "server_error"


# -- auth -------------------------------------------------------------------------------------------


def test_presented_key_from_every_place_sdks_put_it() -> None:
    assert auth.presented_key(header_map(Authorization="Bearer sk-a"), {}) == "sk-a"
    assert auth.presented_key(header_map(Authorization="bearer  sk-b "), {}) == "sk-b"
    assert auth.presented_key(header_map(x_api_key="sk-c"), {}) == "sk-c"
    assert auth.presented_key(header_map(api_key="sk-d"), {}) == "sk-d"
    assert auth.presented_key(header_map(x_goog_api_key="sk-e"), {}) == "sk-e"
    assert auth.presented_key(header_map(), {"key": "sk-f"}) == "sk-f"
    assert auth.presented_key(header_map(Authorization="Basic abc"), {}) is None


def test_authenticate_rotation_windows_and_states() -> None:
    old, new = keys.generate_secret(), keys.generate_secret()
    entry = make_key(
        new,
        hashes=(
            config.SecretHash(sha256=keys.hash_secret(new), not_before=NOW - timedelta(hours=1)),
            config.SecretHash(sha256=keys.hash_secret(old), not_after=NOW + timedelta(minutes=5)),
        ),
    )
    index = {entry.key_id: entry}
    assert auth.authenticate(index, keys.format_key(entry.key_id, new), NOW) is entry
    assert auth.authenticate(index, keys.format_key(entry.key_id, old), NOW) is entry
    with pytest.raises(errors.ProxyError) as late:  # the old secret's grace period is over
        auth.authenticate(index, keys.format_key(entry.key_id, old), NOW + timedelta(minutes=6))
    assert late.value.code == "invalid_api_key"
    naive = make_key(new, expires_at=datetime(2026, 6, 1, 11, 0))
    with pytest.raises(errors.ProxyError) as expired:
        auth.authenticate({naive.key_id: naive}, keys.format_key(naive.key_id, new), NOW)
    assert expired.value.code == "key_expired" and expired.value.status == 403


# -- routing ----------------------------------------------------------------------------------------


def provider(pid: str, kind: config.ProviderType = "openai", **fields: object) -> config.ProviderEntry:
    values: dict[str, object] = {
        "id": pid,
        "provider": kind,
        "api_key": "k" * 20,
        "models": (config.ModelRoute(name="*"),),
    }
    values.update(fields)
    return config.ProviderEntry(**values)  # type: ignore[arg-type]


def table_of(keys_: list[config.KeyEntry], providers: list[config.ProviderEntry]) -> routing.RoutingTable:
    proxy_config = config.ProxyConfig(keys=tuple(keys_), providers=tuple(providers))
    adapters: dict[str, base.ProviderAdapter] = {}
    for entry in providers:
        cls = azure.AzureOpenAIAdapter if entry.provider == "azure-openai" else openai_adapter.OpenAIAdapter
        adapters[entry.id] = cls(entry, SETTINGS)
    return routing.RoutingTable(proxy_config, adapters)


def test_routing_picks_the_first_allowed_credential_and_renames() -> None:
    key = make_key("x", providers=("p/second", "p/azure"))
    first = provider("p/first", models=(config.ModelRoute(name="gpt-4o"),))
    second = provider(
        "p/second", models=(config.ModelRoute(name="gpt-4o", upstream_name="gpt-4o-2024-11-20"),)
    )
    az = provider(
        "p/azure",
        "azure-openai",
        base_url="https://r.openai.azure.com",
        api_version="2024-10-21",
        models=(config.ModelRoute(name="gpt-4o-mini"),),
        deployments={"gpt-4o-mini": "dep-mini"},
    )
    table = table_of([key], [first, second, az])
    route = table.resolve(key, "gpt-4o", "openai-chat", "chat/completions")
    assert (
        route.provider.id == "p/second" and route.upstream_model == route.price_model == "gpt-4o-2024-11-20"
    )
    assert table.resolve(key, "gpt-4o", "openai-chat", "chat/completions") is route  # cached
    azure_route = table.resolve(key, "gpt-4o-mini", "openai-chat", "chat/completions")
    assert azure_route.upstream_model == "dep-mini" and azure_route.price_model == "gpt-4o-mini"
    assert table.deployment_models == {"dep-mini": "gpt-4o-mini"}
    with pytest.raises(errors.ProxyError) as unsupported:
        table.resolve(key, "gpt-4o", "anthropic-messages", "messages")
    assert unsupported.value.code == "endpoint_not_supported"


def test_pools_of_a_key() -> None:
    pool = config.PoolEntry(
        id="pol/b/team=a",
        policy="pol",
        budget="b",
        group_by="team",
        group_value="a",
        spend_per_month_micro_usd=5,
    )
    key = make_key("x", pools=("pol/b/team=a", "gone"))
    proxy_config = config.ProxyConfig(keys=(key,), pools=(pool,))
    table = routing.RoutingTable(proxy_config, {})
    assert table.pools_of(key) == (limits_base.PoolLimit("pol/b/team=a", 5, None),)


# -- pipeline rules ---------------------------------------------------------------------------------


def test_upstream_body_is_the_original_bytes_unless_a_change_is_needed() -> None:
    payload = {"model": "gpt-4o", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    body = orjson.dumps(payload)
    same, _, hide = apis.FORMATS["openai-chat"].upstream_body(True, payload, body, "gpt-4o", True)
    assert same is body and not hide
    payload = {"model": "gpt-4o", "stream": True, "stream_options": {"include_obfuscation": False}}
    sent, parsed, hide = apis.FORMATS["openai-chat"].upstream_body(
        True, payload, orjson.dumps(payload), "dep", True
    )
    assert hide and parsed["model"] == "dep"
    assert orjson.loads(sent)["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    # A key's maxTokensPerRequest is set on requests that name no cap.
    capped, parsed, _ = apis.FORMATS["openai-responses"].upstream_body(
        False, {"model": "m"}, b"{}", "m", True, 300
    )
    assert orjson.loads(capped) == parsed == {"model": "m", "max_output_tokens": 300}
    # Non-OpenAI formats keep the model wherever their API has it.
    native = {"model": "claude", "max_tokens": 5}
    assert (
        apis.FORMATS["anthropic-messages"].upstream_body(False, native, b"raw", "other", False)[0] == b"raw"
    )


def test_rate_limit_headers_in_openai_format() -> None:
    rate = limits_base.RateState(
        limit_requests=60,
        remaining_requests=-1,
        reset_requests_s=0.25,
        limit_tokens=1000,
        remaining_tokens=10,
        reset_tokens_s=361.5,
    )
    assert headers.rate_limit_headers(rate) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "250ms",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "10",
        "x-ratelimit-reset-tokens": "6m1.5s",
    }
    assert headers.rate_limit_headers(limits_base.RateState()) == {}


def test_header_rules_both_ways() -> None:
    inbound = header_map(
        Authorization="Bearer sk-llmk-x",
        api_key="a",
        x_api_key="b",
        x_goog_api_key="c",
        Connection="keep-alive",
        Host="proxy",
        Cookie="c=1",
        OpenAI_Organization="org",
        User_Agent="OpenAI/Python",
        anthropic_version="v",
    )
    forwarded = headers.forward_headers(inbound, "rid-1")
    assert {k.lower() for k in forwarded} == {
        "user-agent",
        "anthropic-version",
        "x-request-id",
        "content-type",
    }
    assert forwarded["Content-Type"] == "application/json"
    upstream = CIMultiDict(
        {
            "Content-Type": "application/json",
            "x-request-id": "up-1",
            "openai-organization": "org-real",
            "x-ratelimit-remaining-requests": "5",
            "Set-Cookie": "a=b",
            "openai-processing-ms": "3",
        }
    )
    shown = headers.response_headers(upstream)
    assert dict(shown) == {
        "Content-Type": "application/json",
        "x-upstream-request-id": "up-1",
        "openai-processing-ms": "3",
    }


# -- config documents on disk ------------------------------------------------------------------------


def test_config_dir_roundtrip_removes_stale_shards_and_keeps_secrets_private(tmp_path: pathlib.Path) -> None:
    first = make_key("x")
    other = make_key("y", key_id="zzzzzzzzzzzz", namespace="other")
    written = config.ProxyConfig(keys=(first, other), providers=(provider("p/openai"),))
    sources.write_config_dir(tmp_path, written)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "keys-ns-0.json",
        "keys-other-0.json",
        "providers.json",
    ]
    assert os.stat(tmp_path / "providers.json").st_mode & 0o777 == 0o600
    assert sources.load_config_dir(tmp_path) == written
    sources.write_config_dir(tmp_path, config.ProxyConfig(keys=(first,), providers=written.providers))
    assert not (tmp_path / "keys-other-0.json").exists()


def test_bad_document_is_reported_without_its_values(tmp_path: pathlib.Path) -> None:
    document = {"version": 1, "providers": [{"id": "p", "provider": "nope", "api_key": "sk-VERYSECRETVALUE"}]}
    (tmp_path / "providers.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"providers\.json") as raised:
        sources.load_config_dir(tmp_path)
    assert "VERYSECRET" not in str(raised.value)
    (tmp_path / "providers.json").write_text(json.dumps({"version": 2}))
    with pytest.raises(ValueError, match="version"):
        sources.load_config_dir(tmp_path)


async def test_directory_source_keeps_the_last_good_config(tmp_path: pathlib.Path) -> None:
    good = config.ProxyConfig(keys=(make_key("x"),), providers=(provider("p/openai"),))
    sources.write_config_dir(tmp_path, good)
    source = sources.DirectorySource(tmp_path, interval_s=60)
    seen: list[config.ProxyConfig] = []
    source.subscribe(seen.append)
    await source.poll()
    assert source.current == good and source.healthy and source.generation == 1
    (tmp_path / "keys-ns-0.json").write_text("{")
    await source.poll()
    assert source.current == good and not source.healthy and "keys-ns-0.json" in (source.last_error or "")
    sources.write_config_dir(tmp_path, config.ProxyConfig(providers=good.providers))
    await source.poll()
    assert source.healthy and source.current is not None and source.current.keys == ()
    assert len(seen) == 2 and source.generation == 2


# -- adapters -----------------------------------------------------------------------------------------


def test_azure_url_forms() -> None:
    classic = azure.AzureOpenAIAdapter(
        provider("a", "azure-openai", base_url="https://r.openai.azure.com/", api_version="2024-10-21"),
        SETTINGS,
    )
    assert classic.url("chat/completions", "my dep") == (
        "https://r.openai.azure.com/openai/deployments/my%20dep/chat/completions?api-version=2024-10-21"
    )
    assert (
        classic.url("responses", "d") == "https://r.openai.azure.com/openai/responses?api-version=2024-10-21"
    )
    v1 = azure.AzureOpenAIAdapter(
        provider("a", "azure-openai", base_url="https://r.openai.azure.com/openai/v1"), SETTINGS
    )
    assert v1.url("embeddings", "d") == "https://r.openai.azure.com/openai/v1/embeddings"
    with pytest.raises(ValueError, match="baseURL"):
        azure.AzureOpenAIAdapter(provider("a", "azure-openai"), SETTINGS)


def call_of(api: apis_base.ApiFormat, payload: dict[str, object], stream: bool = False) -> base.UpstreamCall:
    return base.UpstreamCall(
        api=api,
        operation="x",
        model="gpt-4o-mini",
        upstream_model="gpt-4o-mini",
        stream=stream,
        body=orjson.dumps(payload),
        payload=payload,
        headers={},
        query={},
        request_id="r",
    )


async def test_mock_provider_usage_is_exact_tiktoken() -> None:
    adapter = mock.MockAdapter(provider("m", "mock"), SETTINGS)
    payload: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "How are you?"}],
    }
    response = await adapter.send(call_of("openai-chat", payload))
    body = orjson.loads(await response.read())
    text = body["choices"][0]["message"]["content"]
    assert text == mock.MOCK_REPLY and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == apis.estimate_prompt_tokens(
        "openai-chat", "gpt-4o-mini", payload
    )
    assert body["usage"]["completion_tokens"] == tokens.count_tokens("gpt-4o-mini", text)
    capped = {**payload, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    stream = await adapter.send(call_of("openai-chat", capped, stream=True))
    events = [
        line for chunk in [c async for c in stream.iter_chunks()] for line in chunk.split(b"\n") if line
    ]
    assert events[-1] == b"data: [DONE]"
    last = orjson.loads(events[-2].removeprefix(b"data: "))
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    assert apis.usage_from_json("openai-chat", last) == tokens.TokenCounts(
        input_tokens=body["usage"]["prompt_tokens"], output_tokens=3
    )
