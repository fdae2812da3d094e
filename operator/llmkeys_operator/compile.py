"""Compile VirtualKeys, LLMPolicies and ProviderCredentials into the proxy config (pure).

Called by the operator's reconcile loop and by standalone mode with everything they observed; it
returns the `config.ProxyConfig` the proxy serves from plus, per resource, the outcome the caller
writes into status (reasons and messages a person reads, never any secret data).

Rules (DESIGN.md sections 3 and 11):
- Only ProviderCredentials in the gateway namespace count (one without a namespace is taken to be
  there); one whose Secret or Secret key is missing is not emitted.
- Every LLMPolicy selecting a key applies (namespaceSelector on the namespace's labels, keySelector
  on the key's labels): provider allowlists intersect, model allowlists stay separate ANDed lists,
  denied globs add up, limits take the minimum, defaults fill gaps (the lowest default wins).
- A key asking above a maximum, missing a required owner field, lacking a required expiry or
  living longer than maxTTL breaks the policy (reason PolicyViolation, message names policy and
  field). A key without an expiry under a maxTTL policy expires at creation + maxTTL.
- Budgets: one pool per distinct owner-field value among the selected keys. A key without that
  owner field is simply outside the pool (the PolicyCompliant message says so) unless the policy
  requires the field, which makes it a violation.
- A key selected by a policy with `approval.required` is PendingApproval until approved (and again
  after a widening change), ApprovalDenied once denied (see `approvals`); it is emitted marked so,
  and the proxy refuses it (403 key_pending_approval / key_approval_denied).
- Every key with an issued secret is emitted, also when suspended, expired or violating (the proxy
  then answers 403 with the precise code); keys not issued yet are Pending and not emitted.
- Workload identities: `serviceAccount: NAME` becomes the cluster issuer's subject
  `system:serviceaccount:<the key's namespace>:NAME` (never another namespace's); an external
  identity keeps its issuer, subject and required claims. One (issuer, subject) is bound to one key:
  the oldest key naming it (then namespace/name) keeps it, the others' Ready message says it is
  ignored. A keyless key (`staticKey: false`) is emitted without secret hashes. LLMPolicy `keyless`
  can require keyless keys and restrict the external issuers keys may name (violations).
Output is sorted so the stored config only changes when its content does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from llmkeys_operator import api, approvals, durations, selectors
from llmkeys_proxy import config

KeyReason = Literal[
    "Active",
    "Pending",
    "Suspended",
    "Expired",
    "PolicyViolation",
    "NoUsableModels",
    "PendingApproval",
    "ApprovalDenied",
    "Inactive",
]
CredentialReason = Literal["Ready", "SecretMissing", "SecretKeyMissing", "NotInGatewayNamespace"]
ConditionStatus = Literal["True", "False", "Unknown"]

#: Output tokens reserved for a request naming no max_tokens when no policy says otherwise.
DEFAULT_OUTPUT_RESERVATION = 1024
#: Namespace assumed for a VirtualKey manifest that names none (standalone mode).
DEFAULT_NAMESPACE = "default"
_MICRO = Decimal(1_000_000)
# Secret keys a bedrock credential may hold besides (or instead of) a Bedrock API key.
_AWS_SECRET_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


@dataclasses.dataclass(frozen=True)
class IssuedKey:
    """What has been issued for one VirtualKey (from its Secret or the standalone state dir)."""

    key_id: str
    #: Current hash and, during a rotation's grace period, the previous one, each with validity.
    hashes: tuple[config.SecretHash, ...]
    #: Fallback start of the key's lifetime (ttl, maxTTL) when metadata.creationTimestamp is absent.
    issued_at: datetime


@dataclasses.dataclass(frozen=True)
class ConditionContent:
    """A condition without times; the caller stamps lastTransitionTime and observedGeneration."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


#: Annotation a person sets on a VirtualKey to reactivate it after inactivity (RFC 3339 time; it
#: counts as a use). Metadata, not spec: the operator never writes either.
REACTIVATED_AT_ANNOTATION = "llmkeys.io/reactivated-at"


@dataclasses.dataclass(frozen=True)
class Idleness:
    """A key's inactivity: unused since `since`; warned at `warn_at`, suspended at `inactive_at`."""

    since: datetime
    warn_at: datetime | None
    inactive_at: datetime | None


