"""The request pipeline of every proxied call: authenticate, parse, route, reserve, forward, settle.

Called by the route handlers of `routes` with an `Endpoint` saying what the route is (API format,
operation, error family). Steps: auth.py (key) -> parse the few body fields needed (orjson) ->
routing.py (credential + upstream model) -> max_tokens check -> limiter reserve (429 with
Retry-After / x-ratelimit-* on deny; the key's policy when the limiter is down) -> the provider
adapter (original body bytes unless a change is needed) -> response streamed back without
buffering, usage metered on the way -> `Settler.submit` (settle/refund, metrics, audit) off the
critical path. Errors are rendered once, in the caller's API family's shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web
from multidict import CIMultiDict

from llmkeys_proxy import auth, config, errors, headers, redaction, routing, settlement, tokens
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.providers import base as providers_base
from llmkeys_proxy.state import STATE, ProxyState

logger = logging.getLogger("llmkeys.proxy")
_T = TypeVar("_T")

#: Bodies above this size get their prompt tokens counted in a worker thread (keeps the loop free).
THREAD_ESTIMATE_BYTES = 64 * 1024
#: Largest output cap a request may ask for (times its completions): more than any model produces,
#: small enough that limits arithmetic stays exact.
MAX_OUTPUT_TOKENS = 100_000_000
#: Bytes of a provider's error message repeated to the client on a 5xx.
_UPSTREAM_MESSAGE_LIMIT = 300

_DENY_MESSAGES: dict[str, str] = {
    "rate_limit_exceeded": "Rate limit reached for this key (requests per minute).",
    "token_limit_exceeded": "Token limit reached for this key.",
    "budget_exceeded": "This key's monthly spend cap is reached.",
    "pool_budget_exceeded": "A shared budget this key draws from is exhausted.",
    "provider_limit_exceeded": "The provider credential serving this model is at its shared limit.",
}


#: Longest User-Agent and end-user text kept for the audit line.
AUDIT_TEXT_MAX = 256


def end_user_of(payload: Mapping[str, Any]) -> str | None:
    """The end user a request names for abuse tracking: OpenAI's `user` (or `safety_identifier`),
    Anthropic's `metadata.user_id`. Audit only (never a metric label); cut at AUDIT_TEXT_MAX."""
    value = payload.get("user") or payload.get("safety_identifier")
    if not isinstance(value, str):
        metadata = payload.get("metadata")
        value = metadata.get("user_id") if isinstance(metadata, dict) else None
    return value[:AUDIT_TEXT_MAX] if isinstance(value, str) and value else None


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 request_too_large above `limit` bytes and with 408
    request_timeout when it has not arrived whole within `timeout_s` (slow-body clients)."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        # The rest of the body may never come: close the connection after the answer (drained for
        # at most listener.LINGER_S) instead of keeping it for the next request.
        request.protocol.close()
        raise errors.ProxyError(
            "request_timeout", f"The request body did not arrive within {timeout_s:g} s."
        ) from None


