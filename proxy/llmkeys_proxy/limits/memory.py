"""In-process limiter backend for standalone mode (one proxy process); called like `limits.redis`.

Same semantics as the Redis scripts, kept in plain dicts: every method runs to completion without
awaiting, so on one event loop each call is atomic, and a request's key, pool and credential checks
happen together (no compensation step is needed here). State lives as long as the process; on start, the
config's usage seeds restore month and day counters exactly as after a Redis loss.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from llmkeys_proxy import config
from llmkeys_proxy.limits import base, decisions, periods

_SETTLED_RECORD_MS = 60_000  # settled/refunded records stay this long so a retried call is a no-op


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    micro_usd: int = 0
    seeded_tokens: int = 0
    reserved_tokens: int = 0
    reserved_micro_usd: int = 0
    last_used_ms: int = 0
    expires_ms: int = 0

    @property
    def held_tokens(self) -> int:
        """Tokens counted against period caps: used, seeded and held by open reservations."""
        return self.input_tokens + self.output_tokens + self.seeded_tokens + self.reserved_tokens

    @property
    def held_micro_usd(self) -> int:
        return self.micro_usd + self.reserved_micro_usd


# An open reservation's hold on a scope: (tokens, micro USD, day id, month id). Records are plain tuples
# of atomic values and dicts of str -> int, not objects: the collector untracks such tuples and never
# tracks such dicts, so the ~100k records a busy proxy keeps (settled ones stay a minute) cost nothing in
# full collections (as one object each they made every full collection take 10-20 ms).
_Hold = tuple[int, int, str, str]


@dataclass(slots=True)
class _Scope:
    """Everything of one key, one pool or one credential (what one hash tag holds in Redis)."""

    window: list[tuple[int, str]] = field(default_factory=list)  # (admitted ms, id), sorted
    window_tokens: dict[str, int] = field(default_factory=dict)
    window_sum: int = 0
    counters: dict[str, _Counters] = field(default_factory=dict)  # by period id
    held: dict[str, _Hold] = field(default_factory=dict)  # open reservations (about the in-flight ones)
    # Heap of (expires ms, id) of held reservations; entries of ones since closed are skipped when they
    # surface and compacted away, so the heap stays near the in-flight count (as Redis's ZADD does).
    held_expiries: list[tuple[int, str]] = field(default_factory=list)
    settled: dict[str, int] = field(default_factory=dict)  # closed (settled/refunded) id -> expires ms
    settled_expiries: list[tuple[int, str]] = field(default_factory=list)  # heap of (expires ms, id)
    tallies: dict[str, tuple[int, dict[str, int]]] = field(
        default_factory=dict
    )  # period -> (expires ms, counts)

    def tally(self, period: str, now_ms: int) -> dict[str, int]:
        entry = self.tallies.get(period)
        if entry is None or entry[0] <= now_ms:
            return {}
        return entry[1]

    def add_tally(self, period: str, counts: dict[str, int], now_ms: int, ttl_s: int) -> None:
        entry = self.tallies.get(period)
        if entry is None or entry[0] <= now_ms:
            for stale in [p for p, (expires, _) in self.tallies.items() if expires <= now_ms]:
                del self.tallies[stale]
            entry = (0, {})
        current = entry[1]
        for name, value in counts.items():
            if name in current:
                current[name] += value
            elif len(current) < base.TALLY_FIELDS_MAX:
                current[name] = value
        self.tallies[period] = (now_ms + ttl_s * 1000, current)

    def counter(self, period: str, now_ms: int) -> _Counters | None:
        counters = self.counters.get(period)
        if counters is not None and counters.expires_ms <= now_ms:
            del self.counters[period]
            return None
        return counters

    def touch(self, period: str, now_ms: int, ttl_s: int) -> _Counters:
        """The period's counters, created when absent; their life extends like EXPIRE on write."""
        counters = self.counter(period, now_ms)
        if counters is None:
            # A new period begins: forget periods past their life, as Redis expiry would.
            for stale in [p for p, c in self.counters.items() if c.expires_ms <= now_ms]:
                del self.counters[stale]
            counters = self.counters[period] = _Counters()
        counters.expires_ms = now_ms + ttl_s * 1000
        return counters

    def seed_if_absent(self, period: str, seed: config.UsageSeed | None, now_ms: int, ttl_s: int) -> int:
        if seed is None or seed.period != period or self.counter(period, now_ms) is not None:
            return 0
        counters = self.touch(period, now_ms, ttl_s)
        counters.requests, counters.seeded_tokens, counters.micro_usd = (
            seed.requests,
            seed.tokens,
            seed.micro_usd,
        )
        return 1

    def unreserve(self, hold: _Hold, now_ms: int) -> None:
        tokens, micro_usd, day, month = hold
        for period in (day, month):
            counters = self.counter(period, now_ms)
            if counters is not None:
                counters.reserved_tokens -= tokens
                counters.reserved_micro_usd -= micro_usd

    def sweep(self, now_ms: int) -> None:
        """Release reservations nobody settled (crashed caller), forget old settled records."""
        while self.held_expiries and self.held_expiries[0][0] <= now_ms:
            _, reservation_id = heapq.heappop(self.held_expiries)
            hold = self.held.pop(reservation_id, None)
            if hold is not None:  # else closed since: its settled record has its own expiry
                self.unreserve(hold, now_ms)
        while self.settled_expiries and self.settled_expiries[0][0] <= now_ms:
            _, reservation_id = heapq.heappop(self.settled_expiries)
            self.settled.pop(reservation_id, None)

    def hold(self, reservation_id: str, hold: _Hold, expires_ms: int) -> None:
        self.held[reservation_id] = hold
        heapq.heappush(self.held_expiries, (expires_ms, reservation_id))
        if len(self.held_expiries) > 2 * len(self.held) + 64:
            # Drop entries of closed reservations; cheap, since few reservations are open at a time.
            self.held_expiries = [entry for entry in self.held_expiries if entry[1] in self.held]
            heapq.heapify(self.held_expiries)

    def close(self, reservation_id: str, now_ms: int) -> None:
        """Forget the hold (already given back) and keep a settled record for retries."""
        self.held.pop(reservation_id, None)
        expires_ms = now_ms + _SETTLED_RECORD_MS
        self.settled[reservation_id] = expires_ms
        heapq.heappush(self.settled_expiries, (expires_ms, reservation_id))

    def prune_window(self, now_ms: int) -> None:
        cut = bisect.bisect_right(self.window, (now_ms - periods.WINDOW_MS, "\U0010ffff"))
        for _, reservation_id in self.window[:cut]:
            self.window_sum -= self.window_tokens.pop(reservation_id, 0)
        del self.window[:cut]

    def reset_ms(self, now_ms: int) -> int:
        return self.window[0][0] + periods.WINDOW_MS - now_ms if self.window else 0

    def tokens_retry_ms(self, need: int, now_ms: int) -> int:
        freed = 0
        for admitted_ms, reservation_id in self.window:
            freed += self.window_tokens.get(reservation_id, 0)
            if freed >= need:
                return admitted_ms + periods.WINDOW_MS - now_ms
        return periods.WINDOW_MS


