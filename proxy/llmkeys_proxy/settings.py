"""Frozen runtime settings of the proxy, read from `LLMKEYS_*` environment variables (server.py, serve mode).

Every setting has one env name; the Helm chart, the operator and `llmkeys serve` use the same names.
Secrets (the Redis URL may carry a password) are kept out of `repr`.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

ConfigSourceKind = Literal["kubernetes", "directory"]

ENV_PREFIX = "LLMKEYS_"


@dataclasses.dataclass(frozen=True, slots=True)
class ProxySettings:
    """What one proxy process needs to know; build with `from_env` or directly (tests, standalone)."""

    host: str = "0.0.0.0"
    port: int = 8080
    #: Processes sharing the port through SO_REUSEPORT.
    workers: int = 1
    config_source: ConfigSourceKind = "directory"
    config_dir: str | None = None
    #: Gateway namespace holding the config Secrets (kubernetes source).
    namespace: str = "llmkeys"
    #: redis:// or rediss:// (user:password allowed); empty = in-process limiter.
    redis_url: str = dataclasses.field(default="", repr=False)
    #: Overrides the password of `redis_url` when set.
    redis_password: str | None = dataclasses.field(default=None, repr=False)
    log_level: str = "INFO"
    #: Upstream inactivity timeout: time to response headers and between streamed chunks.
    upstream_timeout_s: float = 600.0
    upstream_connect_timeout_s: float = 10.0
    #: Total deadline of a non-streamed upstream response (headers and whole body): a provider
    #: trickling bytes cannot hold a request (and its reservation) longer.
    upstream_response_timeout_s: float = 600.0
    #: Largest upstream response body read whole, counted after decompression (a small gzip body
    #: can unpack to gigabytes); above it: 502 upstream_response_too_large.
    max_upstream_response_bytes: int = 64 * 1024 * 1024
    #: A new connection must send its first request head within this (slow-header clients).
    header_timeout_s: float = 10.0
    #: A connection with no request in progress is closed after this (silent and idle clients).
    idle_timeout_s: float = 75.0
    #: A request body must arrive whole within this (slow-body clients): 408 request_timeout.
    body_timeout_s: float = 60.0
    #: How long a reservation holds budget if its proxy dies before settling it. At least the
    #: non-streamed deadline (a live request must not lose its reservation).
    reservation_ttl_s: float = 900.0
    #: Bearer token /metrics requires (empty: /metrics is open; the chart sets one).
    metrics_token: str = dataclasses.field(default="", repr=False)
    max_body_bytes: int = 10 * 1024 * 1024
    #: Poll interval of the directory config source.
    reload_interval_s: float = 0.5
    #: How long a graceful shutdown waits for in-flight requests.
    shutdown_timeout_s: float = 30.0
    #: Pooled upstream connections per provider credential.
    upstream_connections: int = 256
    #: tiktoken encodings built before the proxy reports ready (comma list, or `none`). Building one
    #: on first use stalls the event loop ~0.2 s for every request in flight; preloaded, it costs
    #: ~41 MB per process (shared by forked workers). cl100k_base serves only older models.
    preload_encodings: str = "o200k_base"
    #: PEM certificate chain and key of the proxy's own TLS listener (both or neither; unset: plain
    #: HTTP). Rotated files are picked up without a restart.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: Audit sinks records go to (comma list of stdout, file, otlp; `none` for no sink).
    audit_sinks: tuple[str, ...] = ("stdout",)
    #: Records each sink may hold in memory when it falls behind; more are dropped and counted.
    audit_queue_size: int = 10_000
    #: Directory of the hash-chained audit files (the `file` sink).
    audit_file_dir: str | None = None
    #: This process's chain in the directory (workers add -w<N>; replicas should set their pod name).
    audit_file_stream: str = "proxy"
    #: A file is rotated when it would grow past this size (and at each UTC day).
    audit_file_max_bytes: int = 64 * 1024 * 1024
    #: Days files are kept when their records name no longer retention (a key's retainDays).
    audit_file_retain_days: int = 90
    #: Bytes of request and response body kept per record at level `content`.
    audit_content_max_bytes: int = 16 * 1024
    #: Seconds between reads of the month usage of capped keys and pools for the remaining-budget
    #: gauges on /metrics (0: no such gauges).
    budget_metrics_interval_s: float = 30.0
    #: The cluster's ServiceAccount issuer (keyless keys' `serviceAccount` identities): `auto` (the
    #: cluster the proxy runs in, if any: discovery and JWKS from its API server with the pod's CA
    #: and token), `off`, or the API server's base URL.
    kubernetes_issuer: str = "auto"
    #: External OIDC issuers whose tokens are accepted (comma list of issuer URLs, e.g.
    #: https://token.actions.githubusercontent.com): discovery at <issuer>/.well-known/openid-configuration.
    trusted_issuers: tuple[str, ...] = ()
    #: Extra CA bundle (PEM) for fetching external issuers' discovery documents and JWKS.
    issuer_ca_file: str | None = None
    #: The `aud` every token must carry.
    token_audience: str = "llmkeys"  # noqa: S105  (an audience name, not a secret)
    #: Clock skew allowed on exp, nbf and iat.
    token_clock_skew_s: float = 30.0
    #: How often each issuer's JWKS is refreshed in the background.
    jwks_refresh_interval_s: float = 300.0
    #: Least time between two fetches of one issuer's JWKS (an unknown kid triggers one at most this often).
    jwks_min_refresh_interval_s: float = 10.0
    #: How long a JWKS stays usable while its issuer cannot be reached.
    jwks_max_stale_s: float = 3600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ProxySettings:
        """Settings from `LLMKEYS_*` variables; explicit `overrides` (command line) win."""
        settings = cls(**read_env(cls, environ, overrides))  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.config_source not in ("kubernetes", "directory"):
            raise ValueError(
                f"LLMKEYS_CONFIG_SOURCE must be kubernetes or directory, not {self.config_source!r}"
            )
        if self.config_source == "directory" and not self.config_dir:
            raise ValueError("LLMKEYS_CONFIG_DIR is required with LLMKEYS_CONFIG_SOURCE=directory")
        if self.workers < 1:
            raise ValueError("LLMKEYS_WORKERS must be at least 1")
        if self.max_body_bytes < 1024:
            raise ValueError("LLMKEYS_MAX_BODY_BYTES must be at least 1024")
        for name in ("header_timeout_s", "idle_timeout_s", "body_timeout_s", "upstream_response_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LLMKEYS_{name.upper()} must be a positive number of seconds")
        if self.max_upstream_response_bytes < 1024:
            raise ValueError("LLMKEYS_MAX_UPSTREAM_RESPONSE_BYTES must be at least 1024")
        if not max(61.0, self.upstream_response_timeout_s) <= self.reservation_ttl_s <= 86400:
            raise ValueError(
                "LLMKEYS_RESERVATION_TTL_S must be at least LLMKEYS_UPSTREAM_RESPONSE_TIMEOUT_S "
                f"({self.upstream_response_timeout_s:g}) and 61 (the minute window), at most 86400"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(
                "LLMKEYS_TLS_CERT_FILE and LLMKEYS_TLS_KEY_FILE go together: set both (TLS) or neither"
            )
        check_redis_url(self.redis_url)
        check_issuers(self)
        check_audit(self)


def check_audit(values: Any) -> None:
    """The audit settings (shared by the proxy's and the operator's settings)."""
    sinks = tuple(s for s in values.audit_sinks if s != "none")
    for name in sinks:
        if name not in ("stdout", "file"):
            raise ValueError(f"LLMKEYS_AUDIT_SINKS: unknown sink {name!r} (stdout, file or none)")
    if "file" in sinks and not values.audit_file_dir:
        raise ValueError("LLMKEYS_AUDIT_FILE_DIR is required with the file audit sink")
    if values.audit_queue_size < 1:
        raise ValueError("LLMKEYS_AUDIT_QUEUE_SIZE must be at least 1")
    if values.audit_file_retain_days < 1:
        raise ValueError("LLMKEYS_AUDIT_FILE_RETAIN_DAYS must be at least 1")


def read_env(
    cls: type[Any], environ: Mapping[str, str] | None, overrides: Mapping[str, object]
) -> dict[str, object]:
    """Field values of the settings dataclass `cls` from `LLMKEYS_<FIELD>` variables (empty ones
    ignored), converted by the field's type; `overrides` (command-line flags) that are not None win.
    Shared by the proxy's and the operator's settings so both read the environment one way."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        raw = env.get(ENV_PREFIX + field.name.upper())
        if raw:
            values[field.name] = _convert(field.name, str(field.type), raw)
    values.update({name: value for name, value in overrides.items() if value is not None})
    return values


