"""The one test harness for the proxy: issue keys, build compiled configs, run the real proxy app on
loopback in front of provider fakes.

Used by the proxy, provider-family and limits integration tests. Nothing of the proxy is replaced:
`run_proxy` serves `app.create_app` through `server.serve_app` exactly as in production;
`serve_providers` serves it (optionally over TLS, which boto3 requires to send a Bearer token) with
one virtual key allowed on the given providers and the in-process limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from tests.fakes import anthropic_server, bedrock_server, gemini_server, loopback

from llmkeys_proxy import app as proxy_app
from llmkeys_proxy import config, identity, keys, server, settings, sources
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.limits import memory
from llmkeys_proxy.state import STATE, ProxyState


@dataclasses.dataclass(frozen=True)
class IssuedKey:
    """A virtual key as a workload holds it, and the entry the proxy config holds for it."""

    key: str
    entry: config.KeyEntry

    @property
    def key_id(self) -> str:
        return self.entry.key_id


def issue_key(name: str = "dev", namespace: str = "team-a", **fields: Any) -> IssuedKey:
    """A fresh key; `fields` override KeyEntry fields (defaults: every model, provider `llmkeys/openai`)."""
    key_id = keys.generate_key_id()
    secret = keys.generate_secret()
    values: dict[str, Any] = {
        "key_id": key_id,
        "hashes": (config.SecretHash(sha256=keys.hash_secret(secret)),),
        "namespace": namespace,
        "name": name,
        "owner": {"team": "payments", "user": "alice"},
        "providers": ("llmkeys/openai",),
        "model_allowlists": (("*",),),
    }
    values.update(fields)
    return IssuedKey(keys.format_key(key_id, secret), config.KeyEntry(**values))


def openai_provider(
    base_url: str, api_key: str, provider_id: str = "llmkeys/openai", **fields: Any
) -> config.ProviderEntry:
    values: dict[str, Any] = {
        "id": provider_id,
        "provider": "openai",
        "base_url": base_url + "/v1",
        "api_key": api_key,
        "models": (config.ModelRoute(name="gpt-*"), config.ModelRoute(name="text-embedding-*")),
    }
    values.update(fields)
    return config.ProviderEntry(**values)


def proxy_config(
    keys_: list[IssuedKey], providers: list[config.ProviderEntry], **fields: Any
) -> config.ProxyConfig:
    return config.ProxyConfig(keys=tuple(k.entry for k in keys_), providers=tuple(providers), **fields)


@dataclasses.dataclass
class RunningProxy:
    """A proxy app served on loopback; `virtual_key` is set when the harness issued the key itself."""

    url: str
    app: web.Application
    #: Set when the proxy begins its graceful shutdown.
    stop: asyncio.Event
    virtual_key: str = dataclasses.field(default="", repr=False)
    key_id: str = ""

    @property
    def state(self) -> ProxyState:
        return self.app[STATE]

    @property
    def limiter(self) -> limits_base.Limiter:
        return self.state.limiter

    async def settled(self) -> None:
        """Wait until every finished request has been settled (settlement runs in the background)."""
        await self.state.settler.drain()

    async def month_usage(self) -> limits_base.PeriodUsage:
        """The harness key's counters for the month, once every finished request is settled."""
        await self.settled()
        snapshot = await self.limiter.read_usage([self.key_id], [], datetime.now(UTC))
        return snapshot[self.key_id].month

    def secrets(self) -> tuple[str, ...]:
        """The virtual key and its secret part: neither may ever reach an upstream."""
        parsed = keys.parse_key(self.virtual_key)
        assert parsed is not None
        return (self.virtual_key, parsed.secret)