def _too_large(limit: int) -> errors.ProxyError:
    return errors.ProxyError(
        "request_too_large", f"The request body is larger than the allowed {limit} bytes."
    )


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 invalid_json otherwise (the body is never echoed)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.ProxyError("invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise errors.ProxyError("invalid_json", "The request body must be a JSON object.")
    return payload


async def handle(
    request: web.Request, endpoint: apis_base.Endpoint, path_model: str | None = None
) -> web.StreamResponse:
    """Serve one proxied request end to end (see module docstring)."""
    state = request.app[STATE]
    outcome = settlement.Outcome(
        request_id=headers.request_id_of(request.headers),
        method=request.method,
        path=request.path,
        api=endpoint.api,
        started=time.perf_counter(),
        time=datetime.now(UTC),
    )
    agent = request.headers.get("User-Agent")
    if agent:
        outcome.user_agent = agent[:AUDIT_TEXT_MAX]
    state.metrics.in_flight.inc()
    try:
        return await _proxy(state, request, endpoint, path_model, outcome)
    except errors.ProxyError as error:
        return _refusal(endpoint.family, error, outcome)
    except Exception:
        logger.exception("request %s failed inside the proxy", outcome.request_id)
        internal = errors.ProxyError(
            "internal_error", f"Internal proxy error (request id {outcome.request_id})."
        )
        return _refusal(endpoint.family, internal, outcome)
    finally:
        state.metrics.in_flight.dec()
        state.settler.submit(outcome)


def _refusal(
    family: apis_base.WireFamily, error: errors.ProxyError, outcome: settlement.Outcome
) -> web.Response:
    if outcome.code == "ok":
        outcome.code = error.code
    outcome.status = error.status
    response = family.error_response(error)
    response.headers["x-request-id"] = outcome.request_id
    if outcome.rate_headers and error.headers is None:
        response.headers.update(outcome.rate_headers)
    return response


async def _proxy(
    state: ProxyState,
    request: web.Request,
    endpoint: apis_base.Endpoint,
    path_model: str | None,
    outcome: settlement.Outcome,
) -> web.StreamResponse:
    table = state.table
    if table is None:
        raise errors.ProxyError(
            "config_not_loaded", "The proxy has not loaded its configuration yet; retry shortly."
        )
    presented = auth.presented_key(request.headers, request.query)
    try:
        key, token = await auth.authenticate_any(
            table.keys, table.identities, state.verifier, presented, outcome.time
        )
    except errors.ProxyError:
        outcome.claimed_key_id, outcome.claimed_key = auth.claimed_key(
            table.keys, presented, table.identities, state.verifier
        )
        raise
    outcome.key = key
    outcome.identity = token
    body = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_s)
    if key.audit.level == "content":
        outcome.prompt_body = body
    payload = parse_json_object(body)
    outcome.end_user = end_user_of(payload)
    model = path_model or payload.get("model")
    if not isinstance(model, str) or not model:
        raise errors.ProxyError("model_required", "The request must name a model.", param="model")
    outcome.model = model
    stream = endpoint.stream if endpoint.stream is not None else payload.get("stream") is True
    outcome.stream = stream
    current = state.table
    if current is not None and current is not table:
        # A reload landed while the body arrived: route by the new rules (the old snapshot's
        # adapters may be closing), and check the key against them too.
        table = current
        if token is not None:
            key = outcome.key = auth.key_for_identity(table.identities, token, outcome.time)
        else:
            key = outcome.key = auth.authenticate(table.keys, presented, outcome.time)
    route = table.resolve(key, model, endpoint.api, endpoint.operation)
    outcome.provider = route.provider
    outcome.upstream_model = route.upstream_model
    outcome.price_model = route.price_model
    # Taken with no await since the table was read: a replaced adapter is closed only after this
    # request released it.
    adapter = route.adapter
    adapter.in_flight += 1
    try:
        return await _forward(state, request, endpoint, table, key, model, route, body, payload, outcome)
    finally:
        state.release(adapter)


