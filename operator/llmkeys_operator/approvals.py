"""Approval of VirtualKeys (pure): who may approve, what was approved, and a key's approval state.

Called by `compile` (a key needing approval is Ready=False, PendingApproval or ApprovalDenied, and
refused by the proxy), by `admission` (the webhook records an approval and refuses it from anyone
else) and by the `llmkeys pending|approve|deny` commands.

What an approval binds to ("terms"): the key's own limits, providers, models and resolved expiry.
The approved terms are stored as compact JSON in `llmkeys.io/approved-spec`; a later spec is
within them when it asks for no more (each limit at most the approved one, providers and models
a subset, expiry no later). Widening returns the key to PendingApproval; narrowing does not.

Where the stamps come from: in a cluster only the admission webhook writes them, from the API
server's authenticated userInfo, so they are read as facts. In standalone mode the manifests folder
is trusted: `llmkeys.io/approval: approve|deny` in a manifest counts as the act itself.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from llmkeys_operator import api, durations

ApprovalState = Literal["Pending", "Approved", "Denied"]

#: Approver recorded for an approval written into a standalone manifest.
MANIFEST_APPROVER = "manifest"


@dataclasses.dataclass(frozen=True)
class KeyApproval:
    """The approval state of one key that needs approval."""

    state: ApprovalState
    #: Ready condition message: what waits for whom, or who denied and why.
    message: str
    by: str | None = None
    at: datetime | None = None
    reason: str | None = None
    #: Approvers from every policy requiring approval (users, and groups as "group:NAME").
    approvers: tuple[str, ...] = ()


def requiring_policies(policies: Iterable[api.LLMPolicy]) -> list[api.LLMPolicy]:
    """The policies (of those applying to a key) that require approval."""
    return [p for p in policies if p.spec.approval is not None and p.spec.approval.required]


def may_approve(
    policies: Sequence[api.LLMPolicy],
    username: str,
    groups: Iterable[str],
    *,
    own_key: bool,
) -> str | None:
    """None when the user may approve a key these policies (requiring approval) govern, else why not.

    An approver must be one of every requiring policy's approvers (each guardrail is honoured);
    approving one's own key needs every such policy to allow self-approval.
    """
    group_set = set(groups)
    for policy in policies:
        approval = policy.spec.approval
        if approval is None or not approval.required:
            continue
        if not approval.approvers.includes(username, group_set):
            return f'{username} is not an approver of LLMPolicy "{policy.metadata.name}"'
        if own_key and not approval.allow_self_approval:
            return f'LLMPolicy "{policy.metadata.name}" does not allow approving one\'s own key'
    return None


def approvers_of(policies: Iterable[api.LLMPolicy]) -> tuple[str, ...]:
    names: set[str] = set()
    for policy in requiring_policies(policies):
        assert policy.spec.approval is not None
        names.update(policy.spec.approval.approvers.users)
        names.update(f"group:{group}" for group in policy.spec.approval.approvers.groups)
    return tuple(sorted(names))


def terms_of(spec: api.VirtualKeySpec, start: datetime | None) -> dict[str, Any]:
    """The approval-relevant part of a spec, as stored in llmkeys.io/approved-spec."""
    limits = spec.limits.model_dump(by_alias=True, exclude_none=True, mode="json") if spec.limits else {}
    expires: datetime | None = spec.expires_at
    terms: dict[str, Any] = {
        "limits": dict(sorted(limits.items())),
        "providers": sorted(spec.providers) if spec.providers is not None else None,
        "models": sorted(spec.models) if spec.models is not None else None,
    }
    if spec.ttl is not None:
        if start is None:
            terms["ttl"] = spec.ttl
        else:
            try:
                expires = start + durations.parse_duration(spec.ttl)
            except ValueError:
                terms["ttl"] = spec.ttl
    terms["expiresAt"] = _format_time(expires) if expires is not None else None
    return terms


def encode_terms(terms: Mapping[str, Any]) -> str:
    return json.dumps(terms, separators=(",", ":"), sort_keys=True)


def decode_terms(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def widenings(current: Mapping[str, Any], approved: Mapping[str, Any]) -> list[str]:
    """What the current terms ask for beyond the approved ones (empty: within the approval)."""
    found: list[str] = []
    approved_limits = approved.get("limits") or {}
    current_limits = current.get("limits") or {}
    for field, cap in sorted(approved_limits.items()):
        asked = current_limits.get(field)
        if asked is None:
            found.append(f"limits.{field} removed (approved {cap})")
        elif _number(asked) > _number(cap):
            found.append(f"limits.{field} {asked} > approved {cap}")
    for field in ("providers", "models"):
        allowed = approved.get(field)
        if allowed is None:
            continue
        asked_list = current.get(field)
        if asked_list is None:
            found.append(f"{field}: all (approved {_format_list(allowed)})")
            continue
        extra = [g for g in asked_list if not any(fnmatch.fnmatchcase(g, a) for a in allowed)]
        if extra:
            found.append(f"{field} {_format_list(extra)} beyond approved {_format_list(allowed)}")
    # An unresolved ttl (no start known) compares as written.
    if current.get("ttl") != approved.get("ttl"):
        found.append(f"ttl {current.get('ttl')} (approved {approved.get('ttl')})")
    approved_expiry = approved.get("expiresAt")
    if approved_expiry is not None:
        asked_expiry = current.get("expiresAt")
        if asked_expiry is None:
            found.append(f"expiry removed (approved {approved_expiry})")
        elif _parse_time(asked_expiry) > _parse_time(approved_expiry):
            found.append(f"expiry {asked_expiry} later than approved {approved_expiry}")
    return found


def key_approval(
    virtual_key: api.VirtualKey,
    policies: Sequence[api.LLMPolicy],
    start: datetime | None,
    *,
    trust_manifest: bool = False,
) -> KeyApproval | None:
    """The approval state of a key under the policies applying to it; None when none requires one."""
    requiring = requiring_policies(policies)
    if not requiring:
        return None
    names = ", ".join(f'"{p.metadata.name}"' for p in requiring)
    approvers = approvers_of(requiring)
    annotations = virtual_key.metadata.annotations
    if trust_manifest:
        act = annotations.get(api.ANNOTATION_APPROVAL)
        reason = annotations.get(api.ANNOTATION_APPROVAL_REASON) or None
        if act == api.DENY:
            text = f"denied in the manifest{': ' + reason if reason else ''}"
            return KeyApproval("Denied", text, by=MANIFEST_APPROVER, reason=reason, approvers=approvers)
        if act == api.APPROVE:
            return KeyApproval(
                "Approved",
                "approved in the manifest",
                by=MANIFEST_APPROVER,
                reason=reason,
                approvers=approvers,
            )
    denied_by = annotations.get(api.ANNOTATION_DENIED_BY)
    if denied_by:
        reason = annotations.get(api.ANNOTATION_DENIED_REASON) or None
        at = _parse_time_or_none(annotations.get(api.ANNOTATION_DENIED_AT))
        text = f"denied by {denied_by}{': ' + reason if reason else ''}"
        return KeyApproval("Denied", text, by=denied_by, at=at, reason=reason, approvers=approvers)
    approved_by = annotations.get(api.ANNOTATION_APPROVED_BY)
    approved_terms = decode_terms(annotations.get(api.ANNOTATION_APPROVED_SPEC))
    waiting = (
        f"waiting for approval required by LLMPolicy {names} (approvers: {', '.join(approvers) or 'none'})"
    )
    if not approved_by or approved_terms is None:
        return KeyApproval("Pending", waiting, approvers=approvers)
    at = _parse_time_or_none(annotations.get(api.ANNOTATION_APPROVED_AT))
    wider = widenings(terms_of(virtual_key.spec, start), approved_terms)
    if wider:
        text = f"changed since approved by {approved_by}: {'; '.join(wider)}; {waiting}"
        return KeyApproval("Pending", text, approvers=approvers)
    return KeyApproval("Approved", f"approved by {approved_by}", by=approved_by, at=at, approvers=approvers)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


def _format_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _format_time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _parse_time_or_none(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return _parse_time(text)
    except ValueError:
        return None
