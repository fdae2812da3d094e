"""examples/: every manifest passes the CRDs (schema + CEL), parses, and the sets compile cleanly."""

from __future__ import annotations

import pathlib
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from tests import crd_validation

from llmkeys_operator import api, compile
from llmkeys_proxy import config, keys

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
GATEWAY = "llmkeys"
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
SCHEMAS = crd_validation.load_schemas()


def _documents(directory: pathlib.Path, recursive: bool = True) -> list[tuple[pathlib.Path, dict[str, Any]]]:
    paths = directory.rglob("*.yaml") if recursive else directory.glob("*.yaml")
    docs = []
    for path in sorted(paths):
        if path.name == "kustomization.yaml" or (recursive and "standalone" in path.parts):
            continue
        docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


GITOPS = _documents(EXAMPLES)
STANDALONE = _documents(EXAMPLES / "standalone", recursive=False)


def _ids(docs: list[tuple[pathlib.Path, dict[str, Any]]]) -> list[str]:
    return [f"{path.relative_to(EXAMPLES)}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in docs]


def test_kustomization_lists_every_gitops_manifest() -> None:
    kustomization = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    on_disk = sorted({str(path.relative_to(EXAMPLES)) for path, _ in GITOPS})
    assert listed == on_disk


@pytest.mark.parametrize("doc", [d for _, d in GITOPS + STANDALONE], ids=_ids(GITOPS + STANDALONE))
def test_manifest_passes_the_crds(doc: dict[str, Any]) -> None:
    if doc["apiVersion"] != api.API_VERSION:
        return  # Namespaces, Secrets, the Deployment: validated by Kubernetes' own schemas elsewhere
    assert crd_validation.apply_error(doc, SCHEMAS) is None


def test_every_kind_and_persona_is_covered() -> None:
    providers = {d["spec"]["provider"] for _, d in GITOPS if d["kind"] == "ProviderCredential"}
    assert providers >= {"openai", "azure-openai", "anthropic", "gemini", "vertex-ai", "bedrock", "mock"}
    assert {d["metadata"]["name"] for _, d in GITOPS if d["kind"] == "LLMPolicy"} == {
        "dev",
        "prod",
        "contractors",
    }
    owners = [d["spec"]["owner"] for _, d in GITOPS if d["kind"] == "VirtualKey"]
    assert any("user" in o for o in owners) and any("service" in o for o in owners)
    assert any("agent" in o for o in owners) and any("app" in o for o in owners)


def _load(docs: list[tuple[pathlib.Path, dict[str, Any]]]) -> dict[str, Any]:
    loaded: dict[str, Any] = {"keys": [], "policies": [], "credentials": [], "secrets": {}, "namespaces": {}}
    for _, doc in docs:
        doc = crd_validation.as_json(doc)
        kind = doc["kind"]
        if kind == "VirtualKey":
            loaded["keys"].append(api.VirtualKey.model_validate(doc))
        elif kind == "LLMPolicy":
            loaded["policies"].append(api.LLMPolicy.model_validate(doc))
        elif kind == "ProviderCredential":
            loaded["credentials"].append(api.ProviderCredential.model_validate(doc))
        elif kind == "Secret":
            meta = doc["metadata"]
            loaded["secrets"][(meta["namespace"], meta["name"])] = doc.get("stringData", {})
        elif kind == "Namespace":
            loaded["namespaces"][doc["metadata"]["name"]] = doc["metadata"].get("labels", {})
    return loaded


def _issued(virtual_keys: list[api.VirtualKey]) -> dict[tuple[str, str], compile.IssuedKey]:
    issued = {}
    for vk in virtual_keys:
        parsed = keys.parse_key(keys.generate_key())
        assert parsed is not None
        ref = (vk.metadata.namespace or compile.DEFAULT_NAMESPACE, vk.metadata.name)
        issued[ref] = compile.IssuedKey(
            key_id=parsed.key_id,
            hashes=(config.SecretHash(sha256=keys.hash_secret(parsed.secret)),),
            issued_at=NOW,
        )
    return issued


def _compile(loaded: dict[str, Any]) -> compile.CompileResult:
    return compile.compile_proxy_config(
        loaded["keys"],
        loaded["policies"],
        loaded["credentials"],
        loaded["secrets"],
        _issued(loaded["keys"]),
        NOW,
        gateway_namespace=GATEWAY,
        namespace_labels=loaded["namespaces"],
    )


def test_gitops_set_compiles_without_errors() -> None:
    loaded = _load(GITOPS)
    result = _compile(loaded)
    problems = {ref: o.message for ref, o in result.keys.items() if o.reason != "Active"}
    assert problems == {}
    assert all(o.ready for o in result.credentials.values()), result.credentials
    assert len(result.config.keys) == len(loaded["keys"]) == 8
    assert len(result.config.providers) == 7
    # Each key is governed by exactly the policy of its namespace.
    policies = {ref: o.policies for ref, o in result.keys.items()}
    assert policies == {
        ("ci", "nightly-evals"): ["dev"],
        ("ci", "github-evals"): ["dev"],
        ("team-payments", "summarizer"): ["dev"],
        ("contractors", "bob-contractor"): ["contractors"],
        ("research", "research-agent"): ["prod"],
        ("support", "support-bot"): ["prod"],
        ("team-payments", "alice"): ["dev"],
        ("team-payments", "payments-shared"): ["dev"],
    }
    assert {pool.id for pool in result.config.pools} == {
        "dev/team-monthly/payments",
        "dev/team-monthly/platform",
        "prod/cost-center-monthly/CC-2001",
        "prod/cost-center-monthly/CC-4100",
    }
    contractor = result.keys[("contractors", "bob-contractor")]
    assert contractor.expires_at is not None and (contractor.expires_at - NOW).days == 60


def test_every_credential_secret_is_in_the_examples() -> None:
    loaded = _load(GITOPS)
    for credential in loaded["credentials"]:
        ref = credential.spec.secret_ref
        if ref is not None:
            assert (credential.metadata.namespace, ref.name) in loaded["secrets"], credential.metadata.name
    # Labelled as the operator's Secret watch requires (it selects on the label server-side).
    labelled = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for _, d in GITOPS
        if d["kind"] == "Secret" and d["metadata"].get("labels", {}).get("llmkeys.io/secret") == "credential"
    }
    assert set(loaded["secrets"]) <= labelled


