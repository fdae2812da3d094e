"""Kubernetes Events for key lifecycle (issued, rotated, suspended, expired, policy violation), rate-bounded.

Called by `reconcile`; posting happens in a background task so reconciling never waits on it.
Two bounds keep the API server safe from an event storm: one event per object and reason per
`min_interval_s`, and a token bucket over all events. Messages carry key ids (public) at most,
never key material or credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import time
from datetime import UTC, datetime

from llmkeys_operator import kube

logger = logging.getLogger("llmkeys.operator.events")

COMPONENT = "llmkeys-operator"
#: Namespace for Events about cluster-scoped objects (LLMPolicy).
CLUSTER_EVENTS_NAMESPACE = "default"


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectReference:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    ref: ObjectReference
    type: str
    reason: str
    message: str
    at: datetime


class EventRecorder:
    """Queues Events and posts them in the background within the bounds (see module docstring)."""

    def __init__(
        self,
        client: kube.KubeClient | None,
        *,
        min_interval_s: float = 60.0,
        burst: int = 25,
        per_second: float = 2.0,
        queue_size: int = 1000,
    ) -> None:
        self._client = client
        self._min_interval_s = min_interval_s
        self._burst = burst
        self._per_second = per_second
        self._tokens = float(burst)
        self._refilled_at = time.monotonic()
        self._last: dict[tuple[str, str, str], float] = {}
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._instance = os.environ.get("HOSTNAME", "") or "local"
        self.dropped = 0
        self.posted = 0

    def start(self) -> None:
        if self._client is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="llmkeys-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def record(
        self, ref: ObjectReference, type_: str, reason: str, message: str, *, instance: str = ""
    ) -> bool:
        """Queue an Event unless one with this reason (and `instance`, e.g. a threshold) was recorded
        for the object recently, or the global budget is spent. Returns whether it was queued."""
        now = time.monotonic()
        key = (ref.uid or f"{ref.namespace}/{ref.name}", ref.kind, reason + instance)
        last = self._last.get(key)
        if last is not None and now - last < self._min_interval_s:
            return False
        self._tokens = min(float(self._burst), self._tokens + (now - self._refilled_at) * self._per_second)
        self._refilled_at = now
        if self._tokens < 1.0:
            self.dropped += 1
            return False
        pending = _Pending(ref, type_, reason, message[:1024], datetime.now(UTC))
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        self._tokens -= 1.0
        self._last[key] = now
        if len(self._last) > 50_000:  # bound memory: forget the oldest half
            for old in sorted(self._last, key=self._last.__getitem__)[:25_000]:
                del self._last[old]
        return True

    async def _run(self) -> None:
        assert self._client is not None
        while True:
            pending = await self._queue.get()
            try:
                await self._client.create(kube.EVENTS, self._namespace(pending.ref), self._body(pending))
                self.posted += 1
            except Exception as exc:  # Events are best effort: never let them break reconciling
                logger.warning("could not post Event %s for %s: %s", pending.reason, pending.ref.name, exc)

    def _namespace(self, ref: ObjectReference) -> str:
        return ref.namespace or CLUSTER_EVENTS_NAMESPACE

    def _body(self, pending: _Pending) -> dict[str, object]:
        ref = pending.ref
        stamp = pending.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                # client-go's naming: object name plus a unique suffix.
                "name": f"{ref.name}.{secrets.token_hex(8)}",
                "namespace": self._namespace(ref),
            },
            "involvedObject": {
                "apiVersion": ref.api_version,
                "kind": ref.kind,
                "name": ref.name,
                **({"namespace": ref.namespace} if ref.namespace else {}),
                **({"uid": ref.uid} if ref.uid else {}),
            },
            "type": pending.type,
            "reason": pending.reason,
            "message": pending.message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
