"""`llmkeys operator`: settings from the environment, kopf settings, leader election, and kopf's run.

Called by `cli` (`add_arguments`/`run`) and by tests and benches (`serve`, with their own
connection info and stop/ready flags). kopf settings: progress and diff-base kept in annotations
under `kopf.llmkeys.io`, our own finalizer name (no handler needs one today), kopf's liveness
endpoint on `LLMKEYS_LIVENESS_PORT`, and kopf's peering off: replicas coordinate through a Lease
instead (see `leader`); a standby answers /healthz itself until it leads. With
`LLMKEYS_WEBHOOK_PORT` set, every replica (standbys too) also serves the admission webhook
(`webhooks`) from its own thread, so admission never waits for a leader.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

import aiohttp.web
import kopf

from llmkeys_operator import handlers, kube, leader, runtime, settings, webhooks
from llmkeys_proxy import redaction

logger = logging.getLogger("llmkeys.operator")

#: Annotation prefix of kopf's bookkeeping (handler progress, last handled spec).
KOPF_PREFIX = "kopf.llmkeys.io"

KopfTweak = Callable[[kopf.OperatorSettings], None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", help="gateway namespace (LLMKEYS_NAMESPACE)")
    parser.add_argument(
        "--watch-namespaces",
        help="comma-separated namespaces to serve; empty = all (LLMKEYS_WATCH_NAMESPACES)",
    )
    parser.add_argument("--proxy-url", help="proxy base URL put into key Secrets (LLMKEYS_PROXY_URL)")
    parser.add_argument("--liveness-port", type=int, help="port of /healthz; 0 = off (LLMKEYS_LIVENESS_PORT)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (LLMKEYS_LOG_LEVEL)")


def run(args: argparse.Namespace) -> int:
    watch = getattr(args, "watch_namespaces", None)
    operator_settings = settings.OperatorSettings.from_env(
        namespace=getattr(args, "namespace", None),
        watch_namespaces=tuple(n.strip() for n in watch.split(",") if n.strip())
        if watch is not None
        else None,
        proxy_url=getattr(args, "proxy_url", None),
        liveness_port=getattr(args, "liveness_port", None),
        log_level=(getattr(args, "log_level", None) or "").upper() or None,
    )
    logging.basicConfig(
        level=operator_settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redaction.install()  # no key or credential in any log line, kopf's and the client's included
    try:
        lost = asyncio.run(serve(operator_settings))
    except KeyboardInterrupt:
        return 0
    except kopf.LoginError as exc:
        logger.error("cannot reach the Kubernetes API: %s", exc)
        return 2
    return 1 if lost else 0


def kopf_settings(operator_settings: settings.OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings for this operator (tests adjust a few for the API emulator)."""
    configured = kopf.OperatorSettings()
    # A sub-domain prefix: kopf ignores every annotation under its storage prefix when diffing,
    # and `llmkeys.io/rotate` must count as a change.
    configured.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    configured.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    configured.persistence.finalizer = "llmkeys.io/finalizer"
    # kopf's own Events only for problems; lifecycle Events come from `events`, rate-bounded.
    configured.posting.level = logging.WARNING
    # Long watches, but end them now and then so a silently dead connection is noticed.
    configured.watching.server_timeout = 300
    configured.watching.client_timeout = 330
    configured.watching.connect_timeout = 30
    # One watch of Secrets for every handler, narrowed by the API server to the labelled ones: the
    # operator never receives (nor caches) the cluster's other Secrets.
    configured.watching.label_selectors[handlers.SECRETS] = handlers.SECRET_WATCH_SELECTOR
    configured.networking.request_timeout = 60
    return configured


async def default_connection(kopf_config: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """In-cluster service account, else kubeconfig (with the official client's exec/auth plugins)."""
    info = kopf.login_with_service_account(settings=kopf_config)
    if info is None:
        try:
            info = await asyncio.to_thread(kopf.login_via_client, logger=logger, settings=kopf_config)
        except Exception:  # not installed or no usable kubeconfig: try kopf's minimal reader
            info = None
    if info is None:
        info = kopf.login_with_kubeconfig(settings=kopf_config)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    return info


def _identity() -> str:
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{uuid.uuid4().hex[:8]}"


async def _standby_health(port: int) -> aiohttp.web.AppRunner | None:
    """/healthz while waiting for leadership (kopf's own endpoint starts once we lead)."""
    if not port:
        return None

    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"standby": True})

    app = aiohttp.web.Application()
    app.router.add_get("/healthz", healthz)
    app_runner = aiohttp.web.AppRunner(app, access_log=None)
    await app_runner.setup()
    await aiohttp.web.TCPSite(app_runner, "0.0.0.0", port).start()
    return app_runner


