"""Turns a backend's raw check outcome into a `base.Decision` (shared by `limits.redis` and
`limits.memory`, so both answer with the same codes, messages, retry times and rate headers)."""

from __future__ import annotations

from llmkeys_proxy import config
from llmkeys_proxy.limits import base

# Which limit denied; reserve.lua returns the same numbers.
ADMITTED = 0
REQUESTS_PER_MINUTE = 1
TOKENS_PER_MINUTE = 2
TOKENS_PER_DAY = 3
TOKENS_PER_MONTH = 4
SPEND_PER_MONTH = 5
#: retry_ms meaning "not before the period ends" (or never, for a limit below one request).
NO_RETRY = -1

_CODES: dict[int, base.DenyCode] = {
    REQUESTS_PER_MINUTE: "rate_limit_exceeded",
    TOKENS_PER_MINUTE: "token_limit_exceeded",
    TOKENS_PER_DAY: "token_limit_exceeded",
    TOKENS_PER_MONTH: "token_limit_exceeded",
    SPEND_PER_MONTH: "budget_exceeded",
}


def rate_state(
    limits: config.Limits, window_requests: int, window_tokens: int, reset_ms: int
) -> base.RateState:
    """x-ratelimit-* values: what the rolling minute holds now, and when its oldest entry leaves."""
    if window_requests < 0:  # an idempotent replay carries no window state
        return base.RateState()
    reset_s = max(0, reset_ms) / 1000
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return base.RateState(
        limit_requests=rpm,
        remaining_requests=None if rpm is None else max(0, rpm - window_requests),
        reset_requests_s=None if rpm is None else reset_s,
        limit_tokens=tpm,
        remaining_tokens=None if tpm is None else max(0, tpm - window_tokens),
        reset_tokens_s=None if tpm is None else reset_s,
    )


def key_denial(limits: config.Limits, reason: int, retry_ms: int, rate: base.RateState) -> base.Decision:
    """A key's own limit denied: windows say when to retry, period caps say not to."""
    if reason == REQUESTS_PER_MINUTE:
        message = f"Rate limit reached: {limits.requests_per_minute} requests per minute."
    elif reason == TOKENS_PER_MINUTE:
        message = f"Token rate limit reached: {limits.tokens_per_minute} tokens per minute."
    elif reason == TOKENS_PER_DAY:
        message = f"Daily token limit reached: {limits.tokens_per_day} tokens per UTC day."
    elif reason == TOKENS_PER_MONTH:
        message = f"Monthly token limit reached: {limits.tokens_per_month} tokens per UTC month."
    else:
        cap = limits.spend_per_month_micro_usd or 0
        message = f"Monthly budget exhausted: USD {cap / 1_000_000:.2f} per UTC month."
    return base.Decision(
        allowed=False,
        code=_CODES[reason],
        message=message,
        retry_after_s=None if retry_ms == NO_RETRY else retry_ms / 1000,
        exhausted=retry_ms == NO_RETRY,
        rate=rate,
    )


def pool_denial(pool_id: str, rate: base.RateState) -> base.Decision:
    """A shared pool (LLMPolicy budget) denied: a period cap, so retrying will not help."""
    return base.Decision(
        allowed=False,
        code="pool_budget_exceeded",
        message=f"Shared budget {pool_id} exhausted for this UTC month.",
        exhausted=True,
        rate=rate,
        scope_id=pool_id,
    )


def provider_denial(
    provider_id: str, limits: config.Limits, reason: int, retry_ms: int, rate: base.RateState
) -> base.Decision:
    """The credential's provider-wide limits denied (the shared upstream account): windows say when
    to retry, period caps say not to. `rate` stays the key's own (x-ratelimit-* describe the key)."""
    if reason == REQUESTS_PER_MINUTE:
        what = f"{limits.requests_per_minute} requests per minute"
    elif reason == TOKENS_PER_MINUTE:
        what = f"{limits.tokens_per_minute} tokens per minute"
    elif reason == TOKENS_PER_DAY:
        what = f"{limits.tokens_per_day} tokens per UTC day"
    elif reason == TOKENS_PER_MONTH:
        what = f"{limits.tokens_per_month} tokens per UTC month"
    else:
        what = f"USD {(limits.spend_per_month_micro_usd or 0) / 1_000_000:.2f} per UTC month"
    return base.Decision(
        allowed=False,
        code="provider_limit_exceeded",
        message=f"The provider credential {provider_id} is at its shared limit of {what}.",
        retry_after_s=None if retry_ms == NO_RETRY else retry_ms / 1000,
        exhausted=retry_ms == NO_RETRY,
        rate=rate,
        scope_id=provider_id,
    )