def test_workload_mounts_an_example_key_secret() -> None:
    (deployment,) = [
        d for _, d in GITOPS if d["kind"] == "Deployment" and d["metadata"]["name"] != "summarizer"
    ]
    namespace = deployment["metadata"]["namespace"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    secret_names = [source["secretRef"]["name"] for source in container["envFrom"]]
    key_secrets = {
        d["spec"].get("secretName") or f"{d['metadata']['name']}-llm-key"
        for _, d in GITOPS
        if d["kind"] == "VirtualKey" and d["metadata"]["namespace"] == namespace
    }
    assert secret_names and set(secret_names) <= key_secrets


def test_keyless_workload_projects_a_token_its_key_binds() -> None:
    loaded = _load(GITOPS)
    result = _compile(loaded)
    (deployment,) = [
        d for _, d in GITOPS if d["kind"] == "Deployment" and d["metadata"]["name"] == "summarizer"
    ]
    namespace = deployment["metadata"]["namespace"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = pod["volumes"]
    (projected,) = volume["projected"]["sources"]
    assert projected["serviceAccountToken"]["audience"] == "llmkeys"
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    token_path = f"{mount['mountPath']}/{projected['serviceAccountToken']['path']}"
    assert f"$(cat {token_path})" in container["args"][0]  # read for every request
    (key,) = [k for k in result.config.keys if k.namespace == namespace and k.name == "summarizer"]
    assert key.hashes == ()  # keyless
    assert key.identities == (
        config.Identity(
            issuer=config.KUBERNETES_ISSUER,
            subject=f"system:serviceaccount:{namespace}:{pod['serviceAccountName']}",
        ),
    )
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["summarizer-llm-key"]
    (github,) = [k for k in result.config.keys if k.name == "github-evals"]
    assert github.hashes == () and github.identities[0].subject == "repo:acme/evals:ref:refs/heads/main"
    workflow = yaml.safe_load((EXAMPLES / "ci" / "github-actions-workflow.yml").read_text())
    assert workflow["permissions"]["id-token"] == "write"
    assert "audience=llmkeys" in workflow["jobs"]["evals"]["steps"][1]["run"]
    assert workflow["name"] == github.identities[0].claims["workflow"]


def test_standalone_set_compiles_with_only_the_intended_failures() -> None:
    loaded = _load(STANDALONE)
    result = _compile(loaded)
    reasons = {name: o.reason for (_, name), o in result.keys.items()}
    assert reasons == {
        "developer": "Active",
        "ci-job": "Active",
        "suspended": "Suspended",
        "expired": "Expired",
    }
    assert all(o.conditions[1].status == "True" for o in result.keys.values()), "no policy violations"
    by_name = {key.name: key for key in result.config.keys}
    assert by_name["ci-job"].limits.requests_per_minute == 5
    assert by_name["suspended"].suspended
    (provider,) = result.config.providers
    assert provider.provider == "mock" and provider.id == f"{GATEWAY}/mock"
    assert result.credentials[(GATEWAY, "mock")].ready  # no namespace: taken as the gateway's
    assert {route.name for route in provider.models} == {
        "gpt-5.4-mini",
        "gpt-6-luna",
        "text-embedding-3-small",
    }
    assert by_name["developer"].model_allowed("gpt-5.4-mini")
    assert not by_name["ci-job"].model_allowed("gpt-5.4-mini")
