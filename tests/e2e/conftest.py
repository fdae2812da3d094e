"""e2e fixtures: a kind cluster (pytest-kind), the llmkeys image built and loaded, the chart installed
with Helm's Go SDK, a mock ProviderCredential, and a fresh namespace per test.

Without a running Docker engine, a kind binary or kubectl, every e2e test is skipped with the reason;
collection itself needs none of them. pytest-kind would download kind and kubectl on demand: here
they must be installed (or given with --kind-bin / --kind-kubectl-bin), since tests get no network.
"""

from __future__ import annotations

import pathlib
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_kind
from tests.e2e import cluster as e2e


@pytest.fixture(scope="session")
def kind_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """pytest-kind's cluster, made skippable: kind and kubectl come from PATH or the options."""
    reason = e2e.missing_prerequisite(request.config)
    if reason:
        pytest.skip(reason)
    kind_bin = request.config.getoption("kind_bin") or shutil.which("kind")
    kubectl_bin = request.config.getoption("kind_kubectl_bin") or shutil.which("kubectl")
    # Constructed only here, past the skip: it creates .pytest-kind/ in the working directory.
    cluster = pytest_kind.KindCluster(
        request.config.getoption("cluster_name"),
        kubeconfig=pathlib.Path(kubeconfig)
        if (kubeconfig := request.config.getoption("kubeconfig"))
        else None,
        kind_path=pathlib.Path(str(kind_bin)),
        kubectl_path=pathlib.Path(str(kubectl_bin)),
        image=request.config.getoption("kind_image"),
    )
    cluster.create()
    yield cluster
    if not request.config.getoption("keep_cluster"):
        cluster.delete()


@pytest.fixture(scope="session")
def cluster(kind_cluster: Any) -> e2e.Cluster:
    return e2e.Cluster(kind_cluster)


@pytest.fixture(scope="session")
def llmkeys_image(kind_cluster: Any) -> str:
    """`make image`, then the image loaded into the kind nodes (no registry involved)."""
    build = e2e.run(["make", "-C", str(e2e.REPO), "image"], timeout=1800)
    assert build.returncode == 0, f"make image failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    kind_cluster.load_docker_image(e2e.IMAGE)
    return e2e.IMAGE


def _redis_available_locally(kind_cluster: Any) -> bool:
    """The bundled Redis needs its image in the nodes; load it when Docker has it, else go without."""
    if e2e.run(["docker", "image", "inspect", e2e.REDIS_IMAGE]).returncode != 0:
        pulled = e2e.run(["docker", "pull", e2e.REDIS_IMAGE], timeout=300)
        if pulled.returncode != 0:
            return False
    kind_cluster.load_docker_image(e2e.REDIS_IMAGE)
    return True


@pytest.fixture(scope="session")
def llmkeys_release(kind_cluster: Any, cluster: e2e.Cluster, llmkeys_image: str) -> dict[str, Any]:
    """The chart installed from charts/llmkeys with Helm's Go SDK, waiting for every pod to be ready."""
    import helm_python as helm

    repository, tag = llmkeys_image.split(":")
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "proxy": {"replicas": 1},
        "logLevel": "DEBUG",
    }
    if not _redis_available_locally(kind_cluster):
        values["redis"] = {"enabled": False}  # in-process limiter: valid with one proxy replica
    with helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=e2e.GATEWAY_NAMESPACE) as config:
        release: dict[str, Any] = config.install(
            e2e.CHART_DIR,
            e2e.RELEASE,
            values,
            namespace=e2e.GATEWAY_NAMESPACE,
            create_namespace=True,
            wait="watcher",
            timeout=int(e2e.TIMEOUT_S),
        )
    cluster.apply(e2e.mock_provider_credential(), namespace=e2e.GATEWAY_NAMESPACE)
    return release


@pytest.fixture
def namespace(cluster: e2e.Cluster, llmkeys_release: dict[str, Any]) -> Iterator[str]:
    """A namespace of its own for each test, deleted afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
