"""Amazon Bedrock through the proxy, driven by boto3's bedrock-runtime client (the virtual key as
AWS_BEARER_TOKEN_BEDROCK, over TLS as boto3 requires) against a fake Bedrock that checks SigV4 with
botocore's own signer: converse, converse_stream, invoke_model, invoke_model_with_response_stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
from tests import proxy_harness
from tests.fakes import bedrock_server, loopback, tls

from llmkeys_proxy import apis, config, tokens

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-5-5-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "what is a llama"}]}]
CLAUDE_BODY = json.dumps(
    {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi you"}],
    }
)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tls.TlsFiles:
    return tls.make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[bedrock_server.FakeBedrock, str]]:
    fake = bedrock_server.FakeBedrock(
        region="us-west-2",
        access_key_id="AKIAUPSTREAMEXAMPLE",
        secret_access_key="upstream-secret-access-key-example",
        session_token="upstream-session-token-example",
    )
    async with loopback.serve_app(fake.app()) as url:
        yield fake, url


def credential(fake: bedrock_server.FakeBedrock, url: str, *, sigv4: bool) -> config.ProviderEntry:
    auth: dict[str, Any]
    if sigv4:
        assert fake.access_key_id and fake.secret_access_key and fake.session_token
        auth = {
            "secret_fields": {
                "aws_access_key_id": fake.access_key_id,
                "aws_secret_access_key": fake.secret_access_key,
                "aws_session_token": fake.session_token,
            }
        }
    else:
        auth = {"api_key": fake.api_key}
    return config.ProviderEntry(
        id="llmkeys/bedrock",
        provider="bedrock",
        base_url=url,
        region=fake.region,
        models=(
            config.ModelRoute(name="anthropic.*"),
            config.ModelRoute(name="arn:aws:bedrock:*"),
            config.ModelRoute(name="house-sonnet", upstream_name=PROFILE_ARN),
        ),
        **auth,
    )


@pytest.fixture
def boto_client(
    tls_files: tls.TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], Any]]:
    """Makes bedrock-runtime clients that send `key` as a Bedrock API key; closed at teardown."""
    made: list[Any] = []
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)

    def make(url: str, key: str) -> Any:
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=url,
            verify=str(tls_files.cert),
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture(params=[True, False], ids=["sigv4-upstream", "api-key-upstream"])
async def proxy(
    request: pytest.FixtureRequest, upstream: tuple[bedrock_server.FakeBedrock, str], tls_files: tls.TlsFiles
) -> AsyncIterator[proxy_harness.RunningProxy]:
    fake, url = upstream
    provider = credential(fake, url, sigv4=request.param)
    async with proxy_harness.serve_providers([provider], ssl_context=tls_files.server_context()) as running:
        yield running


def read_converse_stream(client: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    response = client.converse_stream(**kwargs)
    text, metadata = "", {}
    stream = response["stream"]
    try:
        for event in stream:
            if "contentBlockDelta" in event:
                text += event["contentBlockDelta"]["delta"]["text"]
            if "metadata" in event:
                metadata = event["metadata"]
    finally:
        stream.close()
    return text, metadata


def read_invoke_stream(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    body = client.invoke_model_with_response_stream(**kwargs)["body"]
    try:
        return [json.loads(event["chunk"]["bytes"]) for event in body]
    finally:
        body.close()


async def test_converse_and_stream_through_the_proxy(
    upstream: tuple[bedrock_server.FakeBedrock, str],
    proxy: proxy_harness.RunningProxy,
    boto_client: Callable[[str, str], Any],
) -> None:
    fake, _ = upstream
    fake.cache_read_input_tokens = 5
    client = boto_client(proxy.url, proxy.virtual_key)
    out = await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
    assert out["output"]["message"]["content"][0]["text"] == "".join(bedrock_server.REPLY_PIECES)
    text, metadata = await asyncio.to_thread(
        read_converse_stream, client, modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 3}
    )
    assert text == "".join(bedrock_server.REPLY_PIECES[:3])
    assert metadata["usage"]["outputTokens"] == 3

    assert [r.path for r in fake.requests] == [
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
    ]
    if fake.signature_checks:  # SigV4 upstream: botocore's signer agrees with ours, token included
        assert fake.signature_checks == ["ok", "ok"]
        assert all(r.headers["x-amz-security-token"] == fake.session_token for r in fake.requests)
    else:
        assert all(r.headers["authorization"] == f"Bearer {fake.api_key}" for r in fake.requests)
    proxy_harness.assert_never_sent(fake.requests, proxy)

    month = await proxy.month_usage()
    reported_input = 4 + fake.input_overhead  # "what is a llama" + the fake's overhead
    # Converse's inputTokens exclude cache reads: the proxy adds them back.
    assert month.input_tokens == 2 * (reported_input + 5)
    assert month.cached_input_tokens == 10
    assert month.output_tokens == len(bedrock_server.REPLY_PIECES) + 3


async def test_invoke_model_and_its_stream(
    upstream: tuple[bedrock_server.FakeBedrock, str],
    proxy: proxy_harness.RunningProxy,
    boto_client: Callable[[str, str], Any],
) -> None:
    fake, _ = upstream
    client = boto_client(proxy.url, proxy.virtual_key)
    invoked = await asyncio.to_thread(client.invoke_model, modelId=MODEL, body=CLAUDE_BODY)
    assert json.loads(invoked["body"].read())["content"][0]["text"] == "".join(
        bedrock_server.REPLY_PIECES[:4]
    )
    assert invoked["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"] == "4"
    events = await asyncio.to_thread(read_invoke_stream, client, modelId=MODEL, body=CLAUDE_BODY)
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 4
    assert fake.requests[-1].path.endswith("/invoke-with-response-stream")
    month = await proxy.month_usage()
    assert month.input_tokens == 2 * (2 + fake.input_overhead)
    assert month.output_tokens == 8


async def test_count_tokens_is_forwarded_and_free(
    upstream: tuple[bedrock_server.FakeBedrock, str],
    proxy: proxy_harness.RunningProxy,
    boto_client: Callable[[str, str], Any],
) -> None:
    fake, _ = upstream
    client = boto_client(proxy.url, proxy.virtual_key)
    counted = await asyncio.to_thread(
        client.count_tokens, modelId=MODEL, input={"converse": {"messages": MESSAGES}}
    )
    assert counted["inputTokens"] == 4 + fake.input_overhead
    assert fake.requests[-1].path.endswith("/count-tokens")
    month = await proxy.month_usage()
    assert month.requests == 1 and month.total_tokens == 0


async def test_inference_profile_rename_and_arn_model_ids(
    upstream: tuple[bedrock_server.FakeBedrock, str],
    proxy: proxy_harness.RunningProxy,
    boto_client: Callable[[str, str], Any],
) -> None:
    fake, _ = upstream
    client = boto_client(proxy.url, proxy.virtual_key)
    await asyncio.to_thread(client.converse, modelId="house-sonnet", messages=MESSAGES)
    await asyncio.to_thread(client.converse, modelId=PROFILE_ARN, messages=MESSAGES)
    # As boto3 sends it: every ':' and '/' of the ARN percent-encoded, and signed that way.
    encoded = PROFILE_ARN.replace(":", "%3A").replace("/", "%2F")
    assert [r.path for r in fake.requests] == [f"/model/{encoded}/converse"] * 2
    assert fake.signature_checks in ([], ["ok", "ok"])


async def test_cut_stream_is_counted_and_errors_keep_bedrock_shape(
    upstream: tuple[bedrock_server.FakeBedrock, str],
    proxy: proxy_harness.RunningProxy,
    boto_client: Callable[[str, str], Any],
) -> None:
    fake, _ = upstream
    client = boto_client(proxy.url, proxy.virtual_key)
    fake.cut_stream_after_deltas = 2
    with pytest.raises(Exception):  # noqa: B017 - urllib3 reports the truncated body in its own terms
        await asyncio.to_thread(read_converse_stream, client, modelId=MODEL, messages=MESSAGES)
    month = await proxy.month_usage()
    # No metadata event arrived: input from the estimate, output counted with tiktoken from what passed.
    estimate = apis.estimate_prompt_tokens("bedrock-converse", MODEL, {"messages": MESSAGES})
    assert month.input_tokens == estimate
    assert month.output_tokens == tokens.count_tokens(MODEL, "".join(bedrock_server.REPLY_PIECES[:2]))

    fake.cut_stream_after_deltas = None
    fake.exception_after_deltas = 1
    with pytest.raises(botocore.exceptions.EventStreamError, match="throttlingException"):
        await asyncio.to_thread(read_converse_stream, client, modelId=MODEL, messages=MESSAGES)
    fake.exception_after_deltas = None

    fake.fail_with = (429, "ThrottlingException", "Too many requests, please wait before trying again.")
    with pytest.raises(botocore.exceptions.ClientError) as throttled:
        await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    fake.fail_with = (400, "ValidationException", "The provided model identifier is invalid.")
    with pytest.raises(botocore.exceptions.ClientError) as invalid:
        await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
    assert invalid.value.response["Error"] == {
        "Code": "ValidationException",
        "Message": "The provided model identifier is invalid.",
    }


async def test_proxy_refusals_in_bedrock_shape(
    upstream: tuple[bedrock_server.FakeBedrock, str],
    tls_files: tls.TlsFiles,
    boto_client: Callable[[str, str], Any],
) -> None:
    fake, url = upstream
    async with proxy_harness.serve_providers(
        [credential(fake, url, sigv4=True)],
        models=("anthropic.claude-3-haiku-*",),
        ssl_context=tls_files.server_context(),
        limits=config.Limits(max_tokens_per_request=100),
    ) as proxy:
        stranger = boto_client(proxy.url, "sk-llmk-not-a-real-key")
        with pytest.raises(botocore.exceptions.ClientError) as unauthenticated:
            await asyncio.to_thread(stranger.converse, modelId=MODEL, messages=MESSAGES)
        assert unauthenticated.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
        assert unauthenticated.value.response["Error"]["Code"] == "UnrecognizedClientException"

        client = boto_client(proxy.url, proxy.virtual_key)
        with pytest.raises(botocore.exceptions.ClientError) as denied:
            await asyncio.to_thread(client.converse, modelId=PROFILE_ARN, messages=MESSAGES)
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        assert "may not use model" in denied.value.response["Error"]["Message"]
        with pytest.raises(botocore.exceptions.ClientError) as too_many:
            await asyncio.to_thread(
                client.converse, modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 1000}
            )
        assert too_many.value.response["Error"]["Code"] == "ValidationException"
        assert "100" in too_many.value.response["Error"]["Message"]
        # The gateway's AWS key is refused upstream: not the caller's fault, and no secret shows.
        fake.secret_access_key = "rotated-elsewhere"
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
        assert "upstream-secret-access-key-example" not in str(refused.value.response)
    assert fake.signature_checks == ["signature mismatch"]
