"""The proxy's Kubernetes config source: list+watch the operator's config Secrets and publish their merge.

Built by `server.build_source` (LLMKEYS_CONFIG_SOURCE=kubernetes) and by tests. It lists the
Secrets labelled `llmkeys.io/config` in the gateway namespace, then watches from the list's
resourceVersion: a watch that ends is resumed from the last version seen; 410 Gone (the version
is too old) triggers a fresh list that replaces the whole state, so deletions missed while away
are not kept. Bursts of events (the operator writes several Secrets per change) are coalesced
for `debounce_s` before the documents are merged with `config.ProxyConfig.merge` and published;
the app swaps its table atomically on publish. A document that does not parse (or has an
unknown version) is reported through `healthy`/`last_error` and the last good config stays.

Speaks plain HTTP(S) with aiohttp (the proxy never imports the operator, nor a Kubernetes
client library): in a pod, the service account token (re-read on every connection, since
projected tokens rotate) and CA.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import pydantic

from llmkeys_proxy import config, sources

logger = logging.getLogger("llmkeys.proxy.config")

SERVICE_ACCOUNT_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclasses.dataclass(frozen=True)
class ApiAccess:
    """Where the Kubernetes API is and how to authenticate; the token is never logged."""

    server: str
    token_file: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None
    insecure: bool = False

    @classmethod
    def in_cluster(cls) -> ApiAccess:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not running in a pod (KUBERNETES_SERVICE_HOST is unset)")
        if ":" in host:
            host = f"[{host}]"
        ca = SERVICE_ACCOUNT_DIR / "ca.crt"
        return cls(
            server=f"https://{host}:{port}",
            token_file=str(SERVICE_ACCOUNT_DIR / "token"),
            ca_file=str(ca) if ca.exists() else None,
        )

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file:
            token = pathlib.Path(self.token_file).read_text().strip()
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return True
        if self.insecure:
            return False
        return ssl.create_default_context(cafile=self.ca_file)


class GoneError(Exception):
    """The watch's resourceVersion is too old (HTTP 410): relist."""


class WatchError(Exception):
    """The API refused or broke the list/watch; the message has no response body."""


Document = config.ProvidersDocument | config.KeysShard


