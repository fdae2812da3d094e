"""The real proxy app on a loopback port in front of provider fakes, with one virtual key; used by the
provider-family integration tests (tests/integration/test_providers_*.py).

Nothing of the proxy is replaced: `app.create_app` with a `StaticSource` config and the in-process
limiter, served by aiohttp (optionally over TLS, which boto3 requires to send a Bearer token).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime

from aiohttp import web
from tests.fakes import loopback

from llmkeys_proxy import app as proxy_app
from llmkeys_proxy import config, keys, settings, sources
from llmkeys_proxy.limits import base as limits_base
from llmkeys_proxy.limits import memory
from llmkeys_proxy.state import STATE


@dataclasses.dataclass
class RunningProxy:
    """A proxy serving one virtual key."""

    url: str
    app: web.Application
    virtual_key: str = dataclasses.field(repr=False)
    key_id: str

    async def month_usage(self) -> limits_base.PeriodUsage:
        """This key's counters for the month, once every finished request is settled."""
        state = self.app[STATE]
        await state.settler.drain()
        snapshot = await state.limiter.read_usage([self.key_id], [], datetime.now(UTC))
        return snapshot[self.key_id].month

    def secrets(self) -> tuple[str, ...]:
        """The virtual key and its secret part: neither may ever reach an upstream."""
        parsed = keys.parse_key(self.virtual_key)
        assert parsed is not None
        return (self.virtual_key, parsed.secret)


def key_entry(
    virtual_key: str, providers: Iterable[str], models: tuple[str, ...] = ("*",), **fields: object
) -> config.KeyEntry:
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
async def run_proxy(
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
        yield RunningProxy(url=url, app=application, virtual_key=virtual_key, key_id=entry.key_id)


def assert_never_sent(recorded: Iterable[object], proxy: RunningProxy) -> None:
    """No recorded upstream request carried the virtual key (or its secret) anywhere."""
    for request in recorded:
        text = repr(request)
        for secret in proxy.secrets():
            assert secret not in text, "the virtual key reached the upstream"
