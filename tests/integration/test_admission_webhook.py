"""The VirtualKey admission webhook, as the API server calls it: AdmissionReview v1 over TLS.

The real operator (`runner.serve`: Lease-gated kopf plus the admission kopf on every replica)
runs against the emulator with a certificate directory as the chart mounts it; each review
carries userInfo the way kube-apiserver sends it, and goes mutate -> JSONPatch -> validate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from tests import admission_harness as ah
from tests import kmock_cluster as kc
from tests.fakes import tls

from llmkeys_operator import admission, api, approvals

NS = "team-a"

POLICIES: dict[str, dict[str, Any]] = {
    "selfserve": {
        "keySelector": {"matchLabels": {"tier": "selfserve"}},
        "selfService": {"ownerFromRequester": True, "admins": {"groups": ["platform"]}},
    },
    "guarded": {
        "keySelector": {"matchLabels": {"tier": "guarded"}},
        "maximums": {"requestsPerMinute": 100},
        "requiredOwnerFields": ["team"],
        "requireExpiry": True,
    },
    "restricted": {
        "keySelector": {"matchLabels": {"tier": "restricted"}},
        "selfService": {"allowedGroups": ["developers"]},
    },
    "approved": {
        "keySelector": {"matchLabels": {"tier": "approved"}},
        "approval": {"required": True, "approvers": {"users": ["boss"], "groups": ["approvers"]}},
    },
    "selfapprove": {
        "keySelector": {"matchLabels": {"tier": "selfapprove"}},
        "approval": {"required": True, "approvers": {"users": ["carol"]}, "allowSelfApproval": True},
    },
}


def key(name: str, tier: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": kc.GROUP_VERSION,
        "kind": "VirtualKey",
        "metadata": {"name": name, "namespace": NS, "labels": {"tier": tier}},
        "spec": spec,
    }


def annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def with_annotations(obj: dict[str, Any], **values: str) -> dict[str, Any]:
    changed = {**obj, "metadata": {**obj["metadata"], "annotations": {**annotations(obj)}}}
    for name, value in values.items():
        changed["metadata"]["annotations"][name] = value
    return changed


def stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server adds on create (the old object of a later UPDATE has it)."""
    meta = {
        **obj["metadata"],
        "uid": "6f1c2d3e",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "generation": 1,
    }
    return {**obj, "metadata": meta}


@dataclasses.dataclass
class Cluster:
    emulator: kc.LlmkeysKubernetesEmulator
    client: kc.ClusterClient
    webhook: ah.WebhookClient


async def start_cluster(
    emulator: kc.LlmkeysKubernetesEmulator,
    client: kc.ClusterClient,
    threads: list[kc.OperatorThread],
    tmp_path: Path,
    session: aiohttp.ClientSession,
) -> Cluster:
    await emulator.set_namespace(NS)
    await emulator.set_namespace(kc.GATEWAY_NAMESPACE)
    await client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "mock", "models": [{"name": "mock-*"}]},
        },
    )
    for name, spec in POLICIES.items():
        await client.create(
            kc.POLICIES,
            {"apiVersion": kc.GROUP_VERSION, "kind": "LLMPolicy", "metadata": {"name": name}, "spec": spec},
        )
    files = tls.make_self_signed(tmp_path)
    port = ah.free_port()
    settings = kc.operator_settings(webhook_port=port, webhook_cert_dir=str(tmp_path))
    threads.append(await kc.start_operator(str(emulator.url), settings))
    webhook = ah.WebhookClient(session, port, files.client_context())
    await webhook.wait_serving()
    return Cluster(emulator, client, webhook)


