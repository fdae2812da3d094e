"""Tools of the hostile-input suite (tests/integration/test_hostile_*.py): a latency probe that keeps
asking a running proxy's /healthz while an attack runs, and raw-socket clients that misbehave.

A probe measures what another client of the same proxy experiences: the worst time from when a
/healthz call was due until its answer came (the probe shares the proxy's event loop in these
tests, so a stalled loop delays the call itself: that counts too). Bounds are generous (a loaded
CI machine), far below the stalls they guard against (seconds to minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import aiohttp


@dataclasses.dataclass
class Probe:
    """Delays of /healthz calls made one after another while the block ran (due -> answered)."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: int = 0

    @property
    def worst(self) -> float:
        return max(self.latencies, default=float("inf"))


@contextlib.asynccontextmanager
async def healthz_probe(base_url: str, interval_s: float = 0.05) -> AsyncIterator[Probe]:
    """Call `base_url`/healthz every `interval_s` until the block ends (a fresh connection each
    time, as a new client would); at least one call is made."""
    probe = Probe()
    stop = asyncio.Event()

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            due = time.perf_counter()
            while True:
                try:
                    async with session.get(
                        base_url + "/healthz", headers={"Connection": "close"}
                    ) as response:
                        await response.read()
                        if response.status != 200:
                            probe.failures += 1
                except aiohttp.ClientError:
                    probe.failures += 1
                answered = time.perf_counter()
                probe.latencies.append(answered - due)
                if stop.is_set():
                    return
                due = answered + interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)

    task = asyncio.create_task(run())
    try:
        yield probe
    finally:
        stop.set()
        await task


async def open_raw(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to the proxy behind `base_url` (http://127.0.0.1:port)."""
    host, port = base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes this connection within `timeout_s` (whatever it sent before)."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
