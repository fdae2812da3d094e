"""Chart tests: charts/llmkeys rendered and linted by Helm's own Go SDK, manifests checked against the
Kubernetes JSON schemas, and the chart's security properties and switches asserted.

Helm runs in-process through the helm-python-sdk wheel (libhelm_c, no helm binary); the schemas come
from the kubernetes-validate package (offline).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import aiohttp
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from tests.fakes import loopback

from llmkeys_operator import runner
from llmkeys_operator import settings as operator_settings
from llmkeys_proxy import settings as proxy_settings

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "llmkeys"
RELEASE = "llmkeys"
NAMESPACE = "llmkeys-system"
# The chart's lowest supported Kubernetes (Chart.yaml kubeVersion) and the newest schemas shipped.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

# Every env var the binaries read, from their settings dataclasses (one LLMKEYS_<FIELD> per field):
# the chart may set no other LLMKEYS_ name.
PROXY_ENV = {
    proxy_settings.ENV_PREFIX + field.name.upper()
    for field in dataclasses.fields(proxy_settings.ProxySettings)
}
OPERATOR_ENV = {
    operator_settings.ENV_PREFIX + field.name.upper()
    for field in dataclasses.fields(operator_settings.OperatorSettings)
}

# Everything switched on at once: the widest set of manifests the chart can produce.
ALL_ON: dict[str, Any] = {
    "operator": {"replicas": 2},
    "proxy": {
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 6},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "redis": {"persistence": {"enabled": True, "storageClass": "fast"}},
    "networkPolicy": {
        "enabled": True,
        "proxyIngressFrom": [{"namespaceSelector": {"matchLabels": {"llmkeys.io/clients": "true"}}}],
        "metricsIngressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}],
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "commonLabels": {"team": "platform"},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    "grafanaDashboard": {
        "enabled": True,
        "namespace": "monitoring",
        "annotations": {"grafana_folder": "LLM"},
    },
}

SAMPLE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "samples.llmkeys.io"},
    "spec": {
        "group": "llmkeys.io",
        "scope": "Namespaced",
        "names": {"kind": "Sample", "plural": "samples", "singular": "sample", "shortNames": ["smp"]},
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "x-kubernetes-validations": [
                                    {"rule": "self.max >= self.min", "message": "max below min"}
                                ],
                                "properties": {
                                    "min": {"type": "integer", "minimum": 0, "maximum": 1000000000},
                                    "max": {"type": "integer", "minimum": 0, "maximum": 1000000000},
                                    "note": {"type": "string", "maxLength": 32768},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders for `values`, parsed, in a stable order."""
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if not path.endswith(".yaml"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = one(docs, "Deployment", deployment)["spec"]["template"]["spec"][
        "containers"
    ]
    assert len(containers) == 1
    return containers[0]


def env_of(docs: list[dict[str, Any]], deployment: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(docs, deployment).get("env", [])}


#: ClusterRoles every cluster has (Kubernetes' bootstrap policy), with their real rules.
BUILT_IN_ROLES: dict[tuple[str, str | None, str], dict[str, Any]] = {
    ("ClusterRole", None, "system:service-account-issuer-discovery"): {
        "rules": [
            {
                "nonResourceURLs": [
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
                "verbs": ["get"],
            }
        ]
    }
}


def rules_for_service_account(docs: list[dict[str, Any]], service_account: str) -> list[dict[str, Any]]:
    """Every RBAC rule bound to a ServiceAccount, tagged with the scope it applies in."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    roles.update(BUILT_IN_ROLES)
    granted: list[dict[str, Any]] = []
    for binding in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding"):
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == service_account for s in binding["subjects"]
        ):
            continue
        ref = binding["roleRef"]
        role_ns = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        role = roles[(ref["kind"], role_ns, ref["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else binding["metadata"]["namespace"]
        granted.extend({**rule, "scope": scope} for rule in role["rules"])
    return granted


# --------------------------------------------------------------------------------------- Helm itself


def test_helm_lint_is_clean_in_strict_mode() -> None:
    for values in ({}, ALL_ON):
        report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
        assert report["errors"] == []
        # Severity 1 is informational (e.g. "icon is recommended"); warnings and errors fail.
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_manifest_validates_against_the_kubernetes_schemas(chart: helm.Chart) -> None:
    external = {"redis": {"external": {"url": "rediss://redis.example:6380/0"}}}
    namespaced = {"operator": {"watchNamespaces": ["team-a", "team-b"]}}
    kinds: set[str] = set()
    for values in ({}, ALL_ON, external, namespaced):
        for doc in render(chart, values):
            kinds.add(doc["kind"])
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # custom kind: no upstream schema
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Secret",
        "PersistentVolumeClaim",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    } <= kinds


def test_the_schema_check_would_catch_a_bad_manifest() -> None:
    # Guards the test above: the offline schemas really reject an unknown field.
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prots": []}}
    with pytest.raises(kubernetes_validate.ValidationError, match="prots"):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[0], strict=True)


def test_values_schema_accepts_the_defaults_and_rejects_bad_values(chart: helm.Chart) -> None:
    jsonschema.Draft7Validator.check_schema(chart.schema)
    chart.validate_schema(chart.values)
    chart.validate_schema(ALL_ON)
    bad_values: list[tuple[dict[str, Any], str]] = [
        ({"proxy": {"replicas": "two"}}, "/proxy/replicas"),
        ({"proxy": {"replica": 2}}, "replica"),
        ({"logLevel": "LOUD"}, "/logLevel"),
        ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces"),
        ({"crds": {"keep": "yes"}}, "/crds/keep"),
    ]
    for values, where in bad_values:
        with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
            chart.validate_schema(values)
    # An install renders nothing from values the schema rejects.
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"proxy": {"workers": 0}})


def test_every_value_is_documented_in_values_yaml() -> None:
    """Each value has a `# --` comment; a documented block's children count as documented."""
    undocumented: list[str] = []
    documented_indent: int | None = None
    pending_doc = False
    stack: list[tuple[int, str]] = []
    for line in (CHART_DIR / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            pending_doc = True
            continue
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            continue
        if documented_indent is not None and indent > documented_indent:
            continue  # inside a documented value
        documented_indent = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, rest = match.group(2), match.group(3).split("#")[0].strip()
        path = ".".join([name for _, name in stack] + [key])
        if pending_doc:
            documented_indent = indent
        elif rest:
            undocumented.append(path)
        pending_doc = False
        stack.append((indent, key))
    assert undocumented == []


# ------------------------------------------------------------------------------------ pod security


def test_every_pod_runs_non_root_read_only_without_capabilities(chart: helm.Chart) -> None:
    for values in ({}, ALL_ON):
        deployments = find(render(chart, values), "Deployment")
        assert {d["metadata"]["name"] for d in deployments} == {
            f"{RELEASE}-operator",
            f"{RELEASE}-proxy",
            f"{RELEASE}-redis",
        }
        for deployment in deployments:
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] > 0
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
            assert all("hostPath" not in volume for volume in pod.get("volumes", []))
            for each in pod["containers"] + pod.get("initContainers", []):
                ctx = each["securityContext"]
                assert ctx["readOnlyRootFilesystem"] is True
                assert ctx["allowPrivilegeEscalation"] is False
                assert ctx["capabilities"] == {"drop": ["ALL"]}
                assert not ctx.get("privileged")
                assert each["resources"]["requests"] and each["resources"]["limits"]["memory"]


def test_redis_pod_has_no_service_account_token_and_proxy_has_probes(chart: helm.Chart) -> None:
    docs = render(chart)
    redis_pod = one(docs, "Deployment", f"{RELEASE}-redis")["spec"]["template"]["spec"]
    assert redis_pod["automountServiceAccountToken"] is False
    proxy = container(docs, f"{RELEASE}-proxy")
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    service = one(docs, "Service", f"{RELEASE}-proxy")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert (
        service["spec"]["selector"]
        == one(docs, "Deployment", f"{RELEASE}-proxy")["spec"]["selector"]["matchLabels"]
    )


# -------------------------------------------------------------------------------------------- RBAC


def test_proxy_may_only_read_secrets_in_its_own_namespace(chart: helm.Chart) -> None:
    for values in ({}, ALL_ON, {"operator": {"watchNamespaces": ["team-a"]}}):
        docs = render(chart, values)
        rules = rules_for_service_account(docs, f"{RELEASE}-proxy")
        assert rules == [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["list", "watch"],
                "scope": NAMESPACE,
            },
            {
                **BUILT_IN_ROLES[("ClusterRole", None, "system:service-account-issuer-discovery")]["rules"][
                    0
                ],
                "scope": "cluster",
            },
        ]
        # Cluster-wide, only the built-in role that reads the ServiceAccount issuer (keyless keys):
        # GET /.well-known/openid-configuration and /openid/v1/jwks, nothing else.
        cluster = [
            b["roleRef"]
            for b in find(docs, "ClusterRoleBinding")
            for s in b["subjects"]
            if s["name"] == f"{RELEASE}-proxy"
        ]
        assert cluster == [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:service-account-issuer-discovery",
            }
        ]
    off = render(chart, {"proxy": {"identity": {"kubernetesIssuer": "off"}}})
    assert not any(
        s["name"] == f"{RELEASE}-proxy" for b in find(off, "ClusterRoleBinding") for s in b["subjects"]
    )
    env = env_of(off, f"{RELEASE}-proxy")
    assert env["LLMKEYS_KUBERNETES_ISSUER"]["value"] == "off"
    assert "LLMKEYS_TRUSTED_ISSUERS" not in env


