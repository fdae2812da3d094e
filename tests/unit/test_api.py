"""The API models: wire spelling, money, documentation of every field, Kubernetes bodies."""

from __future__ import annotations

import inspect
from decimal import Decimal

import pydantic
import pytest

from llmkeys_operator import api

API_MODELS = [
    obj
    for _, obj in inspect.getmembers(api, inspect.isclass)
    if issubclass(obj, api.ApiModel) and obj is not api.ApiModel and obj.__module__ == api.__name__
]


@pytest.mark.parametrize("model", API_MODELS, ids=lambda m: m.__name__)
def test_every_spec_and_status_field_is_documented(model: type[api.ApiModel]) -> None:
    if model in (api.ObjectMeta, api.VirtualKey, api.ProviderCredential, api.LLMPolicy):
        return  # Kubernetes envelope: documented by Kubernetes
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no docstring (kubectl explain shows it)"


def test_design_fields_are_spelled_as_documented() -> None:
    def aliases(model: type[pydantic.BaseModel]) -> set[str]:
        return {f.alias or n for n, f in model.model_fields.items()}

    assert aliases(api.VirtualKeySpec) >= {
        "owner", "description", "providers", "models", "limits", "expiresAt", "ttl", "suspended",
        "secretName", "rotationInterval", "rotationGracePeriod",
    }  # fmt: skip
    assert aliases(api.Limits) == {
        "requestsPerMinute", "tokensPerMinute", "tokensPerDay", "tokensPerMonth", "spendPerMonthUSD",
        "maxTokensPerRequest",
    }  # fmt: skip
    assert aliases(api.Owner) == {"user", "team", "app", "agent", "service", "environment", "costCenter"}
    assert aliases(api.LLMPolicySpec) >= {
        "namespaceSelector", "keySelector", "allowedProviders", "allowedModels", "deniedModels", "defaults",
        "maximums", "maxTTL", "requireExpiry", "requiredOwnerFields", "budgets", "onLimiterUnavailable",
    }  # fmt: skip
    assert aliases(api.ProviderCredentialSpec) >= {
        "provider", "baseURL", "secretRef", "azure", "vertex", "bedrock", "models", "pricing", "limits",
    }  # fmt: skip
    assert aliases(api.Usage) >= {
        "periodStart",
        "requests",
        "inputTokens",
        "outputTokens",
        "spendUSD",
        "lastUsedAt",
    }


def test_money_accepts_strings_and_numbers_and_keeps_six_decimals() -> None:
    assert api.Limits.model_validate({"spendPerMonthUSD": "12.5"}).spend_per_month_usd == Decimal("12.5")
    assert api.Limits.model_validate({"spendPerMonthUSD": 50}).spend_per_month_usd == Decimal(50)
    assert api.Limits(spend_per_month_usd=Decimal("0.000001")).spend_per_month_usd == Decimal("0.000001")
    with pytest.raises(pydantic.ValidationError, match="decimal places"):
        api.Limits.model_validate({"spendPerMonthUSD": "0.0000001"})
    with pytest.raises(pydantic.ValidationError):
        api.Limits.model_validate({"spendPerMonthUSD": "-1"})
    dumped = api.Limits.model_validate({"spendPerMonthUSD": "12.50"}).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert dumped == {"spendPerMonthUSD": "12.50"}


def test_kubernetes_body_parses_and_dumps_back_in_camel_case() -> None:
    body = {
        "apiVersion": "llmkeys.io/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {
            "name": "alice",
            "namespace": "dev",
            "uid": "u-1",
            "generation": 3,
            "resourceVersion": "42",
            "managedFields": [{"manager": "kubectl"}],
            "creationTimestamp": "2026-06-01T00:00:00Z",
        },
        "spec": {"owner": {"costCenter": "CC-1", "team": "t"}, "limits": {"maxTokensPerRequest": 100}},
        "status": {"keyId": "abcdefghijkl", "conditions": []},
    }
    vk = api.VirtualKey.model_validate(body)
    assert vk.metadata.generation == 3 and vk.metadata.creation_timestamp is not None
    assert vk.spec.owner.get("costCenter") == "CC-1"
    assert vk.spec.owner.as_dict() == {"team": "t", "costCenter": "CC-1"}
    spec = vk.spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    assert spec == {"owner": {"team": "t", "costCenter": "CC-1"}, "limits": {"maxTokensPerRequest": 100}}


def test_status_models_build_from_python_names() -> None:
    status = api.VirtualKeyStatus(
        key_id="abcdefghijkl",
        effective=api.EffectiveLimits(limits=api.Limits(requests_per_minute=5)),
        usage=api.UsageByPeriod(month=api.Usage(spend_usd="1.5")),
    )
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["effective"]["limits"] == {"requestsPerMinute": 5}
    assert dumped["usage"]["month"]["spendUSD"] == "1.5"


def test_spec_models_refuse_unknown_fields_but_envelopes_ignore_them() -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        api.VirtualKeySpec.model_validate({"sufix": "x"})
    api.ObjectMeta.model_validate({"name": "x", "finalizers": ["a"]})


def test_self_service_and_approval_contract_is_spelled_as_documented() -> None:
    # The contract the admission webhook, the portal and the CLI share (README "Self-service and approvals").
    policy = api.LLMPolicy.model_validate(
        {
            "metadata": {"name": "dev"},
            "spec": {
                "selfService": {
                    "ownerFromRequester": True,
                    "allowedUsers": ["alice@example.com"],
                    "allowedGroups": ["developers"],
                    "admins": {"users": ["root@example.com"], "groups": ["platform"]},
                },
                "approval": {
                    "required": True,
                    "approvers": {"users": ["boss@example.com"], "groups": ["llm-approvers"]},
                    "allowSelfApproval": False,
                },
            },
        }
    )
    self_service, approval = policy.spec.self_service, policy.spec.approval
    assert self_service is not None and approval is not None
    assert self_service.owner_from_requester and self_service.allowed_groups == ["developers"]
    assert self_service.admins.includes("someone", ["platform"])
    assert self_service.admins.includes("root@example.com", [])
    assert not self_service.admins.includes("alice@example.com", ["developers"])
    assert approval.required and not approval.allow_self_approval
    assert approval.approvers.includes("x", ["llm-approvers"])
    assert (
        policy.model_dump(by_alias=True, exclude_none=True)["spec"]["approval"]["allowSelfApproval"] is False
    )
    with pytest.raises(pydantic.ValidationError):
        api.LLMPolicySpec.model_validate({"approval": {"required": True, "approver": {"users": ["x"]}}})
    assert api.ANNOTATION_CREATED_BY == "llmkeys.io/created-by"
    assert api.ANNOTATION_APPROVAL == "llmkeys.io/approval"
    assert set(api.APPROVAL_STAMPS) == {
        "llmkeys.io/approved-by", "llmkeys.io/approved-at", "llmkeys.io/approved-spec",
        "llmkeys.io/denied-by", "llmkeys.io/denied-at", "llmkeys.io/denied-reason",
    }  # fmt: skip
