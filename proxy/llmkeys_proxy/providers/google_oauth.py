"""OAuth2 access tokens for Vertex AI minted from a service-account JSON; used by the Vertex adapter.

The JWT-bearer grant (RFC 7523) as Google documents it: an RS256-signed assertion is exchanged at
the key's `token_uri` for an access token, which is cached until its `expires_in` minus a margin
and refreshed by one request at a time. RS256 needs the `cryptography` package (the `vertex`
extra); it is imported only when a Vertex credential is used.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Assertion lifetime; Google accepts at most one hour.
ASSERTION_LIFETIME_S = 3600
#: Refresh this long before the token expires so no request carries a token that dies in flight.
REFRESH_MARGIN_S = 300


class TokenError(Exception):
    """The service account could not be used or the token endpoint refused it. The message never
    contains key material or tokens."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The fields of a service-account key file the token exchange needs."""

    client_email: str
    private_key_pem: str = dataclasses.field(repr=False)
    private_key_id: str | None = None
    token_uri: str = DEFAULT_TOKEN_URI
    project_id: str | None = None

    @classmethod
    def from_json(cls, text: str) -> ServiceAccount:
        """Parse a service-account key file; raises TokenError without echoing the content."""
        try:
            data = json.loads(text)
        except ValueError:
            raise TokenError("the Vertex AI credential is not JSON (want a service-account key)") from None
        if not isinstance(data, dict) or data.get("type", "service_account") != "service_account":
            raise TokenError("the Vertex AI credential is not a service-account key (type service_account)")
        email, key = data.get("client_email"), data.get("private_key")
        if not isinstance(email, str) or not isinstance(key, str):
            raise TokenError("the service-account key lacks client_email or private_key")
        token_uri = data.get("token_uri") or DEFAULT_TOKEN_URI
        key_id = data.get("private_key_id")
        project = data.get("project_id")
        return cls(
            client_email=email,
            private_key_pem=key,
            private_key_id=key_id if isinstance(key_id, str) else None,
            token_uri=str(token_uri),
            project_id=project if isinstance(project, str) else None,
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _rs256_signer(private_key_pem: str) -> Callable[[bytes], bytes]:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ImportError:  # pragma: no cover - depends on the installation
        raise TokenError(
            "Vertex AI service accounts need the 'cryptography' package: pip install 'llmkeys[vertex]'"
        ) from None
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise TokenError("the service-account private_key is not a readable PEM key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TokenError("the service-account private_key is not an RSA key")

    def sign(message: bytes) -> bytes:
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())

    return sign


def build_assertion(
    account: ServiceAccount,
    *,
    scope: str = CLOUD_PLATFORM_SCOPE,
    now: float | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """The signed JWT the token endpoint exchanges for an access token; `sign` is a signer made
    earlier for this account (loading the key is the slow part), else one is made now."""
    issued = int(time.time() if now is None else now)
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": account.token_uri,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_S,
    }
    signing_input = (
        f"{_b64url(json.dumps(header, separators=(',', ':')).encode())}."
        f"{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    )
    signer = sign if sign is not None else _rs256_signer(account.private_key_pem)
    signature = signer(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url(signature)}"


class AccessTokenSource:
    """Hands out a valid access token for one service account, minting a new one only when the
    cached one is within REFRESH_MARGIN_S of expiry. Concurrent callers share one refresh."""

    def __init__(
        self,
        account: ServiceAccount,
        *,
        scope: str = CLOUD_PLATFORM_SCOPE,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 30.0,
    ) -> None:
        self._account = account
        self._scope = scope
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self._sign: Callable[[bytes], bytes] | None = None

    def __repr__(self) -> str:
        return f"AccessTokenSource(client_email={self._account.client_email!r})"

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after the upstream answered 401 to it)."""
        self._token = None
        self._refresh_at = 0.0

    async def token(self, session: aiohttp.ClientSession) -> str:
        """A token valid for at least the refresh margin, minted through `session` when needed."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            token, expires_in = await self._mint(session)
            margin = min(REFRESH_MARGIN_S, expires_in / 10)
            self._token, self._refresh_at = token, self._clock() + expires_in - margin
            return token

    def _assertion(self, now: float) -> str:
        if self._sign is None:
            self._sign = _rs256_signer(self._account.private_key_pem)
        return build_assertion(self._account, scope=self._scope, now=now, sign=self._sign)

    async def _mint(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        # Loading the key (tens of ms, once) and signing (about a millisecond) are CPU work: off
        # the event loop, so requests in flight do not stall while a token is minted.
        assertion = await asyncio.to_thread(self._assertion, self._clock())
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        try:
            async with session.post(self._account.token_uri, data=form, timeout=self._timeout) as resp:
                status = resp.status
                payload: Any = await resp.json(content_type=None) if status < 500 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenError(f"token endpoint unreachable or unreadable: {type(exc).__name__}") from None
        if status != 200 or not isinstance(payload, dict):
            # Only OAuth's short error code (e.g. invalid_grant) is repeated: it never holds key material.
            reason = payload.get("error") if isinstance(payload, dict) else None
            code = reason if isinstance(reason, str) and reason.replace("_", "").isalpha() else ""
            raise TokenError(f"token endpoint refused the service account: HTTP {status} {code}".rstrip())
        token, expires_in = payload.get("access_token"), payload.get("expires_in", 3600)
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise TokenError("token endpoint answered without an access_token")
        return token, float(expires_in)