def test_trusted_issuers_and_audience_reach_proxy_and_operator(chart: helm.Chart) -> None:
    github = "https://token.actions.githubusercontent.com"
    values = {
        "proxy": {"identity": {"trustedIssuers": [github, "https://gitlab.example.com"], "audience": "gw"}}
    }
    docs = render(chart, values)
    proxy_env = env_of(docs, f"{RELEASE}-proxy")
    assert proxy_env["LLMKEYS_TRUSTED_ISSUERS"]["value"] == f"{github},https://gitlab.example.com"
    assert proxy_env["LLMKEYS_KUBERNETES_ISSUER"]["value"] == "auto"
    assert proxy_env["LLMKEYS_TOKEN_AUDIENCE"]["value"] == "gw"
    assert env_of(docs, f"{RELEASE}-operator")["LLMKEYS_TOKEN_AUDIENCE"]["value"] == "gw"
    settings = proxy_settings.ProxySettings.from_env(
        {"LLMKEYS_CONFIG_DIR": "/x", **{name: e["value"] for name, e in proxy_env.items() if "value" in e}}
    )
    assert settings.trusted_issuers == (github, "https://gitlab.example.com")
    with pytest.raises(helm.HelmValuesError, match="trustedIssuers"):
        render(chart, {"proxy": {"identity": {"trustedIssuers": ["http://issuer.example"]}}})


