"""The bench's ServiceAccount token issuer: discovery + JWKS on loopback, and one signed token.

Used by `bench.__main__` for the `jwt*` scenarios: the proxy trusts it as its cluster issuer
(LLMKEYS_KUBERNETES_ISSUER=<url>) and wrk sends the token as the Bearer key, so the scenarios
measure a keyless key against the static-key ones (`proxy*`) with everything else equal. Serves
from a thread of the bench process (a handful of requests at proxy start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from bench import processes

KID = "bench-1"
AUDIENCE = "llmkeys"


class BenchIssuer:
    """A Kubernetes-style ServiceAccount issuer with one RS256 key."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, object]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**public, "kid": KID, "alg": "RS256", "use": "sig"}]}

    def token(self, namespace: str, name: str, lifetime_s: int = 3600) -> str:
        """A projected ServiceAccount token for system:serviceaccount:<namespace>:<name>."""
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": [AUDIENCE],
            "exp": now + lifetime_s,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": str(uuid.uuid4())},
            },
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": KID})

    def app(self) -> web.Application:
        async def discovery(_: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/openid/v1/jwks"})

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/openid/v1/jwks", jwks)
        return app


@contextlib.contextmanager
def running_issuer() -> Iterator[BenchIssuer]:
    """Serve a BenchIssuer on a free loopback port until the block ends."""
    issuer = BenchIssuer(processes.free_port())
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        runner = web.AppRunner(issuer.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", issuer.port).start()
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the bench issuer did not start")
    try:
        yield issuer
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
