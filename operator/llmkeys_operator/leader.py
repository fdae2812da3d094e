"""Leader election on a coordination.k8s.io Lease, so two operator replicas run safely.

Called by `runner`: a replica runs kopf only while it holds the Lease; standbys wait. Why not
kopf's peering: peering pauses kopf's handlers but not the operator's own background loops
(publisher, deadlines, usage sync), and kopf's pausable daemons and timers put a finalizer on
every VirtualKey (deletion would then wait for the operator). One leader doing everything is
simpler to reason about and is what Kubernetes controllers conventionally do.

Semantics follow client-go: the holder renews every `retry_period_s`; a candidate takes over when
it has not seen the Lease change for `lease_duration_s` (local clock only, so clock skew between
nodes does not matter); a leader that cannot renew within `renew_deadline_s` steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from llmkeys_operator import kube

logger = logging.getLogger("llmkeys.operator.leader")


def _micro_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires, renews and releases one Lease (see module docstring)."""

    def __init__(
        self,
        client: kube.KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
    ) -> None:
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._observed: tuple[Any, Any] | None = None
        self._observed_at = 0.0
        self.is_leader = False

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this replica holds the Lease afterwards."""
        now = datetime.now(UTC)
        lease = await self._client.get(kube.LEASES, self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, acquire=True, transitions=0),
            }
            created = await self._client.create(kube.LEASES, self.namespace, body)
            return self._became(created is not None)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"))
        monotonic = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, monotonic
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and monotonic - self._observed_at < duration:
            return self._became(False)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            patch_spec = {"renewTime": _micro_time(now), "leaseDurationSeconds": int(self.lease_duration_s)}
        else:
            patch_spec = self._spec(now, acquire=True, transitions=transitions + 1)
        # resourceVersion makes the API server refuse the write if someone else wrote first.
        version = (lease.get("metadata") or {}).get("resourceVersion")
        patch: dict[str, Any] = {"spec": patch_spec}
        if version:
            patch["metadata"] = {"resourceVersion": version}
        try:
            written = await self._client.patch(kube.LEASES, self.namespace, self.name, patch)
        except kube.KubeApiError as exc:
            if exc.status == 409:
                return self._became(False)
            raise
        if written is None:
            return self._became(False)
        ok = (written.get("spec") or {}).get("holderIdentity") == self.identity
        if ok:
            self._observed = (
                (written.get("spec") or {}).get("holderIdentity"),
                (written.get("spec") or {}).get("renewTime"),
            )
            self._observed_at = time.monotonic()
        return self._became(ok)

    def _became(self, leader: bool) -> bool:
        if leader and not self.is_leader:
            logger.info(
                "became the leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity
            )
        elif not leader and self.is_leader:
            logger.warning("lost the leadership (Lease %s/%s)", self.namespace, self.name)
        self.is_leader = leader
        return leader

    def _spec(self, now: datetime, *, acquire: bool, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration_s),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = _micro_time(now)
        return spec

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Wait until this replica leads (True) or `stopping` is set (False)."""
        logged = False
        while not stopping.is_set():
            try:
                if await self.try_acquire_or_renew():
                    return True
            except (kube.KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                logger.warning("leader election attempt failed: %s", exc)
            if not logged:
                logger.info("standing by: another replica holds Lease %s/%s", self.namespace, self.name)
                logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.retry_period_s)
        return False

    async def hold(self, stopping: asyncio.Event) -> None:
        """Renew until `stopping` is set; returns early (leadership lost) when renewals fail for
        longer than the renew deadline or another replica took the Lease."""
        last_renewed = time.monotonic()
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self.retry_period_s)
                return
            except TimeoutError:
                pass
            try:
                if await self.try_acquire_or_renew():
                    last_renewed = time.monotonic()
                    continue
                return  # someone else holds it now
            except (kube.KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                logger.warning("renewing the Lease failed: %s", exc)
            if time.monotonic() - last_renewed > self.renew_deadline_s:
                self._became(False)
                return

    async def release(self) -> None:
        """Give the Lease up at shutdown so a standby takes over at once instead of waiting it out."""
        if not self.is_leader:
            return
        try:
            lease = await self._client.get(kube.LEASES, self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                patch = {
                    "spec": {
                        "holderIdentity": None,
                        "leaseDurationSeconds": 1,
                        "renewTime": _micro_time(datetime.now(UTC)),
                    }
                }
                await self._client.patch(kube.LEASES, self.namespace, self.name, patch)
        except (kube.KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("releasing the Lease failed: %s", exc)
        self.is_leader = False
