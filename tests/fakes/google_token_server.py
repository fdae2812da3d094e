"""A fake Google OAuth2 token endpoint (JWT-bearer grant) for Vertex AI tests, plus test service accounts.

POST /token takes `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`, checks
the RS256 signature against the service account's public key and the claims Google checks (aud =
this token URI, iss, scope, iat/exp), and issues an opaque access token with `expires_in`. The
Vertex fake accepts exactly the tokens issued here (and not yet expired by `revoke`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclasses.dataclass(frozen=True)
class TestServiceAccount:
    """A freshly generated service account: its key file (JSON) and the public key to verify with."""

    client_email: str
    key_json: str
    public_key: rsa.RSAPublicKey


def make_service_account(
    token_uri: str, *, email: str = "llmkeys-test@proj.iam.gserviceaccount.com"
) -> TestServiceAccount:
    """A service-account key file in Google's format, pointing at `token_uri`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_file = {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return TestServiceAccount(email, json.dumps(key_file), key.public_key())


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclasses.dataclass
class FakeGoogleToken:
    """The token endpoint. Register accounts with `accounts[email] = public_key`; set `token_uri` to
    the URL the server is reachable at (the `aud` claim must equal it)."""

    token_uri: str = ""
    expires_in: int = 3599
    accounts: dict[str, rsa.RSAPublicKey] = dataclasses.field(default_factory=dict)
    #: Every access token issued, oldest first.
    issued: list[str] = dataclasses.field(default_factory=list)
    #: Decoded claims of every accepted assertion.
    assertions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    revoked: set[str] = dataclasses.field(default_factory=set)
    #: The time the iat/exp claims are checked against (tests share a fake clock with the client).
    clock: Callable[[], float] = time.time

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        return app

    def valid(self, token: str) -> bool:
        """Whether the Vertex fake should accept `token`."""
        return token in self.issued and token not in self.revoked

    def _refuse(self, error: str, description: str, status: int = 400) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return self._refuse("unsupported_grant_type", "Invalid grant_type")
        assertion = form.get("assertion")
        if not isinstance(assertion, str) or assertion.count(".") != 2:
            return self._refuse("invalid_request", "Invalid assertion")
        head_b64, claims_b64, signature_b64 = assertion.split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        if header.get("alg") != "RS256":
            return self._refuse("invalid_grant", "Invalid JWT: alg")
        public_key = self.accounts.get(claims.get("iss", ""))
        if public_key is None:
            return self._refuse("invalid_grant", "Invalid JWT Signature.")
        try:
            public_key.verify(
                _b64url_decode(signature_b64),
                f"{head_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return self._refuse("invalid_grant", "Invalid JWT Signature.")
        now = self.clock()
        if claims.get("aud") != self.token_uri:
            return self._refuse("invalid_grant", "Invalid JWT: aud")
        if not claims.get("scope"):
            return self._refuse("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        iat, exp = claims.get("iat", 0), claims.get("exp", 0)
        if not (iat - 300 <= now <= exp + 300) or exp - iat > 3600:
            return self._refuse("invalid_grant", "Invalid JWT: Token must be a short-lived token")
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.issued.append(token)
        self.assertions.append(claims)
        return web.json_response(
            {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )
