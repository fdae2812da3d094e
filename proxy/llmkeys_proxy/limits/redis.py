"""Redis limiter backend for proxy fleets: Lua scripts, one pipelined round trip per request phase.

Called by the proxy's request pipeline (`reserve`, then `settle` or `refund`) and by the operator's
usage sync (`read_usage`, `seed_usage`). Works against Redis >= 7.0, Valkey and managed Redis; the
key layout is Redis Cluster compatible: everything of one key lives under the hash tag `{<keyId>}`,
everything of one pool under `{pool:<poolId>}`, a credential's provider-wide limits under
`{prov:<credentialId>}`, and each script touches a single tag.

Keys (prefix `llmk`, per scope `<base>` = `llmk:{<tag>}:`): `<base>w` rolling-window log (zset of
reservation ids by admission ms), `<base>wt` the window's tokens (hash id -> tokens, `_sum`),
`<base>d:<YYYY-MM-DD>` and `<base>m:<YYYY-MM>` period counters (hash: req, in, cin, out, usd, last,
stok = seeded tokens, rtok/rusd = held by open reservations), `<base>r` reservation records and
`<base>rx` their expiries (crashed proxies' reservations are swept by the next script on that scope).

A request with pools (or routed to a credential with provider-wide limits) runs one reserve script
per scope in the same pipeline. Redis (let alone a cluster) cannot make scripts on different slots
atomic together, so each scope admits or denies on its own; if any denies, the client cancels what
the others reserved (second round trip, deny path only). Guarantee: no scope ever admits beyond its
limits; a request cancelled this way may briefly hold capacity and cause a concurrent request near
the same limit to be denied (never over-admit).

Time is the caller's `now` (the proxies' clocks, NTP-synchronised): windows are exact across
replicas up to the clock skew between them. Settlements Redis misses are kept and replayed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import importlib.resources
import logging
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio
import redis.backoff
import redis.exceptions
from redis.asyncio import retry as redis_retry

from llmkeys_proxy import config
from llmkeys_proxy.limits import base, decisions, periods, resp

logger = logging.getLogger("llmkeys.limits.redis")

_USAGE_FIELDS = (b"req", b"in", b"cin", b"out", b"usd", b"last", b"stok")
#: Replies per scope of `read_usage`: day, month, day tallies, month tallies, the day before.
_READ_REPLIES = 5


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    source: bytes
    sha: str


def _load_script(name: str) -> _Script:
    """A script body with the shared prelude in front; its SHA1 is what EVALSHA names.

    The `#!lua` shebang (Redis >= 7, Valkey) makes the server itself refuse a script that touches
    two hash slots in a cluster, and refuse it up front under OOM instead of after partial writes."""
    files = importlib.resources.files("llmkeys_proxy.limits")
    source = b"#!lua\n" + (files / "common.lua").read_bytes() + b"\n" + (files / name).read_bytes()
    return _Script(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())


_RESERVE = _load_script("reserve.lua")
_SETTLE = _load_script("settle.lua")
_RELEASE = _load_script("release.lua")
_SEED = _load_script("seed.lua")
_TALLY = _load_script("tally.lua")


@dataclass(frozen=True, slots=True)
class _Call:
    script: _Script
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _seed_args(seed: config.UsageSeed | None) -> tuple[str | int, ...]:
    if seed is None:
        return ("", 0, 0, 0)
    return (seed.period, seed.requests, seed.tokens, seed.micro_usd)


def url_with_password(url: str, password: str | None) -> str:
    """`url` with `password` (LLMKEYS_REDIS_PASSWORD) in place of its own, when one is given.

    The one spelling for the proxy (`server.build_limiter`) and the operator (`usage_sync`): the
    username keeps exactly its escaping (`%xx` is decoded, then quoted once), so both connect as
    the same user."""
    if not password:
        return url
    parts = urllib.parse.urlsplit(url)
    user = urllib.parse.quote(urllib.parse.unquote(parts.username or ""), safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisLimiter(base.Limiter):
    """The fleet backend. `url` may be `redis://`, `rediss://` (TLS) or `unix://`, with
    `user:password@` for auth; URL query options (e.g. `ssl_ca_certs`) override the defaults here.
    A Redis Cluster (any node as the URL) needs `cluster=True` or `?cluster=true` in the URL.

    Timeouts bound every call: an unreachable or slow Redis raises `LimiterUnavailable` within
    about `operation_timeout_s`. Scripts are idempotent, so the single immediate retry on a broken
    connection (e.g. after a Redis restart) never counts a request twice."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "llmk",
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.5,
        operation_timeout_s: float = 1.5,
        max_connections: int = 64,
        reservation_ttl_s: float = 900.0,
        cluster: bool | None = None,
        settle_backlog: int = 100_000,
    ) -> None:
        if reservation_ttl_s * 1000 <= periods.WINDOW_MS:
            # Window entries must be gone before their reservation can be swept as crashed.
            raise ValueError("reservation_ttl_s must exceed the 60 s window")
        self._prefix = prefix
        self._operation_timeout_s = operation_timeout_s
        self._reservation_ttl_ms = int(reservation_ttl_s * 1000)
        # Settlements Redis did not take (it was down); replayed, oldest first, once it answers.
        self._backlog: collections.deque[tuple[_Call, ...]] = collections.deque(maxlen=settle_backlog)
        self._replay_task: asyncio.Task[None] | None = None
        # Bounds the connections in use (per node, in a cluster) without failing when all are busy:
        # waiting for one counts against the operation's time budget.
        self._in_flight = asyncio.Semaphore(max_connections)
        retry = redis_retry.Retry(
            redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )
        self._client: redis.asyncio.Redis | redis.asyncio.RedisCluster
        self._fast: resp.RespClient | None = None
        try:
            url, url_says_cluster = _pop_cluster_flag(url)
            if cluster if cluster is not None else url_says_cluster:
                self._client = redis.asyncio.RedisCluster.from_url(
                    url,
                    max_connections=max_connections,
                    socket_timeout=socket_timeout_s,
                    socket_connect_timeout=connect_timeout_s,
                    retry=retry,
                )
            else:
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    url,
                    max_connections=max_connections,
                    timeout=operation_timeout_s,
                    socket_timeout=socket_timeout_s,
                    socket_connect_timeout=connect_timeout_s,
                    retry=retry,
                )
                self._client = redis.asyncio.Redis.from_pool(pool)
                # Script calls and pings on one node go through the lean client (see resp.py): the
                # hot path's cost. redis-py stays for the cluster and the usage reads.
                self._fast = resp.RespClient(
                    url, connect_timeout_s=connect_timeout_s, reply_timeout_s=operation_timeout_s
                )
        except ValueError:
            # The parser's message can quote parts of the URL, password included.
            raise ValueError("invalid Redis URL (expected redis://, rediss:// or unix://)") from None

    # -- key layout --------------------------------------------------------------------------------

    def _base(self, scope_id: str, *, is_pool: bool = False, is_provider: bool = False) -> str:
        if is_pool or is_provider:
            # Braces in an id would change the hash tag; such ids are hashed instead.
            tag = scope_id if "{" not in scope_id and "}" not in scope_id else _digest(scope_id)
            return f"{self._prefix}:{{{'prov' if is_provider else 'pool'}:{tag}}}:"
        return f"{self._prefix}:{{{scope_id}}}:"

    # -- the phases ---------------------------------------------------------------------------------

    async def reserve(self, request: base.ReserveRequest) -> base.Decision:
        now = periods.as_utc(request.now)
        now_ms = periods.epoch_ms(now)
        day, month = periods.day_id(now), periods.month_id(now)
        day_ttl, month_ttl = periods.day_counter_ttl_s(now), periods.month_counter_ttl_s(now)
        tokens = max(0, request.estimated_tokens)
        micro_usd = max(0, request.estimated_micro_usd)
        reservation_id = secrets.token_hex(8)
        limits = request.limits

        def reserve_call(
            scope_base: str,
            caps: tuple[int | None, int | None, int | None, int | None, int | None],
            month_seed: config.UsageSeed | None,
            day_seed: config.UsageSeed | None,
        ) -> _Call:
            return _Call(
                _RESERVE,
                (
                    scope_base + "w",
                    scope_base + "wt",
                    scope_base + "d:" + day,
                    scope_base + "m:" + month,
                    scope_base + "r",
                    scope_base + "rx",
                ),
                (
                    now_ms,
                    reservation_id,
                    tokens,
                    micro_usd,
                    *(_limit(cap) for cap in caps),
                    day_ttl,
                    month_ttl,
                    self._reservation_ttl_ms,
                    scope_base,
                    day,
                    month,
                    *_seed_args(month_seed),
                    *_seed_args(day_seed),
                ),
            )

        scope_bases = [self._base(request.key_id, is_pool=False)]
        scope_bases += [self._base(pool.pool_id, is_pool=True) for pool in request.pools]
        calls = [
            reserve_call(
                scope_bases[0],
                (
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                    limits.tokens_per_day,
                    limits.tokens_per_month,
                    limits.spend_per_month_micro_usd,
                ),
                request.month_usage_seed,
                request.day_usage_seed,
            )
        ]
        for pool, pool_base in zip(request.pools, scope_bases[1:], strict=True):
            calls.append(
                reserve_call(
                    pool_base,
                    (None, None, None, pool.tokens_per_month, pool.spend_per_month_micro_usd),
                    pool.month_usage_seed,
                    None,
                )
            )
        provider = request.provider
        if provider is not None:
            plimits = provider.limits
            scope_bases.append(self._base(provider.provider_id, is_provider=True))
            calls.append(
                reserve_call(
                    scope_bases[-1],
                    (
                        plimits.requests_per_minute,
                        plimits.tokens_per_minute,
                        plimits.tokens_per_day,
                        plimits.tokens_per_month,
                        plimits.spend_per_month_micro_usd,
                    ),
                    None,  # credentials carry no usage seed: after a Redis loss their periods restart
                    None,
                )
            )
        results = await self._run(calls)
        admitted = [int(result[0]) == 1 for result in results]
        key_result = results[0]
        rate = decisions.rate_state(limits, int(key_result[3]), int(key_result[4]), int(key_result[5]))
        if all(admitted):
            return base.Decision(
                allowed=True,
                reservation=base.reservation_for(request, reservation_id, tokens, micro_usd, now),
                rate=rate,
            )
        cancels = [
            _release_call(scope_base, reservation_id, now_ms, cancel=True)
            for scope_base, ok in zip(scope_bases, admitted, strict=True)
            if ok
        ]
        if cancels:
            # If this fails too, what stays held is swept when the reservation expires.
            with contextlib.suppress(base.LimiterUnavailable):
                await self._run(cancels)
        if not admitted[0]:
            return decisions.key_denial(limits, int(key_result[1]), int(key_result[2]), rate)
        denied_at = admitted.index(False)
        if denied_at <= len(request.pools):
            return decisions.pool_denial(request.pools[denied_at - 1].pool_id, rate)
        assert provider is not None  # the only scope after the pools
        provider_result = results[denied_at]
        return decisions.provider_denial(
            provider.provider_id, provider.limits, int(provider_result[1]), int(provider_result[2]), rate
        )

    async def settle(self, reservation: base.Reservation, usage: base.ActualUsage, now: datetime) -> None:
        created = periods.as_utc(reservation.created_at)
        day, month = periods.day_id(created), periods.month_id(created)
        day_ttl, month_ttl = periods.day_counter_ttl_s(created), periods.month_counter_ttl_s(created)
        now_ms = periods.epoch_ms(now)

        def settle_call(
            scope_base: str, month_seed: config.UsageSeed | None, day_seed: config.UsageSeed | None
        ) -> _Call:
            return _Call(
                _SETTLE,
                (
                    scope_base + "wt",
                    scope_base + "d:" + day,
                    scope_base + "m:" + month,
                    scope_base + "r",
                    scope_base + "rx",
                ),
                (
                    now_ms,
                    reservation.id,
                    max(0, usage.total_tokens),
                    max(0, usage.input_tokens),
                    max(0, usage.cached_input_tokens),
                    max(0, usage.output_tokens),
                    max(0, usage.micro_usd),
                    day_ttl,
                    month_ttl,
                    scope_base,
                    day,
                    month,
                    *_seed_args(month_seed),
                    *_seed_args(day_seed),
                ),
            )

        calls = [
            settle_call(
                self._base(reservation.key_id, is_pool=False),
                reservation.month_usage_seed,
                reservation.day_usage_seed,
            )
        ]
        seeds = reservation.pool_month_usage_seeds or (None,) * len(reservation.pool_ids)
        for pool_id, seed in zip(reservation.pool_ids, seeds, strict=True):
            calls.append(settle_call(self._base(pool_id, is_pool=True), seed, None))
        if reservation.provider_id is not None:
            calls.append(settle_call(self._base(reservation.provider_id, is_provider=True), None, None))
        try:
            await self._run(calls)
        except base.LimiterUnavailable:
            # Kept for replay; the scripts are idempotent, so a settle that did land (its reply lost)
            # is not counted twice.
            self._backlog.append(tuple(calls))
            raise

    @property
    def settle_backlog(self) -> int:
        """Settlements waiting for Redis to answer again."""
        return len(self._backlog)

    async def _replay(self) -> None:
        while self._backlog:
            calls = self._backlog[0]
            try:
                await self._run(calls)
            except base.LimiterUnavailable:
                return  # still unreachable: the next successful call starts over
            if self._backlog and self._backlog[0] is calls:
                self._backlog.popleft()

    async def refund(self, reservation: base.Reservation, now: datetime) -> None:
        now_ms = periods.epoch_ms(now)
        scopes = [self._base(reservation.key_id, is_pool=False)]
        scopes += [self._base(pool_id, is_pool=True) for pool_id in reservation.pool_ids]
        if reservation.provider_id is not None:
            scopes.append(self._base(reservation.provider_id, is_provider=True))
        await self._run([_release_call(scope, reservation.id, now_ms, cancel=False) for scope in scopes])

    # -- usage for the control plane ----------------------------------------------------------------

    async def read_usage(
        self, key_ids: list[str], pool_ids: list[str], now: datetime, *, provider_ids: Sequence[str] = ()
    ) -> dict[str, base.UsageSnapshot]:
        day, month = periods.day_id(now), periods.month_id(now)
        yesterday = periods.day_id(periods.day_start(now) - timedelta(days=1))
        scopes = [(key_id, self._base(key_id, is_pool=False)) for key_id in key_ids]
        scopes += [(pool_id, self._base(pool_id, is_pool=True)) for pool_id in pool_ids]
        scopes += [(provider_id, self._base(provider_id, is_provider=True)) for provider_id in provider_ids]
        try:
            async with asyncio.timeout(self._operation_timeout_s), self._in_flight:
                pipe = self._client.pipeline(transaction=False)
                for _, scope in scopes:
                    pipe.hmget(scope + "d:" + day, _USAGE_FIELDS)
                    pipe.hmget(scope + "m:" + month, _USAGE_FIELDS)
                    pipe.hgetall(scope + "t:" + day)
                    pipe.hgetall(scope + "t:" + month)
                    pipe.hmget(scope + "d:" + yesterday, _USAGE_FIELDS)
                replies: list[Any] = await pipe.execute()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from exc
        snapshots = {}
        for index, (scope_id, _) in enumerate(scopes):
            at = _READ_REPLIES * index
            previous = replies[at + 4]
            snapshots[scope_id] = base.UsageSnapshot(
                day=_period_usage(day, replies[at]),
                month=_period_usage(month, replies[at + 1]),
                day_tallies=_tallies(replies[at + 2]),
                month_tallies=_tallies(replies[at + 3]),
                previous_day=_period_usage(yesterday, previous) if any(previous) else None,
            )
        return snapshots

    async def record_tallies(self, tallies: Sequence[base.Tally], now: datetime) -> None:
        if not tallies:
            return
        day, month = periods.day_id(now), periods.month_id(now)
        day_ttl, month_ttl = periods.day_counter_ttl_s(now), periods.month_counter_ttl_s(now)
        calls = []
        for tally in tallies:
            if not tally.counts:
                continue
            scope = self._base(tally.scope_id, is_pool=tally.is_pool)
            pairs: list[str | int] = []
            for name, count in tally.counts.items():
                pairs += (name, count)
            calls.append(
                _Call(
                    _TALLY,
                    (scope + "t:" + day, scope + "t:" + month),
                    (day_ttl, month_ttl, base.TALLY_FIELDS_MAX, *pairs),
                )
            )
        if calls:
            await self._run(calls)

    async def seed_usage(self, targets: list[base.SeedTarget], now: datetime) -> int:
        if not targets:
            return 0
        day, month = periods.day_id(now), periods.month_id(now)
        day_ttl, month_ttl = periods.day_counter_ttl_s(now), periods.month_counter_ttl_s(now)
        calls = []
        for target in targets:
            scope = self._base(target.scope_id, is_pool=target.is_pool)
            calls.append(
                _Call(
                    _SEED,
                    (scope + "d:" + day, scope + "m:" + month),
                    (day, month, day_ttl, month_ttl, *_seed_args(target.month), *_seed_args(target.day)),
                )
            )
        return sum(int(result) for result in await self._run(calls))

    async def ping(self) -> bool:
        try:
            if self._fast is not None:
                answered = bool((await self._fast.execute([("PING",)]))[0] == b"PONG")
            else:
                async with asyncio.timeout(self._operation_timeout_s), self._in_flight:
                    answered = bool(await self._client.ping())
        except (redis.exceptions.RedisError, OSError, TimeoutError):
            return False
        self._resume_replay()  # readiness probes resume replay even without traffic
        return answered

    async def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        if self._backlog:
            logger.warning("%d settlements never reached Redis and are dropped", len(self._backlog))
        if self._fast is not None:
            await self._fast.close()
        await self._client.aclose()

    # -- running scripts ----------------------------------------------------------------------------

    async def _run(self, calls: Sequence[_Call]) -> list[Any]:
        """Run the calls in one pipelined round trip (EVALSHA; loads scripts a restarted Redis lacks)."""
        if self._fast is not None:
            return await self._run_fast(self._fast, calls)
        try:
            async with asyncio.timeout(self._operation_timeout_s), self._in_flight:
                results = await self._evalsha(calls)
                missing = [
                    i
                    for i, result in enumerate(results)
                    if isinstance(result, redis.exceptions.NoScriptError)
                ]
                if missing:
                    for script in {calls[i].script.name: calls[i].script for i in missing}.values():
                        await self._client.script_load(script.source)
                    retried = await self._evalsha([calls[i] for i in missing])
                    for i, result in zip(missing, retried, strict=True):
                        results[i] = result
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from exc
        for result in results:
            if isinstance(result, Exception):
                raise _unavailable(result) from result
        self._resume_replay()
        return results

    async def _run_fast(self, fast: resp.RespClient, calls: Sequence[_Call]) -> list[Any]:
        """`_run` on the lean client: the same round trips, a fraction of the CPU."""
        try:
            results = await fast.execute([_evalsha_command(call) for call in calls])
            missing = [
                i
                for i, result in enumerate(results)
                if isinstance(result, resp.ReplyError) and result.message.startswith("NOSCRIPT")
            ]
            if missing:
                scripts = {calls[i].script.name: calls[i].script for i in missing}.values()
                await fast.execute([("SCRIPT", "LOAD", script.source) for script in scripts])
                retried = await fast.execute([_evalsha_command(calls[i]) for i in missing])
                for i, result in zip(missing, retried, strict=True):
                    results[i] = result
        except (OSError, TimeoutError) as exc:  # RespConnectionError is an OSError
            raise _unavailable(exc) from exc
        for result in results:
            if isinstance(result, Exception):
                raise _unavailable(result) from result
        self._resume_replay()
        return results

    def _resume_replay(self) -> None:
        """Redis answered: replay kept settlements in the background (one replayer at a time)."""
        if self._backlog and (self._replay_task is None or self._replay_task.done()):
            self._replay_task = asyncio.create_task(self._replay(), name="llmkeys-settle-replay")

    async def _evalsha(self, calls: Sequence[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            # execute_command, not evalsha(): the cluster pipeline blocks the latter but routes this
            # by the script's keys all the same.
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        return list(await pipe.execute(raise_on_error=False))


def _evalsha_command(call: _Call) -> tuple[str | int, ...]:
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


def _release_call(scope_base: str, reservation_id: str, now_ms: int, *, cancel: bool) -> _Call:
    keys = (scope_base + "w", scope_base + "wt", scope_base + "r", scope_base + "rx")
    return _Call(_RELEASE, keys, (now_ms, reservation_id, scope_base, "1" if cancel else "0"))


def _pop_cluster_flag(url: str) -> tuple[str, bool]:
    """The URL without our own `cluster` query option (redis-py would refuse it), and its value."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    flags = [value.lower() in ("1", "true", "yes") for name, value in query if name == "cluster"]
    if not flags:
        return url, False
    rest = urllib.parse.urlencode([(name, value) for name, value in query if name != "cluster"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), flags[-1]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:24]


def _unavailable(exc: BaseException) -> base.LimiterUnavailable:
    # The type only: redis error texts can carry host names; never credentials, but keep it terse.
    return base.LimiterUnavailable(f"limiter backend failed: {type(exc).__name__}")


def _tallies(reply: dict[bytes, bytes]) -> dict[str, int]:
    tallies = {}
    for name, value in reply.items():
        try:
            tallies[name.decode()] = int(value)
        except (UnicodeDecodeError, ValueError):
            continue
    return tallies


def _period_usage(period: str, values: list[bytes | None]) -> base.PeriodUsage:
    requests, input_tokens, cached, output, micro_usd, last, seeded = (int(v) if v else 0 for v in values)
    return base.PeriodUsage(
        period=period,
        requests=requests,
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output,
        micro_usd=micro_usd,
        last_used_at=datetime.fromtimestamp(last / 1000, UTC) if last else None,
        seeded_tokens=seeded,
    )
