"""Shared pytest fixtures; each area adds its own here (small, additive edits)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests import leak_scan, redis_server
from tests.kmock_cluster import cluster_client, kube_cluster, operator_threads  # noqa: F401  (fixtures)

# -- Redis (limits) ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_session_server() -> Iterator[redis_server.RedisServer]:
    """One real redis-server for the whole test run (free port, no persistence)."""
    with redis_server.RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_node() -> Iterator[redis_server.RedisServer]:
    """A one-node Redis Cluster owning every slot (scripts must keep to one slot), for the whole run."""
    with redis_server.RedisServer(cluster=True) as server:
        yield server


@pytest.fixture
def redis_url(redis_session_server: redis_server.RedisServer) -> str:
    """URL of the session's redis-server, emptied for this test."""
    redis_session_server.flushall()
    return redis_session_server.url


@pytest.fixture
def private_redis() -> Iterator[redis_server.RedisServer]:
    """A redis-server of this test alone, which it may kill and restart."""
    with redis_server.RedisServer() as server:
        yield server


# -- Leak scan (every log line, metric and proxy response of the run; see tests/leak_scan.py) -------


@pytest.fixture(scope="session", autouse=True)
def leak_scanner(tmp_path_factory: pytest.TempPathFactory) -> leak_scan.LeakScan:
    """Collects for the whole session; judged by tests/test_leak_scan.py, which runs last."""
    return leak_scan.current() or leak_scan.start(tmp_path_factory.getbasetemp())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The leak scan's verdict runs after everything else it judges."""
    verdicts = [item for item in items if item.nodeid.startswith("tests/test_leak_scan.py")]
    for item in verdicts:
        items.remove(item)
    items.extend(verdicts)