def last_activity(virtual_key: api.VirtualKey, issued: IssuedKey | None) -> datetime | None:
    """The latest of: last use (status), creation (or issue), the reactivated-at annotation."""
    candidates = [virtual_key.metadata.creation_timestamp or (issued.issued_at if issued else None)]
    usage = virtual_key.status.usage if virtual_key.status is not None else None
    if usage is not None:
        candidates += [usage.last_used_at]
        candidates += [period.last_used_at for period in (usage.day, usage.month) if period is not None]
    stamp = virtual_key.metadata.annotations.get(REACTIVATED_AT_ANNOTATION)
    if stamp:
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            candidates.append(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    known = [at if at.tzinfo else at.replace(tzinfo=UTC) for at in candidates if at is not None]
    return max(known, default=None)


def idleness(
    virtual_key: api.VirtualKey, policies: Sequence[api.LLMPolicy], issued: IssuedKey | None
) -> Idleness | None:
    """The key's inactivity under the shortest warnAfter / suspendAfter of its policies, if any."""
    warn: list[timedelta] = []
    suspend: list[timedelta] = []
    for policy in policies:
        rules = policy.spec.inactivity
        if rules is None:
            continue
        with contextlib.suppress(ValueError):
            if rules.warn_after:
                warn.append(durations.parse_duration(rules.warn_after))
            if rules.suspend_after:
                suspend.append(durations.parse_duration(rules.suspend_after))
    if not warn and not suspend:
        return None
    since = last_activity(virtual_key, issued)
    if since is None:
        return None
    return Idleness(
        since=since,
        warn_at=since + min(warn) if warn else None,
        inactive_at=since + min(suspend) if suspend else None,
    )


@dataclasses.dataclass(frozen=True)
class KeyOutcome:
    """The state of one VirtualKey after compilation, for its status."""

    reason: KeyReason
    ready: bool
    #: What a person reads in `kubectl get vk` / the Ready condition.
    message: str
    expires_at: datetime | None
    effective: api.EffectiveLimits | None
    #: Ready and PolicyCompliant.
    conditions: tuple[ConditionContent, ...]
    #: Names of the LLMPolicies that select the key.
    policies: list[str]
    #: Whether the key is in the compiled config (it is once issued).
    emitted: bool = False
    #: Since when the key is unused, and when that warns and suspends it (LLMPolicy inactivity).
    idle: Idleness | None = None
    #: Approval state when an applying policy requires approval.
    approval: approvals.KeyApproval | None = None


@dataclasses.dataclass(frozen=True)
class CredentialOutcome:
    """The state of one ProviderCredential after compilation, for its status."""

    ready: bool
    reason: CredentialReason
    message: str
    #: Model names or globs the credential serves ("*" when it lists none).
    models: list[str]


@dataclasses.dataclass(frozen=True)
class PolicyOutcome:
    """What one LLMPolicy selected."""

    #: `namespace/name` of every VirtualKey the policy selects.
    selected_keys: list[str]
    #: Ids of the pools its budgets formed.
    pools: list[str]


@dataclasses.dataclass
class CompileResult:
    config: config.ProxyConfig
    keys: dict[tuple[str, str], KeyOutcome]
    credentials: dict[tuple[str, str], CredentialOutcome]
    policies: dict[str, PolicyOutcome]


def compile_proxy_config(
    virtual_keys: Sequence[api.VirtualKey],
    policies: Sequence[api.LLMPolicy],
    credentials: Sequence[api.ProviderCredential],
    secrets: Mapping[tuple[str, str], Mapping[str, str]],
    issued: Mapping[tuple[str, str], IssuedKey],
    now: datetime,
    *,
    gateway_namespace: str,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    manifest_approvals: bool = False,
) -> CompileResult:
    """Resources as observed -> the proxy config plus per-resource outcomes (see module docstring).

    `secrets` maps (namespace, name) to decoded Secret data; `issued` maps a VirtualKey's
    (namespace, name) to what has been issued for it; `namespace_labels` feeds namespaceSelectors.
    `manifest_approvals` (standalone mode: the folder is trusted) honours `llmkeys.io/approval`
    written in a manifest; in a cluster only the webhook's stamps count.
    """
    providers: list[config.ProviderEntry] = []
    credential_outcomes: dict[tuple[str, str], CredentialOutcome] = {}

    def credential_ref(credential: api.ProviderCredential) -> tuple[str, str]:
        return (credential.metadata.namespace or gateway_namespace, credential.metadata.name)

    for credential in sorted(credentials, key=credential_ref):
        entry, credential_outcome = _compile_credential(credential, secrets, gateway_namespace)
        credential_outcomes[credential_ref(credential)] = credential_outcome
        if entry is not None:
            providers.append(entry)

    sorted_policies = sorted(policies, key=lambda p: p.metadata.name)
    selected: dict[str, list[str]] = {p.metadata.name: [] for p in sorted_policies}
    # (policy, budget, group value) -> pool, collected over all keys.
    pool_members: dict[tuple[str, str, str], None] = {}
    key_entries: list[config.KeyEntry] = []
    key_outcomes: dict[tuple[str, str], KeyOutcome] = {}
    bound = _identity_owners(virtual_keys)
    for virtual_key in sorted(virtual_keys, key=_key_ref):
        ref = _key_ref(virtual_key)
        namespace_labels_of_key = selectors.namespace_labels_of(ref[0], namespace_labels)
        applying = applying_policies(virtual_key, sorted_policies, namespace_labels_of_key)
        for policy in applying:
            selected[policy.metadata.name].append(f"{ref[0]}/{ref[1]}")
        compiled = _compile_key(
            virtual_key,
            ref,
            applying,
            providers,
            issued.get(ref),
            now,
            gateway_namespace,
            bound,
            manifest_approvals,
        )
        key_outcomes[ref] = compiled.outcome
        if compiled.entry is not None:
            key_entries.append(compiled.entry)
        for pool in compiled.pools:
            pool_members[pool] = None

    pools = _compile_pools(sorted_policies, pool_members)
    policy_outcomes = {
        name: PolicyOutcome(
            selected_keys=keys, pools=sorted(pool.id for pool in pools if pool.policy == name)
        )
        for name, keys in selected.items()
    }
    proxy_config = config.ProxyConfig(
        keys=tuple(key_entries), providers=tuple(providers), pools=tuple(sorted(pools, key=lambda p: p.id))
    )
    return CompileResult(
        config=proxy_config, keys=key_outcomes, credentials=credential_outcomes, policies=policy_outcomes
    )


def applying_policies(
    virtual_key: api.VirtualKey, policies: Sequence[api.LLMPolicy], namespace_labels: Mapping[str, str]
) -> list[api.LLMPolicy]:
    """The policies selecting a key (by its namespace's labels and its own), in the order given."""
    return [
        policy
        for policy in policies
        if selectors.selector_matches(policy.spec.namespace_selector, namespace_labels)
        and selectors.selector_matches(policy.spec.key_selector, virtual_key.metadata.labels)
    ]


def policy_violations(
    virtual_key: api.VirtualKey, policies: Sequence[api.LLMPolicy], start: datetime
) -> tuple[api.Limits, datetime | None, list[str]]:
    """Effective limits, resolved expiry and every breach of the applying policies.

    The one implementation of the guardrails: the compiler's PolicyViolation condition and the
    admission webhook's apply-time refusal both read their message from here ("; "-joined).
    """
    violations: list[str] = []
    limits = _merge_limits(virtual_key.spec.limits, policies, violations)
    _check_owner(virtual_key.spec.owner, policies, violations)
    expires_at = _resolve_expiry(virtual_key.spec, policies, start, violations)
    _check_identities(virtual_key.spec, policies, violations)
    return limits, expires_at, violations


def key_start(virtual_key: api.VirtualKey, issued: IssuedKey | None, now: datetime) -> datetime:
    """Start of a key's lifetime (ttl, maxTTL): creation time, else issue time, else now."""
    return virtual_key.metadata.creation_timestamp or (issued.issued_at if issued else now)


# ------------------------------------------------------------------------------------ credentials


def _compile_credential(
    credential: api.ProviderCredential,
    secrets: Mapping[tuple[str, str], Mapping[str, str]],
    gateway_namespace: str,
) -> tuple[config.ProviderEntry | None, CredentialOutcome]:
    spec = credential.spec
    namespace = credential.metadata.namespace or gateway_namespace
    routes = tuple(config.ModelRoute(name=m.name, upstream_name=m.upstream_name) for m in spec.models) or (
        config.ModelRoute(name="*"),
    )
    models = [route.name for route in routes]

    def refused(reason: CredentialReason, message: str) -> tuple[None, CredentialOutcome]:
        return None, CredentialOutcome(ready=False, reason=reason, message=message, models=models)

    if namespace != gateway_namespace:
        return refused(
            "NotInGatewayNamespace",
            f'ProviderCredentials are honoured only in the gateway namespace "{gateway_namespace}"',
        )
    api_key: str | None = None
    secret_fields: dict[str, str] = {}
    if spec.secret_ref is not None:
        ref = spec.secret_ref
        data = secrets.get((namespace, ref.name))
        if data is None:
            return refused(
                "SecretMissing",
                f'Secret "{ref.name}" not found in namespace "{namespace}" (in a cluster the operator sees '
                f"only Secrets labelled {api.SECRET_LABEL}: {api.SECRET_LABEL_CREDENTIAL})",
            )
        if spec.provider == "bedrock":
            secret_fields = _aws_fields(data)
        api_key = data.get(ref.key) or None
        has_aws_pair = "aws_access_key_id" in secret_fields and "aws_secret_access_key" in secret_fields
        if api_key is None and not has_aws_pair:
            return refused("SecretKeyMissing", f'Secret "{ref.name}" has no (non-empty) key "{ref.key}"')
    entry = config.ProviderEntry(
        id=f"{namespace}/{credential.metadata.name}",
        provider=spec.provider,
        base_url=spec.base_url,
        api_key=api_key,
        secret_fields=secret_fields,
        models=routes,
        api_version=spec.azure.api_version if spec.azure else None,
        deployments=dict(sorted(spec.azure.deployments.items())) if spec.azure else {},
        project=spec.vertex.project if spec.vertex else None,
        location=spec.vertex.location if spec.vertex else None,
        region=spec.bedrock.region if spec.bedrock else None,
        pricing={model: _model_price(price) for model, price in sorted(spec.pricing.items())},
        limits=_config_limits(spec.limits) if spec.limits is not None else None,
        mock_latency_ms=spec.mock.latency_ms if spec.mock else 0,
    )
    served = ", ".join(models)
    return entry, CredentialOutcome(ready=True, reason="Ready", message=f"serving {served}", models=models)


def _aws_fields(data: Mapping[str, str]) -> dict[str, str]:
    # Accept both the lowercase names and the AWS_* environment-variable spelling.
    fields = {}
    for name in _AWS_SECRET_FIELDS:
        value = data.get(name) or data.get(name.upper())
        if value:
            fields[name] = value
    return fields


def _model_price(price: api.ModelPricing) -> config.ModelPrice:
    return config.ModelPrice(
        input=usd_to_micro(price.input),
        cached_input=usd_to_micro(price.cached_input) if price.cached_input is not None else None,
        cache_write=usd_to_micro(price.cache_write) if price.cache_write is not None else None,
        output=usd_to_micro(price.output),
    )


def usd_to_micro(amount: Decimal) -> int:
    """Decimal USD -> integer micro-USD; exact for the API's 6 decimal places."""
    return int((amount * _MICRO).to_integral_value())


def micro_to_usd(micro: int) -> Decimal:
    """Integer micro-USD -> decimal USD without trailing zeros (status fields)."""
    value = (Decimal(micro) / _MICRO).normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


def _config_limits(limits: api.Limits) -> config.Limits:
    spend = limits.spend_per_month_usd
    return config.Limits(
        requests_per_minute=limits.requests_per_minute,
        tokens_per_minute=limits.tokens_per_minute,
        tokens_per_day=limits.tokens_per_day,
        tokens_per_month=limits.tokens_per_month,
        spend_per_month_micro_usd=usd_to_micro(spend) if spend is not None else None,
        max_tokens_per_request=limits.max_tokens_per_request,
    )


# ------------------------------------------------------------------------------------------- keys


@dataclasses.dataclass(frozen=True)
class _CompiledKey:
    entry: config.KeyEntry | None
    outcome: KeyOutcome
    pools: tuple[tuple[str, str, str], ...]


def _key_ref(virtual_key: api.VirtualKey) -> tuple[str, str]:
    return (virtual_key.metadata.namespace or DEFAULT_NAMESPACE, virtual_key.metadata.name)


def workload_identities(spec: api.VirtualKeySpec, namespace: str) -> list[config.Identity]:
    """The config identities of a key's spec.identities (ServiceAccounts of `namespace` only)."""
    found = []
    for identity in spec.identities:
        if identity.service_account is not None:
            subject = f"system:serviceaccount:{namespace}:{identity.service_account}"
            found.append(config.Identity(issuer=config.KUBERNETES_ISSUER, subject=subject))
        elif identity.issuer is not None and identity.subject is not None:
            claims = dict(sorted(identity.claims.items()))
            found.append(config.Identity(issuer=identity.issuer, subject=identity.subject, claims=claims))
    return found


def _identity_owners(virtual_keys: Sequence[api.VirtualKey]) -> dict[tuple[str, str], tuple[str, str]]:
    """(issuer, subject) -> the key that keeps it: the oldest naming it, then by namespace/name."""
    epoch = datetime.min.replace(tzinfo=UTC)

    def age(virtual_key: api.VirtualKey) -> tuple[datetime, tuple[str, str]]:
        created = virtual_key.metadata.creation_timestamp
        return (created.astimezone(UTC) if created is not None else epoch, _key_ref(virtual_key))

    owners: dict[tuple[str, str], tuple[str, str]] = {}
    for virtual_key in sorted(virtual_keys, key=age):
        ref = _key_ref(virtual_key)
        for identity in workload_identities(virtual_key.spec, ref[0]):
            owners.setdefault((identity.issuer, identity.subject), ref)
    return owners


def _check_identities(
    spec: api.VirtualKeySpec, policies: Sequence[api.LLMPolicy], violations: list[str]
) -> None:
    for policy in policies:
        keyless = policy.spec.keyless
        if keyless is None:
            continue
        name = policy.metadata.name
        if keyless.required and spec.static_key:
            violations.append(f'staticKey must be false: LLMPolicy "{name}" requires keyless keys')
        if keyless.allowed_issuers is None:
            continue
        for index, identity in enumerate(spec.identities):
            if identity.issuer is not None and identity.issuer not in keyless.allowed_issuers:
                violations.append(
                    f'identities[{index}].issuer "{identity.issuer}" is not allowed by LLMPolicy "{name}"'
                )


def _compile_key(
    virtual_key: api.VirtualKey,
    ref: tuple[str, str],
    policies: Sequence[api.LLMPolicy],
    providers: Sequence[config.ProviderEntry],
    issued: IssuedKey | None,
    now: datetime,
    gateway_namespace: str,
    bound: Mapping[tuple[str, str], tuple[str, str]],
    manifest_approvals: bool = False,
) -> _CompiledKey:
    spec = virtual_key.spec
    policy_names = [p.metadata.name for p in policies]
    notes: list[str] = []
    identities: list[config.Identity] = []
    ignored: list[str] = []
    for identity in workload_identities(spec, ref[0]):
        owner = bound.get((identity.issuer, identity.subject), ref)
        if owner == ref:
            identities.append(identity)
            continue
        where = f"VirtualKey {owner[1]}" if owner[0] == ref[0] else "a VirtualKey of another namespace"
        ignored.append(f"identity {identity.subject} ({identity.issuer}) is bound to {where}; ignored here")

    start = key_start(virtual_key, issued, now)
    limits, expires_at, violations = policy_violations(virtual_key, policies, start)
    approval = approvals.key_approval(virtual_key, policies, start, trust_manifest=manifest_approvals)

    # Providers: the key's wish intersected with every policy's allowlist.
    allowed_types = set(spec.providers if spec.providers is not None else api.PROVIDER_TYPES)
    for policy in policies:
        if policy.spec.allowed_providers is not None:
            allowed_types &= set(policy.spec.allowed_providers)
    usable = [entry for entry in providers if entry.provider in allowed_types]

    allowlists = _model_allowlists(spec.models, policies)
    denied = tuple(sorted({glob for p in policies for glob in p.spec.denied_models}))
    models = _effective_models(usable, allowlists, denied)

    pools: list[tuple[str, str, str]] = []
    for policy in policies:
        for budget in policy.spec.budgets:
            value = spec.owner.get(budget.group_by)
            if value is not None:
                pools.append((policy.metadata.name, budget.name, value))
            elif budget.group_by not in policy.spec.required_owner_fields:
                notes.append(
                    f'not in budget "{budget.name}" of LLMPolicy "{policy.metadata.name}": '
                    f"owner.{budget.group_by} is not set"
                )
    pool_ids = tuple(sorted(f"{p}/{b}/{v}" for p, b, v in pools))

    reservations = [p.spec.default_output_reservation for p in policies if p.spec.default_output_reservation]
    reservation = min(reservations, default=DEFAULT_OUTPUT_RESERVATION)
    if limits.max_tokens_per_request is not None:
        reservation = min(reservation, limits.max_tokens_per_request)
    on_unavailable: config.LimiterFailureMode = "Reject"
    modes = {p.spec.on_limiter_unavailable for p in policies}
    if "Allow" in modes and "Reject" not in modes:
        on_unavailable = "Allow"

    audit = effective_audit(spec.audit, policies, violations)
    effective = api.EffectiveLimits(
        providers=[entry.id for entry in usable],
        models=models[: api.LIST_MAX],
        denied_models=list(denied),
        limits=limits,
        policies=policy_names,
        pools=list(pool_ids),
        audit=audit,
    )

    violation = "; ".join(violations) or None
    idle = idleness(virtual_key, policies, issued)
    reason: KeyReason
    if spec.suspended:
        reason, message = "Suspended", "suspended (spec.suspended is true)"
    elif expires_at is not None and expires_at <= now:
        reason, message = "Expired", f"expired at {_format_time(expires_at)}"
    elif idle is not None and idle.inactive_at is not None and idle.inactive_at <= now:
        reason = "Inactive"
        message = (
            f"unused since {_format_time(idle.since)}: suspended by LLMPolicy inactivity.suspendAfter; "
            f"reactivate with: kubectl annotate vk {virtual_key.metadata.name} "
            f"{REACTIVATED_AT_ANNOTATION}=$(date -u +%FT%TZ) --overwrite"
        )
    elif violation is not None:
        reason, message = "PolicyViolation", violation
    elif approval is not None and approval.state == "Denied":
        reason, message = "ApprovalDenied", approval.message
    elif not models:
        reason = "NoUsableModels"
        message = _no_models_message(spec, policies, allowed_types, usable, allowlists, gateway_namespace)
    elif approval is not None and approval.state == "Pending":
        reason, message = "PendingApproval", approval.message
    elif issued is None:
        reason, message = "Pending", "waiting for the key to be issued"
    else:
        reason = "Active"
        message = f"active until {_format_time(expires_at)}" if expires_at is not None else "active"
        unserved = _unserved_wishes(spec, usable)
        if unserved:
            message += f"; not served by any usable credential: {', '.join(unserved)}"
        if not spec.static_key:
            message += "; keyless (tokens of its identities only)"
        for note in ignored:
            message += f"; {note}"

    if violation is not None:
        compliant = ConditionContent("PolicyCompliant", "False", "PolicyViolation", violation)
    else:
        text = (
            f"compliant with LLMPolicy {', '.join(policy_names)}"
            if policies
            else "no LLMPolicy selects this key"
        )
        compliant = ConditionContent("PolicyCompliant", "True", "Compliant", "; ".join([text, *notes]))
    ready = reason == "Active"
    outcome = KeyOutcome(
        reason=reason,
        ready=ready,
        message=message,
        expires_at=expires_at,
        effective=effective,
        conditions=(ConditionContent("Ready", "True" if ready else "False", reason, message), compliant),
        policies=policy_names,
        emitted=issued is not None,
        idle=idle,
        approval=approval,
    )
    if issued is None:
        return _CompiledKey(entry=None, outcome=outcome, pools=tuple(pools))

    usage = virtual_key.status.usage if virtual_key.status is not None else None
    entry = config.KeyEntry(
        key_id=issued.key_id,
        # Keyless: no static key works, whatever a Secret still holds while it is being emptied.
        hashes=issued.hashes if spec.static_key else (),
        namespace=ref[0],
        name=ref[1],
        owner=spec.owner.as_dict(),
        providers=tuple(e.id for e in usable),
        model_allowlists=allowlists,
        denied_models=denied,
        limits=_config_limits(limits),
        default_output_reservation=reservation,
        expires_at=expires_at,
        suspended=spec.suspended,
        inactive=reason == "Inactive",
        policy_violation=violation,
        approval=_entry_approval(approval),
        pools=pool_ids,
        on_limiter_unavailable=on_unavailable,
        month_usage_seed=_usage_seed(usage.month if usage else None, "%Y-%m"),
        day_usage_seed=_usage_seed(usage.day if usage else None, "%Y-%m-%d"),
        audit=config.KeyAudit(level=audit.level, sinks=tuple(audit.sinks), retain_days=audit.retain_days),
        identities=tuple(identities),
    )
    return _CompiledKey(entry=entry, outcome=outcome, pools=tuple(pools))


def _entry_approval(approval: approvals.KeyApproval | None) -> Literal["pending", "denied"] | None:
    if approval is None or approval.state == "Approved":
        return None
    return "denied" if approval.state == "Denied" else "pending"


def _wire(field: str) -> str:
    return api.Limits.model_fields[field].alias or field


def _merge_limits(
    own: api.Limits | None, policies: Sequence[api.LLMPolicy], violations: list[str]
) -> api.Limits:
    """Per field: the key's value (or the lowest policy default), then the minimum with every maximum."""
    merged: dict[str, int | Decimal | None] = {}
    for field in api.LIMIT_FIELDS:
        asked: int | Decimal | None = getattr(own, field) if own is not None else None
        candidates: list[int | Decimal] = []
        if asked is not None:
            candidates.append(asked)
        else:
            defaults = [
                v for p in policies if p.spec.defaults and (v := getattr(p.spec.defaults, field)) is not None
            ]
            if defaults:
                candidates.append(min(defaults))
        for policy in policies:
            maximum = getattr(policy.spec.maximums, field) if policy.spec.maximums is not None else None
            if maximum is None:
                continue
            candidates.append(maximum)
            if asked is not None and asked > maximum:
                violations.append(
                    f"limits.{_wire(field)} {_format_number(asked)} exceeds maximum "
                    f'{_format_number(maximum)} of LLMPolicy "{policy.metadata.name}"'
                )
        merged[field] = min(candidates) if candidates else None
    return api.Limits.model_validate(merged)


def effective_audit(
    own: api.KeyAudit | None, policies: Sequence[api.LLMPolicy], violations: list[str]
) -> api.EffectiveAudit:
    """The key's audit policy: the highest level of the applying policies (metadata without any),
    or the key's own where every policy allows it; sinks joined; the longest retention."""
    rules = [(p.metadata.name, p.spec.audit or api.PolicyAudit()) for p in policies]
    rank = api.AUDIT_LEVELS.index
    level: api.AuditLevel = max((rule.level for _, rule in rules), key=rank, default="metadata")
    if own is not None and own.level is not None and own.level != level:
        refusing = [name for name, rule in rules if own.level not in (rule.level, *rule.allowed_levels)]
        for name in refusing:
            violations.append(f'audit.level {own.level} is not allowed by LLMPolicy "{name}"')
        if not refusing:
            level = own.level
    sinks = {sink for _, rule in rules for sink in rule.sinks} | set(own.sinks if own else ())
    days = [d for _, rule in rules if (d := rule.retain_days) is not None]
    if own is not None and own.retain_days is not None:
        days.append(own.retain_days)
    return api.EffectiveAudit(
        level=level,
        sinks=sorted(sinks, key=("stdout", "file", "otlp").index),
        retain_days=max(days, default=None),
    )


def _check_owner(owner: api.Owner, policies: Sequence[api.LLMPolicy], violations: list[str]) -> None:
    for policy in policies:
        for field in policy.spec.required_owner_fields:
            if owner.get(field) is None:
                violations.append(f'owner.{field} is required by LLMPolicy "{policy.metadata.name}"')


def _resolve_expiry(
    spec: api.VirtualKeySpec, policies: Sequence[api.LLMPolicy], start: datetime, violations: list[str]
) -> datetime | None:
    """The key's own expiry (expiresAt, or ttl from start), else the tightest maxTTL; checks the policies."""
    own: datetime | None = spec.expires_at
    if spec.ttl is not None:
        try:
            own = start + durations.parse_duration(spec.ttl)
        except ValueError as exc:
            violations.append(f"ttl: {exc}")
    caps: list[datetime] = []
    for policy in policies:
        name = policy.metadata.name
        if policy.spec.require_expiry and spec.expires_at is None and spec.ttl is None:
            violations.append(f'an expiry (expiresAt or ttl) is required by LLMPolicy "{name}"')
        if policy.spec.max_ttl is None:
            continue
        try:
            max_ttl = durations.parse_duration(policy.spec.max_ttl)
        except ValueError as exc:
            violations.append(f'maxTTL of LLMPolicy "{name}": {exc}')
            continue
        cap = start + max_ttl
        caps.append(cap)
        if own is not None and own > cap:
            lifetime = durations.format_duration(own - start)
            violations.append(
                f'lifetime {lifetime} exceeds maxTTL {policy.spec.max_ttl} of LLMPolicy "{name}"'
            )
    if own is not None:
        return own
    return min(caps, default=None)


def _model_allowlists(
    own: Sequence[str] | None, policies: Sequence[api.LLMPolicy]
) -> tuple[tuple[str, ...], ...]:
    lists = {tuple(sorted(set(own)))} if own is not None else set()
    lists |= {
        tuple(sorted(set(p.spec.allowed_models))) for p in policies if p.spec.allowed_models is not None
    }
    return tuple(sorted(lists)) or (("*",),)


@functools.lru_cache(maxsize=1024)
def _glob_matcher(globs: tuple[str, ...]) -> Callable[[str], bool]:
    """One compiled regex for "matches any of these globs" (fnmatchcase semantics)."""
    if not globs:
        return lambda _name: False
    pattern = re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))
    return lambda name: pattern.match(name) is not None


