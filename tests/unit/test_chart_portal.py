"""The chart's self-service portal (`portal.enabled`), rendered by the real `helm` binary.

Checked: the Deployment (probes, resources, the settings `llmkeys portal` reads and nothing else,
the OIDC client secret and the cookie key from Secrets), the pod against the Pod Security
Standard "restricted" (its documented checks, evaluated here), Service, optional Ingress,
NetworkPolicy, and the ServiceAccount's RBAC: impersonation of users and groups, nothing else.
Lint and schema validation of the portal option set run with the others (test_chart_helm_binary).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml

from llmkeys_operator.portal import settings as portal_settings
from llmkeys_proxy import settings as proxy_settings

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "llmkeys"
HELM = pathlib.Path(sys.executable).parent / "helm"
RELEASE = "llmkeys"
NAMESPACE = "llmkeys-system"
PORTAL = f"{RELEASE}-portal"
PORTAL_ENV = {
    proxy_settings.ENV_PREFIX + field.name.upper()
    for field in dataclasses.fields(portal_settings.PortalSettings)
}
OPTION_SET = yaml.safe_load((CHART_DIR / "ci" / "portal-values.yaml").read_text())
MINIMAL: dict[str, Any] = {
    "portal": {
        "enabled": True,
        "publicURL": "https://llmkeys.example.com",
        "oidc": {"issuerURL": "https://login.example.com", "clientID": "llmkeys-portal"},
    }
}


def helm_template(values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), f"{HELM} is missing: run `make setup` (scripts/ensure-helm.sh)"
    return subprocess.run(
        [str(HELM), "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, "-f", "-"],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        timeout=60,
    )


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    done = helm_template(values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    def merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)
        return into

    result: dict[str, Any] = {}
    for layer in layers:
        merge(result, layer)
    return result


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def portal_objects(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted(
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "portal"
    )


# ---------------------------------------------------------------- Pod Security Standards: restricted

#: Volume types the restricted profile allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the Pod Security Standard "restricted" (baseline included) would refuse in a pod spec,
    check by check as kubernetes.io/docs/concepts/security/pod-security-standards lists them."""
    found: list[str] = []
    pod_ctx = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"{flag} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']} is of type {sorted(kinds - RESTRICTED_VOLUMES)}")
    if pod_ctx.get("sysctls"):
        found.append("sysctls are set")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    for each in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        name = each["name"]
        ctx = each.get("securityContext") or {}
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{name}: hostProcess")
        if any(port.get("hostPort") for port in each.get("ports") or []):
            found.append(f"{name}: hostPort")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser is 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is {seccomp!r}")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
        selinux = ctx.get("seLinuxOptions") or pod_ctx.get("seLinuxOptions") or {}
        if selinux.get("user") or selinux.get("role"):
            found.append(f"{name}: SELinux user/role set")
        apparmor = (ctx.get("appArmorProfile") or {}).get("type")
        if apparmor == "Unconfined":
            found.append(f"{name}: AppArmor unconfined")
    return found


def test_the_restricted_check_refuses_what_the_standard_refuses() -> None:
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [
            {
                "name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN"]}},
            }
        ],
    }
    assert restricted_violations(bad) == [
        "hostNetwork is set",
        "volume root is of type ['hostPath']",
        "c: hostPort",
        "c: allowPrivilegeEscalation is not false",
        "c: runAsNonRoot is not true",
        "c: runAsUser is 0",
        "c: seccompProfile is None",
        "c: capabilities do not drop ALL",
        "c: adds capabilities ['SYS_ADMIN']",
    ]


# ----------------------------------------------------------------------------------------- the tests


def test_the_portal_is_off_by_default() -> None:
    assert portal_objects(render({})) == []


