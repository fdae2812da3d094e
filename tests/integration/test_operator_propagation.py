"""Operator -> config Secrets -> proxy watching the emulated API -> the openai SDK's calls.

Each test runs the real kopf operator, the real proxy (`create_app` + `KubernetesSource`) and
the emulator; waits are polls with generous timeouts (propagation speed is measured by
`bench/propagation_bench.py`, not asserted here).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest_asyncio
from tests import kmock_cluster as kc
from tests import proxy_harness

from llmkeys_proxy import keys, kubesource

NS = "team-a"
MODEL = "mock-small"


@dataclasses.dataclass
class Gateway:
    cluster: kc.LlmkeysKubernetesEmulator
    client: kc.ClusterClient
    proxy_url: str
    source: kubesource.KubernetesSource

    async def create_key(self, name: str, **spec: Any) -> str:
        body = {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"owner": {"team": "payments"}, **spec},
        }
        await self.client.create(kc.VIRTUALKEYS, body)
        return await self.key_of(name)

    async def key_of(self, name: str, *, not_this: str | None = None) -> str:
        secret = await self.client.wait_for(
            kc.SECRETS,
            NS,
            f"{name}-llm-key",
            lambda o: o is not None and _api_key(o) != not_this,
            what=f"key Secret of {name}",
        )
        assert secret is not None
        return _api_key(secret)

    async def outcome(self, key: str) -> str:
        """What the proxy says to one chat completion with `key`: "ok" or the error code."""
        async with openai.AsyncOpenAI(api_key=key, base_url=self.proxy_url + "/v1", max_retries=0) as sdk:
            try:
                await sdk.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
                )
            except openai.APIStatusError as exc:
                return str(exc.code or exc.status_code)
        return "ok"

    async def until_outcome(self, key: str, expected: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = await self.outcome(key)
        while seen != expected:
            if loop.time() > deadline:
                raise AssertionError(f"proxy kept answering {seen!r}, expected {expected!r}")
            await asyncio.sleep(0.05)
            seen = await self.outcome(key)

    async def status(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        obj = await self.client.wait_for(
            kc.VIRTUALKEYS, NS, name, lambda o: o is not None and predicate(o), what=what
        )
        assert obj is not None
        return obj


def _api_key(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["api-key"]).decode()


def ready_reason(obj: dict[str, Any]) -> str | None:
    cond = kc.condition(obj, "Ready")
    return cond["reason"] if cond else None


@pytest_asyncio.fixture
async def gateway(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> AsyncIterator[Gateway]:
    await cluster_client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "mock", "models": [{"name": "mock-*"}]},
        },
    )
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), kc.operator_settings()))
    access = kubesource.ApiAccess(server=str(kube_cluster.url))
    source = kubesource.KubernetesSource(kc.GATEWAY_NAMESPACE, access=access, debounce_s=0.02)
    async with proxy_harness.run_proxy(source) as proxy:
        yield Gateway(kube_cluster, cluster_client, proxy.url, source)


async def test_new_key_usable_suspended_refused_deleted_refused(gateway: Gateway) -> None:
    key = await gateway.create_key("app", models=["mock-*"])
    await gateway.until_outcome(key, "ok")

    await gateway.client.patch(kc.VIRTUALKEYS, NS, "app", {"spec": {"suspended": True}})
    await gateway.until_outcome(key, "key_suspended")
    vk = await gateway.status("app", lambda o: ready_reason(o) == "Suspended", "Ready reason Suspended")
    assert kc.condition(vk, "Ready")["status"] == "False"  # type: ignore[index]

    await gateway.client.patch(kc.VIRTUALKEYS, NS, "app", {"spec": {"suspended": False}})
    await gateway.until_outcome(key, "ok")

    await gateway.client.delete(kc.VIRTUALKEYS, NS, "app")
    await gateway.until_outcome(key, "invalid_api_key")


async def test_rotation_keeps_old_key_for_the_grace_period_only(gateway: Gateway) -> None:
    old = await gateway.create_key("ci", rotationGracePeriod="3s")
    await gateway.until_outcome(old, "ok")
    await gateway.client.patch(
        kc.VIRTUALKEYS, NS, "ci", {"metadata": {"annotations": {"llmkeys.io/rotate": "2024-06-01"}}}
    )
    new = await gateway.key_of("ci", not_this=old)
    old_parsed, new_parsed = keys.parse_key(old), keys.parse_key(new)
    assert old_parsed is not None and new_parsed is not None
    assert new_parsed.key_id == old_parsed.key_id  # same public id: usage history continues
    await gateway.until_outcome(new, "ok")
    assert await gateway.outcome(old) == "ok"  # still inside the grace period
    await gateway.until_outcome(old, "invalid_api_key", timeout=30)
    assert await gateway.outcome(new) == "ok"
    vk = await gateway.status("ci", lambda o: bool(o["status"].get("rotatedAt")), "rotatedAt")
    assert vk["status"]["keyId"] == new_parsed.key_id
    # The operator's deadline drops the rotated-out hash from the config, too.
    await _until(lambda: _hashes_of(gateway, "ci") == 1, "previous hash removed from the config")


async def test_policy_change_lowers_the_effective_rpm(gateway: Gateway) -> None:
    policy = {
        "apiVersion": kc.GROUP_VERSION,
        "kind": "LLMPolicy",
        "metadata": {"name": "team-cap"},
        "spec": {"defaults": {"requestsPerMinute": 50}},
    }
    await gateway.client.create(kc.POLICIES, policy)
    key = await gateway.create_key("bot")
    vk = await gateway.status("bot", lambda o: ready_reason(o) == "Active", "Active")
    assert vk["status"]["effective"]["limits"]["requestsPerMinute"] == 50
    assert vk["status"]["effective"]["policies"] == ["team-cap"]
    await gateway.until_outcome(key, "ok")

    await gateway.client.patch(
        kc.POLICIES, None, "team-cap", {"spec": {"defaults": {"requestsPerMinute": 2}}}
    )
    await gateway.status(
        "bot", lambda o: o["status"]["effective"]["limits"].get("requestsPerMinute") == 2, "effective RPM 2"
    )
    await _until_async(lambda: _limited(gateway, key), "the proxy enforcing 2 requests per minute")


async def test_policy_violation_is_reported_and_refused(gateway: Gateway) -> None:
    policy = {
        "apiVersion": kc.GROUP_VERSION,
        "kind": "LLMPolicy",
        "metadata": {"name": "prod"},
        "spec": {"maximums": {"requestsPerMinute": 10}, "requiredOwnerFields": ["costCenter"]},
    }
    await gateway.client.create(kc.POLICIES, policy)
    key = await gateway.create_key("greedy", limits={"requestsPerMinute": 50})
    vk = await gateway.status("greedy", lambda o: ready_reason(o) == "PolicyViolation", "PolicyViolation")
    message = kc.condition(vk, "Ready")["message"]  # type: ignore[index]
    assert "limits.requestsPerMinute 50 exceeds maximum 10" in message
    assert 'LLMPolicy "prod"' in message
    assert "owner.costCenter is required" in message
    assert kc.condition(vk, "PolicyCompliant")["status"] == "False"  # type: ignore[index]
    await gateway.until_outcome(key, "key_policy_violation")

    await gateway.client.patch(
        kc.VIRTUALKEYS,
        NS,
        "greedy",
        {"spec": {"limits": {"requestsPerMinute": 10}, "owner": {"team": "payments", "costCenter": "cc-1"}}},
    )
    await gateway.status("greedy", lambda o: ready_reason(o) == "Active", "compliant again")
    await gateway.until_outcome(key, "ok")


def _hashes_of(gateway: Gateway, name: str) -> int:
    current = gateway.source.current
    entry = next((k for k in current.keys if k.name == name), None) if current else None
    return len(entry.hashes) if entry else -1


async def _limited(gateway: Gateway, key: str) -> bool:
    outcomes = [await gateway.outcome(key) for _ in range(3)]
    return "rate_limit_exceeded" in outcomes


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _until_async(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)
