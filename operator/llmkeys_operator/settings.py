"""Frozen runtime settings of the operator, read from `LLMKEYS_*` environment variables (runner.py).

Every setting has one env name, shared with the Helm chart and the proxy (`LLMKEYS_NAMESPACE`,
`LLMKEYS_REDIS_URL`, ...). Secrets (the Redis URL may carry a password) are kept out of `repr`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from llmkeys_proxy import settings as proxy_settings

ENV_PREFIX = proxy_settings.ENV_PREFIX


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorSettings:
    """What one operator process needs to know; build with `from_env` or directly (tests)."""

    #: Gateway namespace: ProviderCredentials are honoured here and config Secrets written here.
    namespace: str = "llmkeys"
    #: Namespaces whose VirtualKeys are served; empty means cluster-wide.
    watch_namespaces: tuple[str, ...] = ()
    #: Base URL of the proxy Service, written into every key Secret (OPENAI_BASE_URL=<this>/v1, ...).
    proxy_url: str = "http://llmkeys-proxy.llmkeys.svc:8080"
    #: redis:// or rediss:// of the limiter; empty disables usage sync.
    redis_url: str = dataclasses.field(default="", repr=False)
    #: Overrides the password of `redis_url` when set.
    redis_password: str | None = dataclasses.field(default=None, repr=False)
    #: How often usage counters are read from Redis into `status.usage`.
    usage_sync_interval_s: float = 30.0
    #: Port of kopf's liveness endpoint (/healthz); 0 disables it.
    liveness_port: int = 8081
    log_level: str = "INFO"
    #: Run kopf only while holding a Lease, so several replicas are safe (one leads, others wait).
    leader_election: bool = True
    #: Name of the Lease (in the gateway namespace).
    lease_name: str = "llmkeys-operator"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    #: Quiet time before a burst of changes is compiled into one config write.
    compile_debounce_s: float = 0.15
    #: Lower bound between two Kubernetes Events of the same reason on the same object.
    event_min_interval_s: float = 60.0
    #: HTTPS port of the VirtualKey admission webhook, served by every replica (leader or not);
    #: 0 disables it.
    webhook_port: int = 0
    #: Directory with the webhook's certificate: tls.crt, tls.key (and ca.crt), e.g. a mounted
    #: cert-manager or chart-generated Secret; renewed files are picked up without a restart.
    webhook_cert_dir: str | None = None
    #: The token audience the proxy requires, written into keyless keys' Secrets.
    token_audience: str = "llmkeys"  # noqa: S105  (an audience name, not a secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> OperatorSettings:
        """Settings from `LLMKEYS_*` variables; explicit `overrides` (command line) win."""
        values = proxy_settings.read_env(cls, environ, overrides)
        if isinstance(values.get("proxy_url"), str):
            values["proxy_url"] = str(values["proxy_url"]).rstrip("/")
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.namespace:
            raise ValueError("LLMKEYS_NAMESPACE must name the gateway namespace")
        if not self.proxy_url.startswith(("http://", "https://")):
            raise ValueError("LLMKEYS_PROXY_URL must be an http:// or https:// URL")
        proxy_settings.check_redis_url(self.redis_url)
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")
        if self.usage_sync_interval_s <= 0:
            raise ValueError("LLMKEYS_USAGE_SYNC_INTERVAL_S must be positive")
        if self.webhook_port and not self.webhook_cert_dir:
            raise ValueError("LLMKEYS_WEBHOOK_PORT needs LLMKEYS_WEBHOOK_CERT_DIR (tls.crt and tls.key)")

    @property
    def served_namespaces(self) -> list[str]:
        """Namespaces kopf watches: the key namespaces plus the gateway namespace; [] = cluster-wide."""
        if not self.watch_namespaces:
            return []
        return sorted({*self.watch_namespaces, self.namespace})
