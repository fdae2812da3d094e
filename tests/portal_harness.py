"""Real parts for the portal tests: an OpenID Connect provider on loopback, an emulated cluster that
records who each request impersonates, the portal itself on a free port, and an HTTP sign-in.

Used by tests/portal/. The provider is the `oidc-provider-mock` package (authlib-based, a real
authorization server with JWKS, discovery and RS256 ID tokens) served by werkzeug on 127.0.0.1;
a WSGI wrapper records the authorization and token requests it receives (to check PKCE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import aiohttp.web
import kmock
import oidc_provider_mock
import werkzeug.serving
from tests import kmock_cluster as kc

from llmkeys_operator.portal import app as portal_app
from llmkeys_operator.portal import kubeapi, oidc, settings

CLIENT_ID = "llmkeys-portal"
CLIENT_SECRET = "portal-client-secret-for-tests"
SESSION_KEY = "a-session-key-of-at-least-32-characters!"
NAMESPACES = ("team-a", "team-b")

#: The people of the tests: sub -> claims (the username claim is email).
USERS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "email_verified": True, "groups": ["developers", "team-a"]},
    "bob": {"email": "bob@example.com", "email_verified": True, "groups": ["developers"]},
    "carol": {"email": "carol@example.com", "email_verified": True, "groups": ["approvers"]},
    "dana": {"email": "dana@example.com", "email_verified": True, "groups": ["platform-admins"]},
}


@dataclasses.dataclass
class IdentityProvider:
    url: str
    #: Query parameters of every authorization request, and form fields of every token request.
    authorizations: list[dict[str, str]]
    token_requests: list[dict[str, str]]


class _Recorder:
    def __init__(self, app: Any, provider: IdentityProvider) -> None:
        self._app = app
        self._provider = provider

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/oauth2/authorize":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            self._provider.authorizations.append({k: v[0] for k, v in query.items()})
        if path == "/oauth2/token":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            self._provider.token_requests.append({k: v[0] for k, v in parse_qs(body.decode()).items()})
        return self._app(environ, start_response)


@contextlib.contextmanager
def identity_provider() -> Iterator[IdentityProvider]:
    """The OpenID Connect provider on 127.0.0.1 (nonce required, the test users predefined)."""
    flask_app = oidc_provider_mock.app(
        require_nonce=True,
        user_claims=[oidc_provider_mock.User(sub=sub, claims=claims) for sub, claims in USERS.items()],
    )
    provider = IdentityProvider(url="", authorizations=[], token_requests=[])
    server = werkzeug.serving.make_server("127.0.0.1", 0, _Recorder(flask_app, provider), threaded=True)
    provider.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@dataclasses.dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    agent: str
    user: str | None
    groups: tuple[str, ...]


class RecordingEmulator(kc.LlmkeysKubernetesEmulator):
    """The emulated API server (which ignores impersonation) recording each request's impersonation
    headers, so tests can check the portal sends exactly the signed-in identity."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.seen: list[SeenRequest] = []

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.seen.append(
            SeenRequest(
                method=raw_request.method,
                path=raw_request.path,
                agent=raw_request.headers.get("User-Agent", ""),
                user=raw_request.headers.get("Impersonate-User"),
                groups=tuple(raw_request.headers.getall("Impersonate-Group", [])),
            )
        )
        return await super().__call__(raw_request)

    def seen_by_portal(self) -> list[SeenRequest]:
        """Requests that came from the portal (by its User-Agent) or impersonate anyone."""
        return [r for r in self.seen if r.agent == kubeapi.USER_AGENT or r.user is not None or r.groups]


@contextlib.asynccontextmanager
async def recording_cluster() -> AsyncIterator[RecordingEmulator]:
    async with RecordingEmulator() as emulator, kmock.Server(emulator):
        kc.declare_resources(emulator)
        for namespace in (*NAMESPACES, kc.GATEWAY_NAMESPACE):
            await emulator.set_namespace(namespace)
        yield emulator
        errors = [e for e in emulator.errors if not isinstance(e, kmock.KubernetesError) or e.status >= 500]
    assert not errors, f"the emulator failed on requests: {errors!r}"


def portal_settings(idp: IdentityProvider, port: int, **overrides: Any) -> settings.PortalSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "portal_port": port,
        "portal_public_url": f"http://127.0.0.1:{port}",
        "oidc_issuer_url": idp.url,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": CLIENT_SECRET,
        "oidc_scopes": "openid email",
        "oidc_username_claim": "email",
        "oidc_groups_claim": "groups",
        "oidc_groups_prefix": "oidc:",
        "portal_session_key": SESSION_KEY,
        "portal_cookie_secure": False,
        "portal_namespaces": NAMESPACES,
        "portal_reveal_wait_s": 3.0,
        **overrides,
    }
    config = settings.PortalSettings(**values)
    config.validate()
    return config


@dataclasses.dataclass
class Portal:
    url: str
    config: settings.PortalSettings
    app: aiohttp.web.Application


@contextlib.asynccontextmanager
async def run_portal(config: settings.PortalSettings, kube_url: str) -> AsyncIterator[Portal]:
    """The portal app on its configured loopback port, logged in to the emulator at `kube_url`."""

    async def connect() -> Any:
        return kc.kopf_login(kube_url)

    application = portal_app.create_app(config, kubeapi.KubeAsUser(connect), oidc.OidcClient(config))
    runner = aiohttp.web.AppRunner(application, access_log_class=portal_app.AccessLogger)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, config.host, config.portal_port)
    await site.start()
    try:
        yield Portal(url=config.public_url, config=config, app=application)
    finally:
        await runner.cleanup()


async def sign_in(
    session: aiohttp.ClientSession, portal_url: str, sub: str, next_path: str = "/"
) -> aiohttp.ClientResponse:
    """Sign in over plain HTTP as a browser would (the IdP's form answered for `sub`); returns the
    portal's answer to the callback (not followed)."""
    async with session.get(f"{portal_url}/login", params={"next": next_path}, allow_redirects=False) as resp:
        assert resp.status == 302, resp.status
        authorize = resp.headers["Location"]
    async with session.post(authorize, data={"sub": sub}, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        back = resp.headers["Location"]
    assert urlsplit(back).path == "/callback"
    async with session.get(back, allow_redirects=False) as resp:
        await resp.read()
        return resp


def cookie_session() -> aiohttp.ClientSession:
    # unsafe: keep cookies of IP-address hosts (the portal runs on 127.0.0.1).
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def csrf_of(session: aiohttp.ClientSession, url: str) -> str:
    """The CSRF token embedded in a portal page's forms."""
    async with session.get(url) as resp:
        html = await resp.text()
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)
