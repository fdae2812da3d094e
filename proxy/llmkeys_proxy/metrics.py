"""Prometheus metrics of the proxy, served on /metrics; recorded by the settlement step of each request.

Labels are public identifiers only (key_id, namespace, model, provider, code) — never keys,
credentials or prompts — and every value is bounded by the loaded config: `model` is a model the
config or the price table names (`ModelNames`, on each config swap), and `other` for any name a
client makes up (a client sending unique model names must not grow /metrics without end).
Each app owns its registry (several apps can live in one process, as in tests). With
`PROMETHEUS_MULTIPROC_DIR` set (server.py sets it for `--workers N`), values are shared through
prometheus-client's multiprocess files and /metrics reports the sum over all workers.

Dashboard families: `llmkeys_time_to_first_token_seconds{provider, model}` (streams),
`llmkeys_refusals_total{key_id, namespace, code}`, `llmkeys_invalid_key_attempts_total{key_id}` (a
config-known claimed id, else unknown / malformed / missing), `llmkeys_unknown_routes_total{method}`,
`llmkeys_key_expiry_timestamp_seconds{key_id}` and the remaining-budget gauges (`BudgetGauges`).
Every label value is bounded by the config: model names the config does not know are `other`.

Owners are not counter labels: `llmkeys_key_info{key_id, namespace, name, <owner fields>} 1` (one
series per key of the loaded config, kube-state-metrics style) joins them in on `key_id`. It is set on
each config swap (`ProxyState.apply_config`) and rendered from the answering process's own config, not
from multiprocess files: a removed key's series disappears at once, with one worker or several.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC

import prometheus_client
from prometheus_client import core, multiprocess

from llmkeys_proxy import config
from llmkeys_proxy.limits import base as limits_base

_REQUEST_LABELS = ("key_id", "namespace", "model", "provider", "code")
_TOKEN_LABELS = ("key_id", "namespace", "model", "provider", "kind")
_SPEND_LABELS = ("key_id", "namespace", "model", "provider")
#: Owner fields as the config spells them (manifest spelling) -> info label names.
KEY_OWNER_LABELS = {
    "user": "user",
    "team": "team",
    "app": "app",
    "agent": "agent",
    "service": "service",
    "environment": "environment",
    "costCenter": "cost_center",
}
KEY_INFO_LABELS = ("key_id", "namespace", "name", *KEY_OWNER_LABELS.values())
#: Longest info label value; longer values are cut (key_id keeps each series distinct anyway).
KEY_INFO_VALUE_MAX = 128
#: The model label (and tally name) of every model name the config and price table do not know.
OTHER_MODEL = "other"
_GLOB_CHARS = frozenset("*?[")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class KeyInfo:
    """`llmkeys_key_info`: one series per key of the current config, appended to every /metrics body.

    Not a Gauge: multiprocess gauge values live in per-worker files that `remove()` does not clear,
    so a deleted key's series would outlive it until the worker exits. A config swap only stores the
    keys; the exposition text is built at the next scrape and reused until the next swap
    (10,000 keys: ~80 ms to build, ~1.7 MB of text).
    """

    def __init__(self) -> None:
        self._keys: Sequence[config.KeyEntry] = ()
        self._text: bytes | None = None
        self._registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def set_keys(self, keys: Sequence[config.KeyEntry]) -> None:
        """Replace the series with those of `keys` (keys no longer present disappear)."""
        self._keys = keys
        self._text = None

    def text(self) -> bytes:
        """The family in the text exposition format."""
        if self._text is None:
            self._text = prometheus_client.generate_latest(self._registry)
        return self._text

    def collect(self) -> Iterator[core.Metric]:
        family = core.InfoMetricFamily(
            "llmkeys_key",
            "Owner of each virtual key in the loaded config (join on key_id; absent fields are empty).",
            labels=KEY_INFO_LABELS,
        )
        expiry = core.GaugeMetricFamily(
            "llmkeys_key_expiry_timestamp_seconds",
            "When each key of the loaded config expires (Unix time; keys without expiry are absent).",
            labels=("key_id",),
        )
        cut = KEY_INFO_VALUE_MAX
        for key in self._keys:
            owner = key.owner
            values = [key.key_id, key.namespace[:cut], key.name[:cut]]
            values += [owner.get(field, "")[:cut] for field in KEY_OWNER_LABELS]
            family.add_metric(values, {})
            if key.expires_at is not None:
                at = key.expires_at if key.expires_at.tzinfo else key.expires_at.replace(tzinfo=UTC)
                expiry.add_metric([key.key_id], at.timestamp())
        yield family
        yield expiry


class BudgetGauges:
    """Remaining monthly budget of capped keys and pools, from the limiter's month counters (read
    every LLMKEYS_BUDGET_METRICS_INTERVAL_S by `refresh`), appended to /metrics like `KeyInfo`:
    `llmkeys_key_budget_remaining{key_id, unit}`, `llmkeys_key_budget_used_ratio{key_id, cap}` and the
    same for pools (`pool` label: policy/budget/group). Units: usd, tokens; caps: spend, tokens."""

    def __init__(self) -> None:
        self._text = b""

    @property
    def text(self) -> bytes:
        return self._text

    def update(
        self,
        keys: Sequence[config.KeyEntry],
        pools: Sequence[config.PoolEntry],
        snapshots: Mapping[str, limits_base.UsageSnapshot],
    ) -> None:
        remaining = core.GaugeMetricFamily(
            "llmkeys_key_budget_remaining",
            "What a key may still use this UTC month under its caps (unit: usd or tokens).",
            labels=("key_id", "unit"),
        )
        ratio = core.GaugeMetricFamily(
            "llmkeys_key_budget_used_ratio",
            "Share of a key's monthly cap used this UTC month (cap: spend or tokens; 1 = exhausted).",
            labels=("key_id", "cap"),
        )
        pool_remaining = core.GaugeMetricFamily(
            "llmkeys_pool_budget_remaining",
            "What a shared pool may still use this UTC month (unit: usd or tokens).",
            labels=("pool", "unit"),
        )
        pool_ratio = core.GaugeMetricFamily(
            "llmkeys_pool_budget_used_ratio",
            "Share of a shared pool's monthly cap used this UTC month (cap: spend or tokens).",
            labels=("pool", "cap"),
        )
        for key in keys:
            month = snapshots.get(key.key_id)
            if month is not None:
                _add_caps(
                    remaining,
                    ratio,
                    key.key_id,
                    key.limits.spend_per_month_micro_usd,
                    key.limits.tokens_per_month,
                    month.month,
                )
        for pool in pools:
            month = snapshots.get(pool.id)
            if month is not None:
                _add_caps(
                    pool_remaining,
                    pool_ratio,
                    pool.id[: KEY_INFO_VALUE_MAX * 2],
                    pool.spend_per_month_micro_usd,
                    pool.tokens_per_month,
                    month.month,
                )
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(_Families((remaining, ratio, pool_remaining, pool_ratio)))
        self._text = prometheus_client.generate_latest(registry)


class _Families:
    def __init__(self, families: Sequence[core.Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[core.Metric]:
        yield from self._families


def _add_caps(
    remaining: core.GaugeMetricFamily,
    ratio: core.GaugeMetricFamily,
    scope: str,
    spend_cap: int | None,
    tokens_cap: int | None,
    month: limits_base.PeriodUsage,
) -> None:
    if spend_cap is not None:
        remaining.add_metric([scope, "usd"], max(0, spend_cap - month.micro_usd) / 1_000_000)
        ratio.add_metric([scope, "spend"], month.micro_usd / spend_cap if spend_cap else 1.0)
    if tokens_cap is not None:
        remaining.add_metric([scope, "tokens"], max(0, tokens_cap - month.total_tokens))
        ratio.add_metric([scope, "tokens"], month.total_tokens / tokens_cap if tokens_cap else 1.0)


#: HTTP methods counted by name on unknown routes; any other is `other` (bounded label).
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class ModelNames:
    """Bounds model label values to the names the loaded config knows (exact model routes, Azure
    deployments, price overrides) or the price table lists; any other name is `other`, so no caller
    can grow the series count by inventing model names (a glob route such as `gpt-5*` admits them)."""

    def __init__(self) -> None:
        self._known: frozenset[str] = frozenset()

    def set_config(self, proxy_config: config.ProxyConfig, price_names: frozenset[str] = frozenset()) -> None:
        known = set(price_names)
        for provider in proxy_config.providers:
            known.update(route.name for route in provider.models)
            known.update(provider.deployments)
            known.update(provider.pricing)
        self._known = frozenset(name for name in known if not _GLOB_CHARS.intersection(name))

    def label(self, model: str | None) -> str:
        if not model:
            return ""
        return model if model in self._known else OTHER_MODEL


class ProxyMetrics:
    """The proxy's metric families plus a cache of labelled children (labels() is not free)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prometheus_client.Counter(
            "llmkeys_requests",
            "Proxied requests by outcome code (ok, or a stable error code).",
            _REQUEST_LABELS,
            registry=r,
        )
        self.tokens = prometheus_client.Counter(
            "llmkeys_tokens",
            "Tokens used (kind: input, cached_input, output, reasoning); input includes cached.",
            _TOKEN_LABELS,
            registry=r,
        )
        self.spend = prometheus_client.Counter(
            "llmkeys_spend_micro_usd", "Spend in micro-USD from the price table.", _SPEND_LABELS, registry=r
        )
        self.duration = prometheus_client.Histogram(
            "llmkeys_request_duration_seconds",
            "Time from request received to response finished (streams: until the last byte).",
            ("provider",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.limiter_unavailable = prometheus_client.Counter(
            "llmkeys_limiter_unavailable",
            "Requests that met an unreachable limiter, by the key's policy (Reject or Allow).",
            ("mode",),
            registry=r,
        )
        self.estimated_usage = prometheus_client.Counter(
            "llmkeys_usage_estimated",
            "Responses without provider-reported usage, counted locally with tiktoken (cut-off streams).",
            ("provider",),
            registry=r,
        )
        self.settle_errors = prometheus_client.Counter(
            "llmkeys_settle_errors", "Settlements or refunds the limiter did not accept.", registry=r
        )
        self.in_flight = prometheus_client.Gauge(
            "llmkeys_in_flight_requests", "Requests being served.", registry=r, multiprocess_mode="livesum"
        )
        self.config_generation = prometheus_client.Gauge(
            "llmkeys_config_generation",
            "Config versions loaded since start.",
            registry=r,
            multiprocess_mode="max",
        )
        self.config_healthy = prometheus_client.Gauge(
            "llmkeys_config_healthy",
            "1 when the last config read succeeded, 0 when serving the last good config.",
            registry=r,
            multiprocess_mode="min",
        )
        self.config_keys = prometheus_client.Gauge(
            "llmkeys_config_keys", "Virtual keys in the loaded config.", registry=r, multiprocess_mode="max"
        )
        self.audit_dropped = prometheus_client.Counter(
            "llmkeys_audit_dropped",
            "Audit records a sink lost (its queue was full or its write failed), by sink.",
            ("sink",),
            registry=r,
        )
        self.ttft = prometheus_client.Histogram(
            "llmkeys_time_to_first_token_seconds",
            "Streamed responses: time from request received to the first body bytes sent to the client.",
            ("provider", "model"),
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.refusals = prometheus_client.Counter(
            "llmkeys_refusals",
            "Requests the proxy refused, by code and key (suspended, expired, inactive, limits, models).",
            ("key_id", "namespace", "code"),
            registry=r,
        )
        self.invalid_keys = prometheus_client.Counter(
            "llmkeys_invalid_key_attempts",
            "Requests refused as invalid_api_key, by the key id they claimed when the config knows it "
            "(a known id with a wrong secret), else unknown, malformed or missing.",
            ("key_id",),
            registry=r,
        )
        self.unknown_routes = prometheus_client.Counter(
            "llmkeys_unknown_routes",
            "Requests to paths the proxy does not serve (404 not_found), by method.",
            ("method",),
            registry=r,
        )
        self.key_info = KeyInfo()
        self.models = ModelNames()
        self.budgets = BudgetGauges()
        self._request_children: dict[tuple[str, ...], prometheus_client.Counter] = {}
        self._token_children: dict[tuple[str, ...], tuple[prometheus_client.Counter, ...]] = {}
        self._duration_children: dict[str, prometheus_client.Histogram] = {}

    def observe_request(
        self,
        key_id: str,
        namespace: str,
        model: str,
        provider: str,
        code: str,
        duration_s: float,
        tokens: tuple[int, int, int, int] | None,
        micro_usd: int,
    ) -> None:
        """Count one finished request; `tokens` is (input, cached_input, output, reasoning); `model`
        is bounded already (`ModelNames.label`)."""
        labels = (key_id, namespace, model, provider, code)
        counter = self._request_children.get(labels)
        if counter is None:
            counter = self.requests.labels(*labels)
            if len(self._request_children) < 100_000:
                self._request_children[labels] = counter
        counter.inc()
        histogram = self._duration_children.get(provider)
        if histogram is None:
            histogram = self._duration_children[provider] = self.duration.labels(provider)
        histogram.observe(duration_s)
        if tokens is not None:
            base = (key_id, namespace, model, provider)
            children = self._token_children.get(base)
            if children is None:
                children = (
                    self.tokens.labels(*base, "input"),
                    self.tokens.labels(*base, "cached_input"),
                    self.tokens.labels(*base, "output"),
                    self.tokens.labels(*base, "reasoning"),
                    self.spend.labels(*base),
                )
                if len(self._token_children) < 100_000:
                    self._token_children[base] = children
            for child, value in zip(children, (*tokens, micro_usd), strict=True):
                if value:
                    child.inc(value)

    def count_audit_drop(self, sink: str, count: int) -> None:
        """`on_drop` of the audit sinks (called from their threads; prometheus-client is thread-safe)."""
        self.audit_dropped.labels(sink).inc(count)

    def observe_ttft(self, provider: str, model: str, seconds: float) -> None:
        self.ttft.labels(provider, model).observe(seconds)

    def observe_refusal(self, key_id: str, namespace: str, code: str) -> None:
        self.refusals.labels(key_id, namespace, code).inc()

    def observe_unknown_route(self, method: str) -> None:
        self.unknown_routes.labels(method if method in _METHODS else "other").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text (summed over workers in multiprocess mode, plus this process's key
        info) and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = prometheus_client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = self.registry
        body = prometheus_client.generate_latest(registry) + self.key_info.text() + self.budgets.text
        return body, prometheus_client.CONTENT_TYPE_LATEST