def _model_allowed(model: str, allowlists: tuple[tuple[str, ...], ...], denied: tuple[str, ...]) -> bool:
    # Same semantics as config.KeyEntry.model_allowed (globs compared as the proxy compares names).
    if _glob_matcher(denied)(model):
        return False
    return all(_glob_matcher(allowlist)(model) for allowlist in allowlists)


def _effective_models(
    usable: Sequence[config.ProviderEntry], allowlists: tuple[tuple[str, ...], ...], denied: tuple[str, ...]
) -> list[str]:
    """Names and globs (from the credentials and the allowlists) that are allowed and served.

    Globs are not sets we can intersect exactly; a glob counts as allowed when every allowlist
    matches it as a literal, which lists `gpt-5*` for a key asking `gpt-5*` under a policy
    allowing `gpt-*`, and lists concrete names the credentials serve.
    """
    routes = tuple(sorted({route.name for entry in usable for route in entry.models}))
    return list(_served_and_allowed(routes, allowlists, denied))


@functools.lru_cache(maxsize=1024)
def _served_and_allowed(
    routes: tuple[str, ...], allowlists: tuple[tuple[str, ...], ...], denied: tuple[str, ...]
) -> tuple[str, ...]:
    # Cached: keys sharing credentials and policies (most of them) share the answer.
    served = _glob_matcher(routes)
    candidates = set(routes) | {glob for allowlist in allowlists for glob in allowlist}
    return tuple(
        sorted(name for name in candidates if served(name) and _model_allowed(name, allowlists, denied))
    )


