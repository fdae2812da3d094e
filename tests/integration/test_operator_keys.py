"""The real operator (kopf) against the emulated Kubernetes API: key Secrets, config shards, status."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests import kmock_cluster as kc

from llmkeys_proxy import config, keys

NS = "team-a"


def mock_credential() -> dict[str, Any]:
    return {
        "apiVersion": kc.GROUP_VERSION,
        "kind": "ProviderCredential",
        "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
        "spec": {"provider": "mock", "models": [{"name": "mock-*"}]},
    }


def virtual_key(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": kc.GROUP_VERSION,
        "kind": "VirtualKey",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {"owner": {"team": "payments"}, **spec},
    }


def secret_data(secret: dict[str, Any] | None) -> dict[str, str]:
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def config_keys(cluster: kc.LlmkeysKubernetesEmulator) -> dict[str, config.KeyEntry]:
    """Every key entry in the config shards the operator wrote, by namespace/name."""
    found = {}
    for secret in cluster.live_objects(kc.SECRETS, kc.GATEWAY_NAMESPACE):
        if (secret["metadata"].get("labels") or {}).get(config.CONFIG_LABEL) == "keys":
            shard = config.KeysShard.model_validate_json(
                base64.b64decode(secret["data"][config.CONFIG_DATA_KEY])
            )
            for entry in shard.keys:
                found[f"{entry.namespace}/{entry.name}"] = entry
    return found


def ready(obj: dict[str, Any] | None) -> tuple[str, str] | None:
    cond = kc.condition(obj, "Ready")
    return (cond["status"], cond["reason"]) if cond else None


async def test_virtual_key_gets_secret_config_and_status(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await cluster_client.create(kc.CREDENTIALS, mock_credential())
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), kc.operator_settings()))
    created = await cluster_client.create(kc.VIRTUALKEYS, virtual_key("dev", models=["mock-*"]))

    secret = await cluster_client.wait_for(
        kc.SECRETS, NS, "dev-llm-key", lambda o: o is not None, what="key Secret"
    )
    data = secret_data(secret)
    parsed = keys.parse_key(data["api-key"])
    assert parsed is not None
    assert data["OPENAI_API_KEY"] == data["api-key"]
    assert data["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1"
    assert data["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert data["LLMKEYS_KEY_ID"] == parsed.key_id
    assert secret is not None
    owners = secret["metadata"]["ownerReferences"]
    assert owners == [
        {
            "apiVersion": "llmkeys.io/v1alpha1",
            "kind": "VirtualKey",
            "name": "dev",
            "uid": created["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]

    vk = await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "dev", lambda o: ready(o) == ("True", "Active"), what="Ready=True/Active"
    )
    assert vk is not None
    assert vk["status"]["keyId"] == parsed.key_id
    assert vk["status"]["secretName"] == "dev-llm-key"
    assert [c["type"] for c in vk["status"]["conditions"]] == ["Ready", "PolicyCompliant", "SecretReady"]

    entry = config_keys(kube_cluster)[f"{NS}/dev"]
    assert entry.key_id == parsed.key_id
    assert [h.sha256 for h in entry.hashes] == [keys.hash_secret(parsed.secret)]
    # No key material anywhere but the key Secret.
    for obj in kube_cluster.live_objects(kc.VIRTUALKEYS) + kube_cluster.live_objects(kc.EVENTS):
        assert parsed.secret not in json.dumps(obj)


async def test_restart_does_not_regenerate_any_key(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await cluster_client.create(kc.CREDENTIALS, mock_credential())
    first = await kc.start_operator(str(kube_cluster.url), kc.operator_settings())
    operator_threads.append(first)
    for name in ("a", "b", "c"):
        await cluster_client.create(kc.VIRTUALKEYS, virtual_key(name))
    for name in ("a", "b", "c"):
        await cluster_client.wait_for(kc.VIRTUALKEYS, NS, name, lambda o: ready(o) == ("True", "Active"))
    before = {n: cluster_client.get(kc.SECRETS, NS, f"{n}-llm-key") for n in ("a", "b", "c")}
    shards_before = config_keys(kube_cluster)
    await first.stop()

    second = await kc.start_operator(str(kube_cluster.url), kc.operator_settings())
    operator_threads.append(second)
    # A change after the restart proves the new operator is working before we compare.
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("d"))
    await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "d", lambda o: ready(o) == ("True", "Active"))
    for name, secret in before.items():
        after = cluster_client.get(kc.SECRETS, NS, f"{name}-llm-key")
        assert after is not None and secret is not None
        assert after["data"] == secret["data"]
        assert (
            after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
        )  # not even rewritten
    shards_after = config_keys(kube_cluster)
    for name in ("a", "b", "c"):
        assert shards_after[f"{NS}/{name}"] == shards_before[f"{NS}/{name}"]


async def test_deleted_secret_is_reissued_edited_secret_repaired_foreign_secret_left_alone(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await cluster_client.create(kc.CREDENTIALS, mock_credential())
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), kc.operator_settings()))
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("svc"))
    secret = await cluster_client.wait_for(kc.SECRETS, NS, "svc-llm-key", lambda o: o is not None)
    original = secret_data(secret)["api-key"]
    original_id = keys.parse_key(original).key_id  # type: ignore[union-attr]

    # A user edits an env entry: it is put back, the key itself does not change.
    tampered = base64.b64encode(b"sk-something-else").decode()
    await cluster_client.patch(kc.SECRETS, NS, "svc-llm-key", {"data": {"OPENAI_API_KEY": tampered}})
    await cluster_client.wait_for(
        kc.SECRETS, NS, "svc-llm-key", lambda o: secret_data(o)["OPENAI_API_KEY"] == original, what="repair"
    )
    assert secret_data(cluster_client.get(kc.SECRETS, NS, "svc-llm-key"))["api-key"] == original

    # The Secret is deleted: the key material is gone, so a new key is issued under the same id (the
    # id the status recorded: wait for it, a loaded machine may delete before the status is written).
    await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "svc", lambda o: (o or {}).get("status", {}).get("keyId") == original_id
    )
    await cluster_client.delete(kc.SECRETS, NS, "svc-llm-key")
    reissued = await cluster_client.wait_for(
        kc.SECRETS, NS, "svc-llm-key", lambda o: o is not None and secret_data(o)["api-key"] != original
    )
    new_key = keys.parse_key(secret_data(reissued)["api-key"])
    assert new_key is not None and new_key.key_id == original_id

    def config_has_new_hash(_: object) -> bool:
        entry = config_keys(kube_cluster).get(f"{NS}/svc")
        return entry is not None and [h.sha256 for h in entry.hashes] == [keys.hash_secret(new_key.secret)]

    await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "svc", config_has_new_hash, what="config with the new hash"
    )

    # A Secret of the wanted name that is not ours is never overwritten.
    foreign = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "taken-llm-key", "namespace": NS},
        "data": {"password": base64.b64encode(b"hunter2").decode()},
    }
    await cluster_client.create(kc.SECRETS, foreign)
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("taken"))
    vk = await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "taken", lambda o: ready(o) == ("False", "SecretConflict"), what="SecretConflict"
    )
    secret_ready = kc.condition(vk, "SecretReady")
    assert secret_ready is not None and secret_ready["reason"] == "SecretConflict"
    assert "not owned by this VirtualKey" in secret_ready["message"]
    assert cluster_client.get(kc.SECRETS, NS, "taken-llm-key")["data"] == foreign["data"]  # type: ignore[index]
    assert f"{NS}/taken" not in config_keys(kube_cluster)


async def test_expiry_flips_ready_at_expires_at_and_events_are_posted(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await cluster_client.create(kc.CREDENTIALS, mock_credential())
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), kc.operator_settings()))
    expires = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("temp", expiresAt=expires))
    vk = await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "temp", lambda o: ready(o) == ("True", "Active"))
    assert vk is not None and vk["status"]["expiresAt"] == expires
    # Nothing is written to the object: the operator's own deadline flips it.
    vk = await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "temp", lambda o: ready(o) == ("False", "Expired"))
    assert vk is not None
    flipped = kc.condition(vk, "Ready")
    assert flipped is not None and flipped["lastTransitionTime"] >= expires
    assert config_keys(kube_cluster)[f"{NS}/temp"].expires_at is not None

    def reasons() -> set[str]:
        return {
            e["reason"]
            for e in kube_cluster.live_objects(kc.EVENTS, NS)
            if e["involvedObject"]["name"] == "temp" and e["involvedObject"]["kind"] == "VirtualKey"
        }

    await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "temp", lambda _: {"KeyIssued", "Expired"} <= reasons())


async def test_interval_rotation_and_statuses_of_credentials_and_policies(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await cluster_client.create(kc.CREDENTIALS, mock_credential())
    await cluster_client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "openai", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "openai", "secretRef": {"name": "openai-key", "key": "api-key"}},
        },
    )
    await cluster_client.create(
        kc.POLICIES,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "LLMPolicy",
            "metadata": {"name": "all"},
            "spec": {"defaults": {"tokensPerDay": 1000}},
        },
    )
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), kc.operator_settings()))
    await cluster_client.create(
        kc.VIRTUALKEYS, virtual_key("rot", rotationInterval="2s", rotationGracePeriod="1s")
    )
    secret = await cluster_client.wait_for(kc.SECRETS, NS, "rot-llm-key", lambda o: o is not None)
    first = secret_data(secret)["api-key"]
    await cluster_client.wait_for(
        kc.SECRETS, NS, "rot-llm-key", lambda o: secret_data(o)["api-key"] != first, what="interval rotation"
    )

    credential = await cluster_client.wait_for(
        kc.CREDENTIALS, kc.GATEWAY_NAMESPACE, "openai", lambda o: kc.condition(o, "Ready") is not None
    )
    assert ready(credential) == ("False", "SecretMissing")
    # A credential Secret without the llmkeys.io/secret label is not seen (a real API server does not
    # even send it: the watch selects on the label; the emulator sends all, kopf's filter drops it).
    await cluster_client.create(
        kc.SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "openai-key", "namespace": kc.GATEWAY_NAMESPACE},
            "data": {"api-key": base64.b64encode(b"sk-real-upstream").decode()},
        },
    )
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("nudge"))  # forces a publish
    await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "nudge", lambda o: ready(o) is not None, what="a publish after the Secret"
    )
    credential = cluster_client.get(kc.CREDENTIALS, kc.GATEWAY_NAMESPACE, "openai")
    assert ready(credential) == ("False", "SecretMissing")
    assert "llmkeys.io/secret: credential" in (kc.condition(credential, "Ready") or {})["message"]
    await cluster_client.patch(
        kc.SECRETS,
        kc.GATEWAY_NAMESPACE,
        "openai-key",
        {"metadata": {"labels": {"llmkeys.io/secret": "credential"}}},
    )
    credential = await cluster_client.wait_for(
        kc.CREDENTIALS, kc.GATEWAY_NAMESPACE, "openai", lambda o: ready(o) == ("True", "Ready")
    )
    # Every list and watch of Secrets the operator sent asked the server for labelled ones only.
    secret_reads = [
        request
        for request in kube_cluster
        if request.headers.get("User-Agent", "").startswith("kopf/")
        and request.resource is not None
        and request.resource.plural == "secrets"
        and request.name is None
        and request.method.name == "GET"
    ]
    assert secret_reads
    assert {request.params.get("labelSelector") for request in secret_reads} == {"llmkeys.io/secret"}
    assert "sk-real-upstream" not in json.dumps(credential)
    policy = await cluster_client.wait_for(
        kc.POLICIES,
        None,
        "all",
        lambda o: (o or {}).get("status", {}).get("selectedKeys") == 2,  # rot and nudge
    )
    assert ready(policy) == ("True", "Applied")


async def test_tampered_config_secret_is_rewritten(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await cluster_client.create(kc.CREDENTIALS, mock_credential())
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), kc.operator_settings()))
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("x"))
    await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "x", lambda o: ready(o) == ("True", "Active"))
    good = config_keys(kube_cluster)[f"{NS}/x"]
    shard_name = f"llmkeys-config-keys-{NS}-0"
    empty = config.KeysShard(namespace=NS).model_dump_json()
    await cluster_client.patch(
        kc.SECRETS,
        kc.GATEWAY_NAMESPACE,
        shard_name,
        {"data": {config.CONFIG_DATA_KEY: base64.b64encode(empty.encode()).decode()}},
    )
    await cluster_client.wait_for(
        kc.SECRETS,
        kc.GATEWAY_NAMESPACE,
        shard_name,
        lambda _: config_keys(kube_cluster).get(f"{NS}/x") == good,
    )
    await cluster_client.delete(kc.SECRETS, kc.GATEWAY_NAMESPACE, shard_name)
    await cluster_client.wait_for(
        kc.SECRETS,
        kc.GATEWAY_NAMESPACE,
        shard_name,
        lambda _: config_keys(kube_cluster).get(f"{NS}/x") == good,
    )


async def test_namespace_labels_select_policies(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
) -> None:
    await kube_cluster.set_namespace(NS, {"env": "prod"})
    await cluster_client.create(kc.CREDENTIALS, mock_credential())
    await cluster_client.create(
        kc.POLICIES,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "LLMPolicy",
            "metadata": {"name": "prod-only"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"env": "prod"}},
                "maximums": {"requestsPerMinute": 5},
            },
        },
    )
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), kc.operator_settings()))
    await cluster_client.create(kc.VIRTUALKEYS, virtual_key("ns-key", limits={"requestsPerMinute": 10}))
    await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "ns-key", lambda o: ready(o) == ("False", "PolicyViolation"), what="violation"
    )
    # Relabelling the namespace takes it out of the policy's reach.
    await kube_cluster.set_namespace(NS, {"env": "dev"})
    vk = await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "ns-key", lambda o: ready(o) == ("True", "Active"), what="compliant after relabel"
    )
    assert vk is not None and vk["status"]["effective"]["policies"] == []