async def _forward(
    state: ProxyState,
    request: web.Request,
    endpoint: apis_base.Endpoint,
    table: routing.RoutingTable,
    key: config.KeyEntry,
    model: str,
    route: routing.Route,
    body: bytes,
    payload: dict[str, Any],
    outcome: settlement.Outcome,
) -> web.StreamResponse:
    wire = endpoint.wire
    requested = wire.requested_output_tokens(payload)
    if requested is not None and requested > MAX_OUTPUT_TOKENS:
        raise errors.ProxyError(
            "invalid_max_tokens",
            f"The request asks for {min(requested, 10**30):,} output tokens"
            f"{'+' if requested > 10**30 else ''}; no model produces more than {MAX_OUTPUT_TOKENS:,}.",
            param="max_tokens",
        )
    cap = key.limits.max_tokens_per_request
    if cap is not None and requested is not None and requested > cap:
        raise errors.ProxyError(
            "max_tokens_exceeded",
            f"This key allows at most {cap} output tokens per request; the request asks for {requested}.",
            param="max_tokens",
        )
    provider_limits = route.provider.limits
    provider_cap = None if provider_limits is None else provider_limits.max_tokens_per_request
    if provider_cap is not None:
        if requested is not None and requested > provider_cap:
            raise errors.ProxyError(
                "max_tokens_exceeded",
                f"The provider credential serving '{model}' allows at most {provider_cap} output tokens "
                f"per request; the request asks for {requested}.",
                param="max_tokens",
            )
        cap = provider_cap if cap is None else min(cap, provider_cap)
    reserve_output = requested if requested is not None else key.default_output_reservation
    if cap is not None:
        reserve_output = min(reserve_output, cap)
    pools = table.pools_of(key)
    provider_limit = table.provider_limits.get(route.provider.id) if table.provider_limits else None
    prompt_tokens: int | None = None
    estimated_cost = 0
    if (
        pools
        or _counts_tokens(key.limits)
        or (provider_limit is not None and _counts_tokens(provider_limit.limits))
    ):
        # Only token and spend limits need the prompt counted up front; otherwise it is counted
        # later, and only if the provider reports no usage.
        prompt_tokens = await off_loop(len(body), wire.estimate_prompt_tokens, route.price_model, payload)
        estimate = tokens.TokenCounts(input_tokens=prompt_tokens, output_tokens=reserve_output)
        estimated_cost = state.prices.cost(route.price_model, estimate, route.provider.pricing).micro_usd
    await _reserve(
        state, key, pools, provider_limit, (prompt_tokens or 0) + reserve_output, estimated_cost, outcome
    )

    adapter = route.adapter
    stream = outcome.stream
    body_out, payload_out, hide = wire.upstream_body(
        stream,
        payload,
        body,
        route.upstream_model,
        adapter.injects_stream_usage,
        cap if requested is None else None,
    )
    call = providers_base.UpstreamCall(
        api=endpoint.api,
        operation=endpoint.operation,
        model=model,
        upstream_model=route.upstream_model,
        stream=stream,
        body=body_out,
        payload=payload_out,
        headers=headers.forward_headers(request.headers, outcome.request_id),
        query={k: v for k, v in request.query.items() if k != "key"} if request.query else {},
        request_id=outcome.request_id,
    )
    try:
        upstream = await adapter.send(call)
    except errors.ProxyError as error:
        outcome.upstream_error = error.code
        raise
    if stream and 200 <= upstream.status < 300:
        return await _stream(request, upstream, call, wire, adapter, hide, prompt_tokens, outcome)
    return await _whole(upstream, call, wire, adapter, route, prompt_tokens, outcome)


def _counts_tokens(limits: config.Limits) -> bool:
    return (
        limits.tokens_per_minute is not None
        or limits.tokens_per_day is not None
        or limits.tokens_per_month is not None
        or limits.spend_per_month_micro_usd is not None
    )


async def off_loop(size: int, count: Callable[..., _T], *args: Any) -> _T:
    """`count(*args)` (tiktoken over `size` bytes of input) in a worker thread when the input is
    large, so one request's 10 MB prompt never stalls everyone else's requests on the event loop."""
    if size > THREAD_ESTIMATE_BYTES:
        return await asyncio.to_thread(count, *args)
    return count(*args)


async def _prompt_tokens(
    known: int | None,
    call: providers_base.UpstreamCall,
    wire: apis_base.WireFormat,
    outcome: settlement.Outcome,
) -> int:
    """The prompt estimate, counted now if the reservation did not need it."""
    if known is not None:
        return known
    model = outcome.price_model or call.upstream_model
    return await off_loop(len(call.body), wire.estimate_prompt_tokens, model, call.payload)


async def _reserve(
    state: ProxyState,
    key: config.KeyEntry,
    pools: tuple[limits_base.PoolLimit, ...],
    provider_limit: limits_base.ProviderLimit | None,
    tokens: int,
    micro_usd: int,
    outcome: settlement.Outcome,
) -> None:
    reserve_request = limits_base.ReserveRequest(
        key_id=key.key_id,
        limits=key.limits,
        pools=pools,
        estimated_tokens=limits_base.bounded(tokens),
        estimated_micro_usd=limits_base.bounded(micro_usd),
        now=outcome.time,
        month_usage_seed=key.month_usage_seed,
        day_usage_seed=key.day_usage_seed,
        provider=provider_limit,
    )
    try:
        decision = await state.limiter.reserve(reserve_request)
    except limits_base.LimiterUnavailable:
        mode = key.on_limiter_unavailable
        state.metrics.limiter_unavailable.labels(mode).inc()
        if mode == "Allow":
            outcome.limiter_bypassed = True
            # Settling a stand-in reservation still counts the usage (the limiter keeps it until
            # it answers again).
            outcome.reservation = limits_base.unreserved(reserve_request)
            logger.warning("limiter unavailable: key %s served unlimited (policy Allow)", key.key_id)
            return
        raise errors.ProxyError(
            "limiter_unavailable",
            "Usage limits cannot be checked right now, so the request is refused; retry shortly.",
            headers={"Retry-After": "1"},
        ) from None
    rate = headers.rate_limit_headers(decision.rate)
    outcome.rate_headers = rate
    if not decision.allowed:
        code = decision.code or "rate_limit_exceeded"
        outcome.denied_scope = decision.scope_id
        raise errors.ProxyError(
            code, decision.message or _DENY_MESSAGES[code], headers=headers.deny_headers(decision, rate)
        )
    outcome.reservation = decision.reservation