def _no_models_message(
    spec: api.VirtualKeySpec,
    policies: Sequence[api.LLMPolicy],
    allowed_types: set[str],
    usable: Sequence[config.ProviderEntry],
    allowlists: tuple[tuple[str, ...], ...],
    gateway_namespace: str,
) -> str:
    if not allowed_types:
        parts = [f"the key asks for {_format_list(spec.providers)}"] if spec.providers is not None else []
        parts += [
            f'LLMPolicy "{p.metadata.name}" allows {_format_list(p.spec.allowed_providers)}'
            for p in policies
            if p.spec.allowed_providers is not None
        ]
        return "no provider is allowed: " + "; ".join(parts)
    if not usable:
        return (
            f"no usable ProviderCredential in namespace {gateway_namespace!r} serves "
            f"{_format_list(sorted(allowed_types))}"
        )
    parts = [f"the key asks for {_format_list(spec.models)}"] if spec.models is not None else []
    parts += [
        f'LLMPolicy "{p.metadata.name}" allows {_format_list(p.spec.allowed_models)}'
        for p in policies
        if p.spec.allowed_models is not None
    ]
    denied = sorted({glob for p in policies for glob in p.spec.denied_models})
    if denied:
        parts.append(f"denied {_format_list(denied)}")
    served = sorted({route.name for entry in usable for route in entry.models})
    parts.append(f"credentials serve {_format_list(served)}")
    return "no model is both allowed and served: " + "; ".join(parts)


