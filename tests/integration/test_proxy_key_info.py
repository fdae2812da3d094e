"""`llmkeys_key_info` on the running proxy's /metrics: one series per key with its owner, joinable with the
spend counters on key_id, gone after a config reload removes the key; present in multiprocess rendering."""

from __future__ import annotations

import asyncio
import pathlib
import time

import httpx
import openai
import pytest
from prometheus_client import parser
from tests import proxy_harness

from llmkeys_proxy import config, metrics, sources

MOCK = config.ProviderEntry(
    id="llmkeys/mock",
    provider="mock",
    models=(config.ModelRoute(name="*"),),
    pricing={"gpt-4o-mini": config.ModelPrice(input=1_000_000, output=2_000_000)},
)


def samples(text: str, name: str) -> list[dict[str, str]]:
    """Label sets of every sample called `name` in an exposition text."""
    return [
        sample.labels
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def info_by_key(text: str) -> dict[str, dict[str, str]]:
    found = samples(text, "llmkeys_key_info")
    by_key = {labels["key_id"]: labels for labels in found}
    assert len(by_key) == len(found), "one info series per key"
    return by_key


async def test_key_info_follows_the_config_and_joins_spend(tmp_path: pathlib.Path) -> None:
    payments = proxy_harness.issue_key(
        name="checkout-agent",
        namespace="payments",
        providers=(MOCK.id,),
        owner={
            "user": "alice@example.com",
            "team": "payments",
            "app": "checkout",
            "agent": "refund-bot",
            "service": "checkout-api",
            "environment": "prod",
            "costCenter": "CC-1042",
        },
    )
    research = proxy_harness.issue_key(
        name="notebook", namespace="research", providers=(MOCK.id,), owner={"team": "x" * 300}
    )
    sources.write_config_dir(tmp_path, proxy_harness.proxy_config([payments, research], [MOCK]))
    source = sources.DirectorySource(tmp_path, interval_s=0.05)
    async with proxy_harness.run_proxy(source) as proxy, httpx.AsyncClient(timeout=30) as http:
        async with openai.AsyncOpenAI(
            api_key=payments.key, base_url=proxy.url + "/v1", max_retries=0
        ) as client:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        await proxy.settled()
        text = (await http.get(proxy.url + "/metrics")).text

        info = info_by_key(text)
        assert set(info) == {payments.key_id, research.key_id}
        assert info[payments.key_id] == {
            "key_id": payments.key_id,
            "namespace": "payments",
            "name": "checkout-agent",
            "user": "alice@example.com",
            "team": "payments",
            "app": "checkout",
            "agent": "refund-bot",
            "service": "checkout-api",
            "environment": "prod",
            "cost_center": "CC-1042",
        }
        # Absent owner fields are empty labels; long values are cut to a bound.
        assert info[research.key_id]["team"] == "x" * metrics.KEY_INFO_VALUE_MAX
        assert info[research.key_id]["cost_center"] == ""
        # The counters carry no owner, and their key_id finds the owner in the info series.
        spend = samples(text, "llmkeys_spend_micro_usd_total")
        assert [labels["key_id"] for labels in spend] == [payments.key_id]
        assert "team" not in spend[0]
        assert info[spend[0]["key_id"]]["team"] == "payments"
        assert payments.key not in text and payments.key.rsplit("-", 1)[1] not in text

        # A reload without the research key: its series goes, the other stays.
        sources.write_config_dir(tmp_path, proxy_harness.proxy_config([payments], [MOCK]))
        deadline = time.monotonic() + 30
        while set(info := info_by_key((await http.get(proxy.url + "/metrics")).text)) != {payments.key_id}:
            assert time.monotonic() < deadline, f"info series after the reload: {sorted(info)}"
            await asyncio.sleep(0.05)
        assert info[payments.key_id]["team"] == "payments"


async def test_key_info_in_multiprocess_rendering(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (several workers) /metrics is rendered from the shared files plus
    the answering worker's own key info, so the info series are there and follow that worker's config."""
    key = proxy_harness.issue_key(providers=(MOCK.id,))
    source = sources.StaticSource(proxy_harness.proxy_config([key], [MOCK]))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    async with proxy_harness.run_proxy(source) as proxy, httpx.AsyncClient(timeout=30) as http:
        assert set(info_by_key((await http.get(proxy.url + "/metrics")).text)) == {key.key_id}
        source.set(proxy_harness.proxy_config([], [MOCK]))
        assert info_by_key((await http.get(proxy.url + "/metrics")).text) == {}
