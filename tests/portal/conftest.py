"""Fixtures of the portal tests: one OpenID Connect provider per module, a recording cluster per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from tests import portal_harness as ph
from tests.fakes import loopback


@pytest.fixture(scope="module")
def idp() -> Iterator[ph.IdentityProvider]:
    with ph.identity_provider() as provider:
        yield provider


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[ph.RecordingEmulator]:
    async with ph.recording_cluster() as emulator:
        yield emulator


@pytest_asyncio.fixture
async def portal(idp: ph.IdentityProvider, cluster: ph.RecordingEmulator) -> AsyncIterator[ph.Portal]:
    async with ph.run_portal(ph.portal_settings(idp, loopback.free_port()), str(cluster.url)) as running:
        yield running
