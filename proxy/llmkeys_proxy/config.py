"""The compiled proxy config: THE contract between the operator (writer) and the proxy (reader).

The operator's `compile_proxy_config` produces these models; the operator stores them as
`config.json` in Secrets of the gateway namespace labelled `llmkeys.io/config=keys|providers`
(one keys shard per source namespace, split before 1 MiB; one providers document). Standalone mode
writes the same JSON to files. The proxy merges every shard plus the providers document into one
`ProxyConfig` and swaps it in atomically.

Versioned: a reader refuses a document whose `version` it does not know (it keeps its last good
config), so operator and proxy can be upgraded in either order within one major version.
Money is integer micro-USD everywhere in here; token counts are integers.
"""

from __future__ import annotations

import fnmatch
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_VERSION: Final = 1

#: Label put on every config Secret; its value says which document the Secret holds.
CONFIG_LABEL = "llmkeys.io/config"
#: Data key inside each config Secret (and file name suffix in standalone mode).
CONFIG_DATA_KEY = "config.json"

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
LimiterFailureMode = Literal["Reject", "Allow"]
AuditLevel = Literal["none", "metadata", "content"]

#: `Identity.issuer` naming the cluster's own ServiceAccount issuer, whatever URL the proxy discovers
#: for it (the operator does not know the URL; the proxy does).
KUBERNETES_ISSUER: Final = "kubernetes"


def summarise_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """Where and why a document is invalid, without the offending values: pydantic's own text
    would echo input, and documents hold credentials. Used wherever a config or manifest is read."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:limit]:
        location = ".".join(str(part) for part in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    more = f" (+{exc.error_count() - limit} more)" if exc.error_count() > limit else ""
    return "; ".join(parts) + more


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Model):
    """Effective limits of a key after every policy applied; None means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_day: int | None = Field(default=None, ge=0)
    tokens_per_month: int | None = Field(default=None, ge=0)
    spend_per_month_micro_usd: int | None = Field(default=None, ge=0)
    max_tokens_per_request: int | None = Field(default=None, ge=0)


class KeyAudit(_Model):
    """A key's effective audit policy (LLMPolicy.spec.audit and VirtualKey.spec.audit, compiled)."""

    level: AuditLevel = "metadata"
    #: Gateway sinks (stdout, file, otlp) the key's records go to; empty: every configured sink.
    sinks: tuple[str, ...] = ()
    #: Days the key's records are kept by the file sink (None: the gateway's default).
    retain_days: int | None = Field(default=None, ge=1)


