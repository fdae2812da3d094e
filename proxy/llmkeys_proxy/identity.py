"""Workload identity tokens: verify JWTs from trusted issuers against their JWKS, with PyJWT.

Built by `app.create_app` from the settings (`TokenVerifier.from_settings`), started and closed by
the app's lifecycle, called by auth.py for a presented value shaped like a JWT. Trusted issuers are
gateway settings: the cluster's own ServiceAccount issuer (discovery and JWKS read from its API
server with the pod's CA and token; identities name it `kubernetes`) and external OIDC issuers
(discovery at `<issuer>/.well-known/openid-configuration`, JWKS from its `jwks_uri`).

Rules: RS256 and ES256 only (checked on the header before anything else, and PyJWT binds each
key to its own algorithm, so `none` and HS256-with-the-public-key never verify); `iss`, `sub`,
`aud`, `exp` and `iat` required; the audience must match; exp/nbf/iat with a small skew. Keys are
never taken from the token (`jku`, `x5u`, `jwk` headers are ignored): only from the configured
issuers' JWKS, fetched at start, refreshed in the background, refreshed early for an unknown `kid`
at most once per `min_refresh_interval_s` per issuer, and kept for `max_stale_s` while the issuer
cannot be reached. A verified token is cached until it expires, so a repeated token costs one
dictionary lookup; which key it may use is decided per request by auth.py from the current config,
so a removed binding stops working with the next config even for cached tokens. A refresh that
drops a key also drops the cached tokens it signed. Tokens are never logged. PyJWT (and
cryptography, ~9 MB and ~0.2 s) is imported only by a proxy that trusts an issuer, when its verifier
is built (`load_jose`), never on the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from llmkeys_proxy import config, errors, kubesource, settings

if TYPE_CHECKING:
    import jwt

logger = logging.getLogger("llmkeys.proxy.identity")

ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat")
#: Longest token looked at (a ServiceAccount token is ~1 KB, a GitHub Actions one ~1.5 KB).
MAX_TOKEN_BYTES = 16 * 1024
#: Largest discovery document or JWKS read from an issuer.
MAX_DOCUMENT_BYTES = 512 * 1024
#: Keys taken from one JWKS (more are ignored).
MAX_KEYS = 32
MIN_RSA_BITS = 2048
FETCH_TIMEOUT_S = 5.0
#: Verified tokens kept; when full, expired ones are dropped, then the oldest half.
VERIFIED_CACHE_LIMIT = 65_536
_SUBJECT_SHOWN = 200


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a verified token says about its caller (never the token itself)."""

    #: The issuer as identities name it: `kubernetes` for the cluster's issuer, else its URL.
    issuer: str
    subject: str
    claims: Mapping[str, Any]
    #: Unix time of `exp`.
    expires_at: float
    kid: str

    def describe(self) -> str:
        """Subject and issuer for an error message (bounded; both are public facts of the token)."""
        return f"'{self.subject[:_SUBJECT_SHOWN]}' (issuer {self.issuer})"


@dataclasses.dataclass(frozen=True)
class IssuerSource:
    """Where one trusted issuer's discovery document and JWKS are fetched from."""

    #: What identities call the issuer: `kubernetes`, or the issuer URL.
    name: str
    discovery_url: str
    #: The expected `iss`; None: learnt from the discovery document (the cluster's issuer).
    issuer: str | None
    #: None: the discovery document's `jwks_uri`.
    jwks_url: str | None
    ssl_context: ssl.SSLContext | bool = True
    #: Sends the pod's ServiceAccount token (re-read per fetch) to the API server.
    access: kubesource.ApiAccess | None = None

    @classmethod
    def kubernetes(cls, access: kubesource.ApiAccess) -> IssuerSource:
        """The cluster's ServiceAccount issuer, read from the API server (the built-in role
        system:service-account-issuer-discovery allows it)."""
        base = access.server.rstrip("/")
        return cls(
            name=config.KUBERNETES_ISSUER,
            discovery_url=f"{base}/.well-known/openid-configuration",
            issuer=None,
            jwks_url=f"{base}/openid/v1/jwks",
            ssl_context=access.ssl_context(),
            access=access,
        )

    @classmethod
    def oidc(cls, issuer: str, ca_file: str | None = None) -> IssuerSource:
        """An external OpenID Connect issuer (a CI system, a cloud, another cluster)."""
        context: ssl.SSLContext | bool = True
        if issuer.startswith("https://"):
            context = ssl.create_default_context()
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
        return cls(
            name=issuer,
            discovery_url=issuer.rstrip("/") + "/.well-known/openid-configuration",
            issuer=issuer,
            jwks_url=None,
            ssl_context=context,
        )

    def headers(self) -> dict[str, str]:
        if self.access is not None:
            return self.access.headers()
        return {"Accept": "application/json"}