def test_operator_gets_no_more_than_it_needs(chart: helm.Chart) -> None:
    # The exact set is derived from the code in test_rbac.py; this guards the shape.
    allowed: dict[tuple[str, str], set[str]] = {
        ("", "secrets"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "namespaces"): {"list", "watch"},
        ("", "events"): {"create"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        # leader.py: get, create, and a merge patch to take over, renew and release the Lease.
        ("coordination.k8s.io", "leases"): {"get", "create", "patch"},
        ("llmkeys.io", "virtualkeys/finalizers"): {"update"},
        ("llmkeys.io", "virtualkeys"): {"list", "watch", "patch"},
    }
    for resource in ("providercredentials", "llmpolicies"):
        allowed[("llmkeys.io", resource)] = {"list", "watch"}
    for resource in ("virtualkeys", "providercredentials", "llmpolicies"):
        allowed[("llmkeys.io", f"{resource}/status")] = {"patch"}

    rules = rules_for_service_account(render(chart), f"{RELEASE}-operator")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule
        # Names narrow the Lease rule only (see the leader election test); nothing else is named.
        assert "resourceNames" not in rule or rule["resources"] == ["leases"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    for (group, resource), verbs in granted.items():
        assert "*" not in verbs and group != "*" and resource != "*"
        assert verbs <= allowed.get((group, resource), set()), f"{group}/{resource}: {sorted(verbs)}"
    # What it needs is there: key Secrets in workload namespaces, status of its resources, the Lease.
    assert granted[("", "secrets")] == allowed[("", "secrets")]
    assert granted[("coordination.k8s.io", "leases")] == allowed[("coordination.k8s.io", "leases")]
    assert not any(group == "kopf.dev" for group, _ in granted)  # no kopf peering
    assert {"patch"} <= granted[("llmkeys.io", "virtualkeys/status")]
    # Never anything that escalates: RBAC objects, pods, service accounts, tokens.
    assert not {r for _, r in granted} & {"roles", "clusterroles", "rolebindings", "pods", "serviceaccounts"}


def test_operator_with_watch_namespaces_gets_secret_access_only_there(chart: helm.Chart) -> None:
    docs = render(chart, {"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    rules = rules_for_service_account(docs, f"{RELEASE}-operator")
    secret_scopes = {r["scope"] for r in rules if "secrets" in r["resources"]}
    assert secret_scopes == {"team-a", "team-b", NAMESPACE}
    cluster_resources = {res for r in rules if r["scope"] == "cluster" for res in r["resources"]}
    assert "secrets" not in cluster_resources and "virtualkeys" not in cluster_resources
    assert "llmpolicies" in cluster_resources  # cluster-scoped kind
    assert env_of(docs, f"{RELEASE}-operator")["LLMKEYS_WATCH_NAMESPACES"]["value"] == "team-a,team-b"


# ------------------------------------------------------------------------------------ env contract


def test_components_get_exactly_the_settings_the_binaries_read(chart: helm.Chart) -> None:
    docs = render(chart)
    proxy_env = env_of(docs, f"{RELEASE}-proxy")
    operator_env = env_of(docs, f"{RELEASE}-operator")
    assert {n for n in proxy_env if n.startswith("LLMKEYS_")} <= PROXY_ENV
    assert {n for n in operator_env if n.startswith("LLMKEYS_")} <= OPERATOR_ENV
    assert container(docs, f"{RELEASE}-proxy")["args"] == ["proxy"]
    assert container(docs, f"{RELEASE}-operator")["args"] == ["operator"]
    assert proxy_env["LLMKEYS_CONFIG_SOURCE"]["value"] == "kubernetes"
    assert proxy_env["LLMKEYS_PORT"]["value"] == "8080"
    assert proxy_env["LLMKEYS_NAMESPACE"]["value"] == NAMESPACE
    assert operator_env["LLMKEYS_NAMESPACE"]["value"] == NAMESPACE
    assert operator_env["LLMKEYS_PROXY_URL"]["value"] == f"http://{RELEASE}-proxy.{NAMESPACE}.svc:8080"
    assert operator_env["LLMKEYS_LIVENESS_PORT"]["value"] == "8081"
    assert "LLMKEYS_PEERING_NAME" not in operator_env  # kopf peering is not used
    custom = env_of(
        render(chart, {"operator": {"proxyURL": "https://llm.example.com"}}), f"{RELEASE}-operator"
    )
    assert custom["LLMKEYS_PROXY_URL"]["value"] == "https://llm.example.com"


# ------------------------------------------------------------------------------------------- Redis


def test_bundled_redis_is_the_default_and_needs_a_password(chart: helm.Chart) -> None:
    docs = render(chart)
    one(docs, "Service", f"{RELEASE}-redis")
    secret = one(docs, "Secret", f"{RELEASE}-redis")
    assert len(secret["data"]["redis-password"]) >= 40
    redis = container(docs, f"{RELEASE}-redis")
    assert "--requirepass" in redis["args"]
    assert "noeviction" in redis["args"]
    for deployment in (f"{RELEASE}-proxy", f"{RELEASE}-operator"):
        env = env_of(docs, deployment)
        assert env["LLMKEYS_REDIS_URL"]["value"] == f"redis://{RELEASE}-redis.{NAMESPACE}.svc:6379/0"
        assert env["LLMKEYS_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{RELEASE}-redis",
            "key": "redis-password",
        }
    # A user-provided password Secret replaces the generated one.
    docs = render(chart, {"redis": {"auth": {"existingSecret": "my-redis"}}})
    assert find(docs, "Secret", f"{RELEASE}-redis") == []
    env = env_of(docs, f"{RELEASE}-proxy")
    assert env["LLMKEYS_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-redis"


def test_external_redis_turns_the_bundled_one_off_and_supports_tls_and_auth(chart: helm.Chart) -> None:
    values = {
        "redis": {
            "external": {
                "url": "rediss://redis.example:6380/0",
                "passwordSecret": {"name": "redis-auth", "key": "pw"},
                "tls": {"caSecret": {"name": "redis-ca", "key": "ca.pem"}},
            }
        }
    }
    docs = render(chart, values)
    assert not [d for d in docs if d["metadata"]["name"].startswith(f"{RELEASE}-redis")]
    for deployment in (f"{RELEASE}-proxy", f"{RELEASE}-operator"):
        env = env_of(docs, deployment)
        assert (
            env["LLMKEYS_REDIS_URL"]["value"]
            == "rediss://redis.example:6380/0?ssl_ca_certs=/etc/llmkeys/redis-ca/ca.crt"
        )
        assert env["LLMKEYS_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "redis-auth",
            "key": "pw",
        }
        pod = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
        ca = next(v for v in pod["volumes"] if v["name"] == "redis-ca")
        assert ca["secret"] == {"secretName": "redis-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "redis-ca")
        assert mount == {"name": "redis-ca", "mountPath": "/etc/llmkeys/redis-ca", "readOnly": True}

    # A URL carrying credentials comes from a Secret and never appears in the manifests.
    docs = render(chart, {"redis": {"external": {"urlSecret": {"name": "redis-url", "key": "url"}}}})
    env = env_of(docs, f"{RELEASE}-proxy")
    assert env["LLMKEYS_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "url"}
    assert "LLMKEYS_REDIS_PASSWORD" not in env
    assert find(docs, "Deployment", f"{RELEASE}-redis") == []


def test_without_redis_only_one_proxy_replica_is_allowed(chart: helm.Chart) -> None:
    docs = render(chart, {"redis": {"enabled": False}, "proxy": {"replicas": 1}})
    assert env_of(docs, f"{RELEASE}-proxy")["LLMKEYS_REDIS_URL"]["value"] == ""
    assert "LLMKEYS_REDIS_PASSWORD" not in env_of(docs, f"{RELEASE}-proxy")
    with pytest.raises(helm.HelmRenderError, match="needs Redis"):
        render(chart, {"redis": {"enabled": False}})  # default: 2 replicas
    with pytest.raises(helm.HelmRenderError, match="needs Redis"):
        render(
            chart, {"redis": {"enabled": False}, "proxy": {"replicas": 1, "autoscaling": {"enabled": True}}}
        )
    with pytest.raises(helm.HelmRenderError, match=r"proxy\.workers > 1 needs Redis"):
        render(chart, {"redis": {"enabled": False}, "proxy": {"replicas": 1, "workers": 2}})


# ---------------------------------------------------------------------------------------- switches


def test_network_policies_are_opt_in_and_fence_redis(chart: helm.Chart) -> None:
    assert find(render(chart), "NetworkPolicy") == []
    docs = render(chart, {"networkPolicy": {"enabled": True}})
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    assert set(policies) == {f"{RELEASE}-proxy", f"{RELEASE}-operator", f"{RELEASE}-redis"}
    # Egress unrestricted unless rules are given.
    assert policies[f"{RELEASE}-proxy"]["policyTypes"] == ["Ingress"]
    assert policies[f"{RELEASE}-proxy"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    redis = policies[f"{RELEASE}-redis"]
    assert redis["egress"] == []
    sources = [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in redis["ingress"][0]["from"]
    ]
    assert sorted(sources) == ["operator", "proxy"]

    docs = render(chart, ALL_ON)
    proxy = one(docs, "NetworkPolicy", f"{RELEASE}-proxy")["spec"]
    assert proxy["policyTypes"] == ["Ingress", "Egress"]
    assert proxy["ingress"][0]["from"] == (
        ALL_ON["networkPolicy"]["proxyIngressFrom"] + ALL_ON["networkPolicy"]["metricsIngressFrom"]
    )
    assert proxy["egress"][-1] == ALL_ON["networkPolicy"]["egress"][0]
    assert any(port["port"] == 53 for rule in proxy["egress"] for port in rule.get("ports", []))
    assert any("to" in r and "podSelector" in r["to"][0] for r in proxy["egress"])  # bundled Redis


def test_pod_disruption_budgets_only_where_more_than_one_replica_runs(chart: helm.Chart) -> None:
    def names(values: dict[str, Any]) -> set[str]:
        return {p["metadata"]["name"] for p in find(render(chart, values), "PodDisruptionBudget")}

    assert names({}) == {f"{RELEASE}-proxy"}  # proxy: 2 replicas, operator: 1
    assert names({"proxy": {"replicas": 1}}) == set()
    assert names({"proxy": {"podDisruptionBudget": {"enabled": False}}}) == set()
    assert names({"proxy": {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 2}}}) == {
        f"{RELEASE}-proxy"
    }
    assert names(ALL_ON) == {f"{RELEASE}-proxy", f"{RELEASE}-operator"}


def test_hpa_is_opt_in_and_takes_over_the_replica_count(chart: helm.Chart) -> None:
    docs = render(chart)
    assert find(docs, "HorizontalPodAutoscaler") == []
    assert one(docs, "Deployment", f"{RELEASE}-proxy")["spec"]["replicas"] == 2
    docs = render(chart, ALL_ON)
    hpa = one(docs, "HorizontalPodAutoscaler", f"{RELEASE}-proxy")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{RELEASE}-proxy",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert "replicas" not in one(docs, "Deployment", f"{RELEASE}-proxy")["spec"]


def test_service_monitor_is_opt_in(chart: helm.Chart) -> None:
    assert find(render(chart), "ServiceMonitor") == []
    monitor = one(render(chart, ALL_ON), "ServiceMonitor", f"{RELEASE}-proxy")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"


def test_metrics_need_a_token_the_service_monitor_sends(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    proxy_env = env_of(docs, f"{RELEASE}-proxy")
    reference = proxy_env["LLMKEYS_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": f"{RELEASE}-proxy-metrics", "key": "token"}
    generated = one(docs, "Secret", f"{RELEASE}-proxy-metrics")
    assert len(base64.b64decode(generated["data"]["token"])) == 40
    monitor = one(docs, "ServiceMonitor", f"{RELEASE}-proxy")
    assert monitor["spec"]["endpoints"][0]["authorization"] == {"type": "Bearer", "credentials": reference}
    own = render(
        chart,
        {
            **ALL_ON,
            "proxy": {**ALL_ON.get("proxy", {}), "metrics": {"tokenSecret": {"name": "mine", "key": "t"}}},
        },
    )
    assert find(own, "Secret", f"{RELEASE}-proxy-metrics") == []
    assert env_of(own, f"{RELEASE}-proxy")["LLMKEYS_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "mine",
        "key": "t",
    }
    open_metrics = render(chart, {"proxy": {"metrics": {"requireToken": False}}})
    assert "LLMKEYS_METRICS_TOKEN" not in env_of(open_metrics, f"{RELEASE}-proxy")


def test_prometheus_rule_and_grafana_dashboard_are_opt_in_and_carry_the_shipped_files(
    chart: helm.Chart,
) -> None:
    assert find(render(chart), "PrometheusRule") == [] and find(render(chart), "ConfigMap") == []
    docs = render(chart, ALL_ON)
    rule = one(docs, "PrometheusRule", RELEASE)
    assert rule["metadata"]["labels"]["release"] == "prom"
    shipped = yaml.safe_load((CHART_DIR / "files" / "prometheus" / "llmkeys-rules.yaml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"]  # the very rules promtool checks and tests
    dashboard = one(docs, "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    shipped_json = json.loads((CHART_DIR / "files" / "grafana" / "llmkeys-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["llmkeys-dashboard.json"]) == shipped_json


# ------------------------------------------------------------------------------- leader election


def settings_from_env(env: dict[str, dict[str, Any]]) -> operator_settings.OperatorSettings:
    """The settings the operator would build from the rendered env (Secret references as stand-ins)."""
    stand_ins = {"LLMKEYS_REDIS_URL": "redis://from-secret:6379/0", "LLMKEYS_REDIS_PASSWORD": "from-secret"}
    environ = {name: e["value"] if "value" in e else stand_ins[name] for name, e in env.items()}
    return operator_settings.OperatorSettings.from_env(environ)


def test_operator_runs_under_a_lease_in_the_release_namespace(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    loaded = settings_from_env(env_of(docs, f"{RELEASE}-operator"))
    assert loaded.leader_election is True
    assert loaded.lease_name == f"{RELEASE}-operator"
    assert (loaded.lease_duration_s, loaded.renew_deadline_s, loaded.retry_period_s) == (15.0, 10.0, 2.0)
    assert loaded.namespace == NAMESPACE  # where leader.py keeps the Lease
    assert one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["replicas"] == 2
    # The Lease Role: namespaced, one Lease by name for get/patch; create cannot be named.
    role = one(docs, "Role", f"{RELEASE}-operator-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [loaded.lease_name],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    lease_rules = [
        r for r in rules_for_service_account(docs, f"{RELEASE}-operator") if "leases" in r["resources"]
    ]
    assert {r["scope"] for r in lease_rules} == {NAMESPACE}
    assert not any("leases" in r["resources"] for d in find(docs, "ClusterRole") for r in d["rules"])
    # A rolling update is safe: the new pod waits as a standby for the Lease.
    assert one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["strategy"]["type"] == "RollingUpdate"

    custom = {
        "leaseName": "gw-lease",
        "leaseDurationSeconds": 30,
        "renewDeadlineSeconds": 20,
        "retryPeriodSeconds": 0.5,
    }
    docs = render(chart, {"operator": {"leaderElection": custom}})
    loaded = settings_from_env(env_of(docs, f"{RELEASE}-operator"))
    assert (loaded.lease_name, loaded.lease_duration_s, loaded.renew_deadline_s, loaded.retry_period_s) == (
        "gw-lease",
        30.0,
        20.0,
        0.5,
    )
    assert one(docs, "Role", f"{RELEASE}-operator-leader-election")["rules"][0]["resourceNames"] == [
        "gw-lease"
    ]


def test_operator_replicas_need_leader_election(chart: helm.Chart) -> None:
    without = {"leaderElection": {"enabled": False}}
    with pytest.raises(helm.HelmRenderError, match=r"leaderElection\.enabled"):
        render(chart, {"operator": {"replicas": 2, **without}})
    # One replica may run without: no Lease, no Lease RBAC, and the old pod stops before the new starts.
    docs = render(chart, {"operator": without})
    assert settings_from_env(env_of(docs, f"{RELEASE}-operator")).leader_election is False
    assert not any(name.startswith("LLMKEYS_LEASE") for name in env_of(docs, f"{RELEASE}-operator"))
    assert find(docs, "Role", f"{RELEASE}-operator-leader-election") == []
    assert not any("leases" in r["resources"] for r in rules_for_service_account(docs, f"{RELEASE}-operator"))
    assert one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["strategy"] == {"type": "Recreate"}
    # Timings the operator would refuse at start fail the install instead.
    for timing in (
        {"retryPeriodSeconds": 10},
        {"renewDeadlineSeconds": 15},
        {"leaseDurationSeconds": 5, "renewDeadlineSeconds": 8},
    ):
        with pytest.raises(helm.HelmRenderError, match="retryPeriodSeconds < renewDeadlineSeconds"):
            render(chart, {"operator": {"leaderElection": timing}})


def test_chart_ships_no_kopf_peering(chart: helm.Chart) -> None:
    assert chart.crds == []
    assert not (CHART_DIR / "crds").exists()
    docs = render(chart, ALL_ON)
    assert not [d for d in docs if d["apiVersion"].startswith("kopf.dev/")]
    assert not [
        d for d in docs if d["kind"] == "CustomResourceDefinition" and "kopf" in d["metadata"]["name"]
    ]
    with pytest.raises(helm.HelmValuesError, match="peering"):
        chart.validate_schema({"operator": {"peering": {"enabled": True}}})


def test_operator_settings_in_values_reach_the_operator(chart: helm.Chart) -> None:
    docs = render(chart, {"operator": {"compileDebounceSeconds": 0.5, "eventMinIntervalSeconds": 300}})
    loaded = settings_from_env(env_of(docs, f"{RELEASE}-operator"))
    assert (loaded.compile_debounce_s, loaded.event_min_interval_s) == (0.5, 300.0)
    # The chart's defaults are the operator's own (release "llmkeys": the Lease name too).
    defaults = settings_from_env(env_of(render(chart), f"{RELEASE}-operator"))
    code = operator_settings.OperatorSettings()
    for name in (
        "leader_election",
        "lease_name",
        "lease_duration_s",
        "renew_deadline_s",
        "retry_period_s",
        "compile_debounce_s",
        "event_min_interval_s",
        "usage_sync_interval_s",
        "liveness_port",
        "log_level",
    ):
        assert getattr(defaults, name) == getattr(code, name), name


async def test_liveness_probe_matches_what_a_standby_operator_serves(chart: helm.Chart) -> None:
    """The probe's port and path are served on every pod address by a replica waiting for the Lease
    (kopf's own endpoint, once leading, is started by runner.serve on 0.0.0.0 with the same port)."""
    port = loopback.free_port()
    docs = render(chart, {"operator": {"livenessPort": port}})
    operator = container(docs, f"{RELEASE}-operator")
    probe = operator["livenessProbe"]["httpGet"]
    named = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert (
        named[probe["port"]] == port == settings_from_env(env_of(docs, f"{RELEASE}-operator")).liveness_port
    )
    health = await runner._standby_health(port)
    assert health is not None
    try:
        assert {address[0] for address in health.addresses} == {"0.0.0.0"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{probe['path']}") as response,
        ):
            assert response.status == 200
    finally:
        await health.cleanup()


def test_names_follow_fullname_override_and_stay_short(chart: helm.Chart) -> None:
    docs = render(chart, {"fullnameOverride": "gw"})
    assert {d["metadata"]["name"] for d in find(docs, "Deployment")} == {
        "gw-operator",
        "gw-proxy",
        "gw-redis",
    }
    long_release = chart.render({}, name="a" * 53, namespace=NAMESPACE)
    for path, manifest in long_release.items():
        for doc in yaml.safe_load_all(manifest) if path.endswith(".yaml") else ():
            if doc and doc["kind"] in {"Deployment", "Service"}:
                assert len(doc["metadata"]["name"]) <= 63


# -------------------------------------------------------------------------------------------- CRDs


def test_chart_crds_are_the_generated_crds() -> None:
    """charts/llmkeys/files/crds must equal crds/*.yaml (`make crds` refreshes both)."""
    generated = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    shipped = {p.name: p.read_bytes() for p in sorted((CHART_DIR / "files" / "crds").glob("*.yaml"))}
    assert shipped.keys() == generated.keys(), "run `make crds` to copy crds/*.yaml into the chart"
    for name, content in generated.items():
        assert shipped[name] == content, f"charts/llmkeys/files/crds/{name} differs: run `make crds`"


def test_rendered_crds_equal_the_generated_ones_plus_labels(chart: helm.Chart) -> None:
    sources = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                sources[doc["metadata"]["name"]] = doc
    rendered = {d["metadata"]["name"]: d for d in find(render(chart), "CustomResourceDefinition")}
    assert rendered.keys() == sources.keys()
    for name, source in sources.items():
        assert strip_chart_metadata(rendered[name]) == source


def strip_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD without what the chart adds (labels, the keep annotation)."""
    crd = json.loads(json.dumps(crd))
    metadata = crd["metadata"]
    for key in ("labels", "annotations"):
        added = metadata.get(key, {})
        for name in [n for n in added if n.startswith(("app.kubernetes.io/", "helm.sh/"))]:
            del added[name]
        if not added:
            metadata.pop(key, None)
    return crd


@pytest.fixture
def chart_with_sample_crd(tmp_path: pathlib.Path) -> Iterator[helm.Chart]:
    """A copy of the chart whose files/crds holds one known CRD (independent of crds/ contents)."""
    copy = tmp_path / "llmkeys"
    shutil.copytree(CHART_DIR, copy)
    for stale in (copy / "files" / "crds").glob("*.yaml"):
        stale.unlink()
    (copy / "files" / "crds" / "llmkeys.io_samples.yaml").write_text(
        yaml.safe_dump(SAMPLE_CRD, sort_keys=False)
    )
    with helm.Chart.load(copy) as loaded:
        yield loaded


def test_crd_switches_install_keep_and_skip(chart_with_sample_crd: helm.Chart) -> None:
    chart = chart_with_sample_crd
    crd = one(render(chart), "CustomResourceDefinition", "samples.llmkeys.io")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crds"
    # Numbers survive the template round trip exactly (no float formatting like 1e+09).
    assert strip_chart_metadata(crd) == SAMPLE_CRD
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)

    crd = one(render(chart, {"crds": {"keep": False}}), "CustomResourceDefinition", "samples.llmkeys.io")
    assert "annotations" not in crd["metadata"]
    assert find(render(chart, {"crds": {"enabled": False}}), "CustomResourceDefinition") == []


# ------------------------------------------------------------------------------- install action


def test_helm_install_action_accepts_the_chart_offline(tmp_path: pathlib.Path) -> None:
    """Helm's own install path (client dry run: kubeVersion check, schema, ordering) without a cluster."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                # Nothing listens there: a client dry run must not need the API server.
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "none", "user": {"token": "unused"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    with helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE) as config:
        release = config.install(CHART_DIR, RELEASE, ALL_ON, dry_run="client", namespace=NAMESPACE)
    assert release["name"] == RELEASE and release["namespace"] == NAMESPACE
    kinds = {doc["kind"] for doc in yaml.safe_load_all(release["manifest"]) if doc}
    assert {
        "Deployment",
        "CustomResourceDefinition",
        "Role",
        "HorizontalPodAutoscaler",
    } <= kinds
    assert not any(kind.endswith("KopfPeering") for kind in kinds)
    assert "Proxy URL written into key Secrets" in release["notes"]


# --------------------------------------------------------------------------------- proxy TLS listener


def probes_of(proxy: dict[str, Any]) -> list[dict[str, Any]]:
    return [proxy[name] for name in ("livenessProbe", "readinessProbe", "startupProbe")]


def test_proxy_tls_is_off_by_default_and_numbers_render_as_integers(chart: helm.Chart) -> None:
    docs = render(chart)
    proxy = container(docs, f"{RELEASE}-proxy")
    env = env_of(docs, f"{RELEASE}-proxy")
    assert "LLMKEYS_TLS_CERT_FILE" not in env and "LLMKEYS_TLS_KEY_FILE" not in env
    assert all(probe["httpGet"].get("scheme", "HTTP") == "HTTP" for probe in probes_of(proxy))
    assert not [m for m in proxy["volumeMounts"] if m["name"] == "tls"]
    # Helm reads values as floats: large numbers must not reach the proxy as 1.048576e+07.
    assert env["LLMKEYS_MAX_BODY_BYTES"]["value"] == "10485760"
    assert env["LLMKEYS_UPSTREAM_TIMEOUT_S"]["value"] == "600"


def test_proxy_tls_secret_is_mounted_and_everything_speaks_https(chart: helm.Chart) -> None:
    values = {
        "proxy": {
            "tls": {"secretName": "proxy-tls"},
            "serviceMonitor": {"enabled": True, "tlsConfig": {"serverName": f"{RELEASE}-proxy"}},
        }
    }
    chart.validate_schema(values)
    docs = render(chart, values)
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    proxy = container(docs, f"{RELEASE}-proxy")
    env = env_of(docs, f"{RELEASE}-proxy")
    assert env["LLMKEYS_TLS_CERT_FILE"]["value"] == "/etc/llmkeys/tls/tls.crt"
    assert env["LLMKEYS_TLS_KEY_FILE"]["value"] == "/etc/llmkeys/tls/tls.key"
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/llmkeys/tls", "readOnly": True}
    pod = one(docs, "Deployment", f"{RELEASE}-proxy")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "proxy-tls"
    assert {item["key"] for item in volume["secret"]["items"]} == {"tls.crt", "tls.key"}
    assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 65532
    assert proxy["ports"] == [{"name": "https", "containerPort": 8080, "protocol": "TCP"}]
    for probe in probes_of(proxy):
        assert probe["httpGet"]["scheme"] == "HTTPS" and probe["httpGet"]["port"] == "https"
    service = one(docs, "Service", f"{RELEASE}-proxy")
    assert service["spec"]["ports"][0]["name"] == service["spec"]["ports"][0]["targetPort"] == "https"
    operator_env = env_of(docs, f"{RELEASE}-operator")
    assert operator_env["LLMKEYS_PROXY_URL"]["value"] == f"https://{RELEASE}-proxy.{NAMESPACE}.svc:8080"
    endpoint = one(docs, "ServiceMonitor", f"{RELEASE}-proxy")["spec"]["endpoints"][0]
    assert endpoint["port"] == "https" and endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"serverName": f"{RELEASE}-proxy"}
    with pytest.raises(helm.HelmValuesError, match=re.escape("/proxy/tls/secretName")):
        chart.validate_schema({"proxy": {"tls": {"secretName": "Not A Secret"}}})
