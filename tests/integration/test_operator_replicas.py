"""Two operator replicas: one leads (Lease), the other stands by and takes over when the leader stops."""

from __future__ import annotations

import asyncio

from tests import kmock_cluster as kc

NS = "team-a"


def virtual_key(name: str) -> dict[str, object]:
    return {
        "apiVersion": kc.GROUP_VERSION,
        "kind": "VirtualKey",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"owner": {"team": "payments"}},
    }


def active(obj: dict[str, object] | None) -> bool:
    cond = kc.condition(obj, "Ready")  # type: ignore[arg-type]
    return cond is not None and cond["reason"] == "Active"


def holder(cluster: kc.LlmkeysKubernetesEmulator) -> str | None:
    lease = cluster.live_object(kc.LEASES, kc.GATEWAY_NAMESPACE, "llmkeys-operator")
    return (lease or {}).get("spec", {}).get("holderIdentity")


async def test_standby_takes_over_and_only_the_leader_writes(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await cluster_client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "mock"},
        },
    )
    url = str(kube_cluster.url)
    first = await kc.start_operator(url, kc.operator_settings(), identity="replica-1")
    operator_threads.append(first)
    second = await kc.start_operator(url, kc.operator_settings(), identity="replica-2", wait_ready=False)
    operator_threads.append(second)
    assert holder(kube_cluster) == "replica-1"

    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("one"))
    await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "one", active, what="served by the leader")
    # The standby wrote nothing: every Secret write came from one client identity (the leader's
    # kopf and reconcile share its process), and the standby never got past the Lease.
    assert second.alive and not second._ready.is_set()
    before = cluster_client.get(kc.SECRETS, NS, "one-llm-key")
    assert before is not None

    await first.stop()  # releases the Lease: the standby takes over without waiting it out
    await asyncio.to_thread(second._ready.wait, 30)
    assert holder(kube_cluster) == "replica-2"
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("two"))
    await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "two", active, what="served by the new leader")
    # The new leader adopted the first key as it was (no second key issued, not even a rewrite).
    after = cluster_client.get(kc.SECRETS, NS, "one-llm-key")
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_leader_that_loses_the_lease_stops(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    leader = await kc.start_operator(str(kube_cluster.url), kc.operator_settings(), identity="replica-1")
    operator_threads.append(leader)
    # Another replica (or a person) takes the Lease over: the old leader must step down.
    await cluster_client.patch(
        kc.LEASES, kc.GATEWAY_NAMESPACE, "llmkeys-operator", {"spec": {"holderIdentity": "someone-else"}}
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while leader.alive:
        assert loop.time() < deadline, "the deposed leader kept running"
        await asyncio.sleep(0.1)
