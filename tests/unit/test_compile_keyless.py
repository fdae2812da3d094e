"""compile_proxy_config for workload identities: ServiceAccounts stay in their namespace, external
subjects keep their claims, one identity binds one key, keyless keys carry no hashes, and LLMPolicy
`keyless` requires keyless keys and restricts issuers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from llmkeys_operator import api, compile
from llmkeys_proxy import config, keys

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
GITHUB = "https://token.actions.githubusercontent.com"
MOCK = api.ProviderCredential.model_validate(
    {"metadata": {"name": "mock", "namespace": "llmkeys"}, "spec": {"provider": "mock"}}
)


def vk(name: str, namespace: str, created: datetime, **spec: Any) -> api.VirtualKey:
    return api.VirtualKey.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created.isoformat()},
            "spec": spec,
        }
    )


def issued(*virtual_keys: api.VirtualKey) -> dict[tuple[str, str], compile.IssuedKey]:
    found = {}
    for virtual_key in virtual_keys:
        secret = keys.generate_secret()
        found[(virtual_key.metadata.namespace or "", virtual_key.metadata.name)] = compile.IssuedKey(
            key_id=keys.generate_key_id(),
            hashes=(config.SecretHash(sha256=keys.hash_secret(secret)),),
            issued_at=NOW,
        )
    return found


def run(
    virtual_keys: list[api.VirtualKey], policies: list[api.LLMPolicy] | None = None
) -> compile.CompileResult:
    return compile.compile_proxy_config(
        virtual_keys, policies or [], [MOCK], {}, issued(*virtual_keys), NOW, gateway_namespace="llmkeys"
    )


def entry(result: compile.CompileResult, name: str) -> config.KeyEntry:
    return next(key for key in result.config.keys if key.name == name)


def test_identities_compile_to_the_contract_and_a_keyless_key_has_no_hashes() -> None:
    app = vk(
        "app",
        "team-a",
        NOW,
        staticKey=False,
        identities=[
            {"serviceAccount": "summarizer"},
            {
                "issuer": GITHUB,
                "subject": "repo:acme/app:ref:refs/heads/main",
                "claims": {"workflow": "ci", "repository": "acme/app"},
            },
        ],
    )
    both = vk("both", "team-a", NOW, identities=[{"serviceAccount": "batch"}])
    result = run([app, both])
    keyless = entry(result, "app")
    assert keyless.hashes == ()
    assert keyless.identities == (
        config.Identity(issuer=config.KUBERNETES_ISSUER, subject="system:serviceaccount:team-a:summarizer"),
        config.Identity(
            issuer=GITHUB,
            subject="repo:acme/app:ref:refs/heads/main",
            claims={"repository": "acme/app", "workflow": "ci"},
        ),
    )
    assert result.keys[("team-a", "app")].reason == "Active"
    assert "keyless" in result.keys[("team-a", "app")].message
    # Without staticKey: false a key works both ways.
    assert len(entry(result, "both").hashes) == 1
    assert entry(result, "both").identities[0].subject == "system:serviceaccount:team-a:batch"


def test_a_service_account_name_never_reaches_another_namespace() -> None:
    # team-b names "app": that is team-b's own account, never team-a's.
    result = run([vk("k", "team-b", NOW, identities=[{"serviceAccount": "app"}])])
    assert [i.subject for i in entry(result, "k").identities] == ["system:serviceaccount:team-b:app"]


def test_one_identity_binds_one_key_the_oldest_keeps_it() -> None:
    identity = {"issuer": GITHUB, "subject": "repo:acme/app:ref:refs/heads/main"}
    old = vk("owner", "team-a", NOW - timedelta(days=3), identities=[identity])
    squatter = vk("aaa-squatter", "team-z", NOW, identities=[identity])
    sibling = vk("sibling", "team-a", NOW - timedelta(days=1), identities=[identity, {"serviceAccount": "x"}])
    result = run([squatter, old, sibling])
    assert entry(result, "owner").identities[0].subject == identity["subject"]
    assert entry(result, "aaa-squatter").identities == ()
    assert (
        "bound to a VirtualKey of another namespace; ignored here"
        in result.keys[("team-z", "aaa-squatter")].message
    )
    assert [i.subject for i in entry(result, "sibling").identities] == ["system:serviceaccount:team-a:x"]
    assert "bound to VirtualKey owner; ignored here" in result.keys[("team-a", "sibling")].message


def test_policy_requires_keyless_keys_and_restricts_issuers() -> None:
    policy = api.LLMPolicy.model_validate(
        {
            "metadata": {"name": "prod"},
            "spec": {"keyless": {"required": True, "allowedIssuers": ["https://gitlab.example.com"]}},
        }
    )
    static = vk("static", "prod", NOW, identities=[{"serviceAccount": "app"}])
    github = vk(
        "github",
        "prod",
        NOW,
        staticKey=False,
        identities=[{"issuer": GITHUB, "subject": "repo:a/b:ref:refs/heads/main"}],
    )
    fine = vk("fine", "prod", NOW, staticKey=False, identities=[{"serviceAccount": "app2"}])
    result = run([static, github, fine], [policy])
    assert result.keys[("prod", "static")].reason == "PolicyViolation"
    assert (
        result.keys[("prod", "static")].message
        == 'staticKey must be false: LLMPolicy "prod" requires keyless keys'
    )
    assert result.keys[("prod", "github")].message == (
        f'identities[0].issuer "{GITHUB}" is not allowed by LLMPolicy "prod"'
    )
    assert entry(result, "github").policy_violation is not None  # the proxy refuses it with 403
    assert result.keys[("prod", "fine")].reason == "Active"
