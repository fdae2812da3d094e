"""The proxy's aiohttp application factory: `create_app(settings, config_source, limiter)`.

Called by server.py (`llmkeys proxy`), by standalone mode (`llmkeys serve`) and by tests. The app
owns what it is given: it starts the config source, and on cleanup (after in-flight requests
finished) drains settlements, closes upstream sessions, stops the source and closes the limiter.
Routes: the OpenAI-compatible API (`/v1/...`), Azure OpenAI's (`/openai/deployments/{d}/...`,
`/openai/v1/...`), `/healthz`, `/readyz`, `/metrics`. The proxied routes are the rows of `routes.ROUTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
from aiohttp import web

from llmkeys_proxy import (
    apis,
    audit_sinks,
    auth,
    errors,
    headers,
    identity,
    listener,
    metrics,
    pricing,
    redaction,
    routes,
    settings,
    settlement,
    sources,
)
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.state import STATE, ProxyState


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """Ready when a config is loaded and the limiter answers. A source error while a last good
    config is served stays ready (the fleet keeps serving) but is reported here."""
    state = request.app[STATE]
    source = state.source
    current = source.current
    try:
        limiter_ok = await state.limiter.ping()
    except Exception:
        limiter_ok = False
    state.metrics.config_healthy.set(1 if source.healthy else 0)
    ready = current is not None and limiter_ok
    body = {
        "status": "ready" if ready else "not ready",
        "config": {
            "loaded": current is not None,
            "healthy": source.healthy,
            "error": source.last_error,
            "generation": source.generation,
            "keys": len(current.keys) if current is not None else 0,
            "providers": len(current.providers) if current is not None else 0,
            "unavailable_providers": sorted(
                p.id for p in (current.providers if current is not None else ()) if p.id not in state.adapters
            ),
        },
        "limiter": "ok" if limiter_ok else "unreachable",
        # Token issuers do not decide readiness (static keys keep working); shown for diagnosis.
        "issuers": state.verifier.status() if state.verifier is not None else [],
    }
    return web.Response(
        status=200 if ready else 503, body=orjson.dumps(body), content_type="application/json"
    )


async def _metrics(request: web.Request) -> web.Response:
    """The Prometheus exposition; with LLMKEYS_METRICS_TOKEN set, only for `Authorization: Bearer
    <token>` (it lists every key's owner and spend)."""
    state = request.app[STATE]
    token = state.settings.metrics_token
    if token:
        presented = request.headers.get("Authorization", "")
        scheme, _, value = presented.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            error = errors.ProxyError(
                "metrics_unauthorized", "GET /metrics needs the bearer token the proxy was given."
            )
            response = apis.FAMILIES["openai"].error_response(error)
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    body, content_type = state.metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _list_models(request: web.Request) -> web.Response:
    """GET /v1/models: only the models this key may use. The anthropic SDK (it sends
    `anthropic-version`) gets Anthropic's list shape on the same path."""
    state = request.app[STATE]
    family = apis.FAMILIES["anthropic" if "anthropic-version" in request.headers else "openai"]
    try:
        table = state.table
        if table is None:
            raise errors.ProxyError(
                "config_not_loaded", "The proxy has not loaded its configuration yet; retry shortly."
            )
        key, _ = await auth.authenticate_any(
            table.keys,
            table.identities,
            state.verifier,
            auth.presented_key(request.headers, request.query),
            datetime.now(UTC),
        )
        wanted = request.match_info.get("model")
        listed = table.models_for(key)
        if wanted is None:
            return web.json_response(family.model_list(listed), dumps=_dumps)
        for model, provider in listed:
            if model == wanted:
                return web.json_response(family.model_object(model, provider), dumps=_dumps)
        raise errors.ProxyError(
            "model_not_found", f"The model '{wanted}' does not exist or this key may not use it."
        )
    except errors.ProxyError as error:
        response = family.error_response(error)
        response.headers["x-request-id"] = headers.request_id_of(request.headers)
        return response


async def _not_found(request: web.Request) -> web.Response:
    request.app[STATE].metrics.observe_unknown_route(request.method)
    error = errors.ProxyError("not_found", f"No route {request.method} {request.path} on this proxy.")
    response = apis.FAMILIES["openai"].error_response(error)
    response.headers["x-request-id"] = headers.request_id_of(request.headers)
    return response


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_app(
    proxy_settings: settings.ProxySettings,
    config_source: sources.ConfigSource,
    limiter: limits_base.Limiter,
    *,
    prices: pricing.PriceTable | None = None,
    verifier: identity.TokenVerifier | None = None,
) -> web.Application:
    """The proxy application; serve it with `server.serve_app` (or any aiohttp runner). Workload
    tokens are verified by `verifier`, by default the one the settings' trusted issuers give."""
    redaction.install()
    proxy_metrics = metrics.ProxyMetrics()
    price_table = prices or pricing.PriceTable.shipped()
    state = ProxyState(
        settings=proxy_settings,
        source=config_source,
        limiter=limiter,
        metrics=proxy_metrics,
        prices=price_table,
        settler=settlement.Settler(
            limiter,
            proxy_metrics,
            price_table,
            audit_sinks.build_trail(proxy_settings, on_drop=proxy_metrics.count_audit_drop),
            proxy_settings.audit_content_max_bytes,
        ),
        verifier=verifier if verifier is not None else identity.TokenVerifier.from_settings(proxy_settings),
    )
    app = web.Application(client_max_size=proxy_settings.max_body_bytes)
    app[STATE] = state
    app.on_response_prepare.append(listener.name_server)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    for route in routes.ROUTES:
        app.router.add_route(route.method, route.path, routes.handler(route))
    for prefix in ("/v1", "/openai/v1"):
        app.router.add_get(f"{prefix}/models", _list_models)
        app.router.add_get(f"{prefix}/models/{{model}}", _list_models)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    app.cleanup_ctx.append(_lifecycle)
    return app


#: Keys and pools read per pipelined call for the budget gauges.
_BUDGET_CHUNK = 500


async def _refresh_budgets(state: ProxyState) -> None:
    """Keep `metrics.budgets` current: month usage of every key and pool with a monthly cap, read
    every LLMKEYS_BUDGET_METRICS_INTERVAL_S (a limiter outage leaves the last values)."""
    while True:
        current = state.loaded_config
        if current is not None:
            keys = [
                k
                for k in current.keys
                if k.limits.spend_per_month_micro_usd is not None or k.limits.tokens_per_month is not None
            ]
            pools = list(current.pools)
            try:
                snapshots: dict[str, limits_base.UsageSnapshot] = {}
                now = datetime.now(UTC)
                key_ids, pool_ids = [k.key_id for k in keys], [p.id for p in pools]
                for start in range(0, max(len(key_ids), len(pool_ids)), _BUDGET_CHUNK):
                    end = start + _BUDGET_CHUNK
                    snapshots.update(
                        await state.limiter.read_usage(key_ids[start:end], pool_ids[start:end], now)
                    )
                state.metrics.budgets.update(keys, pools, snapshots)
            except limits_base.LimiterUnavailable:
                pass
        await asyncio.sleep(state.settings.budget_metrics_interval_s)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.settler.start()
    if state.verifier is not None:
        await state.verifier.start()
    state.source.subscribe(state.apply_config)
    await state.source.start()
    budgets = None
    if state.settings.budget_metrics_interval_s > 0:
        budgets = asyncio.create_task(_refresh_budgets(state), name="llmkeys-budget-gauges")
    try:
        yield
    finally:
        # aiohttp runs this after the server stopped and in-flight handlers finished.
        if budgets is not None:
            budgets.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await budgets
        await state.source.stop()
        if state.verifier is not None:
            await state.verifier.close()
        await state.settler.close()
        await asyncio.to_thread(state.settler.trail.close)  # flush every audit sink
        await state.close_adapters()
        await state.limiter.close()
