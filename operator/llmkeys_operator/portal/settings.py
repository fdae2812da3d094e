"""Frozen settings of the portal, read from `LLMKEYS_*` environment variables (`server`, tests).

One env name per setting, shared with the Helm chart. The OIDC client secret and the session key
are kept out of `repr` (and so out of logs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from urllib.parse import urlsplit

from llmkeys_proxy import settings as proxy_settings

#: Shortest session key accepted (characters); it is stretched with HKDF into the cookie keys.
MIN_SESSION_KEY_CHARS = 32


@dataclasses.dataclass(frozen=True, slots=True)
class PortalSettings:
    """What one portal process needs to know; build with `from_env` or directly (tests)."""

    host: str = "0.0.0.0"
    #: Listening port of the portal.
    portal_port: int = 8090
    #: Base URL as browsers reach the portal (scheme, host, port; no path); the OIDC redirect
    #: URI is `<this>/callback`.
    portal_public_url: str = "http://127.0.0.1:8090"
    #: Issuer URL of the OpenID Connect provider (its discovery document lives below it).
    oidc_issuer_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = dataclasses.field(default="", repr=False)
    #: Space-separated scopes asked for at sign-in; `openid` is always included.
    oidc_scopes: str = "openid profile email"
    #: ID-token claim holding the username, and the prefix put before it, exactly as the API
    #: server's --oidc-username-claim / --oidc-username-prefix (so RBAC bindings match).
    oidc_username_claim: str = "email"
    oidc_username_prefix: str = ""
    #: ID-token claim holding the groups (a list of strings), and their prefix (--oidc-groups-*).
    oidc_groups_claim: str = "groups"
    oidc_groups_prefix: str = ""
    #: Secret that signs and encrypts session cookies (at least 32 characters; changing it signs
    #: everyone out).
    portal_session_key: str = dataclasses.field(default="", repr=False)
    #: Lifetime of a session from sign-in, in seconds (no sliding renewal).
    portal_session_max_age_s: int = 8 * 3600
    #: Send cookies with the Secure attribute; turn off only for plain-http local use.
    portal_cookie_secure: bool = True
    #: Namespaces the portal offers and lists keys in; empty lists keys cluster-wide (the user
    #: then needs cluster-wide list RBAC) and offers no namespace to create in.
    portal_namespaces: tuple[str, ...] = ()
    #: How long a reveal page waits for the operator to issue or rotate a key before it shows a
    #: "still waiting" page that reloads itself.
    portal_reveal_wait_s: float = 5.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> PortalSettings:
        """Settings from `LLMKEYS_*` variables; explicit `overrides` (command line) win."""
        values = proxy_settings.read_env(cls, environ, overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        urls = (
            ("LLMKEYS_PORTAL_PUBLIC_URL", self.portal_public_url),
            ("LLMKEYS_OIDC_ISSUER_URL", self.oidc_issuer_url),
        )
        for name, url in urls:
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
                raise ValueError(f"{name} must be an http:// or https:// URL")
        if not self.oidc_client_id:
            raise ValueError("LLMKEYS_OIDC_CLIENT_ID is required")
        if len(self.portal_session_key) < MIN_SESSION_KEY_CHARS:
            raise ValueError(
                f"LLMKEYS_PORTAL_SESSION_KEY must be at least {MIN_SESSION_KEY_CHARS} characters"
            )
        if self.portal_session_max_age_s <= 0:
            raise ValueError("LLMKEYS_PORTAL_SESSION_MAX_AGE_S must be positive")
        if self.portal_cookie_secure and not self.portal_public_url.startswith("https://"):
            raise ValueError(
                "LLMKEYS_PORTAL_COOKIE_SECURE is on but LLMKEYS_PORTAL_PUBLIC_URL is http://: browsers "
                "would drop the session cookie; serve the portal over https or turn Secure off for local use"
            )
        if not self.oidc_username_claim:
            raise ValueError("LLMKEYS_OIDC_USERNAME_CLAIM must name a claim")

    @property
    def public_url(self) -> str:
        return self.portal_public_url.rstrip("/")

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/callback"

    @property
    def public_origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def issuer(self) -> str:
        # Compared exactly (OIDC Discovery 4.3): some providers' issuers end in "/", most do not.
        return self.oidc_issuer_url

    @property
    def scopes(self) -> list[str]:
        scopes = self.oidc_scopes.split()
        return scopes if "openid" in scopes else ["openid", *scopes]
