"""The llmkeys.io/v1alpha1 API: pydantic models of VirtualKey, ProviderCredential and LLMPolicy.

The source of truth for the three CRDs: `crdgen` renders `crds/*.yaml` from these models (field
docstrings become the descriptions `kubectl explain` shows; `cel_rules` become the
`x-kubernetes-validations` the apiserver evaluates), `compile` reads them, handlers parse
Kubernetes bodies into them. Spec is desired state; status is observed state.

The CEL rules are also checked in Python when a model is built, with the same messages, so
manifests that never meet an apiserver (standalone mode) are held to the same static rules.

Money is a decimal USD amount written as a string (`"12.5"`): a CRD schema cannot accept both
decimal numbers and strings while staying structural (`x-kubernetes-int-or-string` drops
fractions), so the schema says string with a pattern, and Python also accepts a number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from llmkeys_proxy import config

GROUP = "llmkeys.io"
VERSION = "v1alpha1"
API_VERSION: Final = "llmkeys.io/v1alpha1"
#: The label every Secret the operator reads carries (its Secret watch selects on it server-side);
#: a person sets it to SECRET_LABEL_CREDENTIAL on the Secret a ProviderCredential's secretRef names.
SECRET_LABEL: Final = "llmkeys.io/secret"  # noqa: S105  (a label name)
SECRET_LABEL_CREDENTIAL: Final = "credential"  # noqa: S105  (a label value)

#: Provider families: one list for the API and the proxy contract (the proxy owns it).
ProviderType = config.ProviderType
PROVIDER_TYPES: tuple[str, ...] = ProviderType.__args__  # type: ignore[attr-defined]

#: Owner fields as spelled in manifests (policy `requiredOwnerFields`, budget `groupBy`).
OwnerField = Literal["user", "team", "app", "agent", "service", "environment", "costCenter"]
OWNER_FIELDS: tuple[str, ...] = OwnerField.__args__  # type: ignore[attr-defined]

# Bounds shared by the CRD schemas (structural schemas need maxLength/maxItems everywhere).
NAME_MAX = 253
GLOB_MAX = 256
LIST_MAX = 256
MAP_MAX = 256
LABELS_MAX = 64

#: Go-style durations limited to whole units: 30d, 12h, 1w2d, 90s.
DURATION_PATTERN = r"^([0-9]+(s|m|h|d|w))+$"
#: Decimal USD: up to 8 integer digits and 6 decimals (micro-USD is exact).
USD_PATTERN = r"^[0-9]{1,8}(\.[0-9]{1,6})?$"

# Identity and approval annotations on VirtualKeys (README "Self-service and approvals"). In a
# cluster only the admission webhook writes them, from the API server's authenticated userInfo;
# in standalone mode the manifests folder is trusted and they are read as written.
#: Username of the requester who created the key (stamped on create, never changed by non-admins).
ANNOTATION_CREATED_BY: Final = "llmkeys.io/created-by"
#: Digest of the creator's groups at creation time ("sha256:<hex>" over the sorted group names).
ANNOTATION_CREATED_BY_GROUPS: Final = "llmkeys.io/created-by-groups"
#: The act an approver asks for: "approve" or "deny"; the webhook replaces it with the stamps below.
ANNOTATION_APPROVAL: Final = "llmkeys.io/approval"
#: Why (optional with approve, recorded with deny).
ANNOTATION_APPROVAL_REASON: Final = "llmkeys.io/approval-reason"
ANNOTATION_APPROVED_BY: Final = "llmkeys.io/approved-by"
ANNOTATION_APPROVED_AT: Final = "llmkeys.io/approved-at"
#: What was approved: compact JSON of the approval-relevant spec (limits, providers, models, expiry),
#: so a later change is compared with it (widening needs a new approval, narrowing does not).
ANNOTATION_APPROVED_SPEC: Final = "llmkeys.io/approved-spec"
ANNOTATION_DENIED_BY: Final = "llmkeys.io/denied-by"
ANNOTATION_DENIED_AT: Final = "llmkeys.io/denied-at"
ANNOTATION_DENIED_REASON: Final = "llmkeys.io/denied-reason"
#: Values of ANNOTATION_APPROVAL.
APPROVE: Final = "approve"
DENY: Final = "deny"
#: Every annotation an approval act writes (changed only through an authorised approval).
APPROVAL_STAMPS: tuple[str, ...] = (
    ANNOTATION_APPROVED_BY,
    ANNOTATION_APPROVED_AT,
    ANNOTATION_APPROVED_SPEC,
    ANNOTATION_DENIED_BY,
    ANNOTATION_DENIED_AT,
    ANNOTATION_DENIED_REASON,
)

Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
Glob = Annotated[str, Field(min_length=1, max_length=GLOB_MAX)]
Duration = Annotated[str, Field(max_length=32, pattern=DURATION_PATTERN)]
LabelKey = Annotated[str, Field(min_length=1, max_length=317)]
LabelValue = Annotated[str, Field(max_length=63)]
#: Decimal USD; a string with a pattern in the CRD, a string or a number in Python.
UsdAmount = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=6),
    WithJsonSchema({"type": "string", "pattern": USD_PATTERN, "maxLength": 15}),
]


@dataclasses.dataclass(frozen=True)
class CelRule:
    """A static check: CEL for the apiserver plus the same check in Python, with one message."""

    rule: str
    message: str
    holds: Callable[[Any], bool]


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    #: Rules rendered into the CRD as `x-kubernetes-validations` and checked on construction.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler.resolve_ref_schema(handler(schema))
        if cls.cel_rules:
            json_schema["x-kubernetes-validations"] = [
                {"rule": rule.rule, "message": rule.message} for rule in cls.cel_rules
            ]
        return json_schema

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Any:
        for rule in type(self).cel_rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self


def _lower_or_equal(a: Any, b: Any) -> bool:
    return a is None or b is None or a <= b


# ----------------------------------------------------------------------------------------- shared


def _condition_schema_extra(schema: dict[str, Any]) -> None:
    # metav1.Condition requires message (it may be empty); Python defaults it to "".
    schema["required"] = sorted({*schema.get("required", []), "message"})
    schema["properties"]["message"].pop("default", None)


class Condition(ApiModel):
    """A metav1.Condition."""

    model_config = ConfigDict(json_schema_extra=_condition_schema_extra)

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    """Type of condition in CamelCase, e.g. Ready."""
    status: Literal["True", "False", "Unknown"]
    """Status of the condition: True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """Programmatic CamelCase identifier of the last transition, e.g. Active."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details of the last transition."""
    last_transition_time: datetime
    """When the condition last changed status."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was set for."""


