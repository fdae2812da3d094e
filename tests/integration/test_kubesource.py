"""The proxy's Kubernetes config source against the emulated API: list, watch, resume, relist, errors."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from tests import kmock_cluster as kc

from llmkeys_proxy import config, keys, kubesource

NS = kc.GATEWAY_NAMESPACE


def key_entry(name: str, namespace: str = "team-a", suspended: bool = False) -> config.KeyEntry:
    return config.KeyEntry(
        key_id=(name + "0" * 12)[:12],
        hashes=(config.SecretHash(sha256=keys.hash_secret(keys.generate_secret())),),
        namespace=namespace,
        name=name,
        model_allowlists=(("*",),),
        suspended=suspended,
    )


def secret(name: str, kind: str, document: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {config.CONFIG_LABEL: kind} if labels is None else labels,
        },
        "data": {config.CONFIG_DATA_KEY: base64.b64encode(document.encode()).decode()},
    }


def shard(namespace: str, *entries: config.KeyEntry) -> str:
    return config.KeysShard(namespace=namespace, keys=entries).model_dump_json()


PROVIDERS = config.ProvidersDocument(
    providers=(config.ProviderEntry(id=f"{NS}/mock", provider="mock", api_key="sk-real-upstream-credential"),)
).model_dump_json()


@pytest_asyncio.fixture
async def source(kube_cluster: kc.LlmkeysKubernetesEmulator) -> AsyncIterator[kubesource.KubernetesSource]:
    access = kubesource.ApiAccess(server=str(kube_cluster.url), token="test-token")
    watched = kubesource.KubernetesSource(NS, access=access, debounce_s=0.02, retry_s=0.1)
    await watched.start()
    yield watched
    await watched.stop()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def names(watched: kubesource.KubernetesSource) -> set[str]:
    current = watched.current
    return {f"{k.namespace}/{k.name}" for k in current.keys} if current else set()


async def test_lists_watches_and_merges_documents(
    source: kubesource.KubernetesSource, cluster_client: kc.ClusterClient
) -> None:
    assert await source.wait_loaded(10)
    assert source.current == config.ProxyConfig()  # nothing written yet: an empty, valid config
    await cluster_client.create(kc.SECRETS, secret("providers", "providers", PROVIDERS))
    await cluster_client.create(kc.SECRETS, secret("keys-a", "keys", shard("team-a", key_entry("one"))))
    await cluster_client.create(
        kc.SECRETS, secret("keys-b", "keys", shard("team-b", key_entry("two", "team-b")))
    )
    # Not a config Secret: ignored even though the emulator does not apply label selectors.
    await cluster_client.create(
        kc.SECRETS, secret("other", "keys", shard("x", key_entry("zzz", "x")), labels={})
    )
    await until(lambda: names(source) == {"team-a/one", "team-b/two"}, "both shards")
    assert source.current is not None
    assert [p.id for p in source.current.providers] == [f"{NS}/mock"]

    await cluster_client.patch(
        kc.SECRETS,
        NS,
        "keys-a",
        secret("keys-a", "keys", shard("team-a", key_entry("one", suspended=True), key_entry("three"))),
    )
    await until(lambda: names(source) == {"team-a/one", "team-a/three", "team-b/two"}, "updated shard")
    assert source.current is not None
    assert next(k for k in source.current.keys if k.name == "one").suspended

    await cluster_client.delete(kc.SECRETS, NS, "keys-b")
    await until(lambda: names(source) == {"team-a/one", "team-a/three"}, "deleted shard gone")
    assert source.healthy


async def test_resumes_after_disconnect_and_relists_on_gone(
    source: kubesource.KubernetesSource,
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
) -> None:
    await cluster_client.create(kc.SECRETS, secret("providers", "providers", PROVIDERS))
    await cluster_client.create(kc.SECRETS, secret("keys-a", "keys", shard("team-a", key_entry("one"))))
    await until(lambda: names(source) == {"team-a/one"}, "first key")
    await until(lambda: source.watches == 1, "watching")
    lists = source.lists

    await kube_cluster.drop_watches(kc.SECRETS, NS)
    await until(lambda: source.watches == 2, "watch resumed")
    assert source.lists == lists  # a dropped stream is resumed, not relisted
    await cluster_client.create(
        kc.SECRETS, secret("keys-b", "keys", shard("team-b", key_entry("two", "team-b")))
    )
    await until(lambda: names(source) == {"team-a/one", "team-b/two"}, "change after the reconnect")

    await kube_cluster.expire_watches(kc.SECRETS, NS)
    await until(lambda: source.lists == lists + 1, "relist after 410 Gone")
    await cluster_client.delete(kc.SECRETS, NS, "keys-a")
    await until(lambda: names(source) == {"team-b/two"}, "change after the relist")
    assert source.healthy


async def test_broken_document_keeps_last_good_config(
    source: kubesource.KubernetesSource, cluster_client: kc.ClusterClient
) -> None:
    await cluster_client.create(kc.SECRETS, secret("providers", "providers", PROVIDERS))
    await cluster_client.create(kc.SECRETS, secret("keys-a", "keys", shard("team-a", key_entry("one"))))
    await until(lambda: names(source) == {"team-a/one"}, "first key")
    good = source.current

    future = shard("team-a", key_entry("one")).replace('"version":1', '"version":99')
    await cluster_client.patch(kc.SECRETS, NS, "keys-a", secret("keys-a", "keys", future))
    await until(lambda: not source.healthy, "the error reported")
    assert source.current is good
    assert source.last_error is not None and "keys-a" in source.last_error

    broken_providers = PROVIDERS.replace('"provider":"mock"', '"provider":"nonsense"')
    await cluster_client.patch(
        kc.SECRETS, NS, "providers", secret("providers", "providers", broken_providers)
    )
    await until(lambda: source.last_error is not None and "providers" in source.last_error, "second error")
    assert "sk-real-upstream-credential" not in (source.last_error or "")
    assert source.current is good

    await cluster_client.patch(kc.SECRETS, NS, "providers", secret("providers", "providers", PROVIDERS))
    fixed = shard("team-a", key_entry("one"), key_entry("two"))
    await cluster_client.patch(kc.SECRETS, NS, "keys-a", secret("keys-a", "keys", fixed))
    await until(lambda: source.healthy and names(source) == {"team-a/one", "team-a/two"}, "recovered")
