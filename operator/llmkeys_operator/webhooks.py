"""The VirtualKey admission webhook: kopf's admission handlers and webhook server, on every replica.

Called by `runner`, which starts `serve` next to the Lease-gated operator on every replica (a
standby serves admission too, so the Service behind the webhook configurations always has
endpoints). It is a second, small kopf operator with its own registry: indexes of LLMPolicies and
Namespace labels (what the rules need), `@kopf.on.mutate` / `@kopf.on.validate` for VirtualKeys
delegating to `admission`, and `kopf.WebhookServer` with the certificate files from
`LLMKEYS_WEBHOOK_CERT_DIR` (cert-manager's or the chart's Secret; kopf reloads renewed files).
kopf does not manage the webhook configurations: the chart renders them (paths /mutate and
/validate, see `MUTATE_PATH`, `VALIDATE_PATH`).

Until kopf has listed every indexed resource the handlers refuse with 503 (failurePolicy Fail
makes the API server refuse the write): no key is admitted against a partial set of policies.
`ReviewObserver` is the hook for timing each review (e.g. a latency histogram).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from llmkeys_operator import admission, api, kube, reconcile, settings

logger = logging.getLogger("llmkeys.operator.webhook")

REGISTRY = kopf.OperatorRegistry()

VIRTUALKEYS = ("llmkeys.io", "v1alpha1", "virtualkeys")
POLICIES = ("llmkeys.io", "v1alpha1", "llmpolicies")
NAMESPACES = ("", "v1", "namespaces")
MUTATE_ID = "mutate"
VALIDATE_ID = "validate"
#: URL paths the webhook configurations call (kopf serves each handler at /<handler id>).
MUTATE_PATH = f"/{MUTATE_ID}"
VALIDATE_PATH = f"/{VALIDATE_ID}"
MEMO_KEY = "llmkeys_admission"

#: Called after each review with (handler id "mutate" | "validate", outcome "allowed" | "refused" |
#: "error", seconds spent in the handler).
ReviewObserver = Callable[[str, str, float], None]


@dataclasses.dataclass
class AdmissionRuntime:
    """What the handlers share: how to log in, whether the indexes are complete, the observer."""

    connect: kube.ConnectionProvider
    observer: ReviewObserver | None = None
    indexed: bool = False


def _runtime(memo: Any) -> AdmissionRuntime:
    runtime: AdmissionRuntime = memo[MEMO_KEY]
    return runtime


@kopf.on.login(registry=REGISTRY)
async def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    return await _runtime(memo).connect()


@kopf.index(*POLICIES, registry=REGISTRY)
def admission_policies(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    policy = reconcile.parse_policy(body)
    return {name: policy} if policy is not None else {}


@kopf.index(*NAMESPACES, registry=REGISTRY)
def admission_namespaces(name: str, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
    return {name: dict(labels)}


@kopf.on.event(*NAMESPACES, registry=REGISTRY)
def namespaces_listed(memo: Any, **_: Any) -> None:
    # kopf delivers events only once every index holds its initial listing.
    _runtime(memo).indexed = True


async def _timed(memo: Any, handler: str, decide: Callable[[], None]) -> None:
    started = time.perf_counter()
    outcome = "allowed"
    try:
        decide()
    except kopf.AdmissionError:
        outcome = "refused"
        raise
    except Exception:
        outcome = "error"
        logger.exception("admission %s failed", handler)
        raise kopf.AdmissionError("the llmkeys webhook failed on this request", code=500) from None
    finally:
        observer = _runtime(memo).observer
        if observer is not None:
            observer(handler, outcome, time.perf_counter() - started)


@kopf.on.mutate(*VIRTUALKEYS, id=MUTATE_ID, operations=["CREATE", "UPDATE"], registry=REGISTRY)
async def mutate_virtualkey(**kwargs: Any) -> None:
    review = _Review(kwargs)

    def decide() -> None:
        policies, labels = review.inputs()
        try:
            mutation = admission.mutate(
                review.operation, review.new, review.old, review.requester, policies, labels, _now()
            )
        except admission.Refused as exc:
            raise kopf.AdmissionError(str(exc), code=403) from None
        patch: kopf.Patch = kwargs["patch"]
        if mutation.annotations:
            patch.setdefault("metadata", {})["annotations"] = dict(mutation.annotations)
        if mutation.owner_user is not None:
            patch.setdefault("spec", {})["owner"] = {"user": mutation.owner_user}

    await _timed(review.memo, MUTATE_ID, decide)


@kopf.on.validate(*VIRTUALKEYS, id=VALIDATE_ID, operations=["CREATE", "UPDATE"], registry=REGISTRY)
async def validate_virtualkey(**kwargs: Any) -> None:
    review = _Review(kwargs)

    def decide() -> None:
        policies, labels = review.inputs()
        try:
            admission.validate(
                review.operation, review.new, review.old, review.requester, policies, labels, _now()
            )
        except admission.Refused as exc:
            raise kopf.AdmissionError(str(exc), code=422) from None

    await _timed(review.memo, VALIDATE_ID, decide)


class _Review:
    """The parts of kopf's webhook kwargs the rules read."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        body = kwargs["body"]
        old = kwargs.get("old")
        self.memo = kwargs["memo"]
        self.operation = str(kwargs.get("operation") or "")
        self.new: dict[str, Any] = dict(body)
        self.old: dict[str, Any] | None = dict(old) if old is not None else None
        self.requester = admission.Requester.from_userinfo(kwargs.get("userinfo"))
        self.namespace = (self.new.get("metadata") or {}).get("namespace") or kwargs.get("namespace")
        self._policies = kwargs["admission_policies"]
        self._namespaces = kwargs["admission_namespaces"]

    def inputs(self) -> tuple[list[api.LLMPolicy], dict[str, str]]:
        if not _runtime(self.memo).indexed:
            raise kopf.AdmissionError(
                "the llmkeys webhook is starting: LLMPolicies are not loaded yet", code=503
            )
        policies = [policy for name in self._policies for policy in self._policies[name]]
        labels: dict[str, str] = {}
        if self.namespace and self.namespace in self._namespaces:
            for found in self._namespaces[self.namespace]:
                labels = dict(found)
        return policies, labels


