"""Bad manifests are refused by the generated CRDs (schema and CEL) with the message kubectl shows,
and the Python models refuse the same manifests with the same CEL message (standalone mode)."""

from __future__ import annotations

import copy
from typing import Any

import cel
import pydantic
import pytest
from tests import crd_validation

from llmkeys_operator import api

SCHEMAS = crd_validation.load_schemas()

KEY: dict[str, Any] = {
    "apiVersion": "llmkeys.io/v1alpha1",
    "kind": "VirtualKey",
    "metadata": {"name": "alice", "namespace": "dev"},
    "spec": {"owner": {"team": "payments"}, "limits": {"requestsPerMinute": 60, "spendPerMonthUSD": "12.5"}},
}
CREDENTIAL: dict[str, Any] = {
    "apiVersion": "llmkeys.io/v1alpha1",
    "kind": "ProviderCredential",
    "metadata": {"name": "openai", "namespace": "llmkeys"},
    "spec": {"provider": "openai", "secretRef": {"name": "openai-api-key"}},
}
POLICY: dict[str, Any] = {
    "apiVersion": "llmkeys.io/v1alpha1",
    "kind": "LLMPolicy",
    "metadata": {"name": "dev"},
    "spec": {"defaults": {"requestsPerMinute": 10}, "maximums": {"requestsPerMinute": 100}},
}
MODELS: dict[str, type[pydantic.BaseModel]] = {
    "VirtualKey": api.VirtualKey,
    "ProviderCredential": api.ProviderCredential,
    "LLMPolicy": api.LLMPolicy,
}


def _with(base: dict[str, Any], **spec: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(base)
    for key, value in spec.items():
        if value is None:
            manifest["spec"].pop(key, None)
        else:
            manifest["spec"][key] = value
    return manifest


@pytest.mark.parametrize("manifest", [KEY, CREDENTIAL, POLICY], ids=lambda m: m["kind"])
def test_good_manifests_are_accepted(manifest: dict[str, Any]) -> None:
    assert crd_validation.apply_error(manifest, SCHEMAS) is None
    MODELS[manifest["kind"]].model_validate(manifest)


def test_typo_field_is_an_unknown_field_under_strict_validation() -> None:
    manifest = _with(KEY, limts={"requestsPerMinute": 5})
    assert crd_validation.apply_error(manifest, SCHEMAS) == (
        'VirtualKey in version "v1alpha1" cannot be handled as a VirtualKey: '
        'strict decoding error: unknown field "spec.limts"'
    )
    with pytest.raises(pydantic.ValidationError, match="limts"):
        api.VirtualKey.model_validate(manifest)


def test_nested_typo_is_reported_with_its_path() -> None:
    manifest = _with(KEY, owner={"team": "payments", "costcenter": "CC-1"})
    assert 'unknown field "spec.owner.costcenter"' in (crd_validation.apply_error(manifest, SCHEMAS) or "")


def test_negative_limit_is_refused() -> None:
    manifest = _with(KEY, limits={"requestsPerMinute": -5})
    assert crd_validation.apply_error(manifest, SCHEMAS) == (
        'The VirtualKey "alice" is invalid: spec.limits.requestsPerMinute: Invalid value: -5: '
        "spec.limits.requestsPerMinute in body should be greater than or equal to 0"
    )
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 0"):
        api.VirtualKey.model_validate(manifest)


# (manifest, path, CEL message): a v1.35+ apiserver says `<path>: Invalid value: <message>` for a
# rule on an object (older ones put the type in between: `Invalid value: "object": <message>`).
CEL_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "ttl-and-expiresAt",
        _with(KEY, ttl="30d", expiresAt="2030-01-01T00:00:00Z"),
        "spec",
        "expiresAt and ttl are mutually exclusive: set one",
    ),
    (
        "default-above-maximum",
        _with(POLICY, defaults={"requestsPerMinute": 500}),
        "spec",
        "defaults.requestsPerMinute must not exceed maximums.requestsPerMinute",
    ),
    (
        # "20" > "100" as strings but not as amounts: the rule compares numbers.
        "spend-default-above-maximum",
        _with(POLICY, defaults={"spendPerMonthUSD": "150"}, maximums={"spendPerMonthUSD": "100"}),
        "spec",
        "defaults.spendPerMonthUSD must not exceed maximums.spendPerMonthUSD",
    ),
    (
        "openai-without-secretRef",
        _with(CREDENTIAL, secretRef=None),
        "spec",
        "secretRef is required unless provider is mock",
    ),
    (
        "azure-block-on-openai",
        _with(CREDENTIAL, azure={"apiVersion": "2025-04-01-preview"}),
        "spec",
        "azure is only valid for provider azure-openai",
    ),
    (
        "vertex-without-project",
        _with(CREDENTIAL, provider="vertex-ai"),
        "spec",
        "vertex (project, location) is required for provider vertex-ai",
    ),
    (
        "azure-without-baseURL",
        _with(CREDENTIAL, provider="azure-openai"),
        "spec",
        "baseURL is required for providers azure-openai and openai-compatible",
    ),
    (
        "budget-without-cap",
        _with(POLICY, budgets=[{"name": "team", "groupBy": "team"}]),
        "spec.budgets[0]",
        "a budget needs spendPerMonthUSD or tokensPerMonth",
    ),
    (
        "duplicate-budgets",
        _with(
            POLICY,
            budgets=[{"name": "team", "tokensPerMonth": 10}, {"name": "team", "spendPerMonthUSD": "5"}],
        ),
        "spec",
        "budget names must be unique",
    ),
    (
        "keyless-without-identities",
        _with(KEY, staticKey=False),
        "spec",
        "staticKey: false needs at least one entry in identities",
    ),
    (
        "identity-issuer-without-subject",
        _with(KEY, identities=[{"issuer": "https://token.actions.githubusercontent.com"}]),
        "spec.identities[0]",
        "set either serviceAccount, or issuer and subject",
    ),
    (
        "identity-serviceAccount-with-claims",
        _with(KEY, identities=[{"serviceAccount": "app", "claims": {"ref": "main"}}]),
        "spec.identities[0]",
        "serviceAccount takes no issuer, subject or claims",
    ),
    (
        "selector-In-without-values",
        _with(POLICY, keySelector={"matchExpressions": [{"key": "tier", "operator": "In"}]}),
        "spec.keySelector.matchExpressions[0]",
        "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "path", "message"), [c[1:] for c in CEL_CASES], ids=[c[0] for c in CEL_CASES]
)
def test_cel_rules_refuse_with_their_message(manifest: dict[str, Any], path: str, message: str) -> None:
    name = manifest["metadata"]["name"]
    assert crd_validation.apply_error(manifest, SCHEMAS) == (
        f'The {manifest["kind"]} "{name}" is invalid: {path}: Invalid value: {message}'
    )
    # The Python models hold the same rule with the same words (standalone mode never meets CEL).
    with pytest.raises(pydantic.ValidationError) as raised:
        MODELS[manifest["kind"]].model_validate(manifest)
    assert message in str(raised.value)


