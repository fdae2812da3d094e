"""The proxy app's shared state: settings, limiter, settler, metrics and the current routing snapshot.

Created by `app.create_app`, stored under `STATE` on the aiohttp app, read by the pipeline. A config
published by the source becomes a new `RoutingTable` (one reference swap); adapters of unchanged
credentials are reused, replaced ones are closed once their in-flight requests finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from aiohttp import web

from llmkeys_proxy import (
    config,
    identity,
    metrics,
    pricing,
    providers,
    redaction,
    routing,
    settings,
    settlement,
    sources,
)
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.providers import base as providers_base

logger = logging.getLogger("llmkeys.proxy")


@dataclasses.dataclass(eq=False)
class ProxyState:
    """Everything a request needs besides itself."""

    settings: settings.ProxySettings
    source: sources.ConfigSource
    limiter: limits_base.Limiter
    metrics: metrics.ProxyMetrics
    prices: pricing.PriceTable
    settler: settlement.Settler
    table: routing.RoutingTable | None = None
    #: The config `table` was built from (the budget gauges read its capped keys and pools).
    loaded_config: config.ProxyConfig | None = None
    #: Verifies workload identity tokens; None when no issuer is trusted.
    verifier: identity.TokenVerifier | None = None
    adapters: dict[str, providers_base.ProviderAdapter] = dataclasses.field(default_factory=dict)
    #: Replaced adapters still serving requests; closed when their last request ends.
    retiring: set[providers_base.ProviderAdapter] = dataclasses.field(default_factory=set)
    _closing: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    def apply_config(self, new: config.ProxyConfig) -> None:
        """Build and swap in the routing snapshot of `new` (source subscriber; runs on the loop)."""
        adapters: dict[str, providers_base.ProviderAdapter] = {}
        # Every credential value of this config is scrubbed from every log line from now on.
        redaction.remember_secrets(
            value
            for entry in new.providers
            for value in (entry.api_key, *entry.secret_fields.values())
            if value
        )
        for entry in new.providers:
            current = self.adapters.get(entry.id)
            if current is not None and current.entry == entry:
                adapters[entry.id] = current
                continue
            cls = providers.adapter_class(entry.provider)
            if cls is None:
                logger.error(
                    "provider %s (%s): no adapter in this build; its models are unavailable",
                    entry.id,
                    entry.provider,
                )
                continue
            try:
                adapters[entry.id] = cls(entry, self.settings)
            except Exception as exc:  # one bad credential must not take the others down
                logger.error("provider %s (%s) unusable: %s", entry.id, entry.provider, exc)
        replaced = [a for pid, a in self.adapters.items() if adapters.get(pid) is not a]
        self.adapters = adapters
        self.table = routing.RoutingTable(new, adapters)
        self.loaded_config = new
        for adapter in replaced:
            self.retiring.add(adapter)
            self.release(adapter, acquired=False)
        self.metrics.config_generation.set(self.source.generation)
        self.metrics.config_keys.set(len(new.keys))
        self.metrics.key_info.set_keys(new.keys)
        self.metrics.models.set_config(new, frozenset(self.prices.models))
        self.metrics.config_healthy.set(1)

    def release(self, adapter: providers_base.ProviderAdapter, acquired: bool = True) -> None:
        """A request is done with `adapter`; close it if it was replaced and is now idle."""
        if acquired:
            adapter.in_flight -= 1
        if adapter.in_flight == 0 and adapter in self.retiring:
            self.retiring.discard(adapter)
            task = asyncio.get_running_loop().create_task(adapter.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close_adapters(self) -> None:
        """Shutdown: close every adapter (in-flight requests have finished by now)."""
        for adapter in [*self.adapters.values(), *self.retiring]:
            await adapter.close()
        self.adapters.clear()
        self.retiring.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


STATE = web.AppKey("llmkeys_state", ProxyState)