def check_issuers(proxy_settings: ProxySettings) -> None:
    """Issuer URLs are https (plain http only on loopback, for tests and local issuers); the
    token settings are sane."""
    kubernetes = proxy_settings.kubernetes_issuer
    if kubernetes not in ("auto", "off") and not is_secure_url(kubernetes):
        raise ValueError(
            "LLMKEYS_KUBERNETES_ISSUER must be auto, off or an https:// URL (http:// only on loopback)"
        )
    for issuer in proxy_settings.trusted_issuers:
        if not is_secure_url(issuer):
            raise ValueError(
                "LLMKEYS_TRUSTED_ISSUERS entries must be https:// URLs (http:// only on loopback)"
            )
    if not proxy_settings.token_audience:
        raise ValueError("LLMKEYS_TOKEN_AUDIENCE must not be empty")
    if not 0 <= proxy_settings.token_clock_skew_s <= 300:
        raise ValueError("LLMKEYS_TOKEN_CLOCK_SKEW_S must be between 0 and 300")
    if proxy_settings.jwks_min_refresh_interval_s < 0 or proxy_settings.jwks_refresh_interval_s <= 0:
        raise ValueError(
            "LLMKEYS_JWKS_REFRESH_INTERVAL_S must be positive and "
            "LLMKEYS_JWKS_MIN_REFRESH_INTERVAL_S not negative"
        )


def is_secure_url(url: str) -> bool:
    """https with a host, or http on a loopback address (tests, a local issuer)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        return bool(host)
    return parts.scheme == "http" and (host in ("::1", "localhost") or host.startswith("127."))


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL of another scheme, without echoing it (it may hold a password)."""
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("LLMKEYS_REDIS_URL must start with redis://, rediss:// or unix://")


def _convert(name: str, kind: str, raw: str) -> object:
    variable = ENV_PREFIX + name.upper()
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind in ("float", "float | None"):
            return float(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a number") from None
    if kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{variable} must be true or false")
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name == "log_level":
        return raw.upper()
    return raw