@contextlib.asynccontextmanager
async def run_proxy(
    source: sources.ConfigSource,
    limiter: limits_base.Limiter | None = None,
    proxy_settings: settings.ProxySettings | None = None,
    verifier: identity.TokenVerifier | None = None,
) -> AsyncIterator[RunningProxy]:
    """The proxy app served by `server.serve_app` on a free port until the block ends."""
    proxy_settings = proxy_settings or settings.ProxySettings(
        config_dir="/nonexistent", upstream_timeout_s=30
    )
    app = proxy_app.create_app(proxy_settings, source, limiter or memory.MemoryLimiter(), verifier=verifier)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        server.serve_app(
            app,
            "127.0.0.1",
            0,
            stop,
            shutdown_timeout_s=5,
            on_ready=ready.set_result,
            header_timeout_s=proxy_settings.header_timeout_s,
            idle_timeout_s=proxy_settings.idle_timeout_s,
        )
    )
    try:
        port = await asyncio.wait_for(asyncio.shield(ready), 30)
        yield RunningProxy(f"http://127.0.0.1:{port}", app, stop)
    finally:
        stop.set()
        await task


def key_entry(
    virtual_key: str, providers: Iterable[str], models: tuple[str, ...] = ("*",), **fields: object
) -> config.KeyEntry:
    """The config entry of an already formatted `virtual_key` (team-a/provider-tests)."""
    parsed = keys.parse_key(virtual_key)
    assert parsed is not None
    return config.KeyEntry(
        key_id=parsed.key_id,
        hashes=(config.SecretHash(sha256=keys.hash_secret(parsed.secret)),),
        namespace="team-a",
        name="provider-tests",
        owner={"team": "a"},
        providers=tuple(providers),
        model_allowlists=(models,),
        **fields,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def serve_providers(
    providers: list[config.ProviderEntry],
    *,
    models: tuple[str, ...] = ("*",),
    key_providers: Iterable[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **key_fields: object,
) -> AsyncIterator[RunningProxy]:
    """Serve the proxy with `providers` and one key allowed `models` on `key_providers` (default all)."""
    virtual_key = keys.generate_key()
    allowed = [p.id for p in providers] if key_providers is None else list(key_providers)
    entry = key_entry(virtual_key, allowed, models, **key_fields)
    proxy_config = config.ProxyConfig(keys=(entry,), providers=tuple(providers))
    proxy_settings = settings.ProxySettings(config_dir="-", upstream_timeout_s=30.0)
    application = proxy_app.create_app(
        proxy_settings, sources.StaticSource(proxy_config), memory.MemoryLimiter()
    )
    async with loopback.serve_app(application, ssl_context) as url:
        yield RunningProxy(url, application, asyncio.Event(), virtual_key=virtual_key, key_id=entry.key_id)


@dataclasses.dataclass(frozen=True)
class NativeFakes:
    """Fake Anthropic, Gemini and Bedrock (us-east-1) upstreams and their base URLs (the
    `native_fakes` fixture of tests/integration/conftest.py)."""

    anthropic: anthropic_server.FakeAnthropic
    gemini: gemini_server.FakeGemini
    bedrock: bedrock_server.FakeBedrock
    anthropic_url: str
    gemini_url: str
    bedrock_url: str


def native_providers(fakes: NativeFakes, id_prefix: str = "llmkeys") -> list[config.ProviderEntry]:
    """Credentials for the three fakes: Anthropic (claude-*), Gemini (gemini-*), Bedrock (amazon.*)."""
    return [
        config.ProviderEntry(
            id=f"{id_prefix}/anthropic",
            provider="anthropic",
            base_url=fakes.anthropic_url,
            api_key=fakes.anthropic.api_key,
            models=(config.ModelRoute(name="claude-*"),),
        ),
        config.ProviderEntry(
            id=f"{id_prefix}/gemini",
            provider="gemini",
            base_url=fakes.gemini_url,
            api_key=fakes.gemini.api_key,
            models=(config.ModelRoute(name="gemini-*"),),
        ),
        config.ProviderEntry(
            id=f"{id_prefix}/bedrock",
            provider="bedrock",
            base_url=fakes.bedrock_url,
            region="us-east-1",
            api_key=fakes.bedrock.api_key,
            models=(config.ModelRoute(name="amazon.*"),),
        ),
    ]


def assert_never_sent(recorded: Iterable[object], proxy: RunningProxy) -> None:
    """No recorded upstream request carried the virtual key (or its secret) anywhere."""
    for request in recorded:
        text = repr(request)
        for secret in proxy.secrets():
            assert secret not in text, "the virtual key reached the upstream"
