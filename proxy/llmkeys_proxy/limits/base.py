"""The limiter interface every backend implements (Redis for fleets, in-process for standalone).

Called by the proxy's request pipeline: `reserve` before forwarding (one atomic check-and-reserve
of every counter a request touches), then exactly one of `settle` (actual usage known) or `refund`
(upstream failed). The operator's usage sync calls `read_usage` and `seed_usage`.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from llmkeys_proxy import config

DenyCode = Literal[
    "rate_limit_exceeded",  # requests per minute
    "token_limit_exceeded",  # tokens per minute / day / month, or max tokens of one request
    "budget_exceeded",  # the key's monthly spend cap
    "pool_budget_exceeded",  # a shared pool (LLMPolicy budget) is exhausted
    "provider_limit_exceeded",  # the credential's provider-wide limits (the shared upstream account)
]


class LimiterUnavailable(Exception):
    """The backend could not be reached or answered too late; the caller applies
    the key's `on_limiter_unavailable` (Reject -> 503 limiter_unavailable, Allow -> forward)."""


@dataclass(frozen=True, slots=True)
class PoolLimit:
    """A pool's caps as the limiter sees them."""

    pool_id: str
    spend_per_month_micro_usd: int | None
    tokens_per_month: int | None
    month_usage_seed: config.UsageSeed | None = None


@dataclass(frozen=True, slots=True)
class ProviderLimit:
    """A ProviderCredential's provider-wide limits (protecting the shared upstream account): every
    request routed to the credential counts against them, whichever key sent it. The limiter applies
    RPM, TPM, tokens per day and month and spend per month; `max_tokens_per_request` is the
    pipeline's to check."""

    provider_id: str
    limits: config.Limits


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """What one request wants to reserve (estimates, before the upstream answers)."""

    key_id: str
    limits: config.Limits
    pools: tuple[PoolLimit, ...]
    estimated_tokens: int  # prompt estimate + requested output cap
    estimated_micro_usd: int
    now: datetime  # UTC; periods (minute window, day, month) derive from it
    month_usage_seed: config.UsageSeed | None = None
    day_usage_seed: config.UsageSeed | None = None
    #: The credential the request is routed to, when it has provider-wide limits.
    provider: ProviderLimit | None = None


#: Largest token or micro-USD amount a request reserves or settles. Far above anything one request
#: can cost, far below what the Lua scripts compute exactly (doubles: 2^53) or Redis stores (int64).
MAX_AMOUNT = 2**48


def bounded(amount: int) -> int:
    """`amount` clamped into [0, MAX_AMOUNT] (limits arithmetic never reaches Redis unbounded)."""
    return 0 if amount < 0 else min(amount, MAX_AMOUNT)


