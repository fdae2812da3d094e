"""What the applying LLMPolicies let a person ask for: the create form's offer and its re-check.

Called by `app` (create page and create action). Pure: policies come in as the API returned them.
The offer is what the form shows (providers, models, limits up to the maximums with the defaults
filled in, TTLs up to maxTTL, required owner fields, who may self-serve, whether approval is
needed). The re-check runs on every submission, whatever the browser sent: the same offer, then
the compiler's own policy evaluation (`compile.compile_proxy_config`), whose PolicyViolation
message is the one `kubectl get vk` and the admission webhook show.

Policy fields this version of the portal does not model (a newer CRD) are ignored rather than
refused, so an upgrade of the CRDs before the portal never breaks it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic
from pydantic.alias_generators import to_camel

from llmkeys_operator import api, compile, durations, selectors
from llmkeys_operator.portal import identity
from llmkeys_proxy import config

#: Lifetimes the form offers (each only when a policy's maxTTL allows it).
TTL_CHOICES = ("1d", "7d", "30d", "90d", "180d", "365d")
OWNER_FORM_FIELDS = ("team", "app", "agent", "service", "environment", "costCenter")
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


@dataclasses.dataclass(frozen=True)
class LimitOffer:
    field: str  # python attribute name in api.Limits
    wire: str  # manifest spelling
    maximum: int | Decimal | None
    default: int | Decimal | None


@dataclasses.dataclass(frozen=True)
class Offer:
    """What a person may ask for in one namespace."""

    namespace: str
    policies: tuple[str, ...]
    providers: tuple[str, ...] | None  # None: any provider
    models: tuple[str, ...] | None  # None: any model (free text)
    denied_models: tuple[str, ...]
    limits: tuple[LimitOffer, ...]
    ttl_choices: tuple[str, ...]
    expiry_required: bool
    max_ttl: str | None
    required_owner_fields: tuple[str, ...]
    self_service_allowed: bool
    self_service_refusal: str
    approval_required: bool
    approvers: tuple[str, ...]


def parse_policy(raw: Mapping[str, Any]) -> api.LLMPolicy | None:
    """An LLMPolicy as the API returned it; fields this version does not know are dropped."""
    spec = dict(raw.get("spec") or {})
    known = {f.alias or f_name for f_name, f in api.LLMPolicySpec.model_fields.items()} | set(
        api.LLMPolicySpec.model_fields
    )
    try:
        return api.LLMPolicy.model_validate(
            {
                "metadata": raw.get("metadata") or {"name": "?"},
                "spec": {k: v for k, v in spec.items() if k in known},
            }
        )
    except pydantic.ValidationError:
        return None


def applying(
    raw_policies: Sequence[Mapping[str, Any]],
    namespace: str,
    namespace_labels: Mapping[str, str] | None,
    key_labels: Mapping[str, str] | None = None,
) -> list[api.LLMPolicy]:
    """The policies selecting a key in `namespace` with `key_labels`, by name."""
    labels = selectors.namespace_labels_of(namespace, {namespace: dict(namespace_labels or {})})
    found = []
    for raw in raw_policies:
        policy = parse_policy(raw)
        if policy is None:
            continue
        if selectors.selector_matches(policy.spec.namespace_selector, labels) and selectors.selector_matches(
            policy.spec.key_selector, key_labels or {}
        ):
            found.append(policy)
    return sorted(found, key=lambda p: p.metadata.name)


def approval_required(policy: api.LLMPolicy) -> bool:
    return policy.spec.approval is not None and policy.spec.approval.required


def may_approve(policy: api.LLMPolicy, who: identity.Identity, owns_key: bool) -> bool:
    """Whether `who` is an approver of keys `policy` requires approval for (self-approval only
    when the policy allows it)."""
    approval = policy.spec.approval
    if approval is None or not approval.required or not approval.approvers.includes(who.username, who.groups):
        return False
    return approval.allow_self_approval or not owns_key


def is_admin(policy: api.LLMPolicy, who: identity.Identity) -> bool:
    service = policy.spec.self_service
    return service is not None and service.admins.includes(who.username, who.groups)


def may_self_serve(policy: api.LLMPolicy, who: identity.Identity) -> bool:
    service = policy.spec.self_service
    if service is None or not (service.allowed_users or service.allowed_groups):
        return True
    return (
        who.username in service.allowed_users
        or not set(service.allowed_groups).isdisjoint(who.groups)
        or (is_admin(policy, who))
    )


def offer_for(
    raw_policies: Sequence[Mapping[str, Any]],
    namespace: str,
    namespace_labels: Mapping[str, str] | None,
    who: identity.Identity,
) -> Offer:
    policies = applying(raw_policies, namespace, namespace_labels)
    providers: set[str] | None = None
    for policy in policies:
        if policy.spec.allowed_providers is not None:
            allowed: set[str] = set(policy.spec.allowed_providers)
            providers = allowed if providers is None else providers & allowed
    denied = tuple(sorted({g for p in policies for g in p.spec.denied_models}))
    allowlists = [tuple(p.spec.allowed_models) for p in policies if p.spec.allowed_models is not None]
    models: tuple[str, ...] | None = None
    if allowlists:
        candidates = sorted({m for allowlist in allowlists for m in allowlist})
        models = tuple(m for m in candidates if model_allowed(m, allowlists, denied))
    limits = []
    for field in api.LIMIT_FIELDS:
        maximums = [
            v for p in policies if p.spec.maximums and (v := getattr(p.spec.maximums, field)) is not None
        ]
        defaults = [
            v for p in policies if p.spec.defaults and (v := getattr(p.spec.defaults, field)) is not None
        ]
        maximum = min(maximums) if maximums else None
        default = min(defaults) if defaults else None
        if default is not None and maximum is not None:
            default = min(default, maximum)
        wire = api.Limits.model_fields[field].alias or to_camel(field)
        limits.append(LimitOffer(field=field, wire=wire, maximum=maximum, default=default))
    max_ttls = [
        (durations.parse_duration(p.spec.max_ttl), p.spec.max_ttl) for p in policies if p.spec.max_ttl
    ]
    max_ttl = min(max_ttls)[1] if max_ttls else None
    cap = min(max_ttls)[0] if max_ttls else None
    ttl_choices = [t for t in TTL_CHOICES if cap is None or durations.parse_duration(t) <= cap]
    if max_ttl is not None and max_ttl not in ttl_choices:
        ttl_choices.append(max_ttl)
    expiry_required = any(p.spec.require_expiry for p in policies)
    refusals = [p for p in policies if not may_self_serve(p, who)]
    approvers: list[str] = []
    for policy in policies:
        if policy.spec.approval is not None and policy.spec.approval.required:
            people = policy.spec.approval.approvers
            approvers += people.users + [f"group {g}" for g in people.groups]
    return Offer(
        namespace=namespace,
        policies=tuple(p.metadata.name for p in policies),
        providers=tuple(sorted(providers)) if providers is not None else None,
        models=models,
        denied_models=denied,
        limits=tuple(limits),
        ttl_choices=tuple(ttl_choices),
        expiry_required=expiry_required,
        max_ttl=max_ttl,
        required_owner_fields=tuple(sorted({f for p in policies for f in p.spec.required_owner_fields})),
        self_service_allowed=not refusals,
        self_service_refusal=(
            f'LLMPolicy "{refusals[0].metadata.name}" does not allow {who.username} to create keys here'
            if refusals
            else ""
        ),
        approval_required=any(approval_required(p) for p in policies),
        approvers=tuple(dict.fromkeys(approvers)),
    )


def model_allowed(model: str, allowlists: Sequence[Sequence[str]], denied: Sequence[str]) -> bool:
    """Allowed by every allowlist and by no denied glob (the proxy's semantics, globs as literals)."""
    if any(fnmatch.fnmatchcase(model, glob) for glob in denied):
        return False
    return all(any(fnmatch.fnmatchcase(model, glob) for glob in allowlist) for allowlist in allowlists)


@dataclasses.dataclass
class KeyRequest:
    """A create-form submission, parsed."""

    namespace: str
    name: str
    spec: dict[str, Any]


def build_request(
    form: Mapping[str, Any], offer: Offer, who: identity.Identity
) -> tuple[KeyRequest | None, list[str]]:
    """The VirtualKey a submission asks for, or the reasons it is refused (every one of them)."""
    errors: list[str] = []
    name = str(form.get("name", "")).strip()
    if not re.match(NAME_PATTERN, name) or len(name) > 63:
        errors.append(
            "name: lower-case letters, digits and '-', at most 63 characters, alphanumeric at both ends"
        )
    if not offer.self_service_allowed:
        errors.append(offer.self_service_refusal)
    owner: dict[str, str] = {"user": who.username}
    for field in OWNER_FORM_FIELDS:
        given = str(form.get(f"owner.{field}", "")).strip()
        if given:
            owner[field] = given
        elif field in offer.required_owner_fields:
            errors.append(f"owner.{field} is required here")
    spec: dict[str, Any] = {"owner": owner}
    description = str(form.get("description", "")).strip()
    if description:
        spec["description"] = description
    providers = _form_list(form, "providers")
    if providers:
        outside = [
            p
            for p in providers
            if (offer.providers is not None and p not in offer.providers) or p not in api.PROVIDER_TYPES
        ]
        if outside:
            errors.append(f"providers not allowed here: {', '.join(outside)}")
        spec["providers"] = providers
    models = _form_list(form, "models")
    if models:
        allowlists = [offer.models] if offer.models is not None else []
        refused = [m for m in models if not model_allowed(m, allowlists, offer.denied_models)]
        if refused:
            errors.append(f"models not allowed here: {', '.join(refused)}")
        spec["models"] = models
    limits: dict[str, Any] = {}
    for limit in offer.limits:
        raw = str(form.get(f"limits.{limit.wire}", "")).strip()
        if not raw:
            continue
        try:
            value: int | Decimal = Decimal(raw) if limit.field == "spend_per_month_usd" else int(raw)
        except (ValueError, ArithmeticError):
            errors.append(f"limits.{limit.wire} must be a number")
            continue
        if value < 0:
            errors.append(f"limits.{limit.wire} must not be negative")
        elif limit.maximum is not None and value > limit.maximum:
            errors.append(f"limits.{limit.wire} {value} exceeds the maximum {limit.maximum} here")
        limits[limit.wire] = str(value) if isinstance(value, Decimal) else value
    if limits:
        spec["limits"] = limits
    ttl = str(form.get("ttl", "")).strip()
    if ttl:
        if ttl not in offer.ttl_choices:
            errors.append(f"ttl {ttl!r} is not offered here (choose one of {', '.join(offer.ttl_choices)})")
        spec["ttl"] = ttl
    elif offer.expiry_required:
        errors.append("an expiry (ttl) is required here")
    try:
        api.VirtualKeySpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        errors.append(config.summarise_validation_error(exc))
    if errors:
        return None, errors
    return KeyRequest(namespace=offer.namespace, name=name, spec=spec), []


def policy_violation(
    request: KeyRequest,
    raw_policies: Sequence[Mapping[str, Any]],
    namespace_labels: Mapping[str, str] | None,
    now: datetime | None = None,
) -> str | None:
    """The compiler's PolicyViolation message for the requested key, or None when it complies."""
    vk = api.VirtualKey.model_validate(
        {"metadata": {"name": request.name, "namespace": request.namespace}, "spec": request.spec}
    )
    policies = [p for raw in raw_policies if (p := parse_policy(raw)) is not None]
    result = compile.compile_proxy_config(
        [vk],
        policies,
        [],
        {},
        {},
        now or datetime.now(UTC),
        gateway_namespace="-",
        namespace_labels={request.namespace: dict(namespace_labels or {})},
    )
    outcome = result.keys[(request.namespace, request.name)]
    return outcome.message if outcome.reason == "PolicyViolation" else None


def _form_list(form: Mapping[str, Any], name: str) -> list[str]:
    value = form.get(name)
    items: list[str] = []
    for part in value if isinstance(value, list) else [value or ""]:
        items += [p.strip() for p in str(part).replace("\n", ",").split(",") if p.strip()]
    return list(dict.fromkeys(items))


def grace_period(spec: Mapping[str, Any]) -> timedelta:
    raw = spec.get("rotationGracePeriod")
    try:
        return durations.parse_duration(raw) if isinstance(raw, str) else timedelta(hours=1)
    except ValueError:
        return timedelta(hours=1)
