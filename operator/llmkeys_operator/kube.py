"""The operator's only Kubernetes API client: a few typed calls over one aiohttp session.

Called by `reconcile`, `usage_sync` and `events` (kopf does its own watching). Why aiohttp and not
the `kubernetes` package: the operator is async end to end and the official client is blocking
(every call would need a thread); kopf already depends on aiohttp; we need five verbs, all as
JSON merge patches or plain POST/GET/DELETE. Credentials come from the same `kopf.ConnectionInfo`
kopf logs in with (service account, kubeconfig, or a test server), re-fetched on a 401 so rotated
service-account tokens keep working.

Errors never carry response bodies (they could echo Secret data): only status and reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

logger = logging.getLogger("llmkeys.operator.kube")

ConnectionProvider = Callable[[], Awaitable[kopf.ConnectionInfo]]


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """An API resource: enough to build its URLs."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [prefix]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


SECRETS = Resource("", "v1", "secrets")
EVENTS = Resource("", "v1", "events")
VIRTUALKEYS = Resource("llmkeys.io", "v1alpha1", "virtualkeys")
PROVIDERCREDENTIALS = Resource("llmkeys.io", "v1alpha1", "providercredentials")
LLMPOLICIES = Resource("llmkeys.io", "v1alpha1", "llmpolicies", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases")


class KubeApiError(Exception):
    """A failed API call: HTTP status and the API's reason, never the response body."""

    def __init__(self, status: int, reason: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status} {reason}")
        self.status = status
        self.reason = reason


class KubeClient:
    """Minimal async client of the Kubernetes API (see module docstring)."""

    def __init__(self, connect: ConnectionProvider, *, timeout_s: float = 30.0) -> None:
        self._connect = connect
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._ssl: ssl.SSLContext | bool = True
        self._lock = asyncio.Lock()

    async def _ensure_session(self, refresh: bool = False) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is not None and not refresh:
                return self._session
            info = await self._connect()
            if self._session is not None:
                await self._session.close()
            self._server = info.server.rstrip("/")
            self._ssl = info.as_ssl_context() if self._server.startswith("https") else True
            if info.insecure and self._server.startswith("https"):
                self._ssl = False
            self._session = aiohttp.ClientSession(
                headers={**info.as_http_headers(), "Accept": "application/json"},
                timeout=self._timeout,
            )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self, method: str, path: str, what: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON or None); retries once with fresh credentials on 401."""
        for attempt in range(2):
            session = await self._ensure_session(refresh=attempt > 0)
            async with session.request(
                method, self._server + path, json=json, headers=headers, ssl=self._ssl
            ) as resp:
                if resp.status == 401 and attempt == 0:
                    continue
                try:
                    payload = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    payload = None
                if resp.status >= 400 and resp.status not in (404, 409):
                    reason = payload.get("reason", "") if isinstance(payload, dict) else ""
                    raise KubeApiError(resp.status, str(reason) or resp.reason or "", what)
                return resp.status, payload
        raise KubeApiError(401, "Unauthorized", what)  # pragma: no cover  # loop always returns

    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        status, payload = await self._request("GET", resource.path(namespace, name), f"get {resource.plural}")
        if status == 404:
            return None
        _expect_ok(status, f"get {resource.plural}")
        return dict(payload)

    async def list(
        self, resource: Resource, namespace: str | None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a resource; `labels` is sent as a selector and also checked here (some API
        emulators ignore selectors)."""
        path = resource.path(namespace)
        if labels:
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            path += f"?labelSelector={quote(selector, safe='')}"
        status, payload = await self._request("GET", path, f"list {resource.plural}")
        _expect_ok(status, f"list {resource.plural}")
        items = [dict(item) for item in (payload or {}).get("items") or []]
        if labels:
            items = [i for i in items if _labels_match((i.get("metadata") or {}).get("labels") or {}, labels)]
        return items

    async def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The created object, or None when an object of that name already exists (409)."""
        status, payload = await self._request(
            "POST", resource.path(namespace), f"create {resource.plural}", json=body
        )
        if status == 409:
            return None
        _expect_ok(status, f"create {resource.plural}")
        return dict(payload)

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """Apply a JSON merge patch; None when the object does not exist."""
        status, payload = await self._request(
            "PATCH",
            resource.path(namespace, name, subresource),
            f"patch {resource.plural}",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if status == 404:
            return None
        _expect_ok(status, f"patch {resource.plural}")
        return dict(payload)

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        """True when deleted, False when it did not exist."""
        status, _ = await self._request("DELETE", resource.path(namespace, name), f"delete {resource.plural}")
        if status == 404:
            return False
        _expect_ok(status, f"delete {resource.plural}")
        return True


def _expect_ok(status: int, what: str) -> None:
    if status >= 300:
        raise KubeApiError(status, "Conflict" if status == 409 else "", what)


def _labels_match(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())