@dataclass(frozen=True, slots=True)
class RateState:
    """For the OpenAI-style x-ratelimit-* headers; None where the key has no such limit."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """Handle of an admitted request's reservation; pass it back to settle or refund."""

    id: str
    key_id: str
    pool_ids: tuple[str, ...]
    tokens: int
    micro_usd: int
    created_at: datetime
    # Carried so that a settle landing on an emptied Redis re-seeds before it counts (never resets a budget).
    month_usage_seed: config.UsageSeed | None = None
    day_usage_seed: config.UsageSeed | None = None
    pool_month_usage_seeds: tuple[config.UsageSeed | None, ...] = ()
    #: The credential scope the reservation also holds (None: its credential has no limits).
    provider_id: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of `reserve`: admitted with a reservation, or denied with a code and retry time."""

    allowed: bool
    reservation: Reservation | None = None
    code: DenyCode | None = None
    message: str = ""
    retry_after_s: float | None = None  # None: retrying will not help before the period ends
    exhausted: bool = False  # a budget/period cap, not a rolling window: send x-should-retry: false
    rate: RateState = field(default_factory=RateState)
    #: The pool (or credential) that denied, when it was not the key itself.
    scope_id: str | None = None


@dataclass(frozen=True, slots=True)
class ActualUsage:
    """What a finished request really cost (from the provider's usage, or counted locally)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    micro_usd: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class PeriodUsage:
    """Counters of one key or pool for one UTC period."""

    period: str  # "YYYY-MM" or "YYYY-MM-DD"
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    micro_usd: int = 0
    last_used_at: datetime | None = None
    #: Tokens restored from a `UsageSeed` after the backend lost its counters (the seed has no
    #: input/output split); they count against limits like any other tokens.
    seeded_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.seeded_tokens


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """Day and month usage of one key or pool, with the tallies of both periods and the day before
    (still readable for a while after it closed, so its final numbers reach the daily history)."""

    day: PeriodUsage
    month: PeriodUsage
    #: Tally field -> count, for the current day and month (see `Tally`).
    day_tallies: dict[str, int] = field(default_factory=dict)
    month_tallies: dict[str, int] = field(default_factory=dict)
    previous_day: PeriodUsage | None = None


#: Tally field prefixes: `r:<code>` refusals by error code; `m:<model>:<q|t|u>` and
#: `p:<provider>:<q|t|u>` requests, tokens and micro-USD by (bounded) model name and by credential.
TALLY_REFUSAL = "r:"
TALLY_MODEL = "m:"
TALLY_PROVIDER = "p:"
#: Distinct fields one scope's tally hash may hold per period (a bound on status size and memory;
#: the model names are already bounded to those the config knows).
TALLY_FIELDS_MAX = 512


@dataclass(frozen=True, slots=True)
class Tally:
    """Counts to add to one key's (or pool's) tallies of the current UTC day and month: refusals by
    code and usage by model and credential, for status and reports. Best effort, unlike limits:
    recorded after the response, in one pipelined call per settlement batch."""

    scope_id: str
    counts: dict[str, int]
    is_pool: bool = False


@dataclass(frozen=True, slots=True)
class SeedTarget:
    """Last known usage of one key or pool, for `seed_usage` (re-seeds only absent counters)."""

    scope_id: str  # key id, or pool id when `is_pool`
    is_pool: bool = False
    month: config.UsageSeed | None = None
    day: config.UsageSeed | None = None


def reservation_for(
    request: ReserveRequest, reservation_id: str, tokens: int, micro_usd: int, created_at: datetime
) -> Reservation:
    """The handle of `request`'s reservation: what each backend returns when it admits."""
    return Reservation(
        id=reservation_id,
        key_id=request.key_id,
        pool_ids=tuple(pool.pool_id for pool in request.pools),
        tokens=tokens,
        micro_usd=micro_usd,
        created_at=created_at,
        month_usage_seed=request.month_usage_seed,
        day_usage_seed=request.day_usage_seed,
        pool_month_usage_seeds=tuple(pool.month_usage_seed for pool in request.pools),
        provider_id=None if request.provider is None else request.provider.provider_id,
    )


def unreserved(request: ReserveRequest, now: datetime | None = None) -> Reservation:
    """A stand-in reservation for a request served without one (limiter unavailable, key policy
    Allow): settling it counts the request's actual usage, as for any reservation that expired."""
    return reservation_for(request, "u" + secrets.token_hex(8), 0, 0, now or request.now)


class Limiter(abc.ABC):
    """One interface, two backends (`RedisLimiter`, `MemoryLimiter`), one shared test suite."""

    @abc.abstractmethod
    async def reserve(self, request: ReserveRequest) -> Decision:
        """Atomically check every limit and, if all admit, reserve the estimate against them."""

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, usage: ActualUsage, now: datetime) -> None:
        """Replace the reservation with actual usage (counters, windows, spend). Idempotent.
        Raises LimiterUnavailable when the backend is down; `RedisLimiter` keeps such settlements
        (bounded) and replays them once Redis answers again."""

    @abc.abstractmethod
    async def refund(self, reservation: Reservation, now: datetime) -> None:
        """Drop the reservation: the request was not served (upstream failure)."""

    @abc.abstractmethod
    async def read_usage(
        self, key_ids: list[str], pool_ids: list[str], now: datetime, *, provider_ids: Sequence[str] = ()
    ) -> dict[str, UsageSnapshot]:
        """Usage of keys, pools (and credentials with provider-wide limits) for the current UTC day
        and month, in one pipelined call."""

    @abc.abstractmethod
    async def seed_usage(self, targets: list[SeedTarget], now: datetime) -> int:
        """Write each seed whose period is current into counters that do not exist yet (a Redis
        restarted empty); existing counters are left alone, so nothing is counted twice.
        Returns how many counters were seeded. `reserve` and `settle` do the same lazily."""

    @abc.abstractmethod
    async def record_tallies(self, tallies: Sequence[Tally], now: datetime) -> None:
        """Add each tally's counts to its scope's day and month tallies (created as needed, bounded
        to `TALLY_FIELDS_MAX` fields; they expire like the period counters). Raises
        LimiterUnavailable when the backend is down."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers (for /readyz)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""
