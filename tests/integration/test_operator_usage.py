"""Usage sync: traffic through the proxy (Redis limiter) shows up in VirtualKey and LLMPolicy status."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
from tests import kmock_cluster as kc
from tests import proxy_harness, redis_server

from llmkeys_proxy import kubesource
from llmkeys_proxy.limits import redis as redis_limits

NS = "team-a"


async def test_status_usage_and_pool_usage_after_traffic_and_reseed_after_redis_loss(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    redis_url: str,
    redis_session_server: redis_server.RedisServer,
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
    await cluster_client.create(
        kc.POLICIES,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "LLMPolicy",
            "metadata": {"name": "teams"},
            "spec": {"budgets": [{"name": "monthly", "groupBy": "team", "spendPerMonthUSD": "100"}]},
        },
    )
    settings = kc.operator_settings(redis_url=redis_url, usage_sync_interval_s=0.3)
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    await cluster_client.create(
        kc.VIRTUALKEYS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": "app", "namespace": NS},
            "spec": {"owner": {"team": "payments"}},
        },
    )
    secret = await cluster_client.wait_for(kc.SECRETS, NS, "app-llm-key", lambda o: o is not None)
    assert secret is not None
    key = base64.b64decode(secret["data"]["api-key"]).decode()

    access = kubesource.ApiAccess(server=str(kube_cluster.url))
    source = kubesource.KubernetesSource(kc.GATEWAY_NAMESPACE, access=access, debounce_s=0.02)
    limiter = redis_limits.RedisLimiter(redis_url)
    async with (
        proxy_harness.run_proxy(source, limiter) as proxy,
        openai.AsyncOpenAI(api_key=key, base_url=proxy.url + "/v1", max_retries=0) as sdk,
    ):
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while sent < 3:
            try:
                await sdk.chat.completions.create(
                    model="mock-small", messages=[{"role": "user", "content": "hello"}], max_tokens=8
                )
                sent += 1
            except (openai.AuthenticationError, openai.InternalServerError):  # config or key not seen yet
                assert loop.time() < deadline, "the key never became usable"
                await asyncio.sleep(0.05)
        await proxy.settled()

    def month(o: dict[str, Any] | None) -> dict[str, Any]:
        return ((o or {}).get("status", {}).get("usage") or {}).get("month") or {}

    vk = await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "app", lambda o: month(o).get("requests") == 3)
    usage = month(vk)
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    assert Decimal(usage["spendUSD"]) > 0
    assert usage["periodStart"] == datetime.now(UTC).strftime("%Y-%m-01T00:00:00Z")
    assert usage["lastUsedAt"]
    day = (vk or {})["status"]["usage"]["day"]
    assert day["requests"] == 3
    # Breakdowns: the credential serves `mock-*`, a glob, so `mock-small` is not a name the config
    # knows and counts as `other` (callers cannot grow the set of names); the daily history has today.
    assert [(m["name"], m["requests"], m["spendUSD"]) for m in usage["byModel"]] == [
        ("other", 3, usage["spendUSD"])
    ]
    assert [(p["name"], p["requests"]) for p in usage["byProvider"]] == [(f"{kc.GATEWAY_NAMESPACE}/mock", 3)]
    history = (vk or {})["status"]["usage"]["history"]
    assert history == [
        {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "requests": 3,
            "tokens": usage["inputTokens"] + usage["outputTokens"],
            "spendUSD": usage["spendUSD"],
        }
    ]
    assert (vk or {})["status"]["usage"]["lastUsedAt"] == usage["lastUsedAt"]

    # The pool's status is patched after the keys' in the same sync pass: wait for it to catch up.
    policy = await cluster_client.wait_for(
        kc.POLICIES,
        None,
        "teams",
        lambda o: (
            [p.get("spendUSD") for p in (o or {}).get("status", {}).get("pools") or []] == [usage["spendUSD"]]
        ),
    )
    pool = (policy or {})["status"]["pools"][0]
    assert pool["budget"] == "monthly" and pool["group"] == "payments"
    assert pool["spendUSD"] == usage["spendUSD"]
    assert pool["capUSD"] == "100"

    # Redis loses everything: the operator re-seeds the counters from status instead of
    # writing zeros back, so budgets keep counting from where they were.
    redis_session_server.flushall()
    key_id = (vk or {})["status"]["keyId"]

    reader = redis_limits.RedisLimiter(redis_url)

    async def redis_month_requests() -> int:
        snapshot = await reader.read_usage([key_id], [], datetime.now(UTC))
        return snapshot[key_id].month.requests

    try:
        deadline = loop.time() + 30
        while await redis_month_requests() != 3:
            assert loop.time() < deadline, "counters were not re-seeded"
            await asyncio.sleep(0.1)
    finally:
        await reader.close()
    assert month(cluster_client.get(kc.VIRTUALKEYS, NS, "app")).get("requests") == 3