def test_the_portal_deployment_service_ingress_and_network_policy() -> None:
    docs = render(OPTION_SET)
    assert portal_objects(docs) == [
        ("ClusterRole", PORTAL),
        ("ClusterRoleBinding", PORTAL),
        ("Deployment", PORTAL),
        ("Ingress", PORTAL),
        ("NetworkPolicy", PORTAL),
        ("Secret", f"{PORTAL}-session"),
        ("Service", PORTAL),
        ("ServiceAccount", PORTAL),
    ]
    deployment = one(docs, "Deployment", PORTAL)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["portal"]
    assert container["ports"] == [{"name": "http", "containerPort": 8090, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == PORTAL and pod["automountServiceAccountToken"] is True
    assert restricted_violations(pod) == []

    service = one(docs, "Service", PORTAL)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    ingress = one(docs, "Ingress", PORTAL)["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["llmkeys.example.com"], "secretName": "llmkeys-portal-tls"}]
    (rule,) = ingress["rules"]
    assert rule["host"] == "llmkeys.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": PORTAL, "port": {"name": "http"}}

    policy = one(docs, "NetworkPolicy", PORTAL)["spec"]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["ingress"] == [
        {
            "ports": [{"port": 8090, "protocol": "TCP"}],
            "from": OPTION_SET["networkPolicy"]["portalIngressFrom"],
        }
    ]
    assert policy["policyTypes"] == ["Ingress"]  # egress unrestricted unless networkPolicy.egress
    restricted = render(merged(OPTION_SET, {"networkPolicy": {"egress": [{"ports": [{"port": 443}]}]}}))
    egress = one(restricted, "NetworkPolicy", PORTAL)["spec"]
    assert egress["policyTypes"] == ["Ingress", "Egress"]
    assert egress["egress"][-1] == {"ports": [{"port": 443}]}
    assert egress["egress"][0]["ports"][0]["port"] == 53
    # Without an Ingress and NetworkPolicies: neither is rendered.
    assert {kind for kind, _ in portal_objects(render(MINIMAL))} == {
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Secret",
        "Service",
        "ServiceAccount",
    }


def test_the_portal_gets_exactly_the_settings_it_reads_and_its_secrets_from_secrets() -> None:
    docs = render(OPTION_SET)
    (container,) = one(docs, "Deployment", PORTAL)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= PORTAL_ENV, f"the chart sets what the portal never reads: {set(env) - PORTAL_ENV}"
    # The client secret and the cookie key are references to Secrets, never values in the manifest.
    assert env["LLMKEYS_OIDC_CLIENT_SECRET"] == {
        "name": "LLMKEYS_OIDC_CLIENT_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "llmkeys-portal-oidc", "key": "client-secret"}},
    }
    session_ref = env["LLMKEYS_PORTAL_SESSION_KEY"]["valueFrom"]["secretKeyRef"]
    assert session_ref == {"name": f"{PORTAL}-session", "key": "session-key"}
    generated = one(docs, "Secret", f"{PORTAL}-session")
    session_key = base64.b64decode(generated["data"]["session-key"]).decode()
    assert len(session_key) >= portal_settings.MIN_SESSION_KEY_CHARS
    for name in ("LLMKEYS_OIDC_CLIENT_SECRET", "LLMKEYS_PORTAL_SESSION_KEY"):
        assert "value" not in env[name], name

    # What the pod's environment amounts to is a valid portal configuration.
    resolved = {name: e["value"] for name, e in env.items() if "value" in e}
    resolved["LLMKEYS_OIDC_CLIENT_SECRET"] = "from-the-secret"
    resolved["LLMKEYS_PORTAL_SESSION_KEY"] = session_key
    config = portal_settings.PortalSettings.from_env(resolved)
    assert config.redirect_uri == "https://llmkeys.example.com/callback"
    assert config.portal_namespaces == ("team-a", "team-b")
    assert config.oidc_issuer_url == "https://login.example.com/realms/company"
    assert (config.oidc_username_prefix, config.oidc_groups_prefix) == ("oidc:", "oidc:")
    assert config.portal_cookie_secure is True and config.portal_port == 8090

    # A session key Secret of one's own: no generated Secret.
    own = render(merged(MINIMAL, {"portal": {"session": {"keySecret": {"name": "my-key", "key": "k"}}}}))
    assert not [d for d in own if d["kind"] == "Secret" and d["metadata"]["name"] == f"{PORTAL}-session"]
    (own_container,) = one(own, "Deployment", PORTAL)["spec"]["template"]["spec"]["containers"]
    own_env = {e["name"]: e for e in own_container["env"]}
    own_ref = own_env["LLMKEYS_PORTAL_SESSION_KEY"]["valueFrom"]["secretKeyRef"]
    assert own_ref == {"name": "my-key", "key": "k"}
    assert "LLMKEYS_OIDC_CLIENT_SECRET" not in own_env  # a public client: PKCE without a secret


def granted(docs: list[dict[str, Any]], service_account: str) -> dict[tuple[str, str], set[str]]:
    """Every (apiGroup, resource) -> verbs bound to the ServiceAccount, by any (Cluster)RoleBinding."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    grants: dict[tuple[str, str], set[str]] = {}
    for binding in [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]:
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == service_account and s["namespace"] == NAMESPACE
            for s in binding["subjects"]
        ):
            continue
        ref = binding["roleRef"]
        namespace = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        for rule in roles[(ref["kind"], namespace, ref["name"])]["rules"]:
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize(
    "extra",
    [{}, {"operator": {"watchNamespaces": ["team-a"]}}, {"portal": {"serviceAccount": {"name": "web"}}}],
    ids=["default", "watch-namespaces", "named-account"],
)
def test_the_portal_service_account_may_impersonate_and_nothing_else(extra: dict[str, Any]) -> None:
    docs = render(merged(OPTION_SET, extra))
    account = extra.get("portal", {}).get("serviceAccount", {}).get("name", PORTAL)
    one(docs, "ServiceAccount", account)
    assert granted(docs, account) == {("", "users"): {"impersonate"}, ("", "groups"): {"impersonate"}}
    # No other component's binding names the portal, and the portal's binding names nobody else.
    binding = one(docs, "ClusterRoleBinding", PORTAL)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    others = [
        d
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding") and d["metadata"]["name"] != PORTAL
    ]
    assert all(s["name"] != account for d in others for s in d["subjects"])
    (container,) = one(docs, "Deployment", PORTAL)["spec"]["template"]["spec"]["containers"]
    assert one(docs, "Deployment", PORTAL)["spec"]["template"]["spec"]["serviceAccountName"] == account
    assert container["args"] == ["portal"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"portal": {"enabled": True}}, "portal.publicURL is required"),
        (merged(MINIMAL, {"portal": {"oidc": {"issuerURL": ""}}}), "portal.oidc.issuerURL is required"),
        (merged(MINIMAL, {"portal": {"oidc": {"clientID": ""}}}), "portal.oidc.clientID is required"),
        (
            merged(MINIMAL, {"portal": {"publicURL": "http://127.0.0.1:8090"}}),
            "portal.session.cookieSecure needs an https:// portal.publicURL",
        ),
        (merged(MINIMAL, {"portal": {"replicas": 2}}), "portal.replicas must be 1"),
        (merged(MINIMAL, {"portal": {"publicURL": "https://x.example.com/portal"}}), "publicURL"),
        (merged(MINIMAL, {"portal": {"sessionKey": "inline"}}), "sessionKey"),
    ],
    ids=["no-url", "no-issuer", "no-client", "secure-over-http", "replicas", "url-with-path", "unknown-key"],
)
def test_bad_portal_values_are_refused_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    done = helm_template(values)
    assert done.returncode != 0
    assert message in done.stderr
    # Plain http is fine for local use once Secure cookies are turned off.
    if message.startswith("portal.session.cookieSecure"):
        values = merged(values, {"portal": {"session": {"cookieSecure": False}}})
        assert helm_template(values).returncode == 0
