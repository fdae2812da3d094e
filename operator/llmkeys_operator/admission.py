"""Admission rules for VirtualKeys (pure): identity stamps, guardrails at apply time, approvals.

Called by `webhooks` (kopf's mutating and validating handlers) with the AdmissionReview's objects,
the API server's authenticated userInfo and the observed LLMPolicies and Namespace labels. The one
place where userInfo becomes recorded facts (README "Self-service and approvals"):

- `mutate` (CREATE/UPDATE): stamps `llmkeys.io/created-by` (+ groups digest) on create, sets
  `spec.owner.user` from the requester where a selecting policy says `ownerFromRequester`, turns an
  approver's `llmkeys.io/approval: approve|deny` into the approved-*/denied-* stamps, and refuses a
  forged owner, a changed creator, a direct edit of the stamps, or an act by a non-approver.
- `validate` (CREATE/UPDATE, on the object as mutated): refuses what breaks an applying policy,
  with the compiler's PolicyViolation message (`compile.policy_violations`), and creators outside
  `selfService.allowedUsers/allowedGroups`. An UPDATE that leaves the spec alone (the operator's
  own bookkeeping, an approval) is never refused for guardrails: keys already stored keep the
  condition behaviour.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pydantic

from llmkeys_operator import api, approvals, compile
from llmkeys_proxy import config


class Refused(Exception):
    """The request breaks a rule; the message goes back to `kubectl` as the refusal."""


@dataclasses.dataclass(frozen=True)
class Requester:
    """The authenticated identity from the AdmissionReview's userInfo."""

    username: str
    groups: tuple[str, ...] = ()

    @classmethod
    def from_userinfo(cls, userinfo: Mapping[str, Any] | None) -> Requester:
        userinfo = userinfo or {}
        return cls(
            username=str(userinfo.get("username") or ""),
            groups=tuple(str(g) for g in userinfo.get("groups") or ()),
        )


@dataclasses.dataclass(frozen=True)
class Mutation:
    """What the mutating webhook changes: annotations (None removes one) and owner.user."""

    annotations: dict[str, str | None] = dataclasses.field(default_factory=dict)
    owner_user: str | None = None


def groups_digest(groups: Iterable[str]) -> str:
    """Digest of a group list (order and duplicates do not matter)."""
    text = "\n".join(sorted(set(groups)))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _model(body: Mapping[str, Any] | None) -> api.VirtualKey | None:
    if body is None:
        return None
    try:
        return api.VirtualKey.model_validate({k: v for k, v in body.items() if k != "status"})
    except pydantic.ValidationError:
        return None


def _annotations(body: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((body or {}).get("metadata") or {}).get("annotations") or {})


def _owner_user(body: Mapping[str, Any] | None) -> str | None:
    owner = ((body or {}).get("spec") or {}).get("owner") or {}
    value = owner.get("user")
    return str(value) if value is not None else None


def _is_admin(policies: Sequence[api.LLMPolicy], requester: Requester) -> bool:
    """Listed in selfService.admins of every applying policy that has a selfService block."""
    governing = [p for p in policies if p.spec.self_service is not None]
    return bool(governing) and all(
        p.spec.self_service is not None
        and p.spec.self_service.admins.includes(requester.username, requester.groups)
        for p in governing
    )


def _applying(
    virtual_key: api.VirtualKey, policies: Sequence[api.LLMPolicy], namespace_labels: Mapping[str, str]
) -> list[api.LLMPolicy]:
    return compile.applying_policies(
        virtual_key, sorted(policies, key=lambda p: p.metadata.name), namespace_labels
    )


def _names(policies: Iterable[api.LLMPolicy]) -> str:
    return ", ".join(f'"{p.metadata.name}"' for p in policies)