def sources_from_settings(proxy_settings: settings.ProxySettings) -> list[IssuerSource]:
    """The trusted issuers LLMKEYS_KUBERNETES_ISSUER and LLMKEYS_TRUSTED_ISSUERS name."""
    found: list[IssuerSource] = []
    kubernetes = proxy_settings.kubernetes_issuer
    account = kubesource.SERVICE_ACCOUNT_DIR
    token_file = account / "token"
    if kubernetes == "auto":
        if os.environ.get("KUBERNETES_SERVICE_HOST") and token_file.exists():
            found.append(IssuerSource.kubernetes(kubesource.ApiAccess.in_cluster()))
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            logger.warning("no ServiceAccount token in the pod: ServiceAccount identities are not accepted")
    elif kubernetes != "off":
        ca = account / "ca.crt"
        access = kubesource.ApiAccess(
            server=kubernetes,
            token_file=str(token_file) if token_file.exists() else None,
            ca_file=str(ca) if ca.exists() and kubernetes.startswith("https://") else None,
        )
        found.append(IssuerSource.kubernetes(access))
    found += [IssuerSource.oidc(url, proxy_settings.issuer_ca_file) for url in proxy_settings.trusted_issuers]
    return found


class IssuerFetchError(Exception):
    """An issuer's document could not be fetched or is unusable (the message has no body text)."""


