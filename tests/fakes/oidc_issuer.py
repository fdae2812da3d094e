"""A token issuer on loopback in the real wire format: OIDC discovery, JWKS, and tokens it mints.

Used by the keyless tests (tests/integration/test_keyless_*.py) and the bench. It speaks what a
Kubernetes API server serves for its ServiceAccount issuer (`/.well-known/openid-configuration`
and `/openid/v1/jwks`, optionally only to a bearer token) and what an external OIDC issuer such as
GitHub Actions serves. Tokens are signed here with `cryptography` directly (RS256: PKCS#1 v1.5
SHA-256; ES256: raw r||s as JWS requires), not with the library the proxy verifies with, so the
two sides only meet in the wire format. It can rotate its keys, mint broken tokens on purpose and
go down (stop) and come back on the same port.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import socket
import ssl
import time
import uuid
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, length: int | None = None) -> bytes:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


@dataclasses.dataclass
class IssuerKey:
    kid: str
    private: SigningKey

    @property
    def alg(self) -> str:
        return "RS256" if isinstance(self.private, rsa.RSAPrivateKey) else "ES256"

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 7517/7518), as Kubernetes and GitHub publish them."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            numbers = self.private.public_key().public_numbers()
            return {
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": self.kid,
                "n": b64url(_int_bytes(numbers.n)),
                "e": b64url(_int_bytes(numbers.e)),
            }
        point = self.private.public_key().public_numbers()
        return {
            "kty": "EC",
            "use": "sig",
            "alg": "ES256",
            "kid": self.kid,
            "crv": "P-256",
            "x": b64url(_int_bytes(point.x, 32)),
            "y": b64url(_int_bytes(point.y, 32)),
        }

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, signing_input: bytes) -> bytes:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return _int_bytes(r, 32) + _int_bytes(s, 32)


def rsa_key(kid: str) -> IssuerKey:
    return IssuerKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> IssuerKey:
    return IssuerKey(kid, ec.generate_private_key(ec.SECP256R1()))


def encode(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(signature)}"


class OidcIssuer:
    """See the module docstring. `url` is known once started (`issuer` defaults to it)."""

    def __init__(
        self,
        *,
        keys: list[IssuerKey] | None = None,
        required_bearer: str | None = None,
        issuer: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.keys = keys if keys is not None else [rsa_key("rsa-1"), ec_key("ec-1")]
        self.required_bearer = required_bearer
        self._issuer = issuer
        self._ssl = ssl_context
        self.requests: dict[str, int] = {"discovery": 0, "jwks": 0, "refused": 0}
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------------------ serving

    @property
    def url(self) -> str:
        assert self.port is not None, "start() first"
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self._issuer or self.url

    def _authorised(self, request: web.Request) -> bool:
        if self.required_bearer is None:
            return True
        if request.headers.get("Authorization") == f"Bearer {self.required_bearer}":
            return True
        self.requests["refused"] += 1
        return False

    async def _discovery(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        self.requests["discovery"] += 1
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": f"{self.url}/openid/v1/jwks",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        self.requests["jwks"] += 1
        return web.Response(
            body=json.dumps({"keys": [key.jwk() for key in self.keys]}),
            content_type="application/jwk-set+json",
        )

    async def start(self) -> OidcIssuer:
        """Serve on a free port (or the port it had, after a stop)."""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/openid/v1/jwks", self._jwks)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port or 0))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self._ssl).start()
        return self

    async def stop(self) -> None:
        """Go down: connections are refused until `start()` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------------------ minting

    def rotate(self, new: IssuerKey, *, keep_old: bool = False) -> None:
        """Publish `new`; drop the old keys unless `keep_old`."""
        self.keys = [*self.keys, new] if keep_old else [new]

    def mint(
        self,
        claims: dict[str, Any],
        *,
        key: IssuerKey | None = None,
        kid: str | None = None,
        alg: str | None = None,
        header: dict[str, Any] | None = None,
    ) -> str:
        """A signed token: `claims` as the payload, signed by `key` (default: the first key)."""
        signer = key or self.keys[0]
        head = {"alg": alg or signer.alg, "typ": "JWT", "kid": kid if kid is not None else signer.kid}
        head.update(header or {})
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}".encode(
            "ascii"
        )
        return f"{signing_input.decode()}.{b64url(signer.sign(signing_input))}"

    def claims(
        self, subject: str, *, audience: str | list[str] = "llmkeys", lifetime_s: int = 3600, **extra: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience if isinstance(audience, list) else [audience],
            "exp": now + lifetime_s,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            **extra,
        }

    def service_account_token(
        self, namespace: str, name: str, *, audience: str = "llmkeys", lifetime_s: int = 3600, **kwargs: Any
    ) -> str:
        """A projected ServiceAccount token as the kubelet gets it from the API server."""
        claims = self.claims(
            f"system:serviceaccount:{namespace}:{name}",
            audience=audience,
            lifetime_s=lifetime_s,
            **{
                "kubernetes.io": {
                    "namespace": namespace,
                    "serviceaccount": {"name": name, "uid": str(uuid.uuid4())},
                    "pod": {"name": f"{name}-5d9c7f-abcde", "uid": str(uuid.uuid4())},
                }
            },
        )
        return self.mint(claims, **kwargs)


def unsigned_token(claims: dict[str, Any]) -> str:
    """`alg: none` (RFC 7519 unsecured JWT): no signature at all."""
    return encode({"alg": "none", "typ": "JWT"}, claims, b"")


def hs256_token(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """The classic confusion attack: HMAC-SHA256 keyed with the issuer's public key PEM."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"
