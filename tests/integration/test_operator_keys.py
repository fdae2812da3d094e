"""The real operator (kopf) against the emulated Kubernetes API: key Secrets, config shards, status."""

from __future__ import annotations

import base64
import json
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
