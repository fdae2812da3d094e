"""The operator process at run time: its context, built at kopf startup, and its background loops.

Called by `handlers` (startup/cleanup) and `runner`. Loops: the publisher (debounced compile and
write), the deadline scheduler (expiry, end of rotation grace, interval rotation, each acted on
at its instant) and, with a Redis URL, usage sync. All run only on the elected leader, since kopf
itself only runs there (see `leader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from llmkeys_operator import events, kube, notifier, reconcile, settings, usage_sync
from llmkeys_proxy.limits import base

logger = logging.getLogger("llmkeys.operator")

#: kopf index handler ids (the function names in `handlers`) -> `reconcile.Indexes` fields.
INDEX_HANDLERS = {
    "virtualkeys_index": "virtual_keys",
    "policies_index": "policies",
    "credentials_index": "credentials",
    "key_secrets_index": "key_secrets",
    "gateway_secrets_index": "gateway_secrets",
    "config_secrets_index": "config_secrets",
    "namespaces_index": "namespaces",
}
#: Memo attribute holding the `OperatorRuntime`.
MEMO_KEY = "llmkeys"


@dataclasses.dataclass
class OperatorRuntime:
    """Put into kopf's memo by `runner` before kopf starts; completed by `start`."""

    settings: settings.OperatorSettings
    connect: kube.ConnectionProvider
    ctx: reconcile.ReconcileContext | None = None
    limiter: base.Limiter | None = None
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    def context(self) -> reconcile.ReconcileContext:
        assert self.ctx is not None, "the operator context is built at startup"
        return self.ctx


def runtime_of(memo: Any) -> OperatorRuntime:
    found: OperatorRuntime = memo[MEMO_KEY]
    return found


async def start(runtime: OperatorRuntime, indices: Mapping[str, Any]) -> None:
    """Build the context from kopf's (still filling) indexes and start the loops."""
    client = kube.KubeClient(runtime.connect)
    recorder = events.EventRecorder(client, min_interval_s=runtime.settings.event_min_interval_s)
    recorder.start()
    indexes = reconcile.Indexes(**{field: indices[handler] for handler, field in INDEX_HANDLERS.items()})
    alert_sender = notifier.Notifier()
    alert_sender.start()
    ctx = reconcile.ReconcileContext(
        settings=runtime.settings, kube=client, events=recorder, indexes=indexes, notifier=alert_sender
    )
    runtime.ctx = ctx
    runtime.tasks.append(asyncio.create_task(reconcile.run_publisher(ctx), name="llmkeys-publisher"))
    runtime.tasks.append(asyncio.create_task(run_deadlines(ctx), name="llmkeys-deadlines"))
    if runtime.settings.redis_url:
        runtime.limiter = usage_sync.open_limiter(runtime.settings.redis_url, runtime.settings.redis_password)
        runtime.tasks.append(
            asyncio.create_task(
                usage_sync.run_usage_sync(ctx, runtime.limiter, runtime.settings.usage_sync_interval_s),
                name="llmkeys-usage-sync",
            )
        )
    else:
        logger.info("LLMKEYS_REDIS_URL is empty: usage sync is off")


async def stop(runtime: OperatorRuntime) -> None:
    for task in runtime.tasks:
        task.cancel()
    for task in runtime.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    runtime.tasks.clear()
    if runtime.ctx is not None:
        await runtime.ctx.events.stop()
        if runtime.ctx.notifier is not None:
            await runtime.ctx.notifier.stop()
        await runtime.ctx.kube.close()
    if runtime.limiter is not None:
        await runtime.limiter.close()
        runtime.limiter = None


async def run_deadlines(ctx: reconcile.ReconcileContext, *, min_pause_s: float = 0.2) -> None:
    """Act on each key's deadline when it comes: rotate keys due for rotation, then republish
    (which flips expired keys' status and drops rotated-out hashes)."""
    while True:
        now = datetime.now(UTC)
        due = [ref for ref, at in ctx.deadlines.items() if at <= now]
        for ref in due:
            ctx.deadlines.pop(ref, None)
        for ref in due:
            entry = ctx.virtual_key(ref)
            if entry is None or entry.model is None or entry.deleting:
                continue
            try:
                await reconcile.reconcile_key_secret(ctx, entry.model, now=now)
            except Exception:
                logger.exception("reconciling the key Secret of %s/%s at its deadline failed", *ref)
        if due:
            ctx.request_publish()
        ctx.deadlines_changed.clear()
        upcoming = min(ctx.deadlines.values(), default=None)
        timeout = 3600.0 if upcoming is None else (upcoming - datetime.now(UTC)).total_seconds()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.deadlines_changed.wait(), max(timeout, 0.0))
        await asyncio.sleep(min_pause_s)  # a deadline that keeps failing must not spin
