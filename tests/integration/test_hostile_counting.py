"""A hostile prompt: megabytes of text for a key without token limits, to an upstream that reports no usage
(so the proxy counts it with tiktoken, prompt and answer), and to the built-in mock provider.

Counting runs off the event loop: another client's /healthz stays fast while it runs, and the
request is still charged from the count (nothing lost).
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from tests import hostile, proxy_harness
from tests.fakes import loopback, openai_server

from llmkeys_proxy import config, sources

#: One 3 MB word: tiktoken's slowest case (about 1.5 s of CPU here; the same 8 MB stalled the whole
#: proxy for 5 s when counted on the event loop).
PROMPT = "x" * 3_000_000


async def test_counting_a_huge_prompt_never_stalls_other_clients() -> None:
    upstream = openai_server.FakeOpenAI(omit_usage=True)
    key = proxy_harness.issue_key(providers=("llmkeys/openai", "llmkeys/mock"))
    mock = config.ProviderEntry(
        id="llmkeys/mock", provider="mock", models=(config.ModelRoute(name="mock-*"),)
    )
    async with loopback.serve_app(upstream.app()) as url:
        cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key), mock])
        async with proxy_harness.run_proxy(sources.StaticSource(cfg)) as proxy:
            auth = {"Authorization": f"Bearer {key.key}"}
            async with httpx.AsyncClient(timeout=120) as http:
                await http.get(proxy.url + "/healthz")
                for model in ("gpt-4o-mini", "mock-large"):
                    async with hostile.healthz_probe(proxy.url) as probe:
                        answer = await http.post(
                            proxy.url + "/v1/chat/completions",
                            headers=auth,
                            json={"model": model, "messages": [{"role": "user", "content": PROMPT}]},
                        )
                    assert answer.status_code == 200, answer.text
                    assert probe.failures == 0
                    assert probe.worst < 1.0, f"{model}: /healthz took {probe.worst:.2f} s while counting"
            await proxy.settled()
            month = (await proxy.limiter.read_usage([key.key_id], [], datetime.now(UTC)))[key.key_id].month
    assert month.requests == 2
    assert month.input_tokens > 2 * 300_000  # both prompts counted