def mutate(
    operation: str,
    new: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    requester: Requester,
    policies: Sequence[api.LLMPolicy],
    namespace_labels: Mapping[str, str],
    now: datetime,
) -> Mutation:
    """The stamps to write, or Refused (see module docstring)."""
    virtual_key = _model(new)
    if virtual_key is None:
        return Mutation()  # the schema refuses it (the validating webhook says why)
    applying = _applying(virtual_key, policies, namespace_labels)
    admin = _is_admin(applying, requester)
    annotations = _annotations(new)
    old_annotations = _annotations(old) if operation == "UPDATE" else {}
    mutation = Mutation()

    # Creator: stamped on create; fixed afterwards.
    created_by = annotations.get(api.ANNOTATION_CREATED_BY)
    if operation == "CREATE":
        if created_by is not None and created_by != requester.username and not admin:
            raise Refused(
                f"{api.ANNOTATION_CREATED_BY} is stamped from the requester ({requester.username}); "
                "only selfService.admins may set it to someone else"
            )
        if created_by is None or not admin:
            mutation.annotations[api.ANNOTATION_CREATED_BY] = requester.username
            mutation.annotations[api.ANNOTATION_CREATED_BY_GROUPS] = groups_digest(requester.groups)
    elif created_by != old_annotations.get(api.ANNOTATION_CREATED_BY) and not admin:
        raise Refused(f"{api.ANNOTATION_CREATED_BY} cannot be changed: only selfService.admins may change it")
    elif (
        annotations.get(api.ANNOTATION_CREATED_BY_GROUPS)
        != old_annotations.get(api.ANNOTATION_CREATED_BY_GROUPS)
        and not admin
    ):
        raise Refused(f"{api.ANNOTATION_CREATED_BY_GROUPS} cannot be changed: only selfService.admins may")

    # Owner: from the requester where a policy says so.
    stamping = [
        p for p in applying if p.spec.self_service is not None and p.spec.self_service.owner_from_requester
    ]
    owner = _owner_user(new)
    if stamping and not admin:
        changed = operation == "CREATE" or owner != _owner_user(old)
        if changed and owner is not None and owner != requester.username:
            raise Refused(
                f"owner.user must be the requester ({requester.username}) under LLMPolicy {_names(stamping)} "
                "(selfService.ownerFromRequester): only its selfService.admins may name another owner"
            )
        if operation == "UPDATE" and changed and owner is None:
            raise Refused(f"owner.user cannot be removed under LLMPolicy {_names(stamping)}")
    if stamping and operation == "CREATE" and owner is None:
        mutation = dataclasses.replace(mutation, owner_user=requester.username)

    # Approval stamps: written only here, in answer to an approver's act.
    for stamp in api.APPROVAL_STAMPS:
        if annotations.get(stamp) != old_annotations.get(stamp):
            raise Refused(
                f"{stamp} is written by the admission webhook only: an approver sets "
                f"{api.ANNOTATION_APPROVAL}: {api.APPROVE} (or {api.DENY}), e.g. with `llmkeys approve`"
            )
    act = annotations.get(api.ANNOTATION_APPROVAL)
    reason = annotations.get(api.ANNOTATION_APPROVAL_REASON)
    if act is None:
        if reason is not None:
            mutation.annotations[api.ANNOTATION_APPROVAL_REASON] = None
        return mutation
    if act not in (api.APPROVE, api.DENY):
        raise Refused(f"{api.ANNOTATION_APPROVAL} must be {api.APPROVE!r} or {api.DENY!r}")
    requiring = approvals.requiring_policies(applying)
    if not requiring:
        raise Refused("no LLMPolicy selecting this key requires approval")
    creator = mutation.annotations.get(api.ANNOTATION_CREATED_BY) or created_by
    owner_after = mutation.owner_user or owner
    own_key = requester.username in (creator, owner_after)
    why_not = approvals.may_approve(requiring, requester.username, requester.groups, own_key=own_key)
    if why_not is not None:
        raise Refused(f"approval refused: {why_not}")
    stamps = mutation.annotations
    stamps[api.ANNOTATION_APPROVAL] = None
    stamps[api.ANNOTATION_APPROVAL_REASON] = None
    at = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if act == api.APPROVE:
        spec = virtual_key.spec
        if mutation.owner_user is not None:
            spec = spec.model_copy(
                update={"owner": spec.owner.model_copy(update={"user": mutation.owner_user})}
            )
        start = virtual_key.metadata.creation_timestamp or now
        stamps[api.ANNOTATION_APPROVED_BY] = requester.username
        stamps[api.ANNOTATION_APPROVED_AT] = at
        stamps[api.ANNOTATION_APPROVED_SPEC] = approvals.encode_terms(approvals.terms_of(spec, start))
        for stamp in (api.ANNOTATION_DENIED_BY, api.ANNOTATION_DENIED_AT, api.ANNOTATION_DENIED_REASON):
            stamps[stamp] = None
    else:
        if not reason:
            raise Refused(f"a denial needs a reason ({api.ANNOTATION_APPROVAL_REASON})")
        stamps[api.ANNOTATION_DENIED_BY] = requester.username
        stamps[api.ANNOTATION_DENIED_AT] = at
        stamps[api.ANNOTATION_DENIED_REASON] = reason[:1024]
        for stamp in (api.ANNOTATION_APPROVED_BY, api.ANNOTATION_APPROVED_AT, api.ANNOTATION_APPROVED_SPEC):
            stamps[stamp] = None
    return mutation


def validate(
    operation: str,
    new: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    requester: Requester,
    policies: Sequence[api.LLMPolicy],
    namespace_labels: Mapping[str, str],
    now: datetime,
) -> None:
    """Refused when the (mutated) key breaks an applying policy or its creator may not create it."""
    try:
        virtual_key = api.VirtualKey.model_validate({k: v for k, v in new.items() if k != "status"})
    except pydantic.ValidationError as exc:
        raise Refused(f"invalid VirtualKey: {config.summarise_validation_error(exc)}") from None
    spec_changed = operation == "CREATE" or (old or {}).get("spec") != new.get("spec")
    if not spec_changed:
        return
    applying = _applying(virtual_key, policies, namespace_labels)
    for policy in applying:
        self_service = policy.spec.self_service
        if self_service is None or not (self_service.allowed_users or self_service.allowed_groups):
            continue
        allowed = api.Identities(users=self_service.allowed_users, groups=self_service.allowed_groups)
        if not allowed.includes(requester.username, requester.groups) and not self_service.admins.includes(
            requester.username, requester.groups
        ):
            raise Refused(
                f"{requester.username} may not create or change keys selected by "
                f'LLMPolicy "{policy.metadata.name}" (selfService.allowedUsers / allowedGroups)'
            )
    start = virtual_key.metadata.creation_timestamp or now
    _, _, violations = compile.policy_violations(virtual_key, applying, start)
    if violations:
        raise Refused("; ".join(violations))