def _now() -> datetime:
    return datetime.now(UTC)


def webhook_server(operator_settings: settings.OperatorSettings) -> kopf.WebhookServer:
    """kopf's HTTPS server on the configured port with the mounted certificate files."""
    cert_dir = pathlib.Path(operator_settings.webhook_cert_dir or ".")
    cafile = cert_dir / "ca.crt"
    return kopf.WebhookServer(
        addr="0.0.0.0",
        port=operator_settings.webhook_port,
        certfile=str(cert_dir / "tls.crt"),
        pkeyfile=str(cert_dir / "tls.key"),
        cafile=str(cafile) if cafile.exists() else None,
    )


def kopf_settings(operator_settings: settings.OperatorSettings) -> kopf.OperatorSettings:
    configured = kopf.OperatorSettings()
    configured.admission.server = webhook_server(operator_settings)
    configured.admission.managed = None  # the chart owns the webhook configurations
    configured.posting.enabled = False  # this instance writes nothing to the cluster
    configured.watching.server_timeout = 300
    configured.watching.client_timeout = 330
    configured.watching.connect_timeout = 30
    configured.networking.request_timeout = 60
    return configured


async def serve(
    operator_settings: settings.OperatorSettings,
    connect: kube.ConnectionProvider,
    stop: threading.Event | asyncio.Event,
    *,
    tweak: Callable[[kopf.OperatorSettings], None] | None = None,
    observer: ReviewObserver | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Serve admission reviews until `stop` is set (or kopf stops on a signal)."""
    kopf_config = kopf_settings(operator_settings)
    if tweak is not None:
        tweak(kopf_config)
    memo = kopf.Memo()
    memo[MEMO_KEY] = AdmissionRuntime(connect=connect, observer=observer)
    namespaces = operator_settings.served_namespaces
    logger.info("serving the VirtualKey admission webhook on port %d", operator_settings.webhook_port)
    await kopf.operator(
        registry=REGISTRY,
        settings=kopf_config,
        memo=memo,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop,
        ready_flag=ready_flag,
    )
