"""Propagation bench: Kubernetes API write -> the proxy's decision changes (`make bench` extra).

Called by `bench.__main__` through `run() -> dict`. Runs the real operator (kopf, in its own
thread), the emulated Kubernetes API (kmock, as in the integration tests) and the proxy
(`create_app` + `KubernetesSource`) on loopback. Each sample is one API write, timed from the
write's HTTP response to the moment the proxy publishes a routing table whose decision for that
key changed: half the writes create a VirtualKey (refused -> allowed), half suspend one
(allowed -> refused). After each sample a real request confirms the proxy's answer.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from typing import Any

import aiohttp

GOAL_P99_S = 2.0
#: The operator's and the proxy's debounce as shipped (settings defaults).
DEBOUNCE_S = 0.15
SOURCE_DEBOUNCE_S = 0.05


async def _measure(samples: int) -> dict[str, object]:
    import kmock
    from tests import kmock_cluster as kc
    from tests import proxy_harness

    from llmkeys_proxy import config, kubesource

    async with kc.LlmkeysKubernetesEmulator() as cluster, kmock.Server(cluster):
        kc.declare_resources(cluster)
        async with aiohttp.ClientSession() as session:
            client = kc.ClusterClient(cluster, session)
            await client.create(
                kc.CREDENTIALS,
                {
                    "apiVersion": kc.GROUP_VERSION,
                    "kind": "ProviderCredential",
                    "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
                    "spec": {"provider": "mock"},
                },
            )
            operator = await kc.start_operator(
                str(cluster.url), kc.operator_settings(compile_debounce_s=DEBOUNCE_S)
            )
            access = kubesource.ApiAccess(server=str(cluster.url))
            source = kubesource.KubernetesSource(
                kc.GATEWAY_NAMESPACE, access=access, debounce_s=SOURCE_DEBOUNCE_S
            )
            published: list[tuple[float, config.ProxyConfig]] = []
            source.subscribe(lambda new: published.append((time.perf_counter(), new)))
            try:
                async with proxy_harness.run_proxy(source) as proxy:
                    create, suspend = await _samples(client, session, proxy.url, published, samples)
            finally:
                await operator.stop()
    both = create + suspend
    return {
        "samples": len(both),
        "p50_s": round(statistics.median(both), 3),
        "p99_s": round(_percentile(both, 0.99), 3),
        "max_s": round(max(both), 3),
        "create_p50_s": round(statistics.median(create), 3),
        "suspend_p50_s": round(statistics.median(suspend), 3),
        "goal_p99_s": GOAL_P99_S,
        "meets_goal": _percentile(both, 0.99) < GOAL_P99_S,
        "what": "API write -> proxy routing table changed (operator debounce 150 ms as shipped, proxy 50 ms)",
    }


async def _samples(
    client: Any, session: aiohttp.ClientSession, proxy_url: str, published: list[Any], samples: int
) -> tuple[list[float], list[float]]:
    from tests import kmock_cluster as kc

    namespace = "bench"
    create: list[float] = []
    suspend: list[float] = []
    for index in range(max(1, samples // 2)):
        name = f"key-{index}"
        body = {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"owner": {"team": "bench"}},
        }
        await client.create(kc.VIRTUALKEYS, body)
        written = time.perf_counter()
        at = await _published_when(
            published, written, lambda c, name=name: _entry(c, namespace, name) is not None
        )
        create.append(at - written)
        key = await _key(client, namespace, name)
        assert await _status(session, proxy_url, key) == 200

        await client.patch(kc.VIRTUALKEYS, namespace, name, {"spec": {"suspended": True}})
        written = time.perf_counter()
        at = await _published_when(
            published, written, lambda c, name=name: getattr(_entry(c, namespace, name), "suspended", False)
        )
        suspend.append(at - written)
        assert await _status(session, proxy_url, key) == 403
    return create, suspend


def _entry(proxy_config: Any, namespace: str, name: str) -> Any:
    return next((k for k in proxy_config.keys if k.namespace == namespace and k.name == name), None)


async def _published_when(published: list[Any], since: float, predicate: Any, limit_s: float = 30.0) -> float:
    deadline = time.perf_counter() + limit_s
    while True:
        for at, proxy_config in published:
            if at >= since and predicate(proxy_config):
                return float(at)
        if time.perf_counter() > deadline:
            raise TimeoutError("the proxy never saw the change")
        await asyncio.sleep(0.002)


async def _key(client: Any, namespace: str, name: str) -> str:
    from tests import kmock_cluster as kc

    secret = await client.wait_for(kc.SECRETS, namespace, f"{name}-llm-key", lambda o: o is not None)
    return base64.b64decode(secret["data"]["api-key"]).decode()


async def _status(session: aiohttp.ClientSession, proxy_url: str, key: str) -> int:
    async with session.get(proxy_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run(samples: int = 20) -> dict[str, object]:
    """p50/p99 of API write -> proxy decision over `samples` writes (half creates, half suspends)."""
    return asyncio.run(_measure(samples))


if __name__ == "__main__":
    print(run())
