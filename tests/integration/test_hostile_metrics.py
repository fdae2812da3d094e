"""Hostile clients against /metrics: model names made up per request must not grow the exposition.

Label values come from the config (and the price table) only; any other model name is `other`.
"""

from __future__ import annotations

import asyncio
import re
import secrets

import httpx
from tests import proxy_harness
from tests.fakes import loopback, openai_server

from llmkeys_proxy import config, sources

MESSAGES = [{"role": "user", "content": "hi"}]


def _series(text: str, family: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(family + "{")]


async def test_unique_model_names_do_not_add_metric_series() -> None:
    upstream = openai_server.FakeOpenAI()
    key = proxy_harness.issue_key(limits=config.Limits(requests_per_minute=20))
    async with loopback.serve_app(upstream.app()) as url:
        cfg = proxy_harness.proxy_config(
            [key],
            [proxy_harness.openai_provider(url, upstream.api_key, models=(config.ModelRoute(name="gpt-*"),))],
        )
        async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
            headers = {"Authorization": f"Bearer {key.key}"}
            async with httpx.AsyncClient(timeout=30) as http:
                known = await http.post(
                    proxy.url + "/v1/chat/completions",
                    headers=headers,
                    json={"model": "gpt-4o-mini", "messages": MESSAGES},
                )
                assert known.status_code == 200

                async def made_up(prefix: str) -> int:
                    name = prefix + secrets.token_hex(1000)  # a 2 KB name, new every time
                    answer = await http.post(
                        proxy.url + "/v1/chat/completions",
                        headers=headers,
                        json={"model": name, "messages": MESSAGES},
                    )
                    return answer.status_code

                # Served through the gpt-* glob (until the RPM limit), then refused with 429; and
                # names no credential serves (404).
                statuses = [await made_up("gpt-") for _ in range(150)]
                statuses += await asyncio.gather(*(made_up("nobody-") for _ in range(150)))
                assert {200, 429, 404} <= set(statuses)
                await proxy.settled()
                text = (await http.get(proxy.url + "/metrics")).text
    requests = _series(text, "llmkeys_requests_total")
    models = {re.search(r'model="([^"]*)"', line).group(1) for line in requests}  # type: ignore[union-attr]
    assert models == {"gpt-4o-mini", "other"}
    # ok / rate_limit_exceeded / model_not_found, for one key: a handful of series, not 300.
    assert len(requests) <= 4, requests
    assert len(text) < 50_000
    other_ok = next(line for line in requests if 'model="other"' in line and 'code="ok"' in line)
    assert float(other_ok.rsplit(" ", 1)[1]) == statuses.count(200)  # nothing lost: all counted