async def _watch_external_stop(flag: threading.Event | None, stopping: asyncio.Event) -> None:
    while flag is not None and not flag.is_set():
        await asyncio.sleep(0.1)
    stopping.set()


async def serve(
    operator_settings: settings.OperatorSettings,
    *,
    connect: kube.ConnectionProvider | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
    tweak: KopfTweak | None = None,
    identity: str | None = None,
    review_observer: webhooks.ReviewObserver | None = None,
) -> bool:
    """Run until `stop_flag` is set (or SIGTERM); returns True when the leadership was lost, so the
    process exits non-zero and restarts as a standby."""
    kopf_config = kopf_settings(operator_settings)
    if tweak is not None:
        tweak(kopf_config)

    async def connect_default() -> kopf.ConnectionInfo:
        return await default_connection(kopf_config)

    connection = connect or connect_default
    stopping = asyncio.Event()
    stop_watcher = asyncio.create_task(_watch_external_stop(stop_flag, stopping)) if stop_flag else None
    client = kube.KubeClient(connection)
    elector: leader.LeaderElector | None = None
    lost = False
    # Admission is served by every replica from the start, leader or standby (see `webhooks`).
    admission = (
        _AdmissionThread(operator_settings, connection, stopping, tweak, review_observer)
        if operator_settings.webhook_port
        else None
    )
    if admission is not None:
        admission.start()
    try:
        if operator_settings.leader_election:
            elector = leader.LeaderElector(
                client,
                operator_settings.namespace,
                operator_settings.lease_name,
                identity or _identity(),
                lease_duration_s=operator_settings.lease_duration_s,
                renew_deadline_s=operator_settings.renew_deadline_s,
                retry_period_s=operator_settings.retry_period_s,
            )
            health = await _standby_health(operator_settings.liveness_port)
            try:
                if not await elector.acquire(stopping):
                    return False
            finally:
                if health is not None:
                    await health.cleanup()
        kopf_stop = asyncio.Event()
        holder = asyncio.create_task(_hold(elector, stopping, kopf_stop))
        memo = kopf.Memo()
        memo[runtime.MEMO_KEY] = runtime.OperatorRuntime(settings=operator_settings, connect=connection)
        namespaces = operator_settings.served_namespaces
        port = operator_settings.liveness_port
        try:
            await kopf.operator(
                registry=handlers.REGISTRY,
                settings=kopf_config,
                memo=memo,
                standalone=True,
                clusterwide=not namespaces,
                namespaces=namespaces,
                liveness_endpoint=f"http://0.0.0.0:{port}/healthz" if port else None,
                stop_flag=kopf_stop,
                ready_flag=ready_flag,
            )
        finally:
            lost = holder.done() and not holder.cancelled() and holder.result()
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
    finally:
        if elector is not None:
            await elector.release()
        if admission is not None:
            await admission.stop()
        await client.close()
        if stop_watcher is not None:
            stop_watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_watcher
    if lost:
        logger.error("stopped leading: exiting so that this replica restarts as a standby")
    return lost


class _AdmissionThread:
    """The admission webhook's kopf in its own thread and event loop: two kopf operators in one
    loop would take each other's tasks for hung ones at shutdown and share signal handlers. When
    it ends by itself (a crash), the replica stops, so it never runs without serving admission."""

    def __init__(
        self,
        operator_settings: settings.OperatorSettings,
        connection: kube.ConnectionProvider,
        stopping: asyncio.Event,
        tweak: KopfTweak | None,
        observer: webhooks.ReviewObserver | None,
    ) -> None:
        self._settings = operator_settings
        self._connection = connection
        self._stopping = stopping
        self._tweak = tweak
        self._observer = observer
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name="llmkeys-admission", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(
                webhooks.serve(
                    self._settings, self._connection, self._stop, tweak=self._tweak, observer=self._observer
                )
            )
        except Exception:
            logger.exception("the admission webhook failed")
        finally:
            if not self._stop.is_set():
                with contextlib.suppress(RuntimeError):  # the loop is closed: we are stopping anyway
                    self._loop.call_soon_threadsafe(self._stopping.set)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 30)


async def _hold(
    elector: leader.LeaderElector | None, stopping: asyncio.Event, kopf_stop: asyncio.Event
) -> bool:
    """Stop kopf when asked to, or as soon as the leadership is lost (then True)."""
    if elector is None:
        await stopping.wait()
    else:
        await elector.hold(stopping)
    kopf_stop.set()
    return not stopping.is_set()