def test_virtualkey_name_must_fit_a_label_value() -> None:
    manifest = copy.deepcopy(KEY)
    manifest["metadata"]["name"] = "k" * 64
    message = "VirtualKey names are at most 63 characters: the name labels the key Secret"
    assert crd_validation.apply_error(manifest, SCHEMAS) == (
        f'The VirtualKey "{"k" * 64}" is invalid: <nil>: Invalid value: {message}'
    )
    with pytest.raises(pydantic.ValidationError, match=message):
        api.VirtualKey.model_validate(manifest)


def test_mock_needs_no_secret() -> None:
    manifest = _with(CREDENTIAL, provider="mock", secretRef=None)
    assert crd_validation.apply_error(manifest, SCHEMAS) is None
    api.ProviderCredential.model_validate(manifest)


def test_provider_typo_is_an_unsupported_value() -> None:
    error = crd_validation.apply_error(_with(CREDENTIAL, provider="openia"), SCHEMAS)
    assert error is not None
    assert error.startswith(
        'The ProviderCredential "openai" is invalid: spec.provider: Unsupported value: "openia": '
        'supported values: "openai", "azure-openai", "anthropic"'
    )


def test_money_must_be_a_decimal_string() -> None:
    # Documented: write money quoted ("12.5"); a bare YAML number is refused by the apiserver.
    error = crd_validation.apply_error(_with(KEY, limits={"spendPerMonthUSD": 12.5}), SCHEMAS)
    assert error == (
        'The VirtualKey "alice" is invalid: spec.limits.spendPerMonthUSD: Invalid value: "number": '
        'spec.limits.spendPerMonthUSD in body must be of type string: "number"'
    )
    error = crd_validation.apply_error(_with(KEY, limits={"spendPerMonthUSD": "12.1234567"}), SCHEMAS)
    assert error is not None and "should match" in error
    assert crd_validation.apply_error(_with(KEY, limits={"spendPerMonthUSD": "0.000001"}), SCHEMAS) is None


def test_bad_duration_and_timestamp() -> None:
    error = crd_validation.apply_error(_with(KEY, ttl="30days"), SCHEMAS)
    assert error == (
        'The VirtualKey "alice" is invalid: spec.ttl: Invalid value: "30days": '
        "spec.ttl in body should match '^([0-9]+(s|m|h|d|w))+$'"
    )
    error = crd_validation.apply_error(_with(KEY, expiresAt="next tuesday"), SCHEMAS)
    assert error is not None and "spec.expiresAt in body must be of type date-time" in error


def test_several_causes_are_listed() -> None:
    manifest = _with(KEY, limits={"requestsPerMinute": -1, "tokensPerDay": -2})
    error = crd_validation.apply_error(manifest, SCHEMAS)
    assert error is not None
    assert error.startswith('The VirtualKey "alice" is invalid: \n* ')
    assert "spec.limits.requestsPerMinute" in error and "spec.limits.tokensPerDay" in error


def test_every_cel_rule_compiles_and_has_a_message() -> None:
    rules = []

    def walk(node: dict[str, Any]) -> None:
        rules.extend(node.get("x-kubernetes-validations", []))
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])

    for schema in SCHEMAS.values():
        walk(schema)
    assert len(rules) >= 15
    for rule in rules:
        assert rule["message"]
        cel.compile(rule["rule"])


def test_a_failed_rule_on_a_scalar_shows_the_value_as_current_servers_do() -> None:
    scalar_rules = {
        "Thing": {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
                "spec": {
                    "type": "object",
                    "properties": {
                        "size": {
                            "type": "integer",
                            "x-kubernetes-validations": [
                                {"rule": "self > 1", "message": "size must exceed 1"}
                            ],
                        },
                        "tier": {
                            "type": "string",
                            "x-kubernetes-validations": [
                                {"rule": "self != 'x'", "message": "tier x is retired"}
                            ],
                        },
                    },
                },
            },
        }
    }
    thing = {"apiVersion": "example.io/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"size": 1}}
    assert crd_validation.apply_error(thing, scalar_rules) == (
        'The Thing "t" is invalid: spec.size: Invalid value: 1: size must exceed 1'
    )
    thing["spec"] = {"tier": "x"}
    assert crd_validation.apply_error(thing, scalar_rules) == (
        'The Thing "t" is invalid: spec.tier: Invalid value: "x": tier x is retired'
    )
