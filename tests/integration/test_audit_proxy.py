"""The proxy's audit trail through real requests (openai SDK -> proxy -> fake OpenAI): the file sink
chains what the key was charged; level metadata lets no prompt or completion text reach any sink,
level content records them capped with credentials scrubbed, level none records nothing; a stalled
sink costs requests nothing and its drops are counted."""

from __future__ import annotations

import logging
import pathlib
import threading
from datetime import UTC, datetime

import httpx
import openai
import pytest
from tests import proxy_harness
from tests.fakes import openai_server

from llmkeys_proxy import audit_file, audit_sinks, config, settings, sources

PROMPT = "the quarterly numbers are confidential"
REPLY = "".join(openai_server.REPLY_WORDS)


def audit_settings(directory: pathlib.Path, **fields: object) -> settings.ProxySettings:
    values: dict[str, object] = {
        "config_dir": "/nonexistent",
        "upstream_timeout_s": 30,
        "audit_sinks": ("stdout", "file"),
        "audit_file_dir": str(directory),
    }
    values.update(fields)
    return settings.ProxySettings(**values)  # type: ignore[arg-type]


def sink_text(directory: pathlib.Path, caplog: pytest.LogCaptureFixture) -> str:
    """Everything every sink received."""
    files = "".join(f.path.read_text() for f in audit_file.trail_files(directory))
    return files + "\n".join(r.getMessage() for r in caplog.records if r.name == "llmkeys.audit")


async def chat(url: str, key: str, prompt: str, stream: bool = False) -> None:
    async with openai.AsyncOpenAI(api_key=key, base_url=url + "/v1", max_retries=0) as client:
        messages = [{"role": "user", "content": prompt}]
        if stream:
            chunks = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
            async for _ in chunks:
                pass
        else:
            await client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]


async def test_levels_metadata_content_none_across_sinks(
    fake_openai: tuple[openai_server.FakeOpenAI, str],
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream, url = fake_openai
    caplog.set_level(logging.INFO, logger="llmkeys.audit")
    plain = proxy_harness.issue_key("plain")
    content = proxy_harness.issue_key("compliance", audit=config.KeyAudit(level="content", retain_days=400))
    silent = proxy_harness.issue_key("silent", audit=config.KeyAudit(level="none"))
    cfg = proxy_harness.proxy_config(
        [plain, content, silent], [proxy_harness.openai_provider(url, upstream.api_key)]
    )
    trail_dir = tmp_path / "audit"
    leaky = f"{PROMPT}; my key is {plain.key}, the upstream's is {upstream.api_key}; " + "x" * 500
    async with proxy_harness.run_proxy(
        sources.StaticSource(cfg), proxy_settings=audit_settings(trail_dir, audit_content_max_bytes=300)
    ) as proxy:
        await chat(proxy.url, plain.key, PROMPT)
        await chat(proxy.url, plain.key, PROMPT, stream=True)
        await proxy.settled()
        metadata_only = sink_text(trail_dir, caplog)
        await chat(proxy.url, content.key, leaky)
        await chat(proxy.url, content.key, PROMPT, stream=True)
        await chat(proxy.url, silent.key, PROMPT)
        await proxy.settled()
        snapshot = (await proxy.limiter.read_usage([plain.key_id], [], datetime.now(UTC)))[plain.key_id]
    records = list(audit_file.read_records(trail_dir))
    assert audit_file.verify(trail_dir)[0].problem is None
    by_key: dict[str | None, list[dict[str, object]]] = {}
    for one in records:
        by_key.setdefault(str(one["key_id"]), []).append(one)
    assert set(by_key) == {plain.key_id, content.key_id}, "level none writes nothing"
    # Metadata: what the key was charged, no text of either direction anywhere.
    assert sum(int(r["input_tokens"]) for r in by_key[plain.key_id]) == snapshot.month.input_tokens  # type: ignore[call-overload]
    assert sum(int(r["output_tokens"]) for r in by_key[plain.key_id]) == snapshot.month.output_tokens  # type: ignore[call-overload]
    assert all(r["level"] == "metadata" and r["prompt"] is None for r in by_key[plain.key_id])
    assert PROMPT not in metadata_only and "confidential" not in metadata_only
    assert "Hello" not in metadata_only and "fake OpenAI" not in metadata_only
    # Content: the bodies, capped, the virtual key and the real credential scrubbed, in every sink.
    whole, streamed = by_key[content.key_id]
    assert whole["level"] == "content" and whole["retain_days"] == 400
    prompt = str(whole["prompt"])
    assert PROMPT in prompt and "[redacted]" in prompt and prompt.endswith("bytes]")
    assert len(prompt.split(" [truncated")[0].encode()) <= 300
    assert "Hello from the fake" in str(whole["completion"])
    assert PROMPT in str(streamed["prompt"]) and "chat.completion.chunk" in str(streamed["completion"])
    everything = sink_text(trail_dir, caplog)
    secret = plain.key.rsplit("-", 1)[1]
    for forbidden in (plain.key, secret, content.key.rsplit("-", 1)[1], upstream.api_key):
        assert forbidden not in everything
    assert everything.count(PROMPT) == 2 * 2, "both content records, in both sinks"


class StalledSink:
    """A sink whose writes hang until released (a collector that stopped reading)."""

    name = "file"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written = 0

    def emit(self, batch: list[audit_sinks.Record]) -> None:
        self.release.wait(30)
        self.written += len(batch)

    def close(self) -> None:
        self.release.set()


async def test_a_stalled_sink_drops_and_counts_while_requests_flow(
    fake_openai: tuple[openai_server.FakeOpenAI, str],
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream, url = fake_openai
    key = proxy_harness.issue_key()
    cfg = proxy_harness.proxy_config([key], [proxy_harness.openai_provider(url, upstream.api_key)])
    stalled = StalledSink()
    async with proxy_harness.run_proxy(
        sources.StaticSource(cfg), proxy_settings=audit_settings(tmp_path, audit_sinks=("stdout",))
    ) as proxy:
        state = proxy.state
        stdout_sink = state.settler.trail.sinks[0]
        queued = audit_sinks.QueuedSink(stalled, 5, state.metrics.count_audit_drop)
        state.settler.trail = audit_sinks.AuditTrail([stdout_sink, queued])
        caplog.set_level(logging.INFO)
        for _ in range(20):
            await chat(proxy.url, key.key, PROMPT)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(proxy.url + "/metrics")).text
        while state.settler.pending:
            await proxy.settled()
        # 20 requests: one in the stalled write, five queued, the rest dropped (counted).
        assert queued.dropped >= 20 - 1 - 5
        stalled.release.set()
        await proxy.settled()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(proxy.url + "/metrics")).text
    assert stalled.written + queued.dropped == 20
    assert f'llmkeys_audit_dropped_total{{sink="file"}} {float(queued.dropped)}' in metrics
    warnings = [r for r in caplog.records if "audit sink file is slow or down" in r.getMessage()]
    assert len(warnings) == 1, "rate-limited: one warning for the burst"
    stdout_lines = [r for r in caplog.records if r.name == "llmkeys.audit"]
    assert len(stdout_lines) == 20, "the healthy sink lost nothing"