@dataclasses.dataclass(eq=False)
class _Issuer:
    source: IssuerSource
    issuer: str | None
    jwks_url: str | None
    #: kid -> key ("" for a key without kid).
    keys: dict[str, jwt.PyJWK] = dataclasses.field(default_factory=dict)
    #: time.monotonic() of the last successful JWKS fetch, and of the last attempt.
    fetched_at: float | None = None
    attempted_at: float | None = None
    last_error: str | None = None
    fetches: int = 0
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class TokenVerifier:
    """Verifies tokens of the configured issuers (see the module docstring)."""

    def __init__(
        self,
        sources: list[IssuerSource],
        *,
        audience: str = "llmkeys",
        skew_s: float = 30.0,
        refresh_interval_s: float = 300.0,
        min_refresh_interval_s: float = 10.0,
        max_stale_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        load_jose()
        self.audience = audience
        self.skew_s = skew_s
        self.refresh_interval_s = refresh_interval_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.max_stale_s = max_stale_s
        self._clock = clock
        self._issuers = [_Issuer(source, source.issuer, source.jwks_url) for source in sources]
        #: Expected `iss` -> issuer, for the issuers whose `iss` is known.
        self._by_iss: dict[str, _Issuer] = {}
        for state in self._issuers:
            if state.issuer is not None:
                self._register(state)
        self._verified: dict[str, VerifiedToken] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, proxy_settings: settings.ProxySettings) -> TokenVerifier | None:
        """The verifier of the configured issuers; None when no issuer is trusted."""
        sources = sources_from_settings(proxy_settings)
        if not sources:
            return None
        return cls(
            sources,
            audience=proxy_settings.token_audience,
            skew_s=proxy_settings.token_clock_skew_s,
            refresh_interval_s=proxy_settings.jwks_refresh_interval_s,
            min_refresh_interval_s=proxy_settings.jwks_min_refresh_interval_s,
            max_stale_s=proxy_settings.jwks_max_stale_s,
        )

    # ---------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Fetch every issuer's keys in the background, then keep them fresh."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S), raise_for_status=False
        )
        self._task = asyncio.create_task(self._refresh_loop(), name="llmkeys-jwks-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._refresh(state) for state in self._issuers))
            await asyncio.sleep(self.refresh_interval_s)

    def status(self) -> list[dict[str, object]]:
        """Per issuer: name, iss, keys held, seconds since the last good fetch, last error (/readyz)."""
        now = time.monotonic()
        return [
            {
                "name": state.source.name,
                "issuer": state.issuer,
                "keys": len(state.keys),
                "age_s": None if state.fetched_at is None else round(now - state.fetched_at, 1),
                "error": state.last_error,
            }
            for state in self._issuers
        ]

    def fetches(self, name: str) -> int:
        """JWKS fetches attempted for the issuer called `name` (tests, bench)."""
        return sum(state.fetches for state in self._issuers if state.source.name == name)

    # ---------------------------------------------------------------------------------- verifying

    def cached(self, token: str) -> VerifiedToken | None:
        """The verified token if it was verified before and has not expired (the hot path)."""
        hit = self._verified.get(token)
        if hit is None:
            return None
        if self._clock() >= hit.expires_at + self.skew_s:
            self._verified.pop(token, None)
            return None
        return hit

    async def verify(self, token: str) -> VerifiedToken:
        """Verify `token` (or find it cached); raises ProxyError with a stable token_* code."""
        import jwt

        hit = self.cached(token)
        if hit is not None:
            return hit
        if len(token) > MAX_TOKEN_BYTES:
            raise _refused("token_invalid", "The token is too long.")
        try:
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise _refused("token_invalid", "The token is not a well-formed JWT.") from None
        header = unverified["header"]
        payload = unverified["payload"]
        alg = header.get("alg") if isinstance(header, dict) else None
        if alg not in ALGORITHMS:
            raise _refused(
                "token_algorithm_not_allowed",
                f"Token algorithm {str(alg)[:16]!r} is not accepted; use RS256 or ES256.",
            )
        iss = payload.get("iss") if isinstance(payload, dict) else None
        if not isinstance(iss, str) or not iss:
            raise _refused("token_invalid", "The token has no issuer (iss).")
        state = await self._issuer_of(iss)
        if state is None:
            raise _refused("token_issuer_untrusted", f"Tokens of issuer {iss[:200]!r} are not trusted here.")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refused("token_invalid", "The token's kid is not a string.")
        key = await self._key(state, kid or "")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=state.issuer,
                leeway=self.skew_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("token_expired", "The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise _refused("token_not_yet_valid", "The token is not valid yet (nbf or iat).") from None
        except jwt.InvalidAudienceError:
            raise _refused(
                "token_audience_invalid", f"The token's audience must include {self.audience!r}."
            ) from None
        except jwt.InvalidAlgorithmError:
            raise _refused("token_algorithm_not_allowed", "The token's alg does not match its key.") from None
        except jwt.InvalidSignatureError:
            raise _refused("token_signature_invalid", "The token's signature does not verify.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refused("token_invalid", f"The token has no {exc.claim} claim.") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise _refused("token_invalid", "The token is not valid.") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _refused("token_invalid", "The token's subject (sub) is not a string.")
        verified = VerifiedToken(
            issuer=state.source.name,
            subject=subject,
            claims=claims,
            expires_at=float(claims["exp"]),  # an integer: PyJWT checked it
            kid=kid or "",
        )
        self._remember(token, verified)
        return verified

    def _remember(self, token: str, verified: VerifiedToken) -> None:
        if len(self._verified) >= VERIFIED_CACHE_LIMIT:
            now = self._clock()
            for stale in [t for t, v in self._verified.items() if now >= v.expires_at + self.skew_s]:
                del self._verified[stale]
            if len(self._verified) >= VERIFIED_CACHE_LIMIT:
                for oldest in list(self._verified)[: VERIFIED_CACHE_LIMIT // 2]:
                    del self._verified[oldest]
        self._verified[token] = verified

    async def _issuer_of(self, iss: str) -> _Issuer | None:
        state = self._by_iss.get(iss)
        if state is not None:
            return state
        # The cluster's `iss` is learnt from its discovery document: look (rate-limited) if not yet.
        pending = [s for s in self._issuers if s.issuer is None]
        if not pending:
            return None
        await asyncio.gather(*(self._refresh(s) for s in pending))
        state = self._by_iss.get(iss)
        if state is None and any(s.issuer is None for s in pending):
            # Cannot tell whether the token is the cluster's until its issuer answers.
            raise self._unavailable(pending[0])
        return state

    async def _key(self, state: _Issuer, kid: str) -> jwt.PyJWK:
        if not self._usable(state):
            await self._refresh(state)
            if not self._usable(state):
                raise self._unavailable(state)
        key = self._pick(state, kid)
        if key is None:
            await self._refresh(state)  # a rotated key; at most once per min_refresh_interval_s
            key = self._pick(state, kid) if self._usable(state) else None
        if key is None:
            raise _refused(
                "token_unknown_kid", f"No key of issuer {state.source.name!r} has the token's kid."
            )
        return key

    def _unavailable(self, state: _Issuer) -> errors.ProxyError:
        return errors.ProxyError(
            "token_issuer_unavailable",
            f"The keys of issuer {state.source.name!r} cannot be fetched right now; retry shortly.",
            headers={"Retry-After": str(max(1, round(self.min_refresh_interval_s)))},
        )

    def _usable(self, state: _Issuer) -> bool:
        return state.fetched_at is not None and time.monotonic() - state.fetched_at <= self.max_stale_s

    @staticmethod
    def _pick(state: _Issuer, kid: str) -> jwt.PyJWK | None:
        key = state.keys.get(kid)
        if key is None and not kid and len(state.keys) == 1:
            key = next(iter(state.keys.values()))  # an issuer with one key may omit kid
        return key

    # ---------------------------------------------------------------------------------- fetching

    async def _refresh(self, state: _Issuer) -> None:
        """Fetch discovery (when needed) and the JWKS, unless one was attempted too recently."""
        async with state.lock:
            now = time.monotonic()
            if state.attempted_at is not None and now - state.attempted_at < self.min_refresh_interval_s:
                return
            state.attempted_at = now
            state.fetches += 1
            try:
                if state.issuer is None or state.jwks_url is None:
                    await self._discover(state)
                assert state.jwks_url is not None
                keys = parse_jwks(await self._get_json(state.source, state.jwks_url))
            except (IssuerFetchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = str(exc) if isinstance(exc, IssuerFetchError) else type(exc).__name__
                if state.last_error != reason:
                    logger.warning("issuer %s: cannot refresh its keys: %s", state.source.name, reason)
                state.last_error = reason
                return
            removed = set(state.keys) - set(keys)
            if removed and state.keys:
                self._forget_tokens(state.source.name, removed)
            if set(keys) != set(state.keys):
                logger.info("issuer %s: %d signing key(s)", state.source.name, len(keys))
            state.keys = keys
            state.fetched_at = time.monotonic()
            state.last_error = None

    async def _discover(self, state: _Issuer) -> None:
        source = state.source
        document = await self._get_json(source, source.discovery_url)
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise IssuerFetchError("discovery document without issuer")
        if source.issuer is not None and issuer != source.issuer:
            raise IssuerFetchError(f"discovery document names issuer {issuer[:200]!r}, not {source.issuer!r}")
        jwks_url = source.jwks_url or document.get("jwks_uri")
        if not isinstance(jwks_url, str) or not settings.is_secure_url(jwks_url):
            raise IssuerFetchError("discovery document without an https jwks_uri")
        state.issuer = issuer
        state.jwks_url = jwks_url
        self._register(state)

    def _register(self, state: _Issuer) -> None:
        assert state.issuer is not None
        other = self._by_iss.get(state.issuer)
        if other is not None and other is not state:
            if other.source.name == config.KUBERNETES_ISSUER:
                return  # the cluster's issuer keeps its name: its accounts stay namespaced
            logger.warning(
                "issuer %s is the cluster's own ServiceAccount issuer: its tokens map to identities of "
                "issuer %s",
                state.issuer,
                config.KUBERNETES_ISSUER,
            )
        self._by_iss[state.issuer] = state

    def _forget_tokens(self, issuer_name: str, kids: set[str]) -> None:
        for token in [t for t, v in self._verified.items() if v.issuer == issuer_name and v.kid in kids]:
            del self._verified[token]

    async def _get_json(self, source: IssuerSource, url: str) -> dict[str, Any]:
        if self._session is None:
            raise IssuerFetchError("the verifier is not started")
        async with self._session.get(
            url, headers=source.headers(), ssl=source.ssl_context, allow_redirects=False
        ) as response:
            if response.status != 200:
                raise IssuerFetchError(f"{url} answered HTTP {response.status}")
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise IssuerFetchError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise IssuerFetchError(f"{url}: not JSON") from None
        if not isinstance(document, dict):
            raise IssuerFetchError(f"{url}: not a JSON object")
        return document


def parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS (RS256 with >= 2048 bits, ES256), by kid."""
    import jwt

    entries = document.get("keys")
    if not isinstance(entries, list):
        raise IssuerFetchError("JWKS without a keys list")
    found: dict[str, jwt.PyJWK] = {}
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("alg") is not None and entry.get("alg") not in ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if key.algorithm_name not in ALGORITHMS:
            continue
        if key.algorithm_name == "RS256" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
            continue
        kid = entry.get("kid")
        found[kid if isinstance(kid, str) else ""] = key
    return found


def load_jose() -> None:
    """Import PyJWT (and cryptography) now: verifiers call it when built, before serving, and the
    proxy's master process before forking workers so they share the pages."""
    importlib.import_module("jwt")


def _refused(code: str, message: str) -> errors.ProxyError:
    return errors.ProxyError(code, message)
