"""Approval state (pure): what an approval binds to, widening vs narrowing, standalone manifests."""

from __future__ import annotations

import pathlib
from datetime import UTC, datetime
from typing import Any

import pytest

from llmkeys_operator import api, approvals, compile, standalone

START = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = api.LLMPolicy.model_validate(
    {
        "metadata": {"name": "gate"},
        "spec": {"approval": {"required": True, "approvers": {"users": ["boss"], "groups": ["approvers"]}}},
    }
)


def spec(**fields: Any) -> api.VirtualKeySpec:
    return api.VirtualKeySpec.model_validate(fields)


APPROVED = approvals.terms_of(
    spec(limits={"requestsPerMinute": 50, "spendPerMonthUSD": "10"}, models=["gpt-5*"], ttl="30d"), START
)


@pytest.mark.parametrize(
    ("fields", "widened"),
    [
        (
            {
                "limits": {"requestsPerMinute": 50, "spendPerMonthUSD": "10"},
                "models": ["gpt-5*"],
                "ttl": "30d",
            },
            [],
        ),
        # Narrowing: lower limits, an extra limit, fewer models, a shorter life.
        (
            {
                "limits": {"requestsPerMinute": 5, "spendPerMonthUSD": "2.5", "tokensPerDay": 10},
                "models": ["gpt-5-mini"],
                "ttl": "1d",
            },
            [],
        ),
        (
            {
                "limits": {"requestsPerMinute": 51, "spendPerMonthUSD": "10"},
                "models": ["gpt-5*"],
                "ttl": "30d",
            },
            ["limits.requestsPerMinute 51 > approved 50"],
        ),
        (
            {"limits": {"requestsPerMinute": 50}, "models": ["gpt-5*"], "ttl": "30d"},
            ["limits.spendPerMonthUSD removed (approved 10)"],
        ),
        (
            {
                "limits": {"requestsPerMinute": 50, "spendPerMonthUSD": "10"},
                "models": ["gpt-5*", "o3"],
                "ttl": "30d",
            },
            ["models [o3] beyond approved [gpt-5*]"],
        ),
        (
            {"limits": {"requestsPerMinute": 50, "spendPerMonthUSD": "10"}, "ttl": "30d"},
            ["models: all (approved [gpt-5*])"],
        ),
        (
            {
                "limits": {"requestsPerMinute": 50, "spendPerMonthUSD": "10"},
                "models": ["gpt-5*"],
                "ttl": "31d",
            },
            ["expiry 2026-02-01T00:00:00Z later than approved 2026-01-31T00:00:00Z"],
        ),
    ],
)
def test_widening_needs_a_new_approval_narrowing_does_not(fields: dict[str, Any], widened: list[str]) -> None:
    assert approvals.widenings(approvals.terms_of(spec(**fields), START), APPROVED) == widened


def test_who_may_approve() -> None:
    assert approvals.may_approve([POLICY], "boss", [], own_key=False) is None
    assert approvals.may_approve([POLICY], "carol", ["approvers"], own_key=False) is None
    assert approvals.may_approve([POLICY], "alice", ["developers"], own_key=False) == (
        'alice is not an approver of LLMPolicy "gate"'
    )
    assert approvals.may_approve([POLICY], "boss", [], own_key=True) is not None
    # Two policies requiring approval: an approver must be one of each.
    other = api.LLMPolicy.model_validate(
        {
            "metadata": {"name": "finance"},
            "spec": {"approval": {"required": True, "approvers": {"users": ["cfo"]}}},
        }
    )
    assert approvals.may_approve([POLICY, other], "boss", [], own_key=False) == (
        'boss is not an approver of LLMPolicy "finance"'
    )


def _key(annotations: dict[str, str]) -> api.VirtualKey:
    return api.VirtualKey.model_validate(
        {"metadata": {"name": "k", "namespace": "default", "annotations": annotations}, "spec": {}}
    )


def test_manifest_approval_counts_only_where_the_folder_is_trusted() -> None:
    act = {api.ANNOTATION_APPROVAL: api.APPROVE}
    in_cluster = approvals.key_approval(_key(act), [POLICY], START)
    assert in_cluster is not None and in_cluster.state == "Pending"
    trusted = approvals.key_approval(_key(act), [POLICY], START, trust_manifest=True)
    assert trusted is not None and trusted.state == "Approved" and trusted.by == "manifest"
    deny = {api.ANNOTATION_APPROVAL: api.DENY, api.ANNOTATION_APPROVAL_REASON: "not needed"}
    denied = approvals.key_approval(_key(deny), [POLICY], START, trust_manifest=True)
    assert (
        denied is not None
        and denied.state == "Denied"
        and denied.message == "denied in the manifest: not needed"
    )
    assert approvals.key_approval(_key(act), [], START) is None  # no policy requires approval


MANIFESTS = """
apiVersion: llmkeys.io/v1alpha1
kind: ProviderCredential
metadata: {name: mock}
spec: {provider: mock}
---
apiVersion: llmkeys.io/v1alpha1
kind: LLMPolicy
metadata: {name: gate}
spec:
  approval: {required: true, approvers: {users: [boss]}}
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: waiting}
spec: {}
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata:
  name: approved
  annotations: {llmkeys.io/approval: approve}
spec: {}
"""


def test_standalone_compiles_manifest_approvals(tmp_path: pathlib.Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "all.yaml").write_text(MANIFESTS)
    state = standalone.StateDir(tmp_path / "state")
    state.prepare()
    compiled = standalone.compile_folder(tmp_path / "manifests", state, "http://127.0.0.1:9", START)
    keys = compiled.result.keys
    assert keys[("default", "waiting")].reason == "PendingApproval"
    assert keys[("default", "approved")].reason == "Active"
    entries = {entry.name: entry for entry in compiled.result.config.keys}
    assert entries["waiting"].approval == "pending" and entries["approved"].approval is None


def test_condition_message_and_webhook_message_share_the_compiler() -> None:
    policy = api.LLMPolicy.model_validate(
        {
            "metadata": {"name": "p"},
            "spec": {"maximums": {"tokensPerDay": 10}, "requiredOwnerFields": ["team"]},
        }
    )
    vk = api.VirtualKey.model_validate(
        {"metadata": {"name": "k", "namespace": "default"}, "spec": {"limits": {"tokensPerDay": 11}}}
    )
    _, _, violations = compile.policy_violations(vk, [policy], START)
    result = compile.compile_proxy_config([vk], [policy], [], {}, {}, START, gateway_namespace="llmkeys")
    assert result.keys[("default", "k")].message == "; ".join(violations)
