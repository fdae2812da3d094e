"""The routing table: one immutable snapshot of a config version with the lookups a request needs.

Built by the app each time the config source publishes (`RoutingTable(config, adapters)`), then
swapped in with one reference assignment; a request reads the reference once and uses that
snapshot to the end, so a reload never changes the rules under a request in flight.
Answers: which key has this id or binds this identity (auth.py), and which credential serves this
model for this key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from llmkeys_proxy import config, errors
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.providers import base as providers_base

_GLOB_CHARS = frozenset("*?[")
#: Bound of the per-snapshot route cache (key id, model, api, operation) -> route or refusal.
_ROUTE_CACHE_LIMIT = 50_000


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """Where an admitted request goes."""

    provider: config.ProviderEntry
    adapter: providers_base.ProviderAdapter
    #: The name sent upstream (route rename or Azure deployment).
    upstream_model: str
    #: The model name prices are looked up by (the route's upstream name, else the requested one).
    price_model: str


def _limiter_enforced(limits: config.Limits) -> bool:
    """Whether any limit the limiter keeps counters for is set (maxTokensPerRequest is checked
    by the pipeline, per request)."""
    return any(
        value is not None
        for value in (
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.tokens_per_day,
            limits.tokens_per_month,
            limits.spend_per_month_micro_usd,
        )
    )


class RoutingTable:
    """Indexes of one `ProxyConfig` plus the adapters of its providers."""

    def __init__(
        self, proxy_config: config.ProxyConfig, adapters: Mapping[str, providers_base.ProviderAdapter]
    ) -> None:
        self.config = proxy_config
        self.keys: dict[str, config.KeyEntry] = {key.key_id: key for key in proxy_config.keys}
        #: (issuer, subject) -> keys binding that workload identity (auth.key_for_identity).
        identities: dict[tuple[str, str], list[tuple[config.KeyEntry, config.Identity]]] = {}
        for key in proxy_config.keys:
            for identity in key.identities:
                identities.setdefault((identity.issuer, identity.subject), []).append((key, identity))
        self.identities = {ref: tuple(bindings) for ref, bindings in identities.items()}
        self.providers: dict[str, config.ProviderEntry] = {p.id: p for p in proxy_config.providers}
        self.adapters = dict(adapters)
        #: Azure deployment name -> model name (the AzureOpenAI SDK puts deployments in the path).
        self.deployment_models: dict[str, str] = {
            deployment: model for p in proxy_config.providers for model, deployment in p.deployments.items()
        }
        pools = {pool.id: pool for pool in proxy_config.pools}
        self.pool_limits: dict[str, limits_base.PoolLimit] = {
            pool.id: limits_base.PoolLimit(
                pool_id=pool.id,
                spend_per_month_micro_usd=pool.spend_per_month_micro_usd,
                tokens_per_month=pool.tokens_per_month,
                month_usage_seed=pool.month_usage_seed,
            )
            for pool in pools.values()
        }
        #: Credentials with provider-wide limits the limiter enforces (absent: nothing to reserve).
        self.provider_limits: dict[str, limits_base.ProviderLimit] = {
            provider.id: limits_base.ProviderLimit(provider.id, provider.limits)
            for provider in proxy_config.providers
            if provider.limits is not None and _limiter_enforced(provider.limits)
        }
        self._key_pools: dict[str, tuple[limits_base.PoolLimit, ...]] = {}
        self._routes: dict[tuple[str, str, str, str], Route | errors.ProxyError] = {}

    def pools_of(self, key: config.KeyEntry) -> tuple[limits_base.PoolLimit, ...]:
        """The pool limits a key's requests count against (unknown pool ids are skipped)."""
        found = self._key_pools.get(key.key_id)
        if found is None:
            found = tuple(self.pool_limits[p] for p in key.pools if p in self.pool_limits)
            self._key_pools[key.key_id] = found
        return found

    def resolve(self, key: config.KeyEntry, model: str, api: apis_base.ApiFormat, operation: str) -> Route:
        """The route for `key` calling `model`; raises ProxyError model_not_allowed (allowlists),
        model_not_found (no credential serves it), provider_not_allowed (only credentials the key may
        not use serve it) or endpoint_not_supported (its credentials cannot serve this operation)."""
        cache_key = (key.key_id, model, api, operation)
        found = self._routes.get(cache_key)
        if found is None:
            try:
                found = self._resolve(key, model, api, operation)
            except errors.ProxyError as refusal:
                found = refusal
            if len(self._routes) >= _ROUTE_CACHE_LIMIT:
                self._routes.clear()
            self._routes[cache_key] = found
        if isinstance(found, errors.ProxyError):
            raise found
        return found

    def _resolve(self, key: config.KeyEntry, model: str, api: apis_base.ApiFormat, operation: str) -> Route:
        if not key.model_allowed(model):
            raise errors.ProxyError(
                "model_not_allowed", f"This key may not use model '{model}'.", param="model"
            )
        serving = False
        supported = False
        for provider in self.config.providers:
            route = provider.route(model)
            if route is None:
                continue
            serving = True
            adapter = self.adapters.get(provider.id)
            if adapter is None or not adapter.supports(api, operation):
                continue
            supported = True
            if provider.id not in key.providers:
                continue
            return Route(
                provider=provider,
                adapter=adapter,
                upstream_model=adapter.upstream_model(model, route),
                price_model=route.upstream_name or model,
            )
        if not serving:
            raise errors.ProxyError(
                "model_not_found",
                f"The model '{model}' does not exist or no provider serves it.",
                param="model",
            )
        if not supported:
            raise errors.ProxyError(
                "endpoint_not_supported", f"The provider serving '{model}' does not support this endpoint."
            )
        raise errors.ProxyError(
            "provider_not_allowed",
            f"The model '{model}' is served only by providers this key may not use.",
            param="model",
        )

    def models_for(self, key: config.KeyEntry) -> list[tuple[str, config.ProviderEntry]]:
        """Concrete model names `key` may call on the OpenAI-format routes, with the credential
        serving each (sorted by name). Glob routes contribute the key's own concrete allowlist names
        they match."""
        candidates: set[str] = set()
        for provider in self.config.providers:
            if provider.id in key.providers:
                candidates.update(r.name for r in provider.models if not _GLOB_CHARS.intersection(r.name))
                candidates.update(provider.deployments)
        for allowlist in key.model_allowlists:
            candidates.update(name for name in allowlist if not _GLOB_CHARS.intersection(name))
        listed = []
        for model in sorted(candidates):
            if not key.model_allowed(model):
                continue
            for provider in self.config.providers:
                if provider.id in key.providers and provider.route(model) is not None:
                    listed.append((model, provider))
                    break
        return listed
