"""A real Prometheus (Debian's `prometheus`, via `make setup`) scrapes a real proxy under a small load;
every Grafana dashboard panel query and every README PromQL query returns data.

The proxy is `llmkeys serve` in-process (mock provider, priced model, keys with owners, caps and a
pool); the load streams and non-streams completions, runs into a rate limit, presents invalid keys
and calls an unknown route, while Prometheus scrapes every second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llmkeys_operator import standalone

REPO = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "llmkeys" / "files" / "grafana" / "llmkeys-dashboard.json"

MANIFESTS = """
apiVersion: llmkeys.io/v1alpha1
kind: ProviderCredential
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: gpt-5.4-mini}]
---
apiVersion: llmkeys.io/v1alpha1
kind: LLMPolicy
metadata: {name: teams}
spec:
  budgets: [{name: monthly, groupBy: team, spendPerMonthUSD: "5"}]
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: checkout}
spec:
  owner: {user: alice@example.com, team: payments, app: checkout, agent: cart-bot, costCenter: cc-1}
  limits: {spendPerMonthUSD: "2"}
  expiresAt: "2099-01-01T00:00:00Z"
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: triage}
spec:
  owner: {team: search, app: helpdesk, agent: triage-bot, costCenter: cc-2}
  limits: {requestsPerMinute: 2}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _key(state: pathlib.Path, name: str) -> str:
    for line in (state / "keys" / "default" / f"{name}.env").read_text().splitlines():
        if line.startswith("LLMKEYS_API_KEY="):
            return line.split("=", 1)[1]
    raise AssertionError(name)


def queries() -> list[str]:
    """Every dashboard panel query and every README ```promql query."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```promql\n(.*?)```", readme, flags=re.DOTALL):
        current: list[str] = []
        for line in [*block.splitlines(), ""]:
            if line.startswith("#") or not line.strip():
                if current:
                    found.append("\n".join(current))
                current = []
            else:
                current.append(line)
    return found


@pytest.fixture
async def proxy(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, pathlib.Path]]:
    monkeypatch.setenv("LLMKEYS_BUDGET_METRICS_INTERVAL_S", "0.5")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "all.yaml").write_text(MANIFESTS)
    state = tmp_path / "state"
    port = _free_port()
    parser = argparse.ArgumentParser()
    standalone.add_arguments(parser)
    args = parser.parse_args(["--manifests", str(manifests), "--state-dir", str(state), "--port", str(port)])
    args.redis_url = ""
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(standalone.serve(args, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield f"127.0.0.1:{port}", state
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


@pytest.fixture
async def prometheus(tmp_path: pathlib.Path, proxy: tuple[str, pathlib.Path]) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run `make setup` (scripts/ensure-prometheus.sh)"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "llmkeys-proxy", "static_configs": [{"targets": [proxy[0]]}]}
                ],
            }
        )
    )
    port = _free_port()
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url + "/-/ready")).status_code == 200:
                        break
                assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
                await asyncio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


async def _load(base: str, state: pathlib.Path, done: asyncio.Event) -> None:
    """Streams and whole completions, rate-limited calls, invalid keys and an unknown route."""
    checkout = openai.AsyncOpenAI(
        base_url=f"http://{base}/v1", api_key=_key(state, "checkout"), max_retries=0
    )
    triage = openai.AsyncOpenAI(base_url=f"http://{base}/v1", api_key=_key(state, "triage"), max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    async with checkout, triage, httpx.AsyncClient() as raw:
        while not done.is_set():
            stream = await checkout.chat.completions.create(
                model="gpt-5.4-mini", messages=messages, max_tokens=8, stream=True
            )
            async for _ in stream:
                pass
            await checkout.chat.completions.create(model="gpt-5.4-mini", messages=messages, max_tokens=8)
            with contextlib.suppress(openai.RateLimitError):
                await triage.chat.completions.create(model="gpt-5.4-mini", messages=messages, max_tokens=8)
            wrong = _key(state, "checkout")[:-4] + "AAAA"
            await raw.post(f"http://{base}/v1/chat/completions", headers={"Authorization": f"Bearer {wrong}"})
            await raw.get(f"http://{base}/v2/nothing-here")
            await asyncio.sleep(0.2)


async def test_every_dashboard_and_readme_query_returns_data(
    proxy: tuple[str, pathlib.Path], prometheus: str
) -> None:
    done = asyncio.Event()
    load = asyncio.create_task(_load(*proxy, done))
    wanted = queries()
    assert len(wanted) >= 12 + 3
    empty = []
    async with httpx.AsyncClient() as client:
        # Prometheus applies new targets a few seconds after start: load until it has scraped the
        # proxy four times, then give it the last scrapes.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 25
        while True:
            answer = (
                await client.get(prometheus + "/api/v1/query", params={"query": "count_over_time(up[1m])"})
            ).json()
            scrapes = [float(item["value"][1]) for item in answer["data"]["result"]]
            if scrapes and scrapes[0] >= 4:
                break
            assert loop.time() < deadline, answer
            await asyncio.sleep(0.2)
        done.set()
        await load
        await asyncio.sleep(1.2)
        for query in wanted:
            answer = (await client.get(prometheus + "/api/v1/query", params={"query": query})).json()
            assert answer["status"] == "success", (query, answer)
            values = [float(item["value"][1]) for item in answer["data"]["result"]]
            if not values or all(v != v for v in values):  # no series, or only NaN
                empty.append(query)
        assert empty == [], empty
        # The bounded labels hold: the invalid key claimed a config-known id; the unknown route a method.
        attempts = await client.get(
            prometheus + "/api/v1/query", params={"query": "llmkeys_invalid_key_attempts_total"}
        )
        ids = {item["metric"]["key_id"] for item in attempts.json()["data"]["result"]}
        assert ids == {_key(proxy[1], "checkout").split("-")[2]}
