"""compile_proxy_config: policy merge, limits, owner fields, expiry, credentials, pools, determinism.

Each refusal asserts the message a person reads in `kubectl get vk` / the Ready condition.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from llmkeys_operator import api, compile
from llmkeys_proxy import config, keys

GATEWAY = "llmkeys"
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=10)
SECRETS: dict[tuple[str, str], dict[str, str]] = {
    (GATEWAY, "openai-key"): {"api-key": "sk-real-openai-credential-never-shown"},
    (GATEWAY, "anthropic-key"): {"api-key": "sk-ant-real-credential-never-shown"},
}


def vk(
    name: str, namespace: str = "dev", labels: dict[str, str] | None = None, **spec: Any
) -> api.VirtualKey:
    spec.setdefault("owner", {"team": "payments"})
    return api.VirtualKey.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels or {},
                "creationTimestamp": CREATED.isoformat(),
            },
            "spec": spec,
        }
    )


def policy(name: str, **spec: Any) -> api.LLMPolicy:
    return api.LLMPolicy.model_validate({"metadata": {"name": name}, "spec": spec})


def credential(name: str, provider: str, namespace: str = GATEWAY, **spec: Any) -> api.ProviderCredential:
    spec["provider"] = provider
    return api.ProviderCredential.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    )


OPENAI = credential(
    "openai",
    "openai",
    secretRef={"name": "openai-key"},
    models=[
        {"name": "gpt-5.4-mini"},
        {"name": "gpt-5.4-nano"},
        {"name": "gpt-6-luna"},
        {"name": "gpt-6.2-sol"},
    ],
)
ANTHROPIC = credential(
    "anthropic", "anthropic", secretRef={"name": "anthropic-key"}, models=[{"name": "claude-haiku-4.5"}]
)


def issued_for(*refs: tuple[str, str]) -> dict[tuple[str, str], compile.IssuedKey]:
    out = {}
    for index, ref in enumerate(refs):
        key_id = f"{index:012d}"
        sha = keys.hash_secret(keys.generate_secret())
        out[ref] = compile.IssuedKey(
            key_id=key_id, hashes=(config.SecretHash(sha256=sha),), issued_at=CREATED
        )
    return out


def run(
    virtual_keys: list[api.VirtualKey],
    policies: list[api.LLMPolicy] = (),  # type: ignore[assignment]
    credentials: list[api.ProviderCredential] | None = None,
    secrets: dict[tuple[str, str], dict[str, str]] | None = None,
    issued: dict[tuple[str, str], compile.IssuedKey] | None = None,
    now: datetime = NOW,
    namespace_labels: dict[str, dict[str, str]] | None = None,
) -> compile.CompileResult:
    refs = [(k.metadata.namespace or "default", k.metadata.name) for k in virtual_keys]
    return compile.compile_proxy_config(
        virtual_keys,
        list(policies),
        credentials if credentials is not None else [OPENAI, ANTHROPIC],
        secrets if secrets is not None else SECRETS,
        issued if issued is not None else issued_for(*refs),
        now,
        gateway_namespace=GATEWAY,
        namespace_labels=namespace_labels,
    )


def entry(result: compile.CompileResult, name: str) -> config.KeyEntry:
    (found,) = [k for k in result.config.keys if k.name == name]
    return found


def outcome(result: compile.CompileResult, name: str, namespace: str = "dev") -> compile.KeyOutcome:
    return result.keys[(namespace, name)]


# ---------------------------------------------------------------------------------- the happy path


def test_a_plain_key_is_active_with_every_served_model() -> None:
    result = run([vk("alice")])
    out = outcome(result, "alice")
    assert (out.reason, out.ready, out.message) == ("Active", True, "active")
    assert out.conditions[0] == compile.ConditionContent("Ready", "True", "Active", "active")
    assert out.conditions[1] == compile.ConditionContent(
        "PolicyCompliant", "True", "Compliant", "no LLMPolicy selects this key"
    )
    assert out.effective is not None
    assert out.effective.providers == ["llmkeys/anthropic", "llmkeys/openai"]
    assert out.effective.models == [
        "claude-haiku-4.5",
        "gpt-5.4-mini",
        "gpt-5.4-nano",
        "gpt-6-luna",
        "gpt-6.2-sol",
    ]
    key = entry(result, "alice")
    assert key.model_allowlists == (("*",),)
    assert key.owner == {"team": "payments"}
    assert key.default_output_reservation == compile.DEFAULT_OUTPUT_RESERVATION
    assert key.on_limiter_unavailable == "Reject"


# ------------------------------------------------------------------------------ policy intersection


def test_two_policies_intersect_providers_and_and_their_model_lists() -> None:
    result = run(
        [vk("alice", models=["gpt-*", "claude-*"])],
        [
            policy(
                "platform", allowedProviders=["openai", "anthropic"], allowedModels=["gpt-5.4-*", "claude-*"]
            ),
            policy("finance", allowedProviders=["openai", "gemini"], deniedModels=["*-nano"]),
        ],
    )
    key = entry(result, "alice")
    assert key.providers == ("llmkeys/openai",)
    assert key.model_allowlists == (("claude-*", "gpt-*"), ("claude-*", "gpt-5.4-*"))
    assert key.denied_models == ("*-nano",)
    assert key.model_allowed("gpt-5.4-mini")
    assert not key.model_allowed("gpt-5.4-nano")  # denied by finance
    assert not key.model_allowed("gpt-6-luna")  # not in platform's list
    out = outcome(result, "alice")
    assert out.policies == ["finance", "platform"]
    assert out.effective is not None and out.effective.models == ["gpt-5.4-mini"]
    assert out.reason == "Active"


def test_limits_take_the_minimum_and_defaults_fill_gaps() -> None:
    result = run(
        [vk("alice", limits={"tokensPerDay": 50_000})],
        [
            policy(
                "a",
                defaults={"requestsPerMinute": 60, "maxTokensPerRequest": 4096},
                maximums={"tokensPerDay": 90_000},
            ),
            policy(
                "b",
                defaults={"requestsPerMinute": 20},
                maximums={"requestsPerMinute": 100, "spendPerMonthUSD": "7.5"},
            ),
        ],
    )
    limits = entry(result, "alice").limits
    assert limits.requests_per_minute == 20  # the lowest default
    assert limits.tokens_per_day == 50_000  # the key's own value under the maximum
    assert limits.spend_per_month_micro_usd == 7_500_000  # a maximum applies where nobody says anything
    assert limits.max_tokens_per_request == 4096
    assert limits.tokens_per_minute is None
    effective = outcome(result, "alice").effective
    assert effective is not None and effective.limits.spend_per_month_usd == Decimal("7.5")


def test_a_default_above_another_policys_maximum_is_capped() -> None:
    result = run(
        [vk("alice")],
        [policy("a", defaults={"requestsPerMinute": 500}), policy("b", maximums={"requestsPerMinute": 50})],
    )
    assert entry(result, "alice").limits.requests_per_minute == 50
    assert outcome(result, "alice").reason == "Active"


def test_asking_above_a_maximum_is_a_violation_naming_policy_and_field() -> None:
    result = run(
        [vk("alice", limits={"requestsPerMinute": 500, "spendPerMonthUSD": "250.5"})],
        [policy("dev", maximums={"requestsPerMinute": 100, "spendPerMonthUSD": "100"})],
    )
    out = outcome(result, "alice")
    expected = (
        'limits.requestsPerMinute 500 exceeds maximum 100 of LLMPolicy "dev"; '
        'limits.spendPerMonthUSD 250.5 exceeds maximum 100 of LLMPolicy "dev"'
    )
    assert (out.reason, out.ready, out.message) == ("PolicyViolation", False, expected)
    assert out.conditions[1] == compile.ConditionContent(
        "PolicyCompliant", "False", "PolicyViolation", expected
    )
    # Still emitted, so the proxy answers 403 key_policy_violation rather than 401.
    key = entry(result, "alice")
    assert key.policy_violation == expected
    assert key.limits.requests_per_minute == 100


def test_on_limiter_unavailable_reject_wins() -> None:
    allow = policy("allow", onLimiterUnavailable="Allow")
    result = run([vk("a")], [allow])
    assert entry(result, "a").on_limiter_unavailable == "Allow"
    result = run([vk("a")], [allow, policy("reject", onLimiterUnavailable="Reject")])
    assert entry(result, "a").on_limiter_unavailable == "Reject"
    result = run([vk("a")], [allow, policy("silent")])
    assert entry(result, "a").on_limiter_unavailable == "Allow"


def test_default_output_reservation_is_the_lowest_and_capped_by_max_tokens() -> None:
    result = run(
        [vk("a")], [policy("p", defaultOutputReservation=800), policy("q", defaultOutputReservation=300)]
    )
    assert entry(result, "a").default_output_reservation == 300
    result = run([vk("a", limits={"maxTokensPerRequest": 256})], [policy("p", defaultOutputReservation=800)])
    assert entry(result, "a").default_output_reservation == 256
    result = run([vk("a", limits={"maxTokensPerRequest": 100})])
    assert entry(result, "a").default_output_reservation == 100


# --------------------------------------------------------------------------------------- selectors


def test_namespace_and_key_selectors_decide_which_policies_apply() -> None:
    policies = [
        policy(
            "prod", namespaceSelector={"matchLabels": {"env": "prod"}}, maximums={"requestsPerMinute": 10}
        ),
        policy("by-name", namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "dev"}}),
        policy(
            "batch",
            keySelector={"matchExpressions": [{"key": "tier", "operator": "In", "values": ["batch"]}]},
        ),
        policy(
            "not-batch",
            keySelector={"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["batch"]}]},
        ),
    ]
    result = run(
        [vk("a", "shop"), vk("b", "dev", labels={"tier": "batch"})],
        policies,
        namespace_labels={"shop": {"env": "prod"}, "dev": {"env": "dev"}},
    )
    assert result.keys[("shop", "a")].policies == ["not-batch", "prod"]
    assert result.keys[("dev", "b")].policies == ["batch", "by-name"]
    assert result.policies["prod"].selected_keys == ["shop/a"]
    assert result.policies["batch"].selected_keys == ["dev/b"]


# ---------------------------------------------------------------------------------- owner fields


def test_missing_required_owner_fields_are_named() -> None:
    result = run(
        [vk("alice", owner={"user": "alice@example.com"})],
        [policy("prod", requiredOwnerFields=["team", "costCenter"])],
    )
    out = outcome(result, "alice")
    assert out.reason == "PolicyViolation"
    assert out.message == (
        'owner.team is required by LLMPolicy "prod"; owner.costCenter is required by LLMPolicy "prod"'
    )


# ------------------------------------------------------------------------------------------ expiry


def test_ttl_resolves_from_creation_timestamp() -> None:
    result = run([vk("alice", ttl="30d12h")])
    out = outcome(result, "alice")
    assert out.expires_at == CREATED + timedelta(days=30, hours=12)
    assert out.reason == "Active"
    assert out.message == "active until 2026-07-06T00:00:00Z"
    assert entry(result, "alice").expires_at == out.expires_at


def test_ttl_falls_back_to_issue_time_without_creation_timestamp() -> None:
    key = api.VirtualKey.model_validate(
        {"metadata": {"name": "k", "namespace": "dev"}, "spec": {"ttl": "1d"}}
    )
    issued_at = NOW - timedelta(hours=3)
    issued = {("dev", "k"): compile.IssuedKey("abcdefabcdef", (), issued_at)}
    result = run([key], issued=issued)
    assert outcome(result, "k").expires_at == issued_at + timedelta(days=1)


def test_expiry_in_the_past_is_expired_but_still_emitted() -> None:
    result = run([vk("old", expiresAt="2026-06-01T00:00:00Z"), vk("ttl", ttl="5d")])
    for name, when in (("old", "2026-06-01T00:00:00Z"), ("ttl", "2026-06-10T12:00:00Z")):
        out = outcome(result, name)
        assert (out.reason, out.ready, out.message) == ("Expired", False, f"expired at {when}")
        assert entry(result, name).expires_at is not None  # the proxy answers 403 key_expired


def test_max_ttl_and_require_expiry() -> None:
    policies = [policy("contractors", maxTTL="90d", requireExpiry=True)]
    result = run([vk("long", ttl="120d"), vk("none"), vk("ok", ttl="60d")], policies)
    assert outcome(result, "long").message == 'lifetime 120d exceeds maxTTL 90d of LLMPolicy "contractors"'
    assert (
        outcome(result, "none").message
        == 'an expiry (expiresAt or ttl) is required by LLMPolicy "contractors"'
    )
    assert outcome(result, "ok").reason == "Active"


def test_max_ttl_gives_a_key_without_expiry_one() -> None:
    result = run([vk("a")], [policy("p", maxTTL="30d"), policy("q", maxTTL="2w")])
    assert outcome(result, "a").expires_at == CREATED + timedelta(days=14)
    assert outcome(result, "a").reason == "Active"


# ------------------------------------------------------------------------------------- suspension


def test_suspended_key_is_emitted_with_the_flag() -> None:
    result = run([vk("alice", suspended=True)])
    out = outcome(result, "alice")
    assert (out.reason, out.ready, out.message) == ("Suspended", False, "suspended (spec.suspended is true)")
    assert entry(result, "alice").suspended


def test_pending_key_is_not_emitted() -> None:
    result = run([vk("alice"), vk("bob")], issued=issued_for(("dev", "bob")))
    out = outcome(result, "alice")
    assert (out.reason, out.ready, out.emitted) == ("Pending", False, False)
    assert out.effective is not None and out.effective.models  # status still shows what it will get
    assert [k.name for k in result.config.keys] == ["bob"]


# --------------------------------------------------------------------------------- empty allowlists


def test_model_allowlist_that_becomes_empty() -> None:
    result = run(
        [vk("alice", models=["claude-*"])],
        [policy("openai-only", allowedModels=["gpt-*"])],
    )
    out = outcome(result, "alice")
    assert out.reason == "NoUsableModels"
    assert out.message == (
        "no model is both allowed and served: the key asks for [claude-*]; "
        'LLMPolicy "openai-only" allows [gpt-*]; '
        "credentials serve [claude-haiku-4.5, gpt-5.4-mini, gpt-5.4-nano, gpt-6-luna, gpt-6.2-sol]"
    )
    assert out.effective is not None and out.effective.models == []
    assert not entry(result, "alice").model_allowed("claude-haiku-4.5")


def test_provider_allowlist_that_becomes_empty() -> None:
    result = run([vk("alice", providers=["anthropic"])], [policy("prod", allowedProviders=["openai"])])
    out = outcome(result, "alice")
    assert out.reason == "NoUsableModels"
    assert (
        out.message
        == 'no provider is allowed: the key asks for [anthropic]; LLMPolicy "prod" allows [openai]'
    )
    assert entry(result, "alice").providers == ()


def test_no_credential_for_the_allowed_providers() -> None:
    result = run([vk("alice", providers=["gemini"])])
    assert (
        outcome(result, "alice").message
        == "no usable ProviderCredential in namespace 'llmkeys' serves [gemini]"
    )


def test_unserved_wishes_are_mentioned_on_an_active_key() -> None:
    result = run([vk("alice", providers=["openai", "gemini"], models=["gpt-5.4-mini", "gpt-7-typo"])])
    out = outcome(result, "alice")
    assert out.reason == "Active"
    assert out.message == "active; not served by any usable credential: gemini, gpt-7-typo"


def test_glob_allowlists_show_the_narrower_glob() -> None:
    cred = credential("openai", "openai", secretRef={"name": "openai-key"}, models=[{"name": "gpt-*"}])
    result = run([vk("a", models=["gpt-5*"])], [policy("p", allowedModels=["gpt-*"])], credentials=[cred])
    effective = outcome(result, "a").effective
    assert effective is not None and effective.models == ["gpt-5*"]
    assert entry(result, "a").model_allowed("gpt-5.4-mini") and not entry(result, "a").model_allowed("gpt-6")


# ------------------------------------------------------------------------------------- credentials


def test_credential_whose_secret_is_missing_is_not_emitted() -> None:
    result = run(
        [vk("alice", providers=["anthropic"])],
        secrets={(GATEWAY, "openai-key"): SECRETS[(GATEWAY, "openai-key")]},
    )
    cred = result.credentials[(GATEWAY, "anthropic")]
    assert (cred.ready, cred.reason) == (False, "SecretMissing")
    assert cred.message == (
        'Secret "anthropic-key" not found in namespace "llmkeys" '
        "(in a cluster the operator sees only Secrets labelled llmkeys.io/secret: credential)"
    )
    assert [p.id for p in result.config.providers] == ["llmkeys/openai"]
    assert (
        outcome(result, "alice").message
        == "no usable ProviderCredential in namespace 'llmkeys' serves [anthropic]"
    )


def test_credential_whose_secret_key_is_missing() -> None:
    secrets = {**SECRETS, (GATEWAY, "anthropic-key"): {"token": "sk-ant-real-credential-never-shown"}}
    result = run([vk("a")], secrets=secrets)
    cred = result.credentials[(GATEWAY, "anthropic")]
    assert (cred.ready, cred.reason) == (False, "SecretKeyMissing")
    assert cred.message == 'Secret "anthropic-key" has no (non-empty) key "api-key"'


def test_credential_outside_the_gateway_namespace_is_ignored() -> None:
    rogue = credential(
        "mine", "openai", namespace="dev", secretRef={"name": "k"}, models=[{"name": "gpt-6-luna"}]
    )
    result = run([vk("a")], credentials=[rogue], secrets={("dev", "k"): {"api-key": "x"}})
    cred = result.credentials[("dev", "mine")]
    assert (cred.ready, cred.reason) == (False, "NotInGatewayNamespace")
    assert cred.message == 'ProviderCredentials are honoured only in the gateway namespace "llmkeys"'
    assert result.config.providers == ()


def test_secret_material_never_appears_in_outcomes() -> None:
    secrets = {**SECRETS, (GATEWAY, "anthropic-key"): {"wrong": "sk-ant-real-credential-never-shown"}}
    result = run(
        [vk("a", limits={"requestsPerMinute": 9})],
        [policy("p", maximums={"requestsPerMinute": 1})],
        secrets=secrets,
    )
    text = repr(result.keys) + repr(result.credentials) + repr(result.policies) + repr(result.config)
    assert "never-shown" not in text
    # ...but the real credential does reach the proxy's config.
    (openai,) = result.config.providers
    assert openai.api_key == "sk-real-openai-credential-never-shown"


def test_provider_blocks_and_pricing_are_compiled_exactly() -> None:
    azure = credential(
        "azure",
        "azure-openai",
        baseURL="https://example.openai.azure.com",
        secretRef={"name": "az", "key": "token"},
        azure={"apiVersion": "2025-04-01-preview", "deployments": {"gpt-6.1-terra": "terra-prod"}},
        models=[{"name": "gpt-6.1-terra"}],
        pricing={"gpt-6.1-terra": {"input": "0.9", "cachedInput": "0.045", "output": "4.500001"}},
        limits={"requestsPerMinute": 1000, "spendPerMonthUSD": "12000"},
    )
    bedrock = credential("bedrock", "bedrock", secretRef={"name": "aws"}, bedrock={"region": "eu-west-1"})
    vertex = credential(
        "vertex", "vertex-ai", secretRef={"name": "sa", "key": "sa.json"}, vertex={"project": "p"}
    )
    mock = credential("mock", "mock", mock={"latencyMs": 25})
    secrets = {
        (GATEWAY, "az"): {"token": "az-secret"},
        (GATEWAY, "aws"): {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "aws_secret_access_key": "wJalrEXAMPLE"},
        (GATEWAY, "sa"): {"sa.json": "{}"},
    }
    result = run([vk("a")], credentials=[azure, bedrock, vertex, mock], secrets=secrets)
    assert all(c.ready for c in result.credentials.values()), result.credentials
    by_id = {p.id: p for p in result.config.providers}
    az = by_id["llmkeys/azure"]
    assert (az.api_key, az.api_version, az.deployments) == (
        "az-secret",
        "2025-04-01-preview",
        {"gpt-6.1-terra": "terra-prod"},
    )
    assert az.pricing["gpt-6.1-terra"] == config.ModelPrice(
        input=900_000, cached_input=45_000, output=4_500_001
    )
    assert az.limits == config.Limits(requests_per_minute=1000, spend_per_month_micro_usd=12_000_000_000)
    br = by_id["llmkeys/bedrock"]
    assert br.api_key is None and br.region == "eu-west-1"
    assert br.secret_fields == {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "wJalrEXAMPLE"}
    assert (by_id["llmkeys/vertex"].project, by_id["llmkeys/vertex"].location) == ("p", "global")
    assert by_id["llmkeys/mock"].mock_latency_ms == 25
    assert [r.name for r in by_id["llmkeys/bedrock"].models] == ["*"]  # no list: serves any model name
    assert result.credentials[(GATEWAY, "bedrock")].models == ["*"]


# ------------------------------------------------------------------------------------------- pools


def test_budgets_form_one_pool_per_owner_value() -> None:
    budgets = [
        {"name": "team-monthly", "groupBy": "team", "spendPerMonthUSD": "500", "tokensPerMonth": 10**9}
    ]
    dev = policy("dev", budgets=budgets)
    result = run(
        [
            vk("a", owner={"team": "payments"}),
            vk("b", owner={"team": "payments"}),
            vk("c", owner={"team": "search"}),
            vk("d", owner={"user": "solo@example.com"}),
        ],
        [dev],
    )
    assert [p.id for p in result.config.pools] == ["dev/team-monthly/payments", "dev/team-monthly/search"]
    pool = result.config.pools[0]
    assert (pool.group_by, pool.group_value, pool.spend_per_month_micro_usd) == (
        "team",
        "payments",
        500_000_000,
    )
    assert entry(result, "a").pools == entry(result, "b").pools == ("dev/team-monthly/payments",)
    assert entry(result, "d").pools == ()
    d = outcome(result, "d")
    assert d.reason == "Active"
    assert d.conditions[1].message == (
        'compliant with LLMPolicy dev; not in budget "team-monthly" of LLMPolicy "dev": owner.team is not set'
    )
    assert result.policies["dev"].pools == ["dev/team-monthly/payments", "dev/team-monthly/search"]


def test_budget_group_field_required_makes_a_violation_instead() -> None:
    p = policy("dev", requiredOwnerFields=["team"], budgets=[{"name": "t", "tokensPerMonth": 5}])
    result = run([vk("d", owner={"user": "solo@example.com"})], [p])
    assert outcome(result, "d").message == 'owner.team is required by LLMPolicy "dev"'
    assert result.config.pools == ()


def test_usage_seeds_come_from_status() -> None:
    key = vk("a")
    key.status = api.VirtualKeyStatus.model_validate(
        {
            "usage": {
                "month": {
                    "periodStart": "2026-06-01T00:00:00Z",
                    "requests": 7,
                    "inputTokens": 100,
                    "outputTokens": 20,
                    "spendUSD": "1.25",
                },
                "day": {
                    "periodStart": "2026-06-15T00:00:00Z",
                    "requests": 2,
                    "inputTokens": 10,
                    "outputTokens": 5,
                    "spendUSD": "0.000125",
                },
            }
        }
    )
    p = api.LLMPolicy.model_validate(
        {
            "metadata": {"name": "dev"},
            "spec": {"budgets": [{"name": "t", "spendPerMonthUSD": "100"}]},
            "status": {
                "pools": [
                    {
                        "budget": "t",
                        "group": "payments",
                        "periodStart": "2026-06-01T00:00:00Z",
                        "spendUSD": "3.5",
                        "tokens": 42,
                    }
                ]
            },
        }
    )
    result = run([key], [p])
    key_entry = entry(result, "a")
    assert key_entry.month_usage_seed == config.UsageSeed(
        period="2026-06", requests=7, tokens=120, micro_usd=1_250_000
    )
    assert key_entry.day_usage_seed == config.UsageSeed(
        period="2026-06-15", requests=2, tokens=15, micro_usd=125
    )
    (pool,) = result.config.pools
    assert pool.month_usage_seed == config.UsageSeed(period="2026-06", tokens=42, micro_usd=3_500_000)


# ------------------------------------------------------------------------------------ determinism


def test_output_does_not_depend_on_input_order() -> None:
    virtual_keys = [vk(f"k{i}", namespace=f"ns{i % 3}", models=["gpt-*"]) for i in range(12)]
    policies = [
        policy("a", allowedModels=["gpt-5*", "gpt-6*"]),
        policy("b", deniedModels=["*-nano", "*-sol"]),
    ]
    issued = issued_for(*[(k.metadata.namespace or "", k.metadata.name) for k in virtual_keys])
    first = run(virtual_keys, policies, issued=issued)
    shuffled = random.Random(7)
    keys_copy, policies_copy, creds = list(virtual_keys), list(policies), [ANTHROPIC, OPENAI]
    shuffled.shuffle(keys_copy)
    shuffled.shuffle(policies_copy)
    second = run(keys_copy, policies_copy, credentials=creds, issued=issued)
    assert first.config.model_dump_json() == second.config.model_dump_json()
    names = [(k.namespace, k.name) for k in first.config.keys]
    assert names == sorted(names)
    assert json.loads(first.config.model_dump_json())["keys"][0]["denied_models"] == ["*-nano", "*-sol"]


def test_money_conversions_are_exact() -> None:
    assert compile.usd_to_micro(Decimal("0.000001")) == 1
    assert compile.usd_to_micro(Decimal("12345678.123456")) == 12_345_678_123_456
    assert str(compile.micro_to_usd(10_000_000)) == "10"
    assert str(compile.micro_to_usd(1)) == "0.000001"
    assert str(compile.micro_to_usd(1_250_000)) == "1.25"
    assert str(compile.micro_to_usd(0)) == "0"


@pytest.mark.parametrize("bad", ["", "5", "1x", "d", "1d-2h"])
def test_durations_refuse_what_the_crd_pattern_refuses(bad: str) -> None:
    from llmkeys_operator import durations

    with pytest.raises(ValueError, match="invalid duration"):
        durations.parse_duration(bad)


def test_durations_round_trip() -> None:
    from llmkeys_operator import durations

    assert durations.parse_duration("1w2d3h4m5s") == timedelta(days=9, hours=3, minutes=4, seconds=5)
    assert durations.format_duration(timedelta(days=90)) == "90d"
    assert durations.format_duration(timedelta(hours=36)) == "1d12h"
    assert durations.format_duration(timedelta(0)) == "0s"