@pytest_asyncio.fixture
async def cluster(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    async with aiohttp.ClientSession() as session:
        yield await start_cluster(kube_cluster, cluster_client, operator_threads, tmp_path, session)


async def test_identity_stamped_on_create_and_never_forged(cluster: Cluster) -> None:
    webhook = cluster.webhook
    # Stamping: created-by, the groups digest, and owner.user from the authenticated username.
    made = await webhook.admit("CREATE", key("mine", "selfserve"), user="alice", groups=["developers"])
    assert made.allowed and made.obj is not None
    stamps = annotations(made.obj)
    assert stamps[api.ANNOTATION_CREATED_BY] == "alice"
    assert stamps[api.ANNOTATION_CREATED_BY_GROUPS] == admission.groups_digest(
        ["developers", "system:authenticated"]
    )
    assert made.obj["spec"]["owner"]["user"] == "alice"

    # A forged owner is refused; an admin may name anyone.
    forged = await webhook.admit("CREATE", key("bobs", "selfserve", owner={"user": "bob"}), user="alice")
    assert not forged.allowed and forged.code == 403
    assert forged.message is not None and "owner.user must be the requester (alice)" in forged.message
    by_admin = await webhook.admit(
        "CREATE", key("bobs", "selfserve", owner={"user": "bob"}), user="root", groups=["platform"]
    )
    assert by_admin.allowed and by_admin.obj is not None and by_admin.obj["spec"]["owner"]["user"] == "bob"
    # Nor can a creator be forged at create time.
    claimed = with_annotations(key("claimed", "selfserve"), **{api.ANNOTATION_CREATED_BY: "bob"})
    refused = await webhook.admit("CREATE", claimed, user="alice")
    assert (
        not refused.allowed and refused.message is not None and api.ANNOTATION_CREATED_BY in refused.message
    )

    # Changing created-by later: refused for a non-admin, even the creator; allowed for an admin.
    old = stored(made.obj)
    changed = with_annotations(old, **{api.ANNOTATION_CREATED_BY: "mallory"})
    by_creator = await webhook.admit("UPDATE", changed, old, user="alice", groups=["developers"])
    assert not by_creator.allowed
    assert (
        by_creator.message
        == f"{api.ANNOTATION_CREATED_BY} cannot be changed: only selfService.admins may change it"
    )
    by_admin_update = await webhook.admit("UPDATE", changed, old, user="root", groups=["platform"])
    assert by_admin_update.allowed
    # Handing the key to someone else is an owner change: refused for a non-admin.
    handed = {**old, "spec": {"owner": {"user": "bob"}}}
    assert not (await webhook.admit("UPDATE", handed, old, user="alice")).allowed


async def test_guardrail_refusal_says_what_the_condition_says(cluster: Cluster) -> None:
    breaking = key("big", "guarded", limits={"requestsPerMinute": 500})
    refused = await cluster.webhook.admit("CREATE", breaking, user="alice", groups=["developers"])
    assert not refused.allowed and refused.code == 422
    assert refused.message is not None
    # The same key stored without the webhook (as before it was installed): the operator's
    # PolicyViolation condition carries the very same message.
    await cluster.client.create(kc.VIRTUALKEYS, breaking)
    vk = await cluster.client.wait_for(
        kc.VIRTUALKEYS,
        NS,
        "big",
        lambda o: (kc.condition(o, "Ready") or {}).get("reason") == "PolicyViolation",
    )
    ready = kc.condition(vk, "Ready")
    assert ready is not None
    assert refused.message == ready["message"]
    assert refused.message == (
        'limits.requestsPerMinute 500 exceeds maximum 100 of LLMPolicy "guarded"; '
        'owner.team is required by LLMPolicy "guarded"; '
        'an expiry (expiresAt or ttl) is required by LLMPolicy "guarded"'
    )
    # Within the guardrails it is admitted; a stored key's bookkeeping update (no spec change) is
    # never refused, even when the key breaks a policy (it keeps its condition instead).
    fine = key("fine", "guarded", limits={"requestsPerMinute": 100}, owner={"team": "payments"}, ttl="30d")
    assert (await cluster.webhook.admit("CREATE", fine, user="alice")).allowed
    old = stored(breaking)
    bookkeeping = with_annotations(old, **{"kopf.llmkeys.io/last-handled-configuration": "{}"})
    assert (
        await cluster.webhook.admit("UPDATE", bookkeeping, old, user="system:serviceaccount:llmkeys:op")
    ).allowed


async def test_self_service_restricted_to_groups(cluster: Cluster) -> None:
    outsider = await cluster.webhook.admit(
        "CREATE", key("c", "restricted"), user="eve", groups=["contractors"]
    )
    assert not outsider.allowed
    assert outsider.message == (
        'eve may not create or change keys selected by LLMPolicy "restricted" '
        "(selfService.allowedUsers / allowedGroups)"
    )
    member = await cluster.webhook.admit("CREATE", key("d", "restricted"), user="dave", groups=["developers"])
    assert member.allowed


async def test_approval_only_by_approvers_and_bound_to_the_spec(cluster: Cluster) -> None:
    webhook = cluster.webhook
    made = await webhook.admit(
        "CREATE",
        key("app", "approved", limits={"requestsPerMinute": 50}),
        user="alice",
        groups=["developers"],
    )
    assert made.allowed and made.obj is not None
    old = stored(made.obj)
    policy = api.LLMPolicy.model_validate({"metadata": {"name": "approved"}, "spec": POLICIES["approved"]})

    def state(obj: dict[str, Any]) -> str | None:
        vk = api.VirtualKey.model_validate(obj)
        found = approvals.key_approval(vk, [policy], vk.metadata.creation_timestamp)
        return found.state if found else None

    assert state(old) == "Pending"
    act = with_annotations(old, **{api.ANNOTATION_APPROVAL: api.APPROVE})

    # Anyone else (here: the creator, in no approver group) is refused, and so is forging the stamps.
    not_approver = await webhook.admit("UPDATE", act, old, user="alice", groups=["developers"])
    assert not not_approver.allowed
    assert not_approver.message == 'approval refused: alice is not an approver of LLMPolicy "approved"'
    forged = with_annotations(old, **{api.ANNOTATION_APPROVED_BY: "boss", api.ANNOTATION_APPROVED_SPEC: "{}"})
    forged_answer = await webhook.admit("UPDATE", forged, old, user="alice")
    assert not forged_answer.allowed
    assert (
        forged_answer.message is not None and "written by the admission webhook only" in forged_answer.message
    )

    # An approver (by group) is accepted: the act becomes stamps of who, when and what.
    approved = await webhook.admit("UPDATE", act, old, user="carol", groups=["approvers"])
    assert approved.allowed and approved.obj is not None
    stamps = annotations(approved.obj)
    assert api.ANNOTATION_APPROVAL not in stamps
    assert stamps[api.ANNOTATION_APPROVED_BY] == "carol"
    assert stamps[api.ANNOTATION_APPROVED_AT].endswith("Z")
    assert approvals.decode_terms(stamps[api.ANNOTATION_APPROVED_SPEC]) == {
        "limits": {"requestsPerMinute": 50},
        "providers": None,
        "models": None,
        "expiresAt": None,
    }
    assert state(approved.obj) == "Approved"

    # A limit cut keeps the approval; a raise (admitted: it is within the guardrails) needs a new one.
    current = stored(approved.obj)
    cut = {**current, "spec": {"limits": {"requestsPerMinute": 20}}}
    cut_answer = await webhook.admit("UPDATE", cut, current, user="alice")
    assert cut_answer.allowed and cut_answer.obj is not None and state(cut_answer.obj) == "Approved"
    raised = {**current, "spec": {"limits": {"requestsPerMinute": 80}}}
    raised_answer = await webhook.admit("UPDATE", raised, current, user="alice")
    assert raised_answer.allowed and raised_answer.obj is not None
    assert annotations(raised_answer.obj)[api.ANNOTATION_APPROVED_BY] == "carol"  # the record stays
    assert state(raised_answer.obj) == "Pending"
    again = await webhook.admit(
        "UPDATE", with_annotations(stored(raised_answer.obj), **{api.ANNOTATION_APPROVAL: api.APPROVE}),
        stored(raised_answer.obj), user="boss",
    )  # fmt: skip
    assert again.allowed and again.obj is not None and state(again.obj) == "Approved"
    assert annotations(again.obj)[api.ANNOTATION_APPROVED_BY] == "boss"

    # Denial: by an approver, with a reason; it replaces the approval.
    deny = with_annotations(stored(again.obj), **{api.ANNOTATION_APPROVAL: api.DENY})
    no_reason = await webhook.admit("UPDATE", deny, stored(again.obj), user="boss")
    assert not no_reason.allowed and no_reason.message is not None and "reason" in no_reason.message
    deny = with_annotations(deny, **{api.ANNOTATION_APPROVAL_REASON: "too expensive"})
    denied = await webhook.admit("UPDATE", deny, stored(again.obj), user="boss")
    assert denied.allowed and denied.obj is not None
    stamps = annotations(denied.obj)
    assert (
        stamps[api.ANNOTATION_DENIED_BY] == "boss" and stamps[api.ANNOTATION_DENIED_REASON] == "too expensive"
    )
    assert api.ANNOTATION_APPROVED_BY not in stamps and state(denied.obj) == "Denied"


async def test_self_approval_refused_unless_allowed(cluster: Cluster) -> None:
    webhook = cluster.webhook
    # boss is an approver of "approved" but created this key: no self-approval there.
    own = await webhook.admit("CREATE", key("own", "approved"), user="boss")
    assert own.allowed and own.obj is not None
    old = stored(own.obj)
    act = with_annotations(old, **{api.ANNOTATION_APPROVAL: api.APPROVE})
    refused = await webhook.admit("UPDATE", act, old, user="boss")
    assert not refused.allowed
    assert refused.message == 'approval refused: LLMPolicy "approved" does not allow approving one\'s own key'
    # Owning it counts as well as creating it.
    owned = stored({**key("owned", "approved", owner={"user": "boss"})})
    owned = with_annotations(owned, **{api.ANNOTATION_CREATED_BY: "alice"})
    owned_act = with_annotations(owned, **{api.ANNOTATION_APPROVAL: api.APPROVE})
    assert not (await webhook.admit("UPDATE", owned_act, owned, user="boss")).allowed

    # "selfapprove" allows it.
    mine = await webhook.admit("CREATE", key("mine", "selfapprove"), user="carol")
    assert mine.allowed and mine.obj is not None
    old = stored(mine.obj)
    allowed = await webhook.admit(
        "UPDATE", with_annotations(old, **{api.ANNOTATION_APPROVAL: api.APPROVE}), old, user="carol"
    )
    assert allowed.allowed and allowed.obj is not None
    assert annotations(allowed.obj)[api.ANNOTATION_APPROVED_BY] == "carol"


async def test_standby_replica_serves_admission(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    tmp_path: Path,
) -> None:
    async with aiohttp.ClientSession() as session:
        await start_cluster(kube_cluster, cluster_client, operator_threads, tmp_path, session)
        files = tls.TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
        port = ah.free_port()
        settings = kc.operator_settings(webhook_port=port, webhook_cert_dir=str(tmp_path))
        standby = await kc.start_operator(
            str(kube_cluster.url), settings, identity="standby", wait_ready=False
        )
        operator_threads.append(standby)
        webhook = ah.WebhookClient(session, port, files.client_context())
        await webhook.wait_serving()
        # The replica never led (its kopf never became ready), yet it answers reviews.
        assert standby.alive and not standby._ready.is_set()
        made = await webhook.admit("CREATE", key("via-standby", "selfserve"), user="alice")
        assert made.allowed and made.obj is not None and made.obj["spec"]["owner"]["user"] == "alice"