@dataclass(frozen=True, slots=True)
class _Caps:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    micro_usd_per_month: int | None = None

    @classmethod
    def of(cls, limits: config.Limits) -> _Caps:
        return cls(
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.tokens_per_day,
            limits.tokens_per_month,
            limits.spend_per_month_micro_usd,
        )

    @property
    def windowed(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class MemoryLimiter(base.Limiter):
    """The standalone backend: exact, atomic, single process."""

    def __init__(self, *, reservation_ttl_s: float = 900.0) -> None:
        if reservation_ttl_s * 1000 <= periods.WINDOW_MS:
            raise ValueError("reservation_ttl_s must exceed the 60 s window")
        self._reservation_ttl_ms = int(reservation_ttl_s * 1000)
        # By (kind, id): kind "k" a key, "p" a pool, "c" a credential's provider-wide scope.
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self._next_id = 0

    def _scope(self, scope_id: str, *, is_pool: bool = False, is_provider: bool = False) -> _Scope:
        kind = "c" if is_provider else "p" if is_pool else "k"
        scope = self._scopes.get((kind, scope_id))
        if scope is None:
            scope = self._scopes[(kind, scope_id)] = _Scope()
        return scope

    def _reservation_scopes(self, reservation: base.Reservation) -> list[_Scope]:
        """Key, pools, then the credential: every scope a reservation holds."""
        scopes = [self._scope(reservation.key_id)]
        scopes += [self._scope(pool_id, is_pool=True) for pool_id in reservation.pool_ids]
        if reservation.provider_id is not None:
            scopes.append(self._scope(reservation.provider_id, is_provider=True))
        return scopes

    async def reserve(self, request: base.ReserveRequest) -> base.Decision:
        now = periods.as_utc(request.now)
        now_ms = periods.epoch_ms(now)
        day, month = periods.day_id(now), periods.month_id(now)
        day_ttl, month_ttl = periods.day_counter_ttl_s(now), periods.month_counter_ttl_s(now)
        tokens = max(0, request.estimated_tokens)
        micro_usd = max(0, request.estimated_micro_usd)
        limits = request.limits

        key_scope = self._scope(request.key_id)
        key_scope.sweep(now_ms)
        key_scope.seed_if_absent(month, request.month_usage_seed, now_ms, month_ttl)
        key_scope.seed_if_absent(day, request.day_usage_seed, now_ms, day_ttl)
        key_caps = _Caps.of(limits)
        windowed = key_caps.windowed
        if windowed:
            key_scope.prune_window(now_ms)
        rate = decisions.rate_state(
            limits, len(key_scope.window), key_scope.window_sum, key_scope.reset_ms(now_ms)
        )
        reason, retry_ms = _check(key_scope, key_caps, tokens, micro_usd, day, month, now_ms)
        if reason != decisions.ADMITTED:
            return decisions.key_denial(limits, reason, retry_ms, rate)
        for pool in request.pools:
            pool_scope = self._scope(pool.pool_id, is_pool=True)
            pool_scope.sweep(now_ms)
            pool_scope.seed_if_absent(month, pool.month_usage_seed, now_ms, month_ttl)
            pool_caps = _Caps(
                tokens_per_month=pool.tokens_per_month, micro_usd_per_month=pool.spend_per_month_micro_usd
            )
            reason, _ = _check(pool_scope, pool_caps, tokens, micro_usd, day, month, now_ms)
            if reason != decisions.ADMITTED:
                return decisions.pool_denial(pool.pool_id, rate)
        provider = request.provider
        provider_scope: _Scope | None = None
        provider_windowed = False
        if provider is not None:
            provider_scope = self._scope(provider.provider_id, is_provider=True)
            provider_scope.sweep(now_ms)
            provider_caps = _Caps.of(provider.limits)
            provider_windowed = provider_caps.windowed
            if provider_windowed:
                provider_scope.prune_window(now_ms)
            reason, retry_ms = _check(provider_scope, provider_caps, tokens, micro_usd, day, month, now_ms)
            if reason != decisions.ADMITTED:
                return decisions.provider_denial(
                    provider.provider_id, provider.limits, reason, retry_ms, rate
                )

        self._next_id += 1
        reservation_id = f"m{self._next_id:x}"
        scopes = [(key_scope, windowed)]
        scopes += [(self._scope(pool.pool_id, is_pool=True), False) for pool in request.pools]
        if provider_scope is not None:
            scopes.append((provider_scope, provider_windowed))
        for scope, in_window in scopes:
            if in_window:
                bisect.insort(scope.window, (now_ms, reservation_id))
                scope.window_tokens[reservation_id] = tokens
                scope.window_sum += tokens
            for period, ttl in ((day, day_ttl), (month, month_ttl)):
                counters = scope.touch(period, now_ms, ttl)
                counters.reserved_tokens += tokens
                counters.reserved_micro_usd += micro_usd
            scope.hold(reservation_id, (tokens, micro_usd, day, month), now_ms + self._reservation_ttl_ms)
        if windowed:
            rate = decisions.rate_state(
                limits, len(key_scope.window), key_scope.window_sum, key_scope.reset_ms(now_ms)
            )
        return base.Decision(
            allowed=True,
            reservation=base.reservation_for(request, reservation_id, tokens, micro_usd, now),
            rate=rate,
        )

    async def settle(self, reservation: base.Reservation, usage: base.ActualUsage, now: datetime) -> None:
        created = periods.as_utc(reservation.created_at)
        day, month = periods.day_id(created), periods.month_id(created)
        day_ttl, month_ttl = periods.day_counter_ttl_s(created), periods.month_counter_ttl_s(created)
        now_ms = periods.epoch_ms(now)
        pool_seeds = reservation.pool_month_usage_seeds or (None,) * len(reservation.pool_ids)
        targets = [(self._scope(reservation.key_id), reservation.month_usage_seed)]
        targets += [
            (self._scope(pool_id, is_pool=True), seed)
            for pool_id, seed in zip(reservation.pool_ids, pool_seeds, strict=True)
        ]
        if reservation.provider_id is not None:
            # Credentials carry no usage seed: after a restart their periods start from zero.
            targets.append((self._scope(reservation.provider_id, is_provider=True), None))
        for index, (scope, month_seed) in enumerate(targets):
            scope.sweep(now_ms)
            scope.seed_if_absent(month, month_seed, now_ms, month_ttl)
            if index == 0:
                scope.seed_if_absent(day, reservation.day_usage_seed, now_ms, day_ttl)
            if reservation.id in scope.settled:
                continue  # a retry: already settled or refunded
            hold = scope.held.get(reservation.id)
            if hold is not None:
                scope.unreserve(hold, now_ms)
            # No hold: it expired (a very long request); the actual usage still counts.
            scope.close(reservation.id, now_ms)
            for period, ttl in ((day, day_ttl), (month, month_ttl)):
                counters = scope.touch(period, now_ms, ttl)
                counters.requests += 1
                counters.input_tokens += max(0, usage.input_tokens)
                counters.cached_input_tokens += max(0, usage.cached_input_tokens)
                counters.output_tokens += max(0, usage.output_tokens)
                counters.micro_usd += max(0, usage.micro_usd)
                counters.last_used_ms = now_ms
            old = scope.window_tokens.get(reservation.id)
            if old is not None:
                actual = max(0, usage.total_tokens)
                scope.window_tokens[reservation.id] = actual
                scope.window_sum += actual - old

    async def refund(self, reservation: base.Reservation, now: datetime) -> None:
        now_ms = periods.epoch_ms(now)
        for scope in self._reservation_scopes(reservation):
            scope.sweep(now_ms)
            hold = scope.held.get(reservation.id)
            if hold is None:  # expired, or already settled or refunded
                continue
            scope.unreserve(hold, now_ms)
            scope.close(reservation.id, now_ms)
            # The request stays in the requests/min window (it went upstream); its tokens do not.
            old = scope.window_tokens.get(reservation.id)
            if old is not None:
                scope.window_tokens[reservation.id] = 0
                scope.window_sum -= old

    async def read_usage(
        self, key_ids: list[str], pool_ids: list[str], now: datetime, *, provider_ids: Sequence[str] = ()
    ) -> dict[str, base.UsageSnapshot]:
        now_ms = periods.epoch_ms(now)
        day, month = periods.day_id(now), periods.month_id(now)
        scopes = [(key_id, self._scopes.get(("k", key_id))) for key_id in key_ids]
        scopes += [(pool_id, self._scopes.get(("p", pool_id))) for pool_id in pool_ids]
        scopes += [(provider_id, self._scopes.get(("c", provider_id))) for provider_id in provider_ids]
        yesterday = periods.day_id(periods.day_start(now) - timedelta(days=1))
        return {
            scope_id: base.UsageSnapshot(
                day=_period_usage(day, None if scope is None else scope.counter(day, now_ms)),
                month=_period_usage(month, None if scope is None else scope.counter(month, now_ms)),
                day_tallies={} if scope is None else dict(scope.tally(day, now_ms)),
                month_tallies={} if scope is None else dict(scope.tally(month, now_ms)),
                previous_day=None
                if scope is None or (previous := scope.counter(yesterday, now_ms)) is None
                else _period_usage(yesterday, previous),
            )
            for scope_id, scope in scopes
        }

    async def record_tallies(self, tallies: Sequence[base.Tally], now: datetime) -> None:
        now_ms = periods.epoch_ms(now)
        day, month = periods.day_id(now), periods.month_id(now)
        day_ttl, month_ttl = periods.day_counter_ttl_s(now), periods.month_counter_ttl_s(now)
        for tally in tallies:
            scope = self._scope(tally.scope_id, is_pool=tally.is_pool)
            scope.add_tally(day, tally.counts, now_ms, day_ttl)
            scope.add_tally(month, tally.counts, now_ms, month_ttl)

    async def seed_usage(self, targets: list[base.SeedTarget], now: datetime) -> int:
        now_ms = periods.epoch_ms(now)
        day, month = periods.day_id(now), periods.month_id(now)
        day_ttl, month_ttl = periods.day_counter_ttl_s(now), periods.month_counter_ttl_s(now)
        seeded = 0
        for target in targets:
            scope = self._scope(target.scope_id, is_pool=target.is_pool)
            seeded += scope.seed_if_absent(month, target.month, now_ms, month_ttl)
            seeded += scope.seed_if_absent(day, target.day, now_ms, day_ttl)
        return seeded

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._scopes.clear()


def _check(
    scope: _Scope, caps: _Caps, tokens: int, micro_usd: int, day: str, month: str, now_ms: int
) -> tuple[int, int]:
    """(reason, retry ms) as reserve.lua decides them; the window is already pruned."""
    if caps.requests_per_minute is not None and len(scope.window) + 1 > caps.requests_per_minute:
        if caps.requests_per_minute == 0:
            return decisions.REQUESTS_PER_MINUTE, decisions.NO_RETRY
        return decisions.REQUESTS_PER_MINUTE, scope.reset_ms(now_ms)
    tpm = caps.tokens_per_minute
    if tpm is not None and scope.window_sum + tokens > tpm:
        if tokens > tpm:
            return decisions.TOKENS_PER_MINUTE, decisions.NO_RETRY
        return decisions.TOKENS_PER_MINUTE, scope.tokens_retry_ms(scope.window_sum + tokens - tpm, now_ms)
    day_counters = scope.counter(day, now_ms)
    month_counters = scope.counter(month, now_ms)
    day_tokens = 0 if day_counters is None else day_counters.held_tokens
    month_tokens = 0 if month_counters is None else month_counters.held_tokens
    month_usd = 0 if month_counters is None else month_counters.held_micro_usd
    if caps.tokens_per_day is not None and day_tokens + tokens > caps.tokens_per_day:
        return decisions.TOKENS_PER_DAY, decisions.NO_RETRY
    if caps.tokens_per_month is not None and month_tokens + tokens > caps.tokens_per_month:
        return decisions.TOKENS_PER_MONTH, decisions.NO_RETRY
    if caps.micro_usd_per_month is not None and month_usd + micro_usd > caps.micro_usd_per_month:
        return decisions.SPEND_PER_MONTH, decisions.NO_RETRY
    return decisions.ADMITTED, decisions.NO_RETRY


def _period_usage(period: str, counters: _Counters | None) -> base.PeriodUsage:
    if counters is None:
        return base.PeriodUsage(period=period)
    return base.PeriodUsage(
        period=period,
        requests=counters.requests,
        input_tokens=counters.input_tokens,
        cached_input_tokens=counters.cached_input_tokens,
        output_tokens=counters.output_tokens,
        micro_usd=counters.micro_usd,
        last_used_at=(
            datetime.fromtimestamp(counters.last_used_ms / 1000, UTC) if counters.last_used_ms else None
        ),
        seeded_tokens=counters.seeded_tokens,
    )
