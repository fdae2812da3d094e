"""The llmkeys.io/v1alpha1 API: pydantic models of VirtualKey, ProviderCredential and LLMPolicy.

The source of truth for the three CRDs: `crdgen` renders `crds/*.yaml` from these models (field
docstrings become the descriptions `kubectl explain` shows), `compile` reads them, handlers parse
Kubernetes bodies into them. Spec is desired state; status is observed state.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "llmkeys.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ProviderType = Literal[
    "openai",
    "azure-openai",
    "anthropic",
    "gemini",
    "vertex-ai",
    "bedrock",
    "openai-compatible",
    "mock",
]

# Bounds shared by the CRD schemas (structural schemas need maxLength/maxItems everywhere).
NAME_MAX = 253
GLOB_MAX = 256
LIST_MAX = 256


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


# ----------------------------------------------------------------------------------------- shared


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(max_length=316, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
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

    key: str = Field(max_length=317)
    """The label key the selector applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] = Field(default_factory=list, max_length=LIST_MAX)
    """Values for In/NotIn; must be empty for Exists/DoesNotExist."""


class LabelSelector(ApiModel):
    """A metav1.LabelSelector; an empty selector selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels that must all match exactly."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Requirements that must all hold."""


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
    spend_per_month_usd: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=6)
    """Spend cap in USD per UTC calendar month (as a string or number, e.g. "50" or "12.5")."""
    max_tokens_per_request: int | None = Field(default=None, ge=0)
    """Largest output cap (max_tokens) one request may ask for."""


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
    spend_usd: str = Field(default="0", max_length=32)
    """Spend in USD as a decimal string."""
    last_used_at: datetime | None = None
    """Time of the last request."""


class UsageByPeriod(ApiModel):
    """Usage per UTC day and month."""

    day: Usage | None = None
    """The current UTC day."""
    month: Usage | None = None
    """The current UTC month."""


# ------------------------------------------------------------------------------ ProviderCredential


class ModelSpec(ApiModel):
    """A model a credential serves."""

    name: str = Field(min_length=1, max_length=GLOB_MAX)
    """Model name clients use, or a glob such as gpt-5*."""
    upstream_name: str | None = Field(default=None, max_length=GLOB_MAX)
    """Name sent upstream when it differs (e.g. an Azure deployment's model or a Bedrock model id)."""


class ModelPricing(ApiModel):
    """Price overrides in USD per 1M tokens."""

    input: Decimal = Field(ge=0, max_digits=12, decimal_places=6)
    """USD per 1M input tokens."""
    cached_input: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=6)
    """USD per 1M cached input tokens."""
    cache_write: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=6)
    """USD per 1M cache-write input tokens."""
    output: Decimal = Field(ge=0, max_digits=12, decimal_places=6)
    """USD per 1M output tokens."""


class AzureSpec(ApiModel):
    """Azure OpenAI settings."""

    api_version: str | None = Field(default=None, max_length=64)
    """api-version query parameter for deployment URLs; omit to use the v1 API."""
    deployments: dict[str, str] = Field(default_factory=dict)
    """Model name -> deployment name."""


class VertexSpec(ApiModel):
    """Vertex AI settings."""

    project: str = Field(min_length=1, max_length=128)
    """Google Cloud project id."""
    location: str = Field(default="global", max_length=64)
    """Region, e.g. us-central1, or global."""


class BedrockSpec(ApiModel):
    """Amazon Bedrock settings."""

    region: str = Field(min_length=1, max_length=64)
    """AWS region, e.g. us-east-1."""


class ProviderCredentialSpec(ApiModel):
    """A real provider account the gateway may use. Honoured in the gateway namespace only."""

    provider: ProviderType
    """Provider family."""
    base_url: str | None = Field(default=None, max_length=2048)
    """Upstream base URL; defaults to the provider's public endpoint."""
    secret_ref: SecretKeyRef | None = None
    """The Secret key holding the real credential; required except for the mock provider."""
    azure: AzureSpec | None = None
    """Azure OpenAI settings."""
    vertex: VertexSpec | None = None
    """Vertex AI settings."""
    bedrock: BedrockSpec | None = None
    """Amazon Bedrock settings."""
    models: list[ModelSpec] = Field(default_factory=list, max_length=LIST_MAX)
    """Models (names or globs) this credential serves."""
    pricing: dict[str, ModelPricing] = Field(default_factory=dict)
    """Per-model price overrides (USD per 1M tokens)."""
    limits: Limits | None = None
    """Provider-wide limits protecting the shared upstream account."""


class ProviderCredentialStatus(ApiModel):
    """Observed state of a ProviderCredential."""

    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Ready, SecretResolved."""
    observed_generation: int | None = None
    """Generation last reconciled."""
    models: list[str] = Field(default_factory=list, max_length=LIST_MAX)
    """Resolved model list."""


# ------------------------------------------------------------------------------------- LLMPolicy


class Budget(ApiModel):
    """A shared pool: a cap on the sum over all selected keys, grouped by an owner field."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Budget name, unique within the policy."""
    group_by: Literal["user", "team", "app", "agent", "service", "environment", "costCenter"] = "team"
    """Owner field whose value forms one pool (e.g. one pool per team)."""
    spend_per_month_usd: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=6)
    """Monthly USD cap per group."""
    tokens_per_month: int | None = Field(default=None, ge=0)
    """Monthly token cap per group."""


