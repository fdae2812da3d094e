"""The repository's GitOps examples (`kubectl apply -k examples/`) against a real API server: every
manifest passes the CRD schemas and CEL rules, and the operator reconciles every VirtualKey.

Runs after test_e2e_cluster.py (file order): it replaces and finally restores the mock credential.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tests.e2e import cluster as e2e

pytestmark = pytest.mark.e2e

EXAMPLES = e2e.REPO / "examples"


def example_virtual_keys() -> list[tuple[str, str]]:
    """(namespace, name) of every VirtualKey the kustomization applies."""
    kustomization = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text())
    found = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((EXAMPLES / resource).read_text()):
            if doc and doc.get("kind") == "VirtualKey":
                found.append((doc["metadata"]["namespace"], doc["metadata"]["name"]))
    return found


@pytest.fixture
def applied_examples(cluster: e2e.Cluster, llmkeys_release: dict[str, Any]) -> Iterator[str]:
    output = cluster.kubectl("apply", "-k", str(EXAMPLES))
    yield output
    cluster.kubectl("delete", "-k", str(EXAMPLES), "--wait=false", "--ignore-not-found", check=False)
    cluster.apply(e2e.mock_provider_credential(), namespace=e2e.GATEWAY_NAMESPACE)


def test_examples_apply_and_every_virtual_key_is_reconciled(
    cluster: e2e.Cluster, applied_examples: str
) -> None:
    keys = example_virtual_keys()
    assert keys, "the examples define no VirtualKey"
    for namespace, name in keys:
        assert f"virtualkey.llmkeys.io/{name} " in applied_examples

        def reconciled(namespace: str = namespace, name: str = name) -> bool:
            vk = cluster.get("virtualkey", name, namespace) or {}
            status = vk.get("status", {})
            ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
            return bool(ready) and status.get("observedGeneration") == vk["metadata"]["generation"]

        cluster.wait_until(f"VirtualKey {namespace}/{name} to get a Ready condition", reconciled)
