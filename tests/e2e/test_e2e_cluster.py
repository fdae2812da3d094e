"""End to end on a real cluster (kind): the chart installed, a VirtualKey issued by the operator, a pod
using its Secret through envFrom to call the proxy; suspension, deletion (ownerReference garbage
collection), the API server's own schema and CEL validation of our CRDs, and the operator's Lease
(held by the operator pod; RBAC limited to that Lease).

Run with `make e2e`; skipped (with the reason) where Docker, kind or kubectl are missing.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.e2e import cluster as e2e

pytestmark = pytest.mark.e2e

# Run inside the client pod: one chat completion with the key from envFrom; prints the HTTP status.
CALL_PROXY = """
import json, os, sys, urllib.error, urllib.request
request = urllib.request.Request(
    os.environ["OPENAI_BASE_URL"].rstrip("/") + "/chat/completions",
    data=json.dumps({"model": sys.argv[1], "messages": [{"role": "user", "content": "hello"}]}).encode(),
    headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"], "Content-Type": "application/json"},
)
try:
    with urllib.request.urlopen(request, timeout=60) as response:
        print(response.status, response.read(300).decode(errors="replace"))
except urllib.error.HTTPError as error:
    print(error.code, error.read(300).decode(errors="replace"))
"""


def virtual_key(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmkeys.io/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {"name": name},
        "spec": {"owner": {"team": "e2e", "user": "tester"}, "limits": {"requestsPerMinute": 100}, **spec},
    }


def ready_condition(cluster: e2e.Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    vk = cluster.get("virtualkey", name, namespace)
    for condition in (vk or {}).get("status", {}).get("conditions", []):
        if condition["type"] == "Ready":
            return dict(condition)
    return None


def wait_ready(
    cluster: e2e.Cluster, name: str, namespace: str, status: str, reason: str | None = None
) -> None:
    def matches() -> bool:
        condition = ready_condition(cluster, name, namespace)
        return bool(
            condition and condition["status"] == status and (reason is None or condition["reason"] == reason)
        )

    cluster.wait_until(f"VirtualKey {namespace}/{name} Ready={status} ({reason})", matches)


def start_client_pod(cluster: e2e.Cluster, namespace: str, secret_name: str) -> str:
    """A pod of our own image holding the key Secret in its environment (envFrom), waiting for exec."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": e2e.IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                    "envFrom": [{"secretRef": {"name": secret_name}}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    cluster.apply(pod, namespace=namespace)
    cluster.kubectl(
        "wait", "--for=condition=Ready", "pod/client", "-n", namespace, f"--timeout={int(e2e.TIMEOUT_S)}s"
    )
    return "client"


def call_proxy(cluster: e2e.Cluster, namespace: str, pod: str) -> int:
    output = cluster.kubectl(
        "exec", pod, "-n", namespace, "--", "python", "-c", CALL_PROXY, e2e.mock_model_name()
    )
    return int(output.split()[0])


def wait_for_status(cluster: e2e.Cluster, namespace: str, pod: str, expected: int) -> None:
    """The proxy picks up config changes within seconds: poll rather than assume a delay."""
    seen: list[int] = []

    def answered() -> bool:
        seen.append(call_proxy(cluster, namespace, pod))
        return seen[-1] == expected

    cluster.wait_until(f"the proxy answering {expected} (answers so far: {seen[-5:]})", answered, timeout=120)


def test_issued_key_calls_the_proxy_and_suspension_refuses_it(cluster: e2e.Cluster, namespace: str) -> None:
    cluster.apply(virtual_key("app"), namespace=namespace)
    wait_ready(cluster, "app", namespace, "True", "Active")
    secret = cluster.get("secret", "app-llm-key", namespace)
    assert secret is not None
    assert {"api-key", "OPENAI_API_KEY", "OPENAI_BASE_URL"} <= set(secret["data"])
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("VirtualKey", "app")

    pod = start_client_pod(cluster, namespace, "app-llm-key")
    wait_for_status(cluster, namespace, pod, 200)

    cluster.kubectl(
        "patch", "virtualkey", "app", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":true}}'
    )
    wait_ready(cluster, "app", namespace, "False", "Suspended")
    wait_for_status(cluster, namespace, pod, 403)

    cluster.kubectl(
        "patch", "virtualkey", "app", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":false}}'
    )
    wait_for_status(cluster, namespace, pod, 200)


def test_deleted_key_loses_its_secret_and_is_refused(cluster: e2e.Cluster, namespace: str) -> None:
    cluster.apply(virtual_key("doomed"), namespace=namespace)
    wait_ready(cluster, "doomed", namespace, "True", "Active")
    pod = start_client_pod(cluster, namespace, "doomed-llm-key")
    wait_for_status(cluster, namespace, pod, 200)

    cluster.kubectl("delete", "virtualkey", "doomed", "-n", namespace, f"--timeout={int(e2e.TIMEOUT_S)}s")
    # The API server's garbage collector follows the ownerReference.
    cluster.wait_until(
        "the key Secret to be garbage collected",
        lambda: cluster.get("secret", "doomed-llm-key", namespace) is None,
    )
    # The pod still holds the key in its environment: the proxy must refuse it now.
    wait_for_status(cluster, namespace, pod, 401)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"ttl": "24h", "expiresAt": "2030-01-01T00:00:00Z"}, "expiresAt and ttl are mutually exclusive"),
        ({"limits": {"requestsPerMinute": -1}}, "requestsPerMinute"),
        ({"limitz": {"requestsPerMinute": 1}}, "limitz"),
    ],
    ids=["cel-ttl-and-expiresAt", "negative-limit", "unknown-field"],
)
def test_api_server_rejects_bad_manifests(
    cluster: e2e.Cluster, namespace: str, spec: dict[str, Any], message: str
) -> None:
    result = cluster.try_apply(virtual_key("bad", **spec), namespace)
    assert result.returncode != 0, "the API server accepted an invalid VirtualKey"
    assert message in result.stderr
    assert cluster.get("virtualkey", "bad", namespace) is None


def test_operator_holds_its_lease_and_may_touch_no_other(
    cluster: e2e.Cluster, llmkeys_release: dict[str, Any]
) -> None:
    """The operator works only while it holds the chart's Lease; its Role names that Lease alone."""
    lease_name = f"{e2e.RELEASE}-operator"
    namespace = e2e.GATEWAY_NAMESPACE

    def held_lease() -> dict[str, Any] | None:
        lease = cluster.get("lease", lease_name, namespace)
        return lease if lease and lease["spec"].get("holderIdentity") else None

    lease = cluster.wait_until(f"Lease {namespace}/{lease_name} to have a holder", held_lease)
    pods = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator", "-o", "name"
    ).split()
    # The holder identity is "<pod name>-<random suffix>" (runner._identity; HOSTNAME is the pod name).
    assert any(lease["spec"]["holderIdentity"].startswith(pod.split("/")[-1] + "-") for pod in pods)

    service_account = f"system:serviceaccount:{namespace}:{e2e.RELEASE}-operator"

    def can(verb: str, resource: str) -> bool:
        answer = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, "--as", service_account, check=False
        )
        return answer.strip() == "yes"

    assert can("get", f"leases/{lease_name}") and can("patch", f"leases/{lease_name}")
    assert can("create", "leases")  # RBAC cannot narrow create to a name
    assert not can("patch", "leases/someone-elses-lease")
    assert not can("delete", f"leases/{lease_name}")
    assert not can("list", "leases")