def _unserved_wishes(spec: api.VirtualKeySpec, usable: Sequence[config.ProviderEntry]) -> list[str]:
    """Providers and models the key names that no usable credential serves (a typo, usually)."""
    unserved: list[str] = [p for p in spec.providers or () if not any(e.provider == p for e in usable)]
    routes = [route.name for entry in usable for route in entry.models]
    for glob in spec.models or ():
        if not any(fnmatch.fnmatchcase(glob, r) or fnmatch.fnmatchcase(r, glob) for r in routes):
            unserved.append(glob)
    return unserved


def usage_seeds(usage: api.UsageByPeriod) -> tuple[config.UsageSeed | None, config.UsageSeed | None]:
    """(month, day) seeds of a key's `status.usage`: what the limiter restores when it lost them."""
    return _usage_seed(usage.month, "%Y-%m"), _usage_seed(usage.day, "%Y-%m-%d")


def _usage_seed(usage: api.Usage | None, period_format: str) -> config.UsageSeed | None:
    if usage is None or usage.period_start is None:
        return None
    try:
        micro_usd = usd_to_micro(Decimal(usage.spend_usd))
    except InvalidOperation:
        micro_usd = 0
    return config.UsageSeed(
        period=usage.period_start.strftime(period_format),
        requests=usage.requests,
        tokens=usage.input_tokens + usage.output_tokens,
        micro_usd=max(micro_usd, 0),
    )


