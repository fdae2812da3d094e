"""OpenID Connect sign-in: authorization-code flow with PKCE, state and nonce, and ID-token checks.

Called by `app` (login and callback routes). The discovery document and the signing keys (JWKS)
come from the configured issuer; authlib builds the authorization request (PKCE S256) and performs
the token exchange with the client credentials; joserfc verifies the ID token's signature (only
asymmetric algorithms, keys from the issuer's JWKS) and its claims (iss, aud, exp, iat, nonce, and
azp when there are several audiences). Nothing here is a hand-written JWT check.

Errors are `SignInError` with a message a person can read; no token, code or secret is ever put
into a message or a log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import errors as jose_errors
from joserfc import jwk, jwt

from llmkeys_operator.portal import identity, settings

logger = logging.getLogger("llmkeys.portal.oidc")

#: Signature algorithms accepted for ID tokens: asymmetric only, so a token can never be "signed"
#: with something the portal knows (no HS256 with a public key as the secret).
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: Clock skew tolerated on exp/iat/nbf.
LEEWAY_S = 60
#: How long a sign-in may take between leaving for the IdP and coming back.
LOGIN_MAX_AGE_S = 600
#: Shortest pause between two JWKS refetches caused by an unknown key id.
_JWKS_REFRESH_S = 30.0


class SignInError(Exception):
    """Sign-in failed; the message is safe to show and to log."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The parts of the provider's discovery document the portal uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    algorithms: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class LoginTransaction:
    """What the portal keeps (encrypted, in a short-lived cookie) while the browser is at the IdP."""

    state: str
    nonce: str
    code_verifier: str = dataclasses.field(repr=False)
    next_path: str
    started_at: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoginTransaction | None:
        try:
            return cls(
                state=str(data["state"]),
                nonce=str(data["nonce"]),
                code_verifier=str(data["code_verifier"]),
                next_path=str(data["next_path"]),
                started_at=float(data["started_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class OidcClient:
    """The portal as an OIDC relying party (see module docstring)."""

    def __init__(self, config: settings.PortalSettings, *, timeout_s: float = 10.0) -> None:
        self._config = config
        self._http = AsyncOAuth2Client(
            client_id=config.oidc_client_id,
            client_secret=config.oidc_client_secret or None,
            token_endpoint_auth_method="client_secret_basic" if config.oidc_client_secret else "none",
            scope=" ".join(config.scopes),
            redirect_uri=config.redirect_uri,
            code_challenge_method="S256",
            timeout=timeout_s,
        )
        self._metadata: ProviderMetadata | None = None
        self._keys: jwk.KeySet | None = None
        self._keys_fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self._http.aclose()

    async def metadata(self) -> ProviderMetadata:
        """The provider's discovery document (fetched once, then cached)."""
        if self._metadata is not None:
            return self._metadata
        async with self._lock:
            if self._metadata is None:
                self._metadata = await self._discover()
        return self._metadata

    async def _discover(self) -> ProviderMetadata:
        url = self._config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url, "the provider's discovery document")
        issuer = document.get("issuer")
        if issuer != self._config.issuer:
            raise SignInError(
                "the provider's discovery document names another issuer than LLMKEYS_OIDC_ISSUER_URL"
            )
        try:
            advertised = document.get("id_token_signing_alg_values_supported") or ["RS256"]
            return ProviderMetadata(
                issuer=issuer,
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
                end_session_endpoint=document.get("end_session_endpoint"),
                algorithms=tuple(a for a in advertised if a in ASYMMETRIC_ALGORITHMS),
            )
        except KeyError as exc:
            raise SignInError(f"the provider's discovery document lacks {exc.args[0]}") from None

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.request("GET", url, withhold_token=True)
        except httpx.HTTPError as exc:
            raise SignInError(f"cannot reach {what}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SignInError(f"{what} answered HTTP {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise SignInError(f"{what} is not JSON") from None
        if not isinstance(document, dict):
            raise SignInError(f"{what} is not a JSON object")
        return document

    async def _key_set(self, refresh: bool) -> jwk.KeySet:
        now = time.monotonic()
        if self._keys is not None and not (refresh and now - self._keys_fetched_at > _JWKS_REFRESH_S):
            return self._keys
        meta = await self.metadata()
        document = await self._get_json(meta.jwks_uri, "the provider's signing keys (JWKS)")
        try:
            self._keys = jwk.KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (ValueError, jose_errors.JoseError):
            raise SignInError("the provider's signing keys (JWKS) cannot be read") from None
        self._keys_fetched_at = now
        return self._keys

    async def begin(self, next_path: str) -> tuple[str, LoginTransaction]:
        """The IdP URL to send the browser to, and the transaction to keep until it comes back."""
        meta = await self.metadata()
        txn = LoginTransaction(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),
            next_path=next_path,
            started_at=time.time(),
        )
        url, _ = self._http.create_authorization_url(
            meta.authorization_endpoint, state=txn.state, code_verifier=txn.code_verifier, nonce=txn.nonce
        )
        return str(url), txn

    async def finish(self, params: Mapping[str, str], txn: LoginTransaction) -> identity.Identity:
        """Check the callback against the transaction, redeem the code, validate the ID token."""
        if time.time() - txn.started_at > LOGIN_MAX_AGE_S:
            raise SignInError("the sign-in took too long; start again")
        if not secrets.compare_digest(params.get("state", ""), txn.state):
            raise SignInError("the sign-in response does not belong to this browser's sign-in (state)")
        if "error" in params:
            # Standard error codes only (no free text from the IdP in the page).
            error = params["error"] if params["error"].replace("_", "").isalnum() else "error"
            raise SignInError(f"the identity provider refused the sign-in ({error[:64]})")
        code = params.get("code")
        if not code:
            raise SignInError("the sign-in response carries no authorization code")
        meta = await self.metadata()
        try:
            token = await self._http.fetch_token(
                meta.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=txn.code_verifier,
            )
        except httpx.HTTPError as exc:
            raise SignInError(f"cannot reach the token endpoint: {type(exc).__name__}") from None
        except Exception as exc:  # authlib's OAuthError and friends: the error code, never the body
            raise SignInError(
                f"the token endpoint refused the code ({getattr(exc, 'error', 'error')})"
            ) from None
        id_token = token.get("id_token") if isinstance(token, Mapping) else None
        if not isinstance(id_token, str):
            raise SignInError("the token endpoint returned no ID token (is the openid scope allowed?)")
        claims = await self.validate_id_token(id_token, txn.nonce)
        try:
            return identity.from_claims(
                claims,
                username_claim=self._config.oidc_username_claim,
                username_prefix=self._config.oidc_username_prefix,
                groups_claim=self._config.oidc_groups_claim,
                groups_prefix=self._config.oidc_groups_prefix,
            )
        except identity.IdentityError as exc:
            raise SignInError(str(exc)) from None

    async def validate_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The claims of a valid ID token for this client and this sign-in; `SignInError` otherwise."""
        meta = await self.metadata()
        algorithms = list(meta.algorithms) or ["RS256"]
        token: jwt.Token | None = None
        for refresh in (False, True):  # a key rotation at the IdP: refetch the JWKS once
            keys = await self._key_set(refresh)
            try:
                token = jwt.decode(id_token, keys, algorithms=algorithms)
                break
            except (jose_errors.JoseError, ValueError) as exc:
                if refresh or not _maybe_unknown_key(exc):
                    raise SignInError(f"the ID token's signature is not valid ({_reason(exc)})") from None
        assert token is not None
        options: dict[str, jwt.ClaimsOption] = {
            "iss": {"essential": True, "value": meta.issuer},
            "aud": {"essential": True, "value": self._config.oidc_client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
            "nonce": {"essential": True, "value": nonce},
        }
        audience = token.claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1:
            # OIDC Core 3.1.3.7: with several audiences the token must be issued to us (azp).
            options["azp"] = {"essential": True, "value": self._config.oidc_client_id}
        try:
            jwt.JWTClaimsRegistry(None, LEEWAY_S, **options).validate(token.claims)
        except jose_errors.JoseError as exc:
            raise SignInError(f"the ID token is not valid for this sign-in ({_reason(exc)})") from None
        return dict(token.claims)

    async def end_session_url(self) -> str | None:
        """Where to send the browser to end the IdP session too (RP-initiated logout), if supported."""
        meta = await self.metadata()
        if not meta.end_session_endpoint:
            return None
        query = urlencode(
            {
                "client_id": self._config.oidc_client_id,
                "post_logout_redirect_uri": self._config.public_url + "/",
            }
        )
        separator = "&" if "?" in meta.end_session_endpoint else "?"
        return f"{meta.end_session_endpoint}{separator}{query}"


def _maybe_unknown_key(exc: Exception) -> bool:
    return "key" in str(exc).lower()


def _reason(exc: Exception) -> str:
    # joserfc errors name the claim or the failure (e.g. "invalid_claim: aud"); never the token.
    error = getattr(exc, "error", None) or type(exc).__name__
    description = getattr(exc, "description", "") or ""
    return f"{error}: {description}" if description else str(error)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a verifier (tests compare what the IdP received)."""
    return str(create_s256_code_challenge(verifier))
