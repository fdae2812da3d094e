"""Settlement off the critical path: each finished request's outcome is settled (or refunded) with the
limiter, priced, counted in metrics and written to the audit log by one background worker.

The pipeline calls `Settler.submit(outcome)` (no await, no task per request) once the response is
done; the worker drains outcomes in batches. `close()` (app shutdown, after in-flight requests
finished) drains everything still queued, so a graceful shutdown never loses a settlement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import UTC, datetime

from llmkeys_proxy import audit, audit_sinks, config, errors, identity, metrics, pricing, tokens
from llmkeys_proxy.limits import base as limits_base

logger = logging.getLogger("llmkeys.proxy.settlement")


@dataclasses.dataclass(slots=True)
class Outcome:
    """Everything known about one request when it finished (filled in along the pipeline)."""

    request_id: str
    method: str
    path: str
    api: str
    started: float  # time.perf_counter() at arrival
    time: datetime  # wall clock (UTC) at arrival
    status: int = 0
    #: "ok", a stable error code of errors.CODES, or "upstream_<status>" for a passed-through error.
    code: str = "ok"
    key: config.KeyEntry | None = None
    #: The verified workload token the key was used with (None: the static key).
    identity: identity.VerifiedToken | None = None
    provider: config.ProviderEntry | None = None
    model: str | None = None
    upstream_model: str | None = None
    price_model: str | None = None
    stream: bool = False
    reservation: limits_base.Reservation | None = None
    #: What to charge (None: nothing was served: refund).
    counts: tokens.TokenCounts | None = None
    usage_source: str = "none"
    limiter_bypassed: bool = False
    client_disconnected: bool = False
    upstream_error: str | None = None
    duration_s: float = 0.0
    #: The key's x-ratelimit-* headers from the limiter's decision (sent on every response).
    rate_headers: dict[str, str] | None = None
    #: The pool (or credential) whose limit refused the request, when not the key's own.
    denied_scope: str | None = None
    #: Refused before the key was accepted: the id it claimed (config-known, or unknown / malformed /
    #: missing) and, when known, its entry (for refusals of suspended, expired or inactive keys).
    claimed_key_id: str | None = None
    claimed_key: config.KeyEntry | None = None
    #: Streams: seconds from arrival to the first body bytes sent.
    ttft_s: float | None = None
    user_agent: str | None = None
    #: The end user the request names (OpenAI `user`, Anthropic `metadata.user_id`).
    end_user: str | None = None
    #: Audit level `content` only: the request body and (the start of) the response body.
    prompt_body: bytes | None = None
    completion_body: bytes | None = None


#: Refusals tallied per key (and pool) for status and reports: limits, models and key states (a
#: finite set, so tallies stay bounded). Malformed requests (bad JSON, absurd max_tokens, ...) are
#: not tallied: they write nothing to the limiter.
TALLIED_REFUSALS = frozenset(
    code
    for code in (
        "rate_limit_exceeded",
        "token_limit_exceeded",
        "budget_exceeded",
        "pool_budget_exceeded",
        "provider_limit_exceeded",
        "model_not_allowed",
        "provider_not_allowed",
        "model_not_found",
        "key_suspended",
        "key_expired",
        "key_inactive",
        "key_policy_violation",
        "limiter_unavailable",
    )
    if code in errors.CODES
)


def tallies_of(outcome: Outcome, model: str, micro_usd: int) -> list[limits_base.Tally]:
    """What one finished request adds to its key's (and a refusing pool's) tallies."""
    key = outcome.key
    if key is None:
        return []
    counts: dict[str, int] = {}
    if outcome.code in TALLIED_REFUSALS:
        counts[limits_base.TALLY_REFUSAL + outcome.code] = 1
    served = outcome.counts
    if served is not None:
        tokens = served.input_tokens + served.output_tokens
        for prefix in (
            limits_base.TALLY_MODEL + model,
            limits_base.TALLY_PROVIDER + (outcome.provider.id if outcome.provider is not None else ""),
        ):
            counts[prefix + ":q"] = 1
            counts[prefix + ":t"] = tokens
            counts[prefix + ":u"] = micro_usd
    tallies = [limits_base.Tally(scope_id=key.key_id, counts=counts)] if counts else []
    if outcome.code == "pool_budget_exceeded" and outcome.denied_scope is not None:
        tallies.append(
            limits_base.Tally(
                scope_id=outcome.denied_scope,
                counts={limits_base.TALLY_REFUSAL + outcome.code: 1},
                is_pool=True,
            )
        )
    return tallies


#: How long the settler waits after the first finished request for more to join its batch.
BATCH_WINDOW_S = 0.005
#: A batch this large is settled at once, without waiting.
BATCH_MAX = 64
#: The audit policy of a request no key could be found for (unknown key, config not loaded).
_KEYLESS_AUDIT = config.KeyAudit()


class Settler:
    """The one background worker that settles outcomes (see module docstring)."""

    def __init__(
        self,
        limiter: limits_base.Limiter,
        proxy_metrics: metrics.ProxyMetrics,
        prices: pricing.PriceTable,
        trail: audit_sinks.AuditTrail | None = None,
        content_max_bytes: int = 16 * 1024,
    ) -> None:
        self._limiter = limiter
        self.trail = trail or audit_sinks.AuditTrail()
        self._content_max_bytes = content_max_bytes
        self._metrics = proxy_metrics
        self._prices = prices
        self._queue: list[Outcome] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.settled = 0  # outcomes processed (tests and /readyz detail)
        self.tallies_dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="llmkeys-settler")

    def submit(self, outcome: Outcome) -> None:
        """Queue a finished request; returns at once."""
        outcome.duration_s = time.perf_counter() - outcome.started
        self._queue.append(outcome)
        if not self._wakeup.is_set():
            self._wakeup.set()
        if self._task is None or self._task.done():
            # Not started or already closed (a straggler after shutdown): settle it on its own.
            asyncio.get_running_loop().create_task(self._process([outcome]))
            self._queue.remove(outcome)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def drain(self, audit_timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is processed and its audit records are written
        (tests)."""
        while self._queue or self._wakeup.is_set():
            await asyncio.sleep(0.005)
        # The worker may still be inside the last batch.
        await asyncio.sleep(0)
        if self.trail.sinks:
            await asyncio.to_thread(self.trail.flush, audit_timeout)

    async def close(self) -> None:
        """Process everything queued, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._closing and len(self._queue) < BATCH_MAX:
                # Let a few more requests finish: their settlements share one Redis round trip
                # instead of each paying a write, a wake-up and a read in front of the next request
                # (reservations keep the limits safe meanwhile).
                await asyncio.sleep(BATCH_WINDOW_S)
            batch, self._queue = self._queue, []
            if batch:
                # The whole batch at once: its settlements go out in one round trip, so settling
                # keeps pace with any request rate (slices would each wait a round trip).
                try:
                    await self._process(batch)
                except Exception:  # the worker must survive anything a batch throws
                    logger.exception("settlement batch failed")
            if not self._queue:
                self._wakeup.clear()
                if self._closing:
                    return

    async def _process(self, batch: list[Outcome]) -> None:
        now = datetime.now(UTC)
        calls = []
        tallies: list[limits_base.Tally] = []
        for outcome in batch:
            micro_usd = self._price(outcome)
            reservation = outcome.reservation
            if reservation is not None:
                if outcome.counts is None:
                    calls.append(self._limiter.refund(reservation, now))
                else:
                    calls.append(self._limiter.settle(reservation, _actual(outcome.counts, micro_usd), now))
            model = self._metrics.models.label(outcome.model)
            self._observe(outcome, model, micro_usd)
            tallies += tallies_of(outcome, model, micro_usd)
        if tallies:
            calls.append(self._record_tallies(tallies, now))
        if len(calls) == 1:
            results: list[BaseException | None] = []
            try:
                await calls[0]
            except Exception as exc:
                results.append(exc)
        elif calls:
            results = await asyncio.gather(*calls, return_exceptions=True)
        else:
            results = []
        for result in results:
            if isinstance(result, BaseException):
                self._metrics.settle_errors.inc()
                # The limiter expires abandoned reservations; nothing more to do here but say so.
                logger.warning("settlement not accepted by the limiter: %s", type(result).__name__)

    async def _record_tallies(self, tallies: list[limits_base.Tally], now: datetime) -> None:
        try:
            await self._limiter.record_tallies(tallies, now)
        except limits_base.LimiterUnavailable:
            # Tallies feed reports, not limits: a batch missed while the limiter is down is dropped.
            self.tallies_dropped += len(tallies)

    def _price(self, outcome: Outcome) -> int:
        if outcome.counts is None or outcome.price_model is None:
            return 0
        overrides = outcome.provider.pricing if outcome.provider is not None else {}
        return self._prices.cost(outcome.price_model, outcome.counts, overrides).micro_usd

    def _observe(self, outcome: Outcome, model: str, micro_usd: int) -> None:
        key = outcome.key
        provider_id = outcome.provider.id if outcome.provider is not None else ""
        counts = outcome.counts
        if key is not None:
            self._metrics.observe_request(
                key.key_id,
                key.namespace,
                model,
                provider_id,
                outcome.code,
                outcome.duration_s,
                None
                if counts is None
                else (
                    counts.input_tokens,
                    counts.cached_input_tokens,
                    counts.output_tokens,
                    counts.reasoning_tokens,
                ),
                micro_usd,
            )
            if outcome.usage_source == "estimate":
                self._metrics.estimated_usage.labels(provider_id).inc()
            if outcome.ttft_s is not None:
                self._metrics.observe_ttft(provider_id, model, outcome.ttft_s)
        code = outcome.code
        if code == "invalid_api_key":
            self._metrics.invalid_keys.labels(outcome.claimed_key_id or "missing").inc()
        elif code in TALLIED_REFUSALS:
            refused = key or outcome.claimed_key
            self._metrics.observe_refusal(
                refused.key_id if refused is not None else "",
                refused.namespace if refused is not None else "",
                code,
            )
        trail = self.trail
        if not trail.sinks:
            return
        policy = key.audit if key is not None else _KEYLESS_AUDIT
        if policy.level == "none":
            return
        record = audit.AuditRecord(
            time=outcome.time,
            request_id=outcome.request_id,
            status=outcome.status,
            code=outcome.code,
            api=outcome.api,
            method=outcome.method,
            path=outcome.path,
            latency_ms=round(outcome.duration_s * 1000, 3),
            key_id=key.key_id if key is not None else None,
            namespace=key.namespace if key is not None else None,
            name=key.name if key is not None else None,
            owner=key.owner if key is not None else None,
            identity=(
                {"issuer": outcome.identity.issuer, "subject": outcome.identity.subject}
                if outcome.identity is not None
                else None
            ),
            provider=provider_id or None,
            model=outcome.model,
            upstream_model=outcome.upstream_model,
            stream=outcome.stream,
            cost_micro_usd=micro_usd,
            usage_source=outcome.usage_source,
            limiter_bypassed=outcome.limiter_bypassed,
            client_disconnected=outcome.client_disconnected,
            upstream_error=outcome.upstream_error,
            user_agent=outcome.user_agent,
            end_user=outcome.end_user,
            level=policy.level,
            retain_days=policy.retain_days,
        )
        if counts is not None:
            record.input_tokens = counts.input_tokens
            record.cached_input_tokens = counts.cached_input_tokens
            record.cache_write_tokens = counts.cache_write_tokens
            record.output_tokens = counts.output_tokens
            record.reasoning_tokens = counts.reasoning_tokens
        if policy.level == "content":
            cap = self._content_max_bytes
            secrets = _secret_values(outcome.provider)
            record.prompt = audit.content_text(outcome.prompt_body, cap, secrets)
            record.completion = audit.content_text(outcome.completion_body, cap, secrets)
        trail.write(record, policy.sinks)


def _secret_values(provider: config.ProviderEntry | None) -> tuple[bytes, ...]:
    if provider is None:
        return ()
    values = [provider.api_key, *provider.secret_fields.values()]
    return tuple(v.encode() for v in values if v and len(v) >= 8)


def _actual(counts: tokens.TokenCounts, micro_usd: int) -> limits_base.ActualUsage:
    bounded = limits_base.bounded
    return limits_base.ActualUsage(
        input_tokens=bounded(counts.input_tokens),
        cached_input_tokens=bounded(counts.cached_input_tokens),
        cache_write_tokens=bounded(counts.cache_write_tokens),
        output_tokens=bounded(counts.output_tokens),
        reasoning_tokens=bounded(counts.reasoning_tokens),
        micro_usd=bounded(micro_usd),
    )