class SecretKeyRef(ApiModel):
    """A key in a Secret in the same namespace."""

    name: str = Field(min_length=1, max_length=NAME_MAX)
    """Name of the Secret."""
    key: str = Field(default="api-key", min_length=1, max_length=NAME_MAX)
    """Key inside the Secret's data."""


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement (metav1.LabelSelectorRequirement)."""

    cel_rules = (
        CelRule(
            rule="self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
            " : !has(self.values) || size(self.values) == 0",
            message="values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
            holds=lambda s: bool(s.values) == (s.operator in ("In", "NotIn")),
        ),
    )

    key: LabelKey
    """The label key the selector applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[LabelValue] = Field(default_factory=list, max_length=LIST_MAX)
    """Values for In/NotIn; must be empty for Exists/DoesNotExist."""


class LabelSelector(ApiModel):
    """A metav1.LabelSelector; an empty selector selects everything."""

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=LABELS_MAX)
    """Labels that must all match exactly."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Requirements that must all hold."""


#: Limits fields in wire spelling, in the order messages and tables list them.
LIMIT_FIELDS: tuple[str, ...] = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "spend_per_month_usd",
    "max_tokens_per_request",
)


class Limits(ApiModel):
    """Usage limits. An absent field means no limit at this level."""

    requests_per_minute: int | None = Field(default=None, ge=0)
    """Requests admitted in any rolling 60-second window, across all proxy replicas."""
    tokens_per_minute: int | None = Field(default=None, ge=0)
    """Tokens (input + output) in any rolling 60-second window."""
    tokens_per_day: int | None = Field(default=None, ge=0)
    """Tokens per UTC calendar day."""
    tokens_per_month: int | None = Field(default=None, ge=0)
    """Tokens per UTC calendar month."""
    spend_per_month_usd: UsdAmount | None = Field(default=None, alias="spendPerMonthUSD")
    """Spend cap in USD per UTC calendar month, as a decimal string, e.g. "50" or "12.5"."""
    max_tokens_per_request: int | None = Field(default=None, ge=0)
    """Largest output cap (max_tokens) one request may ask for."""


#: Refusal counts by error code (README "Error codes"); a finite set of codes.
RefusalCounts = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=0)]], Field(max_length=64)
]


class UsageBreakdown(ApiModel):
    """Usage of one model or one provider credential in a period."""

    name: str = Field(max_length=GLOB_MAX)
    """Model name (names the config does not know are counted as `other`), or credential
    namespace/name."""
    requests: int = Field(default=0, ge=0)
    """Requests served."""
    tokens: int = Field(default=0, ge=0)
    """Tokens (input + output)."""
    spend_usd: str = Field(default="0", max_length=32, alias="spendUSD")
    """Spend in USD as a decimal string."""