class KubernetesSource(sources.ConfigSource):
    """See the module docstring."""

    def __init__(
        self,
        namespace: str,
        *,
        access: ApiAccess | None = None,
        debounce_s: float = 0.05,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self._access = access
        self._debounce_s = debounce_s
        self._watch_timeout_s = watch_timeout_s
        self._retry_s = retry_s
        self._documents: dict[str, Document] = {}
        self._broken: dict[str, str] = {}
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        #: Counters for tests and /readyz details.
        self.lists = 0
        self.watches = 0

    async def start(self) -> None:
        if self._access is None:
            self._access = ApiAccess.in_cluster()
        self._session = aiohttp.ClientSession(read_bufsize=1 << 20)
        self._tasks = [
            asyncio.create_task(self._run(), name="llmkeys-config-watch"),
            asyncio.create_task(self._publisher(), name="llmkeys-config-publish"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------------------- watching

    def _path(self) -> str:
        return f"/api/v1/namespaces/{quote(self.namespace, safe='')}/secrets"

    async def _run(self) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except GoneError:
                logger.info("config watch expired (410 Gone): listing again")
                version = None
            except (WatchError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self._fail(f"Kubernetes API: {exc}" if str(exc) else f"Kubernetes API: {type(exc).__name__}")
                await asyncio.sleep(self._retry_s)

    async def _list(self) -> str | None:
        assert self._session is not None and self._access is not None
        params = {"labelSelector": config.CONFIG_LABEL}
        url = self._access.server + self._path()
        async with self._session.get(
            url, params=params, headers=self._access.headers(), ssl=self._access.ssl_context()
        ) as resp:
            if resp.status != 200:
                raise WatchError(f"listing config Secrets: HTTP {resp.status}")
            payload = await resp.json(content_type=None)
        self.lists += 1
        documents: dict[str, Document] = {}
        self._broken = {}
        for item in payload.get("items") or []:
            self._apply(documents, "ADDED", item)
        self._documents = documents
        self._dirty.set()
        version = (payload.get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    async def _watch(self, version: str | None) -> str | None:
        """Follow changes from `version`; returns the last version seen when the stream ends."""
        assert self._session is not None and self._access is not None
        params = {
            "watch": "true",
            "labelSelector": config.CONFIG_LABEL,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._watch_timeout_s),
        }
        if version:
            params["resourceVersion"] = version
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=self._watch_timeout_s + 30)
        url = self._access.server + self._path()
        async with self._session.get(
            url,
            params=params,
            headers=self._access.headers(),
            ssl=self._access.ssl_context(),
            timeout=timeout,
        ) as resp:
            if resp.status == 410:
                raise GoneError()
            if resp.status != 200:
                raise WatchError(f"watching config Secrets: HTTP {resp.status}")
            self.watches += 1
            async for event in _json_lines(resp.content):
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise GoneError()
                    raise WatchError(f"watch error {obj.get('code')} {obj.get('reason', '')}".strip())
                new_version = (obj.get("metadata") or {}).get("resourceVersion")
                if new_version:
                    version = str(new_version)
                if kind in ("ADDED", "MODIFIED", "DELETED") and self._apply(self._documents, kind, obj):
                    self._dirty.set()
        return version

    def _apply(self, documents: dict[str, Document], kind: str, obj: Mapping[str, Any]) -> bool:
        """Fold one Secret event into `documents`; True when the documents changed."""
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        labels = meta.get("labels") or {}
        # Selectors are also checked here: some API servers (and emulators) ignore them.
        if (
            not name
            or meta.get("namespace", self.namespace) != self.namespace
            or config.CONFIG_LABEL not in labels
        ):
            return False
        if kind == "DELETED":
            self._broken.pop(name, None)
            return documents.pop(name, None) is not None
        try:
            document = _parse_document(labels[config.CONFIG_LABEL], obj)
        except ValueError as exc:
            self._broken[name] = f"config Secret {name}: {exc}"
            self._fail(self._broken[name])
            return False
        self._broken.pop(name, None)
        if documents.get(name) == document:
            return False
        documents[name] = document
        return True

    # ----------------------------------------------------------------------------- publishing

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._debounce_s)
            self._dirty.clear()
            merged = self.merged()
            if self._broken:
                self._fail(next(iter(self._broken.values())))
                if self._current is not None:
                    continue  # keep the last good config while a document is broken
            self._publish(merged)
            if self._broken:
                self._fail(next(iter(self._broken.values())))

    def merged(self) -> config.ProxyConfig:
        providers = [d for d in self._documents.values() if isinstance(d, config.ProvidersDocument)]
        shards = [d for d in self._documents.values() if isinstance(d, config.KeysShard)]
        return config.ProxyConfig.merge(providers[0] if providers else config.ProvidersDocument(), shards)


def _parse_document(kind: str, obj: Mapping[str, Any]) -> Document:
    raw = (obj.get("data") or {}).get(config.CONFIG_DATA_KEY)
    if not isinstance(raw, str):
        raise ValueError(f"no {config.CONFIG_DATA_KEY}")
    try:
        text = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{config.CONFIG_DATA_KEY} is not base64") from None
    model: type[Document] = config.ProvidersDocument if kind == "providers" else config.KeysShard
    try:
        return model.model_validate_json(text)
    except pydantic.ValidationError as exc:
        # Locations and messages only: pydantic's default text would echo values (credentials).
        first = exc.errors(include_input=False, include_url=False)[0]
        location = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{location}: {first['msg']}" if location else first["msg"]) from None


async def _json_lines(stream: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """Watch events, one JSON object per line; lines can be larger than aiohttp's readline limit
    (a config Secret approaches 1 MiB), hence the own buffering."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
