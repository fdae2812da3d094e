"""End to end on kind: the admission webhook as the real API server calls it (issue 10).

`kubectl apply` of a key breaking an LLMPolicy is refused at once with the compiler's message;
a key under a policy requiring approval is PendingApproval and refused by the proxy (403) until an
approver (impersonated with `--as`, RBAC granted as the README says) annotates it; anyone else's
approval is refused by the webhook. Skipped where Docker, kind or kubectl are missing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from tests.e2e import cluster as e2e
from tests.e2e.test_e2e_cluster import start_client_pod, virtual_key, wait_for_status, wait_ready

pytestmark = pytest.mark.e2e

APPROVER = "e2e-approver@example.com"


@pytest.fixture
def policy_label(cluster: e2e.Cluster) -> Iterator[str]:
    """A label value selecting only this test's keys; the test's LLMPolicies are deleted after it."""
    value = f"t{uuid.uuid4().hex[:8]}"
    yield value
    cluster.kubectl("delete", "llmpolicies", "-l", f"e2e-test={value}", "--wait=false", check=False)


def policy(name: str, label: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmkeys.io/v1alpha1",
        "kind": "LLMPolicy",
        "metadata": {"name": name, "labels": {"e2e-test": label}},
        "spec": {"keySelector": {"matchLabels": {"e2e-test": label}}, **spec},
    }


def labelled(key: dict[str, Any], label: str) -> dict[str, Any]:
    key["metadata"]["labels"] = {"e2e-test": label}
    return key


def test_apply_time_refusal_carries_the_policy_violation(
    cluster: e2e.Cluster, namespace: str, policy_label: str
) -> None:
    cluster.apply(policy(f"{policy_label}-max", policy_label, maximums={"requestsPerMinute": 10}))
    result = cluster.try_apply(labelled(virtual_key("greedy"), policy_label), namespace)
    assert result.returncode != 0
    assert "denied the request" in result.stderr
    assert (
        f'limits.requestsPerMinute 100 exceeds maximum 10 of LLMPolicy "{policy_label}-max"' in result.stderr
    )
    assert cluster.get("virtualkey", "greedy", namespace) is None


def test_pending_key_works_only_after_an_approver_approved(
    cluster: e2e.Cluster, namespace: str, policy_label: str
) -> None:
    approval = {"required": True, "approvers": {"users": [APPROVER]}}
    cluster.apply(policy(f"{policy_label}-gate", policy_label, approval=approval))
    # RBAC of an approver (README "Self-service and approvals"): get and patch VirtualKeys.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "llmkeys-approver"},
        "rules": [
            {"apiGroups": ["llmkeys.io"], "resources": ["virtualkeys"], "verbs": ["get", "list", "patch"]}
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "llmkeys-approver"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "llmkeys-approver"},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": APPROVER},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "someone-else"},
        ],
    }
    cluster.apply(role, namespace=namespace)
    cluster.apply(binding, namespace=namespace)
    cluster.apply(labelled(virtual_key("gated"), policy_label), namespace=namespace)
    wait_ready(cluster, "gated", namespace, "False", "PendingApproval")
    vk = cluster.get("virtualkey", "gated", namespace)
    assert vk is not None and vk["metadata"]["annotations"]["llmkeys.io/created-by"] == "kubernetes-admin"
    pod = start_client_pod(cluster, namespace, "gated-llm-key")
    wait_for_status(cluster, namespace, pod, 403)

    approve = (
        "annotate",
        "virtualkey",
        "gated",
        "-n",
        namespace,
        "llmkeys.io/approval=approve",
        "--overwrite",
    )
    refused = cluster.kubectl(*approve, "--as", "someone-else", check=False)
    assert "is not an approver" in refused
    cluster.kubectl(*approve, "--as", APPROVER)
    vk = cluster.get("virtualkey", "gated", namespace)
    assert vk is not None
    annotations = vk["metadata"]["annotations"]
    assert annotations["llmkeys.io/approved-by"] == APPROVER and "llmkeys.io/approval" not in annotations
    assert json.loads(annotations["llmkeys.io/approved-spec"])["limits"] == {"requestsPerMinute": 100}
    wait_ready(cluster, "gated", namespace, "True", "Active")
    wait_for_status(cluster, namespace, pod, 200)
