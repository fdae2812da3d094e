"""Test harness for the proxy: issue keys, build compiled configs, run the proxy and fakes on loopback.

Used by tests/integration/test_proxy_*.py (and anyone who needs a running proxy in a test). The proxy
runs through `server.serve_app` exactly as in production, on a free 127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from llmkeys_proxy import app as proxy_app
from llmkeys_proxy import config, keys, server, settings, sources
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
    url: str
    app: web.Application
    #: Set when the proxy begins its graceful shutdown.
    stop: asyncio.Event

    @property
    def state(self) -> ProxyState:
        return self.app[STATE]

    @property
    def limiter(self) -> limits_base.Limiter:
        return self.state.limiter

    async def settled(self) -> None:
        """Wait until every finished request has been settled (settlement runs in the background)."""
        await self.state.settler.drain()


@contextlib.asynccontextmanager
async def run_proxy(
    source: sources.ConfigSource,
    limiter: limits_base.Limiter | None = None,
    proxy_settings: settings.ProxySettings | None = None,
) -> AsyncIterator[RunningProxy]:
    """The proxy app served by `server.serve_app` on a free port until the block ends."""
    app = proxy_app.create_app(
        proxy_settings or settings.ProxySettings(config_dir="/nonexistent", upstream_timeout_s=30),
        source,
        limiter or memory.MemoryLimiter(),
    )
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        server.serve_app(app, "127.0.0.1", 0, stop, shutdown_timeout_s=5, on_ready=ready.set_result)
    )
    try:
        port = await asyncio.wait_for(asyncio.shield(ready), 30)
        yield RunningProxy(f"http://127.0.0.1:{port}", app, stop)
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def serve_fake(app: web.Application) -> AsyncIterator[str]:
    """A fake upstream on a free loopback port; its handlers are cancelled when clients go away and
    at shutdown (a fake sleeping to simulate a slow provider must not hold the test up)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