async def _whole(
    upstream: providers_base.UpstreamResponse,
    call: providers_base.UpstreamCall,
    wire: apis_base.WireFormat,
    adapter: providers_base.ProviderAdapter,
    route: routing.Route,
    prompt_tokens: int | None,
    outcome: settlement.Outcome,
) -> web.Response:
    try:
        data = await upstream.read()
    finally:
        upstream.close()
    status = upstream.status
    # The real credential never reaches the client, whatever part of the answer echoes it.
    scrubber = redaction.Scrubber(adapter.secret_values())
    data = scrubber.scrub(data)
    if outcome.prompt_body is not None:
        outcome.completion_body = data
    if not 200 <= status < 300:
        return _upstream_failure(upstream, data, adapter, route, outcome)
    counts = wire.response_usage(call.operation, upstream.headers, data)
    if counts is not None and not counts.plausible:
        # Negative, non-numeric or absurd usage is never charged as reported (nor as $0).
        logger.warning(
            "request %s: provider %s reported unusable usage; counted locally",
            outcome.request_id,
            route.provider.id,
        )
        counts = None
    if counts is None:
        counts = tokens.TokenCounts(
            input_tokens=await _prompt_tokens(prompt_tokens, call, wire, outcome),
            output_tokens=await off_loop(len(data), _output_tokens_of, call, wire, data),
        )
        outcome.usage_source = "estimate"
    else:
        outcome.usage_source = "provider"
    outcome.counts = counts
    outcome.status = status
    response = web.Response(
        status=status, body=data, headers=_scrubbed(headers.response_headers(upstream.headers), scrubber)
    )
    response.headers["x-request-id"] = outcome.request_id
    if outcome.rate_headers:
        response.headers.update(outcome.rate_headers)
    return response


def _scrubbed(kept: CIMultiDict[str], scrubber: redaction.Scrubber) -> CIMultiDict[str]:
    """Response headers with the real credential's values replaced (an upstream may echo it)."""
    if not scrubber.active:
        return kept
    return CIMultiDict((name, scrubber.scrub_text(value)) for name, value in kept.items())


def _upstream_failure(
    upstream: providers_base.UpstreamResponse,
    data: bytes,
    adapter: providers_base.ProviderAdapter,
    route: routing.Route,
    outcome: settlement.Outcome,
) -> web.Response:
    """An upstream error status: refund, and tell the client what it can act on."""
    status = upstream.status  # `data` is scrubbed of the credential already (`_whole`)
    if status in (401, 403):
        # The gateway's real credential was refused: the caller cannot fix that, and the upstream's
        # message may quote part of the credential. Say who must act instead.
        logger.warning("provider %s refused the gateway credential (HTTP %d)", route.provider.id, status)
        raise errors.ProxyError(
            "upstream_auth_failed",
            f"The provider refused the gateway's credential (HTTP {status}); the platform team must fix "
            f"the ProviderCredential '{route.provider.id}'.",
        )
    if status >= 500:
        detail = apis_base.upstream_error_message(data)
        raise errors.ProxyError(
            "upstream_error",
            f"The provider answered HTTP {status}" + (f": {detail}" if detail else "."),
            status=status,
        )
    # 4xx about the request itself (bad parameters, unknown model upstream, upstream 429): the
    # provider's own answer, which the caller's SDK understands.
    response = web.Response(
        status=status,
        body=data,
        headers=_scrubbed(
            headers.response_headers(upstream.headers), redaction.Scrubber(adapter.secret_values())
        ),
    )
    for name in ("retry-after", "retry-after-ms"):
        value = upstream.headers.get(name)
        if value is not None:
            response.headers[name] = value
    response.headers["x-request-id"] = outcome.request_id
    if outcome.rate_headers:
        response.headers.update(outcome.rate_headers)
    outcome.status = status
    outcome.code = f"upstream_{status}"
    return response


