"""The settler keeps pace with any request rate: a burst of finished requests is settled as one batch
(all its limiter calls in flight together), not in slices that each wait for a round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from llmkeys_proxy import metrics, pricing, settlement, tokens
from llmkeys_proxy.limits import base


class SlowBackend(base.Limiter):
    """A limiter backend whose every settle takes one slow round trip; records how many overlap."""

    def __init__(self, round_trip_s: float) -> None:
        self.round_trip_s = round_trip_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.settled = 0

    async def reserve(self, request: base.ReserveRequest) -> base.Decision:
        raise NotImplementedError

    async def settle(self, reservation: base.Reservation, usage: base.ActualUsage, now: datetime) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.round_trip_s)
        finally:
            self.in_flight -= 1
        self.settled += 1

    async def refund(self, reservation: base.Reservation, now: datetime) -> None:
        await self.settle(reservation, base.ActualUsage(), now)

    async def read_usage(
        self, key_ids: list[str], pool_ids: list[str], now: datetime, *, provider_ids: Sequence[str] = ()
    ) -> dict[str, base.UsageSnapshot]:
        return {}

    async def seed_usage(self, targets: list[base.SeedTarget], now: datetime) -> int:
        return 0

    async def record_tallies(self, tallies: Sequence[base.Tally], now: datetime) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _outcome(n: int) -> settlement.Outcome:
    now = datetime.now(UTC)
    return settlement.Outcome(
        request_id=f"r{n}",
        method="POST",
        path="/v1/chat/completions",
        api="openai-chat",
        started=0.0,
        time=now,
        status=200,
        reservation=base.Reservation(
            id=f"res{n}", key_id="abcdefghijkl", pool_ids=(), tokens=10, micro_usd=1, created_at=now
        ),
        counts=tokens.TokenCounts(input_tokens=5, output_tokens=5),
    )


async def test_a_burst_is_settled_as_one_batch() -> None:
    backend = SlowBackend(round_trip_s=0.05)
    settler = settlement.Settler(backend, metrics.ProxyMetrics(), pricing.PriceTable.shipped())
    settler.start()
    try:
        for n in range(400):
            settler.submit(_outcome(n))
        await asyncio.wait_for(settler.drain(), timeout=30)
    finally:
        await settler.close()
    assert backend.settled == 400
    # One batch: every settle of the burst in flight together (slices of 8 would cap this at 8 and
    # need 50 round trips; under load the queue then grows without bound).
    assert backend.max_in_flight == 400
