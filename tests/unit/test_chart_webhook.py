"""The chart's admission webhook: both TLS modes rendered by Helm's own SDK and checked.

Self-managed: the generated CA signs a serving certificate for the webhook Service's DNS names,
and the same CA is the caBundle of both configurations. cert-manager: a Certificate for those
names, and cainjector's annotation on both configurations instead of a caBundle. In both, only
VirtualKeys are intercepted, failurePolicy defaults to Fail, and the Service reaches every
operator replica on the port the operator serves.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from tests.unit.test_chart import CHART_DIR, KUBE_VERSIONS, NAMESPACE, find, render

from llmkeys_operator import webhooks

SERVICE = "llmkeys-webhook"
DNS_NAMES = {
    SERVICE,
    f"{SERVICE}.{NAMESPACE}",
    f"{SERVICE}.{NAMESPACE}.svc",
    f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
}
CONFIG_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def configs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {kind: find(docs, kind) for kind in CONFIG_KINDS}
    assert all(len(items) == 1 for items in found.values()), found
    return {kind: items[0]["webhooks"] for kind, items in found.items()} | {
        f"{kind}/meta": items[0]["metadata"] for kind, items in found.items()
    }


def check_common(docs: list[dict[str, Any]]) -> None:
    """What both TLS modes share: VirtualKeys only, Fail, the Service and the operator's port."""
    rendered = configs(docs)
    paths = {
        "MutatingWebhookConfiguration": webhooks.MUTATE_PATH,
        "ValidatingWebhookConfiguration": webhooks.VALIDATE_PATH,
    }
    for kind in CONFIG_KINDS:
        (hook,) = rendered[kind]
        assert hook["rules"] == [
            {
                "apiGroups": ["llmkeys.io"],
                "apiVersions": ["v1alpha1"],
                "resources": ["virtualkeys"],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ]
        assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        service = hook["clientConfig"]["service"]
        assert service == {"name": SERVICE, "namespace": NAMESPACE, "path": paths[kind], "port": 443}
    (svc,) = find(docs, "Service", SERVICE)
    (deployment,) = find(docs, "Deployment", "llmkeys-operator")
    pod = deployment["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMKEYS_WEBHOOK_PORT"] == str(ports["webhook"]) == "9443"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")
    assert env["LLMKEYS_WEBHOOK_CERT_DIR"] == mount["mountPath"] and mount["readOnly"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == "llmkeys-webhook-tls"
    for doc in docs:
        if doc["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/")):
            continue  # custom kinds: no upstream schema
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def _verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    key = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(
            cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
        )
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_self_managed_ca_signs_the_serving_certificate_and_is_the_ca_bundle(chart: helm.Chart) -> None:
    docs = render(chart)  # the default mode
    check_common(docs)
    (secret,) = find(docs, "Secret", "llmkeys-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert base64.b64decode(secret["data"]["tls.key"]).startswith(b"-----BEGIN")
    _verify_signed_by(cert, ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = set(
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    )
    assert sans >= DNS_NAMES
    rendered = configs(docs)
    for kind in CONFIG_KINDS:
        assert base64.b64decode(rendered[kind][0]["clientConfig"]["caBundle"]) == ca_pem
        assert "annotations" not in rendered[f"{kind}/meta"]
    assert not find(docs, "Certificate") and not find(docs, "Issuer")


def test_cert_manager_mode_issues_a_certificate_and_injects_its_ca(chart: helm.Chart) -> None:
    docs = render(chart, {"webhook": {"tls": {"mode": "certManager"}}})
    check_common(docs)
    (certificate,) = find(docs, "Certificate", "llmkeys-webhook")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == "llmkeys-webhook-tls"
    assert set(certificate["spec"]["dnsNames"]) == DNS_NAMES
    assert certificate["spec"]["issuerRef"] == {
        "name": "llmkeys-webhook",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    (issuer,) = find(docs, "Issuer", "llmkeys-webhook")
    assert issuer["spec"] == {"selfSigned": {}}
    rendered = configs(docs)
    for kind in CONFIG_KINDS:
        assert rendered[f"{kind}/meta"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NAMESPACE}/llmkeys-webhook"
        }
        assert "caBundle" not in rendered[kind][0]["clientConfig"]
    assert not find(docs, "Secret", "llmkeys-webhook-tls")  # cert-manager writes it

    own_issuer = {
        "mode": "certManager",
        "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
    }
    docs = render(chart, {"webhook": {"tls": own_issuer}})
    (certificate,) = find(docs, "Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert not find(docs, "Issuer")


def test_failure_policy_namespaces_and_switch(chart: helm.Chart) -> None:
    docs = render(
        chart, {"webhook": {"failurePolicy": "Ignore"}, "operator": {"watchNamespaces": ["team-a"]}}
    )
    for kind in CONFIG_KINDS:
        (hook,) = find(docs, kind)[0]["webhooks"]
        assert hook["failurePolicy"] == "Ignore"
        assert hook["namespaceSelector"] == {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}
            ]
        }
    with pytest.raises(helm.HelmValuesError, match="failurePolicy"):
        chart.validate_schema({"webhook": {"failurePolicy": "Sometimes"}})
    off = render(chart, {"webhook": {"enabled": False}})
    assert not any(find(off, kind) for kind in CONFIG_KINDS) and not find(off, "Service", SERVICE)
    (deployment,) = find(off, "Deployment", "llmkeys-operator")
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "LLMKEYS_WEBHOOK_PORT" not in env
    policies = render(chart, {"networkPolicy": {"enabled": True}})
    (operator_policy,) = find(policies, "NetworkPolicy", "llmkeys-operator")
    assert {"port": 9443, "protocol": "TCP"} in operator_policy["spec"]["ingress"][0]["ports"]
