"""Provider-wide limits (ProviderCredential.spec.limits): every request routed to a credential also
reserves against the credential's own scope, whichever key sent it. Run on the same three backends as
the limiter suite (in-process, redis-server, one-node Redis Cluster: the scope keeps to one slot).
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from typing import Any

import pytest
from tests.integration import test_limits_semantics as semantics
from tests.integration.test_limits_semantics import (
    RESERVATION_TTL_S,
    Backend,
    admitted,
    at,
    new_key_id,
    request_for,
)

from llmkeys_proxy import config
from llmkeys_proxy.limits import base

#: The limiter suite's fixture: memory, redis and redis-cluster backends.
backend = semantics.backend


def routed(
    key_id: str, now: datetime, *, provider: base.ProviderLimit | None = None, **fields: Any
) -> base.ReserveRequest:
    """`request_for` of the limiter suite, routed to a credential with provider-wide limits."""
    return dataclasses.replace(request_for(key_id, now, **fields), provider=provider)


def credential(provider_id: str = "llmkeys/openai", **limits: int) -> base.ProviderLimit:
    return base.ProviderLimit(provider_id, config.Limits(**limits))


async def test_keys_routed_to_one_credential_share_its_rpm(backend: Backend) -> None:
    shared = credential("llmkeys/rpm", requests_per_minute=3)
    alice, bob = new_key_id(), new_key_id()
    limiter = backend.limiter
    for key, second in ((alice, 0), (bob, 10), (alice, 20)):
        decision = await limiter.reserve(routed(key, at(second), provider=shared))
        assert admitted(decision).provider_id == "llmkeys/rpm"
    denied = await limiter.reserve(routed(bob, at(30), provider=shared))
    assert denied.code == "provider_limit_exceeded"
    assert "llmkeys/rpm" in denied.message and "3 requests per minute" in denied.message
    assert denied.retry_after_s == pytest.approx(30.0)  # when the first admission leaves the window
    assert not denied.exhausted
    # The key's own headers stay the key's: it has no minute limit of its own.
    assert denied.rate.limit_requests is None
    # Another credential is untouched, and at 60 s the first admission has left this one's window.
    admitted(await limiter.reserve(routed(bob, at(30), provider=credential("llmkeys/other"))))
    admitted(await limiter.reserve(routed(bob, at(60), provider=shared)))
    assert not (await limiter.reserve(routed(alice, at(61), provider=shared))).allowed


async def test_concurrent_keys_admit_exactly_the_credential_rpm(backend: Backend) -> None:
    shared = credential("llmkeys/burst", requests_per_minute=7)
    keys = [new_key_id() for _ in range(5)]
    decisions = await asyncio.gather(
        *(backend.limiter.reserve(routed(keys[i % 5], at(0), provider=shared)) for i in range(30))
    )
    assert sum(d.allowed for d in decisions) == 7
    assert {d.code for d in decisions if not d.allowed} == {"provider_limit_exceeded"}


async def test_credential_token_and_spend_caps_are_exhausted_not_retried(backend: Backend) -> None:
    limiter = backend.limiter
    tokens = credential("llmkeys/tokens", tokens_per_day=1000, tokens_per_month=5000)
    first = admitted(await limiter.reserve(routed(new_key_id(), at(0), tokens=600, provider=tokens)))
    denied = await limiter.reserve(routed(new_key_id(), at(1), tokens=401, provider=tokens))
    assert denied.code == "provider_limit_exceeded"
    assert denied.exhausted and denied.retry_after_s is None
    assert "1000 tokens per UTC day" in denied.message
    # Settling replaces the estimate with actual usage in the credential's counters too.
    await limiter.settle(first, base.ActualUsage(input_tokens=100, output_tokens=100), at(2))
    admitted(await limiter.reserve(routed(new_key_id(), at(3), tokens=800, provider=tokens)))

    spend = credential("llmkeys/spend", spend_per_month_micro_usd=1_000_000)
    admitted(await limiter.reserve(routed(new_key_id(), at(0), micro_usd=700_000, provider=spend)))
    denied = await limiter.reserve(routed(new_key_id(), at(1), micro_usd=300_001, provider=spend))
    assert denied.code == "provider_limit_exceeded"
    assert denied.exhausted
    assert "USD 1.00 per UTC month" in denied.message


async def test_credential_tpm_window(backend: Backend) -> None:
    shared = credential("llmkeys/tpm", tokens_per_minute=1000)
    limiter = backend.limiter
    admitted(await limiter.reserve(routed(new_key_id(), at(0), tokens=700, provider=shared)))
    denied = await limiter.reserve(routed(new_key_id(), at(5), tokens=301, provider=shared))
    assert denied.code == "provider_limit_exceeded"
    assert denied.retry_after_s == pytest.approx(55.0)
    admitted(await limiter.reserve(routed(new_key_id(), at(60), tokens=1000, provider=shared)))


async def test_credential_denial_leaves_nothing_held_on_the_key_or_pool(backend: Backend) -> None:
    limiter = backend.limiter
    key = new_key_id()
    pool = base.PoolLimit("p/b/team=prov", spend_per_month_micro_usd=1000, tokens_per_month=None)
    full = credential("llmkeys/full", tokens_per_day=100)
    mine = dict(tokens_per_day=1000, requests_per_minute=2)
    denied = await limiter.reserve(
        routed(key, at(0), tokens=500, micro_usd=1000, pools=(pool,), provider=full, **mine)
    )
    assert denied.code == "provider_limit_exceeded"
    # Nothing was kept on the key (both of its requests per minute, its whole day) nor on the pool.
    roomy = credential("llmkeys/roomy")
    for second in (1, 2):
        admitted(
            await limiter.reserve(
                routed(key, at(second), tokens=500, micro_usd=500, pools=(pool,), provider=roomy, **mine)
            )
        )


async def test_key_and_pool_denials_leave_nothing_held_on_the_credential(backend: Backend) -> None:
    limiter = backend.limiter
    shared = credential("llmkeys/held", requests_per_minute=1, tokens_per_day=1000)
    denied = await limiter.reserve(
        routed(new_key_id(), at(0), tokens=1000, provider=shared, tokens_per_day=10)
    )
    assert denied.code == "token_limit_exceeded"
    pool = base.PoolLimit("p/b/team=empty", spend_per_month_micro_usd=0, tokens_per_month=None)
    denied = await limiter.reserve(
        routed(new_key_id(), at(1), tokens=1000, micro_usd=1, pools=(pool,), provider=shared)
    )
    assert denied.code == "pool_budget_exceeded"
    admitted(await limiter.reserve(routed(new_key_id(), at(2), tokens=1000, provider=shared)))


async def test_refund_frees_the_credential_but_the_request_still_counts(backend: Backend) -> None:
    limiter = backend.limiter
    shared = credential("llmkeys/refund", requests_per_minute=2, tokens_per_day=1000)
    first = admitted(await limiter.reserve(routed(new_key_id(), at(0), tokens=900, provider=shared)))
    await limiter.refund(first, at(1))
    admitted(await limiter.reserve(routed(new_key_id(), at(2), tokens=1000, provider=shared)))
    denied = await limiter.reserve(routed(new_key_id(), at(3), provider=shared))
    assert denied.code == "provider_limit_exceeded"  # the refunded request reached the provider


async def test_settle_counts_once_and_usage_is_readable(backend: Backend) -> None:
    limiter = backend.limiter
    key = new_key_id()
    shared = credential("llmkeys/usage", tokens_per_month=10_000)
    reservation = admitted(
        await limiter.reserve(routed(key, at(0), tokens=50, micro_usd=50, provider=shared))
    )
    actual = base.ActualUsage(input_tokens=30, cached_input_tokens=10, output_tokens=20, micro_usd=70)
    await limiter.settle(reservation, actual, at(1))
    await limiter.settle(reservation, actual, at(2))
    await limiter.refund(reservation, at(3))
    usage = await limiter.read_usage([key], [], at(4), provider_ids=["llmkeys/usage", "llmkeys/unused"])
    for scope in (key, "llmkeys/usage"):
        month = usage[scope].month
        assert (month.requests, month.input_tokens, month.output_tokens, month.micro_usd) == (1, 30, 20, 70)
    assert usage["llmkeys/unused"].month.requests == 0


async def test_crashed_reservations_on_the_credential_expire(backend: Backend) -> None:
    limiter = backend.limiter
    shared = credential("llmkeys/crash", tokens_per_day=1000)
    admitted(await limiter.reserve(routed(new_key_id(), at(0), tokens=900, provider=shared)))
    assert not (await limiter.reserve(routed(new_key_id(), at(60), tokens=200, provider=shared))).allowed
    after_ttl = at(RESERVATION_TTL_S + 1)
    admitted(await limiter.reserve(routed(new_key_id(), after_ttl, tokens=1000, provider=shared)))


async def test_requests_served_without_a_reservation_count_on_the_credential(backend: Backend) -> None:
    """Limiter unavailable under policy Allow: the stand-in reservation settles on the credential too."""
    shared = credential("llmkeys/allow", spend_per_month_micro_usd=1000)
    request = routed(new_key_id(), at(0), tokens=10, micro_usd=10, provider=shared)
    stand_in = base.unreserved(request)
    assert stand_in.provider_id == "llmkeys/allow"
    await backend.limiter.settle(stand_in, base.ActualUsage(input_tokens=5, micro_usd=900), at(1))
    denied = await backend.limiter.reserve(routed(new_key_id(), at(2), micro_usd=101, provider=shared))
    assert denied.code == "provider_limit_exceeded"


async def test_credential_ids_with_braces_keep_one_slot(backend: Backend) -> None:
    """A brace in an id would change the Redis hash tag; such ids are hashed (on the cluster, a script
    touching two slots would fail)."""
    shared = credential("odd{ns}/na}me", requests_per_minute=1, tokens_per_day=100)
    reservation = admitted(await backend.limiter.reserve(routed(new_key_id(), at(0), provider=shared)))
    await backend.limiter.settle(reservation, base.ActualUsage(input_tokens=3), at(1))
    assert (await backend.limiter.read_usage([], [], at(2), provider_ids=[shared.provider_id]))[
        shared.provider_id
    ].day.input_tokens == 3