class SecretHash(_Model):
    """One accepted secret: SHA-256 hex of the secret part, valid in [not_before, not_after)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    not_before: datetime | None = None
    not_after: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        if self.not_before is not None and now < self.not_before:
            return False
        return self.not_after is None or now < self.not_after


class UsageSeed(_Model):
    """Last usage the control plane saw (from VirtualKey/LLMPolicy status), used to re-seed an empty
    limiter after a Redis loss. `period` is the UTC month `YYYY-MM` (or day `YYYY-MM-DD`) it covers."""

    period: str
    requests: int = Field(default=0, ge=0)
    tokens: int = Field(default=0, ge=0)
    micro_usd: int = Field(default=0, ge=0)


class Identity(_Model):
    """A workload identity that may use a key by presenting a signed token (JWT) instead of the key.

    The proxy accepts a token verified against a trusted issuer whose `iss` is `issuer` (or, for
    `KUBERNETES_ISSUER`, the cluster's ServiceAccount issuer), whose `sub` equals `subject` exactly,
    and whose top-level claims hold every `claims` entry as exactly that string."""

    issuer: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    claims: dict[str, str] = Field(default_factory=dict)


class KeyEntry(_Model):
    """Everything the proxy needs to authenticate, authorise and limit one virtual key."""

    key_id: str = Field(pattern=r"^[a-z0-9]{12}$")
    hashes: tuple[SecretHash, ...]
    namespace: str
    name: str
    owner: dict[str, str] = Field(default_factory=dict)
    #: Provider credential names (``namespace/name`` of ProviderCredentials) the key may use;
    #: empty means none. The compiler already intersected the key's and policies' provider lists.
    providers: tuple[str, ...] = ()
    #: Model allowlists, ANDed: a model is allowed when it matches a glob of EVERY list (the key's
    #: own list and each selecting policy's list stay separate, because glob sets do not intersect
    #: into one glob list). An empty tuple allows no model; (("*",),) allows all.
    model_allowlists: tuple[tuple[str, ...], ...] = ()
    #: Model globs the key may never use; wins over every allowlist.
    denied_models: tuple[str, ...] = ()
    limits: Limits = Limits()
    #: Output tokens reserved when a request names no max_tokens (policy default or built-in).
    default_output_reservation: int = Field(default=1024, ge=0)
    expires_at: datetime | None = None
    suspended: bool = False
    #: Unused past its policy's inactivity.suspendAfter: refused (403 key_inactive) until reactivated.
    inactive: bool = False
    #: Set when the key breaks a policy: the proxy refuses it (403 key_policy_violation) with this
    #: message, which names the policy and field and never contains secret material.
    policy_violation: str | None = None
    #: Set when an LLMPolicy requires approval and the key has none (pending: 403
    #: key_pending_approval) or was denied (403 key_approval_denied): the key works only once approved.
    approval: Literal["pending", "denied"] | None = None
    pools: tuple[str, ...] = ()
    on_limiter_unavailable: LimiterFailureMode = "Reject"
    month_usage_seed: UsageSeed | None = None
    day_usage_seed: UsageSeed | None = None
    audit: KeyAudit = KeyAudit()
    #: Workload identities that may use the key with a token. A keyless key has these and no `hashes`.
    #: The compiler binds each (issuer, subject) to one key at most.
    identities: tuple[Identity, ...] = ()

    def model_allowed(self, model: str) -> bool:
        """Every allowlist admits the model and no denied glob matches it."""
        if any(fnmatch.fnmatchcase(model, pat) for pat in self.denied_models):
            return False
        if not self.model_allowlists:
            return False
        return all(
            any(fnmatch.fnmatchcase(model, pat) for pat in allowlist) for allowlist in self.model_allowlists
        )


class KeysShard(_Model):
    """One Secret's worth of keys: all (or a slice of) the keys of one source namespace."""

    version: Literal[1] = CONFIG_VERSION
    namespace: str
    shard: int = Field(default=0, ge=0)
    keys: tuple[KeyEntry, ...] = ()


class ModelPrice(_Model):
    """Price of one model in integer micro-USD per 1M tokens (USD 2.50 / 1M tokens = 2_500_000)."""

    input: int = Field(ge=0)
    cached_input: int | None = Field(default=None, ge=0)
    cache_write: int | None = Field(default=None, ge=0)
    output: int = Field(ge=0)


class ModelRoute(_Model):
    """A model (name or glob) a credential serves, optionally renamed upstream."""

    name: str
    upstream_name: str | None = None


class ProviderEntry(_Model):
    """One ProviderCredential, resolved: where to send traffic and with what real credential."""

    #: ``namespace/name`` of the ProviderCredential; what KeyEntry.providers refers to.
    id: str
    provider: ProviderType
    base_url: str | None = None
    #: The real credential (API key, service-account JSON, Bedrock API key). Never logged.
    api_key: str | None = Field(default=None, repr=False)
    #: Further secret fields (e.g. aws_access_key_id / aws_secret_access_key). Never logged.
    secret_fields: dict[str, str] = Field(default_factory=dict, repr=False)
    models: tuple[ModelRoute, ...] = ()
    # azure-openai
    api_version: str | None = None
    deployments: dict[str, str] = Field(default_factory=dict)
    # vertex-ai
    project: str | None = None
    location: str | None = None
    # bedrock
    region: str | None = None
    pricing: dict[str, ModelPrice] = Field(default_factory=dict)
    #: Provider-wide limits protecting the shared upstream account.
    limits: Limits | None = None
    #: mock provider: artificial latency per response, and per streamed chunk.
    mock_latency_ms: int = Field(default=0, ge=0)

    def route(self, model: str) -> ModelRoute | None:
        """The first route whose name or glob matches `model`."""
        for route in self.models:
            if route.name == model or fnmatch.fnmatchcase(model, route.name):
                return route
        return None


class PoolEntry(_Model):
    """A shared budget (LLMPolicy.spec.budgets) for one group, e.g. team=payments."""

    #: Stable id, e.g. ``<policy>/<budget>/<group value>``; Redis keys use it as their hash tag.
    id: str
    policy: str
    budget: str
    group_by: str
    group_value: str
    spend_per_month_micro_usd: int | None = Field(default=None, ge=0)
    tokens_per_month: int | None = Field(default=None, ge=0)
    month_usage_seed: UsageSeed | None = None


class ProvidersDocument(_Model):
    """The providers Secret: every usable credential, plus the shared pools."""

    version: Literal[1] = CONFIG_VERSION
    providers: tuple[ProviderEntry, ...] = ()
    pools: tuple[PoolEntry, ...] = ()


class ProxyConfig(_Model):
    """The merged, in-memory view the proxy serves from (built from all documents)."""

    version: Literal[1] = CONFIG_VERSION
    keys: tuple[KeyEntry, ...] = ()
    providers: tuple[ProviderEntry, ...] = ()
    pools: tuple[PoolEntry, ...] = ()

    @classmethod
    def merge(cls, providers: ProvidersDocument, shards: list[KeysShard]) -> ProxyConfig:
        keys = tuple(
            key for shard in sorted(shards, key=lambda s: (s.namespace, s.shard)) for key in shard.keys
        )
        return cls(keys=keys, providers=providers.providers, pools=providers.pools)

    def split(self, max_bytes: int = 900_000) -> tuple[ProvidersDocument, list[KeysShard]]:
        """Documents to store: one providers doc and per-namespace key shards, each below `max_bytes`
        of JSON (a Secret holds at most 1 MiB)."""
        by_ns: dict[str, list[KeyEntry]] = {}
        for key in self.keys:
            by_ns.setdefault(key.namespace, []).append(key)
        shards: list[KeysShard] = []
        for namespace in sorted(by_ns):
            current: list[KeyEntry] = []
            size = 0
            index = 0
            for key in sorted(by_ns[namespace], key=lambda k: k.name):
                entry_size = len(key.model_dump_json()) + 1
                if current and size + entry_size > max_bytes:
                    shards.append(KeysShard(namespace=namespace, shard=index, keys=tuple(current)))
                    index += 1
                    current, size = [], 0
                current.append(key)
                size += entry_size
            shards.append(KeysShard(namespace=namespace, shard=index, keys=tuple(current)))
        return ProvidersDocument(providers=self.providers, pools=self.pools), shards