# ------------------------------------------------------------------------------------------ pools


def _compile_pools(
    policies: Sequence[api.LLMPolicy], members: Mapping[tuple[str, str, str], None]
) -> list[config.PoolEntry]:
    by_name = {p.metadata.name: p for p in policies}
    pools = []
    for policy_name, budget_name, value in sorted(members):
        policy = by_name[policy_name]
        budget = next(b for b in policy.spec.budgets if b.name == budget_name)
        seed = None
        for usage in policy.status.pools if policy.status is not None else []:
            if usage.budget == budget_name and usage.group == value and usage.period_start is not None:
                try:
                    micro_usd = usd_to_micro(Decimal(usage.spend_usd))
                except InvalidOperation:
                    micro_usd = 0
                seed = config.UsageSeed(
                    period=usage.period_start.strftime("%Y-%m"),
                    tokens=usage.tokens,
                    micro_usd=max(micro_usd, 0),
                )
        pools.append(
            config.PoolEntry(
                id=f"{policy_name}/{budget_name}/{value}",
                policy=policy_name,
                budget=budget_name,
                group_by=budget.group_by,
                group_value=value,
                spend_per_month_micro_usd=(
                    usd_to_micro(budget.spend_per_month_usd)
                    if budget.spend_per_month_usd is not None
                    else None
                ),
                tokens_per_month=budget.tokens_per_month,
                month_usage_seed=seed,
            )
        )
    return pools


# ----------------------------------------------------------------------------------- formatting


def _format_number(value: int | Decimal) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def _format_list(values: Iterable[str] | None) -> str:
    return "[" + ", ".join(values or ()) + "]"


def _format_time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
