"""A keyless VirtualKey end to end: the operator (kopf on kmock) issues a Secret without any secret,
the proxy (Kubernetes config source, Redis limiter) takes the pod's projected ServiceAccount token,
which the official openai SDK re-reads from its file before every request; the key's limit answers
429, and usage reaches the VirtualKey's status."""

from __future__ import annotations

import asyncio
import base64
import pathlib
from typing import Any

import openai
import pytest
from tests import kmock_cluster as kc
from tests import proxy_harness
from tests.fakes import oidc_issuer

from llmkeys_operator import keysecret
from llmkeys_proxy import identity, keys, kubesource
from llmkeys_proxy.limits import redis as redis_limits

NS = "team-a"


async def test_keyless_key_through_operator_proxy_and_sdk_with_a_rotating_token_file(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    redis_url: str,
    tmp_path: pathlib.Path,
) -> None:
    await cluster_client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "mock", "models": [{"name": "mock-*"}]},
        },
    )
    settings = kc.operator_settings(redis_url=redis_url, usage_sync_interval_s=0.3)
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    await cluster_client.create(
        kc.VIRTUALKEYS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": "summarizer", "namespace": NS},
            "spec": {
                "owner": {"team": "payments"},
                "staticKey": False,
                "identities": [{"serviceAccount": "summarizer"}],
                "limits": {"requestsPerMinute": 3},
            },
        },
    )
    secret = await cluster_client.wait_for(kc.SECRETS, NS, "summarizer-llm-key", lambda o: o is not None)
    assert secret is not None
    data = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    assert not set(keysecret.STATIC_KEY_ENTRIES) & set(data)  # no secret to leak
    assert data["LLMKEYS_AUTH"] == "workload-token" and data["LLMKEYS_TOKEN_AUDIENCE"] == "llmkeys"
    key_id = data["LLMKEYS_KEY_ID"]

    issuer = await oidc_issuer.OidcIssuer(required_bearer="proxy-pod-token").start()
    verifier = identity.TokenVerifier(
        [identity.IssuerSource.kubernetes(kubesource.ApiAccess(server=issuer.url, token="proxy-pod-token"))]
    )
    # The projected volume: the kubelet replaces the file before the token expires.
    token_file = tmp_path / "token"
    token_file.write_text(issuer.service_account_token(NS, "summarizer"))
    reads = 0

    async def projected_token() -> str:
        nonlocal reads
        reads += 1
        return token_file.read_text().strip()

    access = kubesource.ApiAccess(server=str(kube_cluster.url))
    source = kubesource.KubernetesSource(kc.GATEWAY_NAMESPACE, access=access, debounce_s=0.02)
    limiter = redis_limits.RedisLimiter(redis_url)
    try:
        async with (
            proxy_harness.run_proxy(source, limiter, verifier=verifier) as proxy,
            openai.AsyncOpenAI(api_key=projected_token, base_url=proxy.url + "/v1", max_retries=0) as sdk,
        ):

            async def ask() -> Any:
                return await sdk.chat.completions.create(
                    model="mock-small", messages=[{"role": "user", "content": "hello"}], max_tokens=8
                )

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            attempts = 0
            while True:
                attempts += 1
                try:
                    await ask()
                    break
                except (openai.AuthenticationError, openai.InternalServerError):  # config not seen yet
                    assert loop.time() < deadline, "the keyless key never became usable"
                    await asyncio.sleep(0.05)
            # A static key under the key's id is refused: there is none.
            static = keys.format_key(key_id, keys.generate_secret())
            async with openai.AsyncOpenAI(api_key=static, base_url=proxy.url + "/v1", max_retries=0) as other:
                with pytest.raises(openai.AuthenticationError) as refused:
                    await other.models.list()
                assert refused.value.code == "invalid_api_key"

            # The kubelet rotates the file: the next request carries the new content (here first a
            # token for another audience, refused; then a fresh good one).
            token_file.write_text(issuer.service_account_token(NS, "summarizer", audience="vault"))
            with pytest.raises(openai.AuthenticationError) as wrong:
                await ask()
            assert wrong.value.code == "token_audience_invalid"
            token_file.write_text(issuer.service_account_token(NS, "summarizer"))
            await ask()
            await ask()
            with pytest.raises(openai.RateLimitError) as limited:  # requestsPerMinute: 3
                await ask()
            assert limited.value.code == "rate_limit_exceeded"
            assert limited.value.response.headers["x-ratelimit-limit-requests"] == "3"
            assert reads == attempts + 4  # read before every request, not once
            await proxy.settled()
    finally:
        await issuer.stop()

    def month(o: dict[str, Any] | None) -> dict[str, Any]:
        return ((o or {}).get("status", {}).get("usage") or {}).get("month") or {}

    vk = await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "summarizer", lambda o: month(o).get("requests") == 3, what="usage in status"
    )
    assert month(vk)["inputTokens"] > 0 and month(vk)["outputTokens"] > 0
    assert (vk or {})["status"]["keyId"] == key_id
    ready = kc.condition(vk, "SecretReady") or {}
    assert "keyless" in ready.get("message", "")