class DailyUsage(ApiModel):
    """Usage of one UTC day (an entry of the bounded daily history)."""

    date: str = Field(max_length=10, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    """The UTC day, YYYY-MM-DD."""
    requests: int = Field(default=0, ge=0)
    """Requests admitted."""
    tokens: int = Field(default=0, ge=0)
    """Tokens (input + output)."""
    spend_usd: str = Field(default="0", max_length=32, alias="spendUSD")
    """Spend in USD as a decimal string."""


#: Days of daily history kept in status (keys and pools).
HISTORY_DAYS = 31
#: Models and credentials listed per period in a key's usage (the largest by spend, then tokens).
BREAKDOWN_MAX = 32


class Usage(ApiModel):
    """Usage in one period, as last read from the limiter."""

    period_start: datetime | None = None
    """Start of the UTC period these counters cover."""
    requests: int = Field(default=0, ge=0)
    """Requests admitted."""
    input_tokens: int = Field(default=0, ge=0)
    """Input (prompt) tokens, cached included."""
    cached_input_tokens: int = Field(default=0, ge=0)
    """Input tokens served from the provider's cache."""
    output_tokens: int = Field(default=0, ge=0)
    """Output (completion) tokens, reasoning included."""
    spend_usd: str = Field(default="0", max_length=32, alias="spendUSD")
    """Spend in USD as a decimal string."""
    last_used_at: datetime | None = None
    """Time of the last request."""
    refusals: RefusalCounts = Field(default_factory=dict)
    """Requests the proxy refused in this period, by error code (e.g. rate_limit_exceeded,
    budget_exceeded, model_not_allowed)."""
    by_model: list[UsageBreakdown] = Field(default_factory=list, max_length=BREAKDOWN_MAX)
    """Usage by model (largest spend first)."""
    by_provider: list[UsageBreakdown] = Field(default_factory=list, max_length=BREAKDOWN_MAX)
    """Usage by provider credential (largest spend first)."""


class UsageByPeriod(ApiModel):
    """Usage per UTC day and month, and the daily history."""

    day: Usage | None = None
    """The current UTC day."""
    month: Usage | None = None
    """The current UTC month."""
    history: list[DailyUsage] = Field(default_factory=list, max_length=HISTORY_DAYS)
    """The last 31 UTC days with use (oldest first), today included."""
    last_used_at: datetime | None = None
    """Time of the last request ever seen (kept across periods; absent: never used)."""


# ------------------------------------------------------------------------------ ProviderCredential


class ModelSpec(ApiModel):
    """A model a credential serves."""

    name: Glob
    """Model name clients use, or a glob such as gpt-5*."""
    upstream_name: str | None = Field(default=None, min_length=1, max_length=GLOB_MAX)
    """Name sent upstream when it differs (e.g. an Azure deployment's model or a Bedrock model id)."""


class ModelPricing(ApiModel):
    """Price overrides in USD per 1M tokens, as decimal strings."""

    input: UsdAmount
    """USD per 1M input tokens."""
    cached_input: UsdAmount | None = None
    """USD per 1M cached input tokens."""
    cache_write: UsdAmount | None = None
    """USD per 1M cache-write input tokens."""
    output: UsdAmount
    """USD per 1M output tokens."""


class AzureSpec(ApiModel):
    """Azure OpenAI settings."""

    api_version: str | None = Field(default=None, min_length=1, max_length=64)
    """api-version query parameter for deployment URLs; omit to use the v1 API."""
    deployments: dict[Glob, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict, max_length=MAP_MAX
    )
    """Model name -> deployment name."""


class VertexSpec(ApiModel):
    """Vertex AI settings."""

    project: str = Field(min_length=1, max_length=128)
    """Google Cloud project id."""
    location: str = Field(default="global", min_length=1, max_length=64)
    """Region, e.g. us-central1, or global."""


class BedrockSpec(ApiModel):
    """Amazon Bedrock settings."""

    region: str = Field(min_length=1, max_length=64)
    """AWS region, e.g. us-east-1."""


class MockSpec(ApiModel):
    """Settings of the built-in mock provider (offline demos and tests)."""

    latency_ms: int = Field(default=0, ge=0, le=60_000)
    """Artificial latency per response and per streamed chunk, in milliseconds."""


def _block_rule(block: str, provider: str) -> CelRule:
    def holds(spec: Any) -> bool:
        return getattr(spec, block) is None or bool(spec.provider == provider)

    return CelRule(
        rule=f"!has(self.{block}) || self.provider == '{provider}'",
        message=f"{block} is only valid for provider {provider}",
        holds=holds,
    )


def _block_rules() -> tuple[CelRule, ...]:
    blocks = (("azure", "azure-openai"), ("vertex", "vertex-ai"), ("bedrock", "bedrock"), ("mock", "mock"))
    return tuple(_block_rule(block, provider) for block, provider in blocks)


class ProviderCredentialSpec(ApiModel):
    """A real provider account the gateway may use. Honoured in the gateway namespace only."""

    cel_rules = (
        CelRule(
            rule="self.provider == 'mock' || has(self.secretRef)",
            message="secretRef is required unless provider is mock",
            holds=lambda s: s.provider == "mock" or s.secret_ref is not None,
        ),
        *_block_rules(),
        CelRule(
            rule="self.provider != 'vertex-ai' || has(self.vertex)",
            message="vertex (project, location) is required for provider vertex-ai",
            holds=lambda s: s.provider != "vertex-ai" or s.vertex is not None,
        ),
        CelRule(
            rule="self.provider != 'bedrock' || has(self.bedrock)",
            message="bedrock (region) is required for provider bedrock",
            holds=lambda s: s.provider != "bedrock" or s.bedrock is not None,
        ),
        CelRule(
            rule="!(self.provider in ['azure-openai', 'openai-compatible']) || has(self.baseURL)",
            message="baseURL is required for providers azure-openai and openai-compatible",
            holds=lambda s: s.provider not in ("azure-openai", "openai-compatible") or s.base_url is not None,
        ),
    )

    provider: ProviderType
    """Provider family: openai, azure-openai, anthropic, gemini, vertex-ai, bedrock, openai-compatible
    or mock."""
    base_url: str | None = Field(
        default=None, min_length=1, max_length=2048, pattern=r"^https?://", alias="baseURL"
    )
    """Upstream base URL; defaults to the provider's public endpoint (required for azure-openai and
    openai-compatible)."""
    secret_ref: SecretKeyRef | None = None
    """The Secret key holding the real credential; required except for the mock provider.
    For bedrock the same Secret may instead hold aws_access_key_id and aws_secret_access_key."""
    azure: AzureSpec | None = None
    """Azure OpenAI settings (provider azure-openai only)."""
    vertex: VertexSpec | None = None
    """Vertex AI settings (required for provider vertex-ai)."""
    bedrock: BedrockSpec | None = None
    """Amazon Bedrock settings (required for provider bedrock)."""
    mock: MockSpec | None = None
    """Mock provider settings (provider mock only)."""
    models: list[ModelSpec] = Field(default_factory=list, max_length=LIST_MAX)
    """Models (names or globs) this credential serves; empty serves any model name."""
    pricing: dict[Glob, ModelPricing] = Field(default_factory=dict, max_length=MAP_MAX)
    """Per-model price overrides (USD per 1M tokens)."""
    limits: Limits | None = None
    """Provider-wide limits protecting the shared upstream account."""


class ProviderCredentialStatus(ApiModel):
    """Observed state of a ProviderCredential."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, SecretResolved."""
    observed_generation: int | None = Field(default=None, ge=0)
    """Generation last reconciled."""
    models: list[Glob] = Field(default_factory=list, max_length=LIST_MAX)
    """Resolved model list."""


# ------------------------------------------------------------------------------------- LLMPolicy


class Budget(ApiModel):
    """A shared pool: a cap on the sum over all selected keys, grouped by an owner field."""

    cel_rules = (
        CelRule(
            rule="has(self.spendPerMonthUSD) || has(self.tokensPerMonth)",
            message="a budget needs spendPerMonthUSD or tokensPerMonth",
            holds=lambda s: s.spend_per_month_usd is not None or s.tokens_per_month is not None,
        ),
    )

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Budget name, unique within the policy."""
    group_by: OwnerField = "team"
    """Owner field whose value forms one pool (e.g. one pool per team)."""
    spend_per_month_usd: UsdAmount | None = Field(default=None, alias="spendPerMonthUSD")
    """Monthly USD cap per group, as a decimal string."""
    tokens_per_month: int | None = Field(default=None, ge=0)
    """Monthly token cap per group."""


def _default_rule(field: str) -> CelRule:
    wire = Limits.model_fields[field].alias or to_camel(field)
    d, m = f"self.defaults.{wire}", f"self.maximums.{wire}"
    compare = f"double({d}) <= double({m})" if field == "spend_per_month_usd" else f"{d} <= {m}"

    def holds(spec: Any) -> bool:
        if spec.defaults is None or spec.maximums is None:
            return True
        return _lower_or_equal(getattr(spec.defaults, field), getattr(spec.maximums, field))

    return CelRule(
        rule=f"!has(self.defaults) || !has(self.maximums) || !has({d}) || !has({m}) || {compare}",
        message=f"defaults.{wire} must not exceed maximums.{wire}",
        holds=holds,
    )


def _default_rules() -> tuple[CelRule, ...]:
    return tuple(_default_rule(field) for field in LIMIT_FIELDS)


Principal = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]


class Identities(ApiModel):
    """People and groups as the API server authenticates them (userInfo username and groups)."""

    users: list[Principal] = Field(
        default_factory=list, max_length=LIST_MAX, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Usernames, e.g. alice@example.com or system:serviceaccount:ci:deployer."""
    groups: list[Principal] = Field(
        default_factory=list, max_length=LIST_MAX, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Group names, e.g. platform-admins or oidc:llm-approvers."""

    def includes(self, username: str, groups: Iterable[str]) -> bool:
        """Whether the user is listed or is in a listed group."""
        return username in self.users or not set(self.groups).isdisjoint(groups)


class SelfService(ApiModel):
    """Who may create the keys this policy selects, and how their identity is recorded."""

    owner_from_requester: bool = False
    """On create, set spec.owner.user to the requester's authenticated username; a requester may
    then not name another owner.user unless listed in admins."""
    allowed_users: list[Principal] = Field(
        default_factory=list, max_length=LIST_MAX, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Users who may create selected keys (on top of Kubernetes RBAC); with allowedGroups empty
    too, anyone RBAC lets create VirtualKeys may."""
    allowed_groups: list[Principal] = Field(
        default_factory=list, max_length=LIST_MAX, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Groups whose members may create selected keys."""
    admins: Identities = Field(default_factory=Identities)
    """Identities that may set owner.user to anyone and change llmkeys.io/created-by."""


class Approval(ApiModel):
    """Keys this policy selects work only after an authorised approver approved them."""

    required: bool = False
    """Selected keys stay Ready=False (PendingApproval) and refused by the proxy until approved."""
    approvers: Identities = Field(default_factory=Identities)
    """Who may approve or deny (annotation llmkeys.io/approval, or `llmkeys approve|deny`)."""
    allow_self_approval: bool = False
    """Whether an approver may approve a key they created or own."""


class WebhookSpec(ApiModel):
    """Where alert notifications go: a URL kept in a Secret of the gateway namespace."""

    url_secret_ref: SecretKeyRef = Field(alias="urlSecretRef")
    """The Secret key holding the webhook URL (e.g. a Slack incoming-webhook URL; never shown)."""
    format: Literal["generic", "slack"] = "generic"
    """generic: a JSON object describing the alert; slack: Slack's {"text": ...} message."""


class Alerts(ApiModel):
    """Budget and expiry alerts for the keys and pools a policy governs."""

    thresholds: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [80, 100], max_length=10, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Percentages of each monthly cap (spendPerMonthUSD, tokensPerMonth; keys and pools) that raise
    an alert: one Event (and one notification) per threshold per UTC month."""
    expiry_warning: Duration | None = None
    """Warn this long before a key expires, e.g. 7d (one Event and notification per expiry)."""
    webhook: WebhookSpec | None = None
    """Optional notifications to a webhook."""


class Inactivity(ApiModel):
    """Hygiene for keys nobody uses."""

    warn_after: Duration | None = None
    """Unused this long (since last use, or creation when never used): a Warning Event and the
    condition Idle."""
    suspend_after: Duration | None = None
    """Unused this long: Ready=False with reason Inactive, refused by the proxy (key_inactive) until
    reactivated with the annotation llmkeys.io/reactivated-at (the operator never writes spec)."""


AuditLevel = Literal["none", "metadata", "content"]
AuditSinkName = Literal["stdout", "file", "otlp"]
#: Audit levels from least to most recorded.
AUDIT_LEVELS: tuple[AuditLevel, ...] = ("none", "metadata", "content")


class PolicyAudit(ApiModel):
    """What the proxy records for each request of the keys a policy selects."""

    level: AuditLevel = "metadata"
    """Level of selected keys that name none: none, metadata (who, owner fields, key, model,
    provider, tokens, cost, latency, outcome; never text) or content (adds the prompt and the
    completion, size-capped, credentials scrubbed). With several policies the highest applies."""
    allowed_levels: list[AuditLevel] = Field(
        default_factory=list, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Other levels a selected key may choose with spec.audit.level (default: none; a key naming
    a level some applying policy does not allow breaks the policy)."""
    sinks: list[AuditSinkName] = Field(
        default_factory=list, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Gateway sinks the records must reach (stdout, file, otlp); empty: every configured sink."""
    retain_days: int | None = Field(default=None, ge=1, le=36500)
    """Days the file sink keeps the records at least (the longest of all applying wins)."""


class KeyAudit(ApiModel):
    """A key's own audit wishes, within what its policies allow."""

    level: AuditLevel | None = None
    """none, metadata or content; must be the policies' level or one they all allow."""
    sinks: list[AuditSinkName] = Field(
        default_factory=list, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Further sinks the key's records go to (added to the policies' sinks)."""
    retain_days: int | None = Field(default=None, ge=1, le=36500)
    """Days to keep the key's records; policies may make it longer, never shorter."""


class EffectiveAudit(ApiModel):
    """The audit policy the proxy applies to the key."""

    level: AuditLevel = "metadata"
    """What each request record holds."""
    sinks: list[AuditSinkName] = Field(default_factory=list, max_length=3)
    """Sinks records go to (empty: every sink the gateway has)."""
    retain_days: int | None = Field(default=None, ge=1, le=36500)
    """Days the file sink keeps the records (unset: the gateway's default)."""


IssuerUrl = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://")]


class KeylessPolicy(ApiModel):
    """Workload identities of the keys a policy selects: keyless required, issuers restricted."""

    required: bool = False
    """Selected keys must set staticKey: false (tokens only, no static key to leak)."""
    allowed_issuers: list[IssuerUrl] | None = Field(
        default=None, max_length=LIST_MAX, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """External OIDC issuers selected keys may name in spec.identities; absent: any the gateway
    trusts; empty: none (ServiceAccounts of the key's namespace only)."""


class LLMPolicySpec(ApiModel):
    """Guardrails for the keys a policy selects. Every selecting policy applies."""

    cel_rules = (
        *_default_rules(),
        CelRule(
            rule="!has(self.budgets) || self.budgets.all(b, self.budgets.exists_one(c, c.name == b.name))",
            message="budget names must be unique",
            holds=lambda s: len({b.name for b in s.budgets}) == len(s.budgets),
        ),
    )

    namespace_selector: LabelSelector | None = None
    """Namespaces whose keys this policy governs; absent selects all."""
    key_selector: LabelSelector | None = None
    """VirtualKeys (by label) this policy governs; absent selects all."""
    allowed_providers: list[ProviderType] | None = Field(
        default=None, max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Provider families keys may use; absent allows all."""
    allowed_models: list[Glob] | None = Field(default=None, max_length=LIST_MAX)
    """Model globs keys may use; absent allows all."""
    denied_models: list[Glob] = Field(default_factory=list, max_length=LIST_MAX)
    """Model globs keys may never use (wins over every allowlist)."""
    defaults: Limits | None = None
    """Limits applied where a key says nothing (the lowest default wins when several policies give one)."""
    maximums: Limits | None = None
    """Limits a key may not exceed; a key asking for more is refused with reason PolicyViolation."""
    default_output_reservation: int | None = Field(default=None, ge=1)
    """Output tokens reserved for a request that names no max_tokens (default 1024)."""
    max_ttl: Duration | None = Field(default=None, alias="maxTTL")
    """Longest lifetime a key may have, e.g. 90d; a key without expiry gets creation time + maxTTL."""
    require_expiry: bool = False
    """Keys must set expiresAt or ttl."""
    required_owner_fields: list[OwnerField] = Field(
        default_factory=list, max_length=7, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Owner fields every selected key must fill."""
    budgets: list[Budget] = Field(default_factory=list, max_length=16)
    """Shared pools, one per distinct value of the budget's owner field among selected keys."""
    on_limiter_unavailable: Literal["Reject", "Allow"] | None = None
    """What the proxy does when Redis is unreachable (Reject is the default; Reject wins over Allow)."""
    self_service: SelfService | None = None
    """Who may create selected keys and whether the owner is taken from the requester (enforced by
    the admission webhook)."""
    approval: Approval | None = None
    """Approval required before selected keys work, and who may give it."""
    alerts: Alerts | None = None
    """Budget thresholds and expiry warnings for the selected keys and the policy's pools."""
    inactivity: Inactivity | None = None
    """Warn about, then suspend, selected keys unused for a while (the shortest period wins)."""

    audit: PolicyAudit | None = None
    """What is recorded for each request of selected keys, where it goes and for how long."""
    keyless: KeylessPolicy | None = None
    """Whether selected keys must be keyless, and which token issuers they may name."""


class AlertState(ApiModel):
    """Alerts already raised, so each is raised once per period (also across operator restarts)."""

    period: str | None = Field(default=None, max_length=7)
    """The UTC month (YYYY-MM) the thresholds below were reached in."""
    thresholds: list[Annotated[int, Field(ge=1, le=1000)]] = Field(default_factory=list, max_length=10)
    """Thresholds (percent of a monthly cap) reached and announced in that month."""
    expiry_warned: datetime | None = None
    """The expiry an expiry warning was raised for."""
    idle_warned: datetime | None = None
    """The last use (or creation) an inactivity warning was raised for."""


class PoolUsage(ApiModel):
    """Month usage of one pool."""

    budget: str = Field(max_length=63)
    """Budget name."""
    group: str = Field(max_length=253)
    """Owner-field value forming the pool."""
    period_start: datetime | None = None
    """Start of the UTC month these counters cover."""
    spend_usd: str = Field(default="0", max_length=32, alias="spendUSD")
    """Spend this month in USD."""
    tokens: int = Field(default=0, ge=0)
    """Tokens this month."""
    cap_usd: str | None = Field(default=None, max_length=32, alias="capUSD")
    """Monthly cap in USD."""
    cap_tokens: int | None = Field(default=None, ge=0)
    """Monthly cap in tokens."""
    last_used_at: datetime | None = None
    """Time of the last request drawing from the pool."""
    refusals: RefusalCounts = Field(default_factory=dict)
    """Requests refused this month because the pool was exhausted, by error code."""
    history: list[DailyUsage] = Field(default_factory=list, max_length=HISTORY_DAYS)
    """The last 31 UTC days with use (oldest first), today included."""
    alerts: AlertState | None = None
    """Budget thresholds already announced for this pool."""


class LLMPolicyStatus(ApiModel):
    """Observed state of an LLMPolicy."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready."""
    observed_generation: int | None = Field(default=None, ge=0)
    """Generation last reconciled."""
    selected_keys: int = Field(default=0, ge=0)
    """Number of VirtualKeys this policy selects."""
    pools: list[PoolUsage] = Field(default_factory=list, max_length=1024)
    """Month usage per pool."""


# ------------------------------------------------------------------------------------ VirtualKey


class Owner(ApiModel):
    """Who the key belongs to; used for policy, pools and cost reports."""

    user: str | None = Field(default=None, min_length=1, max_length=253)
    """A person (e.g. e-mail)."""
    team: str | None = Field(default=None, min_length=1, max_length=253)
    """Owning team."""
    app: str | None = Field(default=None, min_length=1, max_length=253)
    """Application."""
    agent: str | None = Field(default=None, min_length=1, max_length=253)
    """AI agent."""
    service: str | None = Field(default=None, min_length=1, max_length=253)
    """Service or CI job."""
    environment: str | None = Field(default=None, min_length=1, max_length=63)
    """Environment, e.g. dev or prod."""
    cost_center: str | None = Field(default=None, min_length=1, max_length=63)
    """Finance cost center."""

    def get(self, wire_name: str) -> str | None:
        """The value of an owner field by its manifest spelling (e.g. costCenter)."""
        value: str | None = getattr(self, _OWNER_ATTRS[wire_name])
        return value

    def as_dict(self) -> dict[str, str]:
        """The filled fields, by manifest spelling."""
        return {name: value for name in OWNER_FIELDS if (value := self.get(name)) is not None}


_OWNER_ATTRS = {"costCenter": "cost_center"} | {name: name for name in OWNER_FIELDS if name != "costCenter"}


class WorkloadIdentity(ApiModel):
    """A workload that may use the key by presenting its own signed token instead of the static key:
    a ServiceAccount of the key's namespace, or an external OIDC subject."""

    cel_rules = (
        CelRule(
            rule="has(self.serviceAccount) != (has(self.issuer) && has(self.subject))",
            message="set either serviceAccount, or issuer and subject",
            holds=lambda s: (
                (s.service_account is not None) != (s.issuer is not None and s.subject is not None)
            ),
        ),
        CelRule(
            rule="!has(self.serviceAccount) || "
            "(!has(self.issuer) && !has(self.subject) && !has(self.claims))",
            message="serviceAccount takes no issuer, subject or claims",
            holds=lambda s: (
                s.service_account is None or (s.issuer is None and s.subject is None and not s.claims)
            ),
        ),
    )

    service_account: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """A ServiceAccount of this key's own namespace (tokens of the cluster's ServiceAccount issuer
    with subject system:serviceaccount:<namespace>:<name>)."""
    issuer: IssuerUrl | None = None
    """An external OIDC issuer the gateway trusts, exactly as tokens carry it in iss, e.g.
    https://token.actions.githubusercontent.com."""
    subject: str | None = Field(default=None, min_length=1, max_length=1024)
    """The token's sub, matched exactly, e.g. repo:ORG/REPO:ref:refs/heads/main."""
    claims: dict[
        Annotated[str, Field(min_length=1, max_length=128)], Annotated[str, Field(max_length=1024)]
    ] = Field(default_factory=dict, max_length=16)
    """Further top-level claims the token must carry with exactly these string values, e.g.
    repository, ref or workflow."""


class VirtualKeySpec(ApiModel):
    """Desired state of a virtual key."""

    cel_rules = (
        CelRule(
            rule="!(has(self.expiresAt) && has(self.ttl))",
            message="expiresAt and ttl are mutually exclusive: set one",
            holds=lambda s: s.expires_at is None or s.ttl is None,
        ),
        CelRule(
            rule="!has(self.staticKey) || self.staticKey || "
            "(has(self.identities) && size(self.identities) > 0)",
            message="staticKey: false needs at least one entry in identities",
            holds=lambda s: s.static_key or bool(s.identities),
        ),
    )

    owner: Owner = Field(default_factory=Owner)
    """Who owns the key."""
    description: str | None = Field(default=None, max_length=1024)
    """Free text: what the key is for."""
    providers: list[ProviderType] | None = Field(
        default=None, max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Provider families the key wants; absent means all the policies allow."""
    models: list[Glob] | None = Field(default=None, max_length=LIST_MAX)
    """Model globs the key wants; absent means all the policies allow."""
    limits: Limits | None = None
    """The key's own limits (policies may lower them or fill gaps)."""
    expires_at: datetime | None = None
    """Absolute expiry (RFC 3339). Not together with ttl."""
    ttl: Duration | None = None
    """Lifetime from creation, e.g. 30d or 12h. Not together with expiresAt."""
    suspended: bool = False
    """Refuse all use while true."""
    secret_name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """Name of the generated key Secret (default <name>-llm-key)."""
    rotation_interval: Duration | None = None
    """Rotate the key this often, e.g. 30d."""
    rotation_grace_period: Duration | None = None
    """How long the previous key stays valid after a rotation (default 1h). Applies to scheduled
    rotations and to on-demand ones (annotation llmkeys.io/rotate), so it may be set alone."""
    audit: KeyAudit | None = None
    """The key's audit level, extra sinks and retention, within what its policies allow."""
    identities: list[WorkloadIdentity] = Field(default_factory=list, max_length=32)
    """Workloads that may use the key with their own token (ServiceAccount or OIDC), with the same
    limits, allowlists, usage and audit as the static key."""
    static_key: bool = True
    """Issue a static key into the Secret. false: keyless, only the identities' tokens work and the
    Secret carries the base URLs and key id, no secret."""


class EffectiveLimits(ApiModel):
    """What the proxy enforces after every policy applied."""

    providers: list[Name] = Field(default_factory=list, max_length=LIST_MAX)
    """Provider credentials (namespace/name) the key may use."""
    models: list[Glob] = Field(default_factory=list, max_length=LIST_MAX)
    """Models (names or globs) the key may use that some credential serves."""
    denied_models: list[Glob] = Field(default_factory=list, max_length=LIST_MAX)
    """Model globs the key may never use."""
    limits: Limits = Field(default_factory=Limits)
    """Effective limits."""
    policies: list[Name] = Field(default_factory=list, max_length=LIST_MAX)
    """Policies that apply."""
    pools: list[Annotated[str, Field(max_length=600)]] = Field(default_factory=list, max_length=64)
    """Shared budget pools the key draws from."""
    audit: EffectiveAudit = Field(default_factory=EffectiveAudit)
    """The audit policy applied to the key's requests."""


class ApprovalStatus(ApiModel):
    """The approval of a key, as recorded by the webhook's stamps."""

    state: Literal["Pending", "Approved", "Denied"]
    """Pending (waiting for an approver, also after a widening change), Approved or Denied."""
    by: str | None = Field(default=None, max_length=NAME_MAX)
    """The approver who approved or denied."""
    at: datetime | None = None
    """When."""
    reason: str | None = Field(default=None, max_length=1024)
    """The reason given with a denial (or an approval)."""
    approvers: list[Principal] = Field(default_factory=list, max_length=LIST_MAX)
    """Who may act on it (users, and groups as group:NAME), from the applying policies."""


class VirtualKeyStatus(ApiModel):
    """Observed state of a virtual key."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready (first), PolicyCompliant, SecretReady."""
    observed_generation: int | None = Field(default=None, ge=0)
    """Generation last reconciled."""
    key_id: str | None = Field(default=None, max_length=12)
    """Public id of the key (the 12 characters after sk-llmk-)."""
    secret_name: str | None = Field(default=None, max_length=NAME_MAX)
    """Secret holding the key."""
    expires_at: datetime | None = None
    """Resolved expiry."""
    rotated_at: datetime | None = None
    """Time of the last rotation."""
    effective: EffectiveLimits | None = None
    """Allowlists and limits after policies."""
    usage: UsageByPeriod | None = None
    """Usage per UTC day and month."""
    created_by: str | None = Field(default=None, max_length=NAME_MAX)
    """Who created the key, as the admission webhook stamped it (annotation llmkeys.io/created-by)."""
    approval: ApprovalStatus | None = None
    """Approval state when an applying LLMPolicy requires approval."""
    alerts: AlertState | None = None
    """Alerts already raised for this key (budget thresholds, expiry, inactivity)."""


# ----------------------------------------------------------------------------------- resources


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the operator reads."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: datetime | None = None


class VirtualKey(ApiModel):
    """A governed virtual LLM API key."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    cel_rules = (
        CelRule(
            rule="size(self.metadata.name) <= 63",
            message="VirtualKey names are at most 63 characters: the name labels the key Secret",
            holds=lambda s: len(s.metadata.name) <= 63,
        ),
    )

    api_version: Literal["llmkeys.io/v1alpha1"] = API_VERSION
    kind: Literal["VirtualKey"] = "VirtualKey"
    metadata: ObjectMeta
    spec: VirtualKeySpec
    status: VirtualKeyStatus | None = None


class ProviderCredential(ApiModel):
    """A real provider account behind the gateway."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["llmkeys.io/v1alpha1"] = API_VERSION
    kind: Literal["ProviderCredential"] = "ProviderCredential"
    metadata: ObjectMeta
    spec: ProviderCredentialSpec
    status: ProviderCredentialStatus | None = None


class LLMPolicy(ApiModel):
    """Platform guardrails for the keys it selects (cluster-scoped)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["llmkeys.io/v1alpha1"] = API_VERSION
    kind: Literal["LLMPolicy"] = "LLMPolicy"
    metadata: ObjectMeta
    spec: LLMPolicySpec
    status: LLMPolicyStatus | None = None
