"""What the e2e suite knows about its cluster: prerequisites, kubectl with polling, the mock provider.

Used by tests/e2e/conftest.py (fixtures) and the e2e tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "llmkeys"
IMAGE = "llmkeys:dev"
RELEASE = "llmkeys"
GATEWAY_NAMESPACE = "llmkeys"
REDIS_IMAGE = "docker.io/library/redis:7.4-alpine"
MOCK_CREDENTIAL = "mock"
# Generous: kind on a shared 2-core machine is slow to start pods.
TIMEOUT_S = 300.0


def run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def missing_prerequisite(config: pytest.Config) -> str | None:
    """Why the e2e suite cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "docker CLI not found"
    try:
        info = run(["docker", "info", "--format", "{{.ServerVersion}}"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker engine not reachable: {exc}"
    if info.returncode != 0 or not info.stdout.strip():
        return "no running Docker engine (`docker info` fails: the client is installed but no daemon answers)"
    if not (config.getoption("kind_bin") or shutil.which("kind")):
        return "kind binary not found (install kind or pass --kind-bin; downloading is not possible offline)"
    if not (config.getoption("kind_kubectl_bin") or shutil.which("kubectl")):
        return "kubectl not found (install it or pass --kind-kubectl-bin)"
    return None


class Cluster:
    """kubectl against the kind cluster, with polling helpers."""

    def __init__(self, kind: Any) -> None:
        self.kind = kind
        self.kubeconfig = pathlib.Path(kind.kubeconfig_path)

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(self.kind.kubectl_path), *args],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            input=input_text,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout if result.returncode == 0 else result.stderr

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> str:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.kubectl(*args, input_text=text)

    def try_apply(self, manifest: dict[str, Any], namespace: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kind.kubectl_path), "apply", "-n", namespace, "-f", "-"],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            input=yaml.safe_dump(manifest),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = subprocess.run(
            [str(self.kind.kubectl_path), "get", kind, name, "-n", namespace, "-o", "json"],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind}/{name} failed: {result.stderr.strip()}")
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def wait_until(self, what: str, predicate: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
        """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(1.0)


def mock_provider_credential() -> dict[str, Any]:
    """The mock ProviderCredential of the examples (no internet needed), or an equivalent one."""
    paths = [
        REPO / "examples" / "credentials" / "mock.yaml",
        *sorted((REPO / "examples" / "standalone").glob("*.yaml")),
    ]
    for path in (p for p in paths if p.is_file()):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ProviderCredential" and doc["spec"].get("provider") == "mock":
                doc["metadata"].pop("namespace", None)
                return dict(doc)
    return {
        "apiVersion": "llmkeys.io/v1alpha1",
        "kind": "ProviderCredential",
        "metadata": {"name": MOCK_CREDENTIAL},
        "spec": {"provider": "mock", "models": [{"name": "mock-*"}]},
    }


def mock_model_name() -> str:
    """A concrete model name the mock credential serves (a glob's `*` filled in)."""
    models = mock_provider_credential()["spec"].get("models") or [{"name": "mock-e2e"}]
    name = str(models[0]["name"])
    return name.replace("*", "e2e").replace("?", "x")