class LLMPolicySpec(ApiModel):
    """Guardrails for the keys a policy selects. Every selecting policy applies."""

    namespace_selector: LabelSelector | None = None
    """Namespaces whose keys this policy governs; absent selects all."""
    key_selector: LabelSelector | None = None
    """VirtualKeys (by label) this policy governs; absent selects all."""
    allowed_providers: list[ProviderType] | None = Field(default=None, max_length=8)
    """Provider families keys may use; absent allows all."""
    allowed_models: list[str] | None = Field(default=None, max_length=LIST_MAX)
    """Model globs keys may use; absent allows all."""
    denied_models: list[str] = Field(default_factory=list, max_length=LIST_MAX)
    """Model globs keys may never use."""
    defaults: Limits | None = None
    """Limits applied where a key says nothing."""
    maximums: Limits | None = None
    """Limits a key may not exceed."""
    default_output_reservation: int | None = Field(default=None, ge=1)
    """Output tokens reserved for a request that names no max_tokens."""
    max_ttl: str | None = Field(default=None, max_length=32, pattern=r"^([0-9]+(s|m|h|d|w))+$")
    """Longest lifetime a key may have, e.g. 90d."""
    require_expiry: bool = False
    """Keys must set expiresAt or ttl."""
    required_owner_fields: list[Literal["user", "team", "app", "agent", "service", "environment", "costCenter"]] = Field(default_factory=list, max_length=7)
    """Owner fields every selected key must fill."""
    budgets: list[Budget] = Field(default_factory=list, max_length=16)
    """Shared pools."""
    on_limiter_unavailable: Literal["Reject", "Allow"] | None = None
    """What the proxy does when Redis is unreachable (Reject is the default; Reject wins over Allow)."""


class PoolUsage(ApiModel):
    """Month usage of one pool."""

    budget: str = Field(max_length=63)
    """Budget name."""
    group: str = Field(max_length=253)
    """Owner-field value forming the pool."""
    spend_usd: str = Field(default="0", max_length=32)
    """Spend this month in USD."""
    tokens: int = Field(default=0, ge=0)
    """Tokens this month."""
    cap_usd: str | None = Field(default=None, max_length=32)
    """Monthly cap in USD."""


class LLMPolicyStatus(ApiModel):
    """Observed state of an LLMPolicy."""

    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Ready."""
    observed_generation: int | None = None
    """Generation last reconciled."""
    selected_keys: int = Field(default=0, ge=0)
    """Number of VirtualKeys this policy selects."""
    pools: list[PoolUsage] = Field(default_factory=list, max_length=1024)
    """Month usage per pool."""


# ------------------------------------------------------------------------------------ VirtualKey


class Owner(ApiModel):
    """Who the key belongs to; used for policy, pools and cost reports."""

    user: str | None = Field(default=None, max_length=253)
    """A person (e.g. e-mail)."""
    team: str | None = Field(default=None, max_length=253)
    """Owning team."""
    app: str | None = Field(default=None, max_length=253)
    """Application."""
    agent: str | None = Field(default=None, max_length=253)
    """AI agent."""
    service: str | None = Field(default=None, max_length=253)
    """Service or CI job."""
    environment: str | None = Field(default=None, max_length=63)
    """Environment, e.g. dev or prod."""
    cost_center: str | None = Field(default=None, max_length=63)
    """Finance cost center."""


class VirtualKeySpec(ApiModel):
    """Desired state of a virtual key."""

    owner: Owner = Field(default_factory=Owner)
    """Who owns the key."""
    description: str | None = Field(default=None, max_length=1024)
    """Free text: what the key is for."""
    providers: list[ProviderType] | None = Field(default=None, max_length=8)
    """Provider families the key wants; absent means all the policies allow."""
    models: list[str] | None = Field(default=None, max_length=LIST_MAX)
    """Model globs the key wants; absent means all the policies allow."""
    limits: Limits | None = None
    """The key's own limits (policies may lower them or fill gaps)."""
    expires_at: datetime | None = None
    """Absolute expiry (RFC 3339). Not together with ttl."""
    ttl: str | None = Field(default=None, max_length=32, pattern=r"^([0-9]+(s|m|h|d|w))+$")
    """Lifetime from creation, e.g. 30d or 12h. Not together with expiresAt."""
    suspended: bool = False
    """Refuse all use while true."""
    secret_name: str | None = Field(default=None, max_length=NAME_MAX)
    """Name of the generated key Secret (default <name>-llm-key)."""
    rotation_interval: str | None = Field(default=None, max_length=32, pattern=r"^([0-9]+(s|m|h|d|w))+$")
    """Rotate the key this often, e.g. 30d."""
    rotation_grace_period: str | None = Field(default=None, max_length=32, pattern=r"^([0-9]+(s|m|h|d|w))+$")
    """How long the previous key stays valid after a rotation (default 1h)."""


class EffectiveLimits(ApiModel):
    """What the proxy enforces after every policy applied."""

    providers: list[str] = Field(default_factory=list, max_length=LIST_MAX)
    """Provider credentials the key may use."""
    models: list[str] = Field(default_factory=list, max_length=LIST_MAX)
    """Model globs the key may use."""
    denied_models: list[str] = Field(default_factory=list, max_length=LIST_MAX)
    """Model globs the key may never use."""
    limits: Limits = Field(default_factory=Limits)
    """Effective limits."""
    policies: list[str] = Field(default_factory=list, max_length=LIST_MAX)
    """Policies that apply."""
    pools: list[str] = Field(default_factory=list, max_length=64)
    """Shared budget pools the key draws from."""


class VirtualKeyStatus(ApiModel):
    """Observed state of a virtual key."""

    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Ready (first), PolicyCompliant, SecretReady."""
    observed_generation: int | None = None
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