async def _stream(
    request: web.Request,
    upstream: providers_base.UpstreamResponse,
    call: providers_base.UpstreamCall,
    wire: apis_base.WireFormat,
    adapter: providers_base.ProviderAdapter,
    hide: bool,
    prompt_tokens: int | None,
    outcome: settlement.Outcome,
) -> web.StreamResponse:
    """Pass a streamed body through chunk by chunk, metering usage; settles whatever happens."""
    scrubber = redaction.Scrubber(adapter.secret_values())
    response = web.StreamResponse(
        status=upstream.status, headers=_scrubbed(headers.response_headers(upstream.headers), scrubber)
    )
    response.headers["x-request-id"] = outcome.request_id
    if outcome.rate_headers:
        response.headers.update(outcome.rate_headers)
    outcome.status = upstream.status
    meter = wire.meter(call.upstream_model, hide)
    # Audit level content: keep the start of what the client got (the settler cuts and scrubs it).
    capture = bytearray() if outcome.prompt_body is not None else None
    capture_max = request.app[STATE].settings.audit_content_max_bytes + 256
    passed = 0
    try:
        await response.prepare(request)
        async for chunk in upstream.iter_chunks():
            passed += len(chunk)
            out = scrubber.feed(meter.feed(chunk))
            if out:
                if outcome.ttft_s is None:
                    outcome.ttft_s = time.perf_counter() - outcome.started
                if capture is not None and len(capture) < capture_max:
                    capture += out
                await response.write(out)
        tail = scrubber.feed(meter.finish()) + scrubber.finish()
        if tail:
            await response.write(tail)
        if upstream.error is not None and request.transport is not None:
            # The upstream broke off: end the client's response abruptly too (no final chunk), so
            # its SDK reports a broken stream instead of taking a truncated answer as complete.
            request.transport.abort()
        else:
            await response.write_eof()
    except ConnectionResetError:
        outcome.client_disconnected = True
    except Exception:
        # Headers are gone already: the stream can only end here. Settle what passed.
        logger.exception("request %s: streaming failed inside the proxy", outcome.request_id)
        outcome.upstream_error = "proxy_error"
    finally:
        upstream.close()
        if capture is not None:
            outcome.completion_body = bytes(capture)
        outcome.upstream_error = outcome.upstream_error or upstream.error
        reported = meter.usage
        implausible = reported is not None and not reported.plausible
        if prompt_tokens is None and (reported is None or not meter.complete or implausible):
            prompt_tokens = await _prompt_tokens(None, call, wire, outcome)
        # Counting what passed (no usage reported) is tiktoken over the stream's text: off the loop
        # when there is much of it.
        counts = await off_loop(passed, meter.settled_counts, prompt_tokens or 0)
        if implausible or not counts.plausible:
            logger.warning(
                "request %s: the stream reported unusable usage; counted locally", outcome.request_id
            )
            # The invalid report is ignored: prompt estimate, output counted over what passed.
            counted = await off_loop(passed, meter.fallback_counts, prompt_tokens or 0)
            counts = tokens.TokenCounts(
                input_tokens=prompt_tokens or 0, output_tokens=max(0, counted.output_tokens)
            )
        outcome.counts = counts
        outcome.usage_source = "provider" if meter.complete and counts == meter.usage else "estimate"
    return response


def _output_tokens_of(call: providers_base.UpstreamCall, wire: apis_base.WireFormat, data: bytes) -> int:
    """Output tokens of a response that reported no usage, counted with tiktoken over its text."""
    payload = apis_base.loads(data)
    if not isinstance(payload, dict):
        return 0
    texts = wire.output_text(payload)
    return tokens.count_tokens(call.upstream_model, "".join(texts)) if texts else 0
