"""Alert notifications to webhooks (generic JSON or Slack-compatible), bounded, retrying, never blocking.

Called by `alerts` (through the usage sync) with `Notifier.send(url, format, alert)`: that only puts
the alert on a bounded queue (full: dropped and counted) and returns. One background task posts
them, each with a timeout and retries with exponential backoff; a webhook that is down or hangs
delays only later notifications, never reconciliation. The URL comes from a Secret and is never
logged (only its host); payloads carry public facts only (names, key ids, numbers), no key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import urllib.parse
from typing import Any, Literal

import aiohttp

logger = logging.getLogger("llmkeys.operator.notifier")

Format = Literal["generic", "slack"]


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """One alert as it leaves the operator."""

    kind: str  # BudgetThreshold, ExpiringSoon
    resource: dict[str, str]  # apiVersion, kind, namespace, name (and keyId for keys)
    message: str
    details: dict[str, Any]


def payload(alert: Alert, format_: Format) -> dict[str, Any]:
    """The JSON body for a webhook of `format_`."""
    if format_ == "slack":
        return {"text": f":warning: llmkeys {alert.kind}: {alert.message}"}
    return {
        "source": "llmkeys",
        "kind": alert.kind,
        "resource": alert.resource,
        "message": alert.message,
        **alert.details,
    }


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or "?"


class Notifier:
    """The bounded, retrying sender (see module docstring)."""

    def __init__(
        self,
        *,
        queue_size: int = 1000,
        attempts: int = 5,
        timeout_s: float = 5.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._queue: asyncio.Queue[tuple[str, Format, Alert]] = asyncio.Queue(maxsize=queue_size)
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="llmkeys-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def send(self, url: str, format_: Format, alert: Alert) -> bool:
        """Queue a notification; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((url, format_, alert))
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning(
                "notification queue full: %s alert for %s dropped", alert.kind, alert.resource.get("name")
            )
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                url, format_, alert = await self._queue.get()
                await self._deliver(session, url, format_, alert)

    async def _deliver(self, session: aiohttp.ClientSession, url: str, format_: Format, alert: Alert) -> None:
        body = payload(alert, format_)
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                async with session.post(url, json=body) as response:
                    if response.status < 300:
                        self.sent += 1
                        return
                    problem = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the webhook refuses this body: retrying will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = type(exc).__name__
            if attempt < self._attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
        self.failed += 1
        logger.warning(
            "webhook at %s did not take the %s alert for %s (%s)",
            _host(url),
            alert.kind,
            alert.resource.get("name"),
            problem,
        )
