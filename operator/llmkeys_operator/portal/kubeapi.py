"""The portal's only Kubernetes API client: every call impersonates the signed-in identity.

Called by `app`. The portal's own credentials (its ServiceAccount, or a kubeconfig for local use)
authenticate the connection; each request adds `Impersonate-User` and one `Impersonate-Group`
per group of the signed-in identity, so the API server authorises the request as that person and
the admission webhook sees that person's userInfo. There is no call without an identity: the
portal's ServiceAccount is granted `impersonate` and nothing else.

Errors carry the API server's Status message (for example "virtualkeys is forbidden: ..." or an
admission webhook's refusal), which names resources and rules but never Secret data; Secret bodies
are never put into errors or logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from multidict import CIMultiDict

from llmkeys_operator import kube
from llmkeys_operator.portal import identity

logger = logging.getLogger("llmkeys.portal.kube")

#: The resources the portal reads and writes (paths built by the operator's `kube.Resource`).
VIRTUALKEYS = kube.VIRTUALKEYS
LLMPOLICIES = kube.LLMPOLICIES
SECRETS = kube.SECRETS
NAMESPACES = kube.Resource("", "v1", "namespaces", namespaced=False)

MAX_MESSAGE_CHARS = 600
#: Names the portal in the API server's audit log (next to the impersonated user).
USER_AGENT = "llmkeys-portal"


class KubeError(Exception):
    """A refused or failed call; `message` is safe to show to the person who made it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Forbidden(KubeError):
    """RBAC (or the webhook, answering 403) says no."""


class NotFound(KubeError):
    pass


class Refused(KubeError):
    """The API server refused the request as invalid or conflicting (400, 409, 422): a CRD schema,
    a CEL rule or the admission webhook said why."""


class Unavailable(KubeError):
    """The API server could not be reached or failed (5xx)."""


def impersonation_headers(who: identity.Identity) -> CIMultiDict[str]:
    """The headers that make the API server treat a request as `who`'s own."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Impersonate-User", who.username)
    for group in who.groups:
        headers.add("Impersonate-Group", group)
    return headers


@dataclasses.dataclass
class _Connection:
    session: aiohttp.ClientSession
    server: str
    ssl: ssl.SSLContext | bool


class KubeAsUser:
    """A few verbs of the Kubernetes API, each made as the given identity (see module docstring)."""

    def __init__(self, connect: kube.ConnectionProvider, *, timeout_s: float = 15.0) -> None:
        self._connect = connect
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self, refresh: bool = False) -> _Connection:
        async with self._lock:
            if self._conn is not None and not refresh:
                return self._conn
            info: kopf.ConnectionInfo = await self._connect()
            if self._conn is not None:
                await self._conn.session.close()
            server = info.server.rstrip("/")
            tls: ssl.SSLContext | bool = True
            if server.startswith("https"):
                tls = False if info.insecure else info.as_ssl_context()
            own_headers = {
                k: v for k, v in info.as_http_headers().items() if not k.lower().startswith("impersonate-")
            }
            session = aiohttp.ClientSession(
                headers={**own_headers, "Accept": "application/json", "User-Agent": USER_AGENT},
                timeout=self._timeout,
            )
            self._conn = _Connection(session=session, server=server, ssl=tls)
            return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.session.close()
            self._conn = None

    async def _request(
        self,
        who: identity.Identity,
        method: str,
        path: str,
        *,
        json: Any = None,
        content_type: str | None = None,
    ) -> Any:
        headers = impersonation_headers(who)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn = await self._connection(refresh=attempt > 0)
            try:
                async with conn.session.request(
                    method, conn.server + path, json=json, headers=headers, ssl=conn.ssl
                ) as resp:
                    if resp.status == 401 and attempt == 0:
                        continue  # the portal's own token rotated: reconnect once
                    try:
                        payload = await resp.json(content_type=None)
                    except (ValueError, aiohttp.ContentTypeError):
                        payload = None
                    if resp.status < 300:
                        return payload
                    raise _error(resp.status, payload, method, path)
            except aiohttp.ClientError as exc:
                raise Unavailable(
                    503, f"the Kubernetes API cannot be reached ({type(exc).__name__})"
                ) from None
            except TimeoutError:
                raise Unavailable(504, "the Kubernetes API did not answer in time") from None
        raise Unavailable(401, "the portal's own credentials are not accepted by the Kubernetes API")

    async def list(
        self, who: identity.Identity, resource: kube.Resource, namespace: str | None
    ) -> list[dict[str, Any]]:
        payload = await self._request(who, "GET", resource.path(namespace))
        return [dict(item) for item in (payload or {}).get("items") or []]

    async def get(
        self, who: identity.Identity, resource: kube.Resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            payload = await self._request(who, "GET", resource.path(namespace, name))
        except NotFound:
            return None
        return dict(payload or {})

    async def create(
        self, who: identity.Identity, resource: kube.Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return dict(await self._request(who, "POST", resource.path(namespace), json=body) or {})

    async def patch(
        self,
        who: identity.Identity,
        resource: kube.Resource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        return dict(
            await self._request(
                who,
                "PATCH",
                resource.path(namespace, name),
                json=patch,
                content_type="application/merge-patch+json",
            )
            or {}
        )

    async def delete(
        self, who: identity.Identity, resource: kube.Resource, namespace: str | None, name: str
    ) -> None:
        await self._request(who, "DELETE", resource.path(namespace, name))


def _error(status: int, payload: Any, method: str, path: str) -> KubeError:
    message = ""
    if isinstance(payload, dict) and payload.get("kind") == "Status":
        message = str(payload.get("message") or payload.get("reason") or "")
    message = message[:MAX_MESSAGE_CHARS] or f"{method} {path.rsplit('/', 2)[-2]} answered HTTP {status}"
    if status == 403:
        return Forbidden(status, message)
    if status == 404:
        return NotFound(status, message)
    if status in (400, 409, 422):
        return Refused(status, message)
    logger.warning("Kubernetes API %s %s answered HTTP %d", method, path, status)
    return Unavailable(status, f"the Kubernetes API failed (HTTP {status})")
