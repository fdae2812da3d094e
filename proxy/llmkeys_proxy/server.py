"""`llmkeys proxy`: run the proxy from `LLMKEYS_*` settings, on uvloop when available, in N processes.

Called by cli.py (`add_arguments` + `run`). `serve_app` runs any app on a host/port (HTTPS with
LLMKEYS_TLS_CERT_FILE / LLMKEYS_TLS_KEY_FILE, see tls.py) until a stop event and shuts down
gracefully (stop accepting, finish in-flight requests, drain settlements); standalone mode
(`llmkeys serve`) embeds it with its own config source. `--workers N` starts N processes sharing
the port through SO_REUSEPORT; Prometheus values are then shared through multiprocess files so
/metrics shows the whole pod.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import logging
import multiprocessing
import os
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from aiohttp import web

from llmkeys_proxy import listener, redaction, settings, sources, tls, tokens
from llmkeys_proxy.limits import base as limits_base

logger = logging.getLogger("llmkeys.proxy.server")
_DEFAULTS = settings.ProxySettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line flags; each overrides its LLMKEYS_* variable."""
    parser.add_argument("--host", help="listen address (LLMKEYS_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (LLMKEYS_PORT, default 8080)")
    parser.add_argument("--workers", type=int, help="processes sharing the port (LLMKEYS_WORKERS, default 1)")
    parser.add_argument(
        "--config-source",
        choices=("kubernetes", "directory"),
        help="LLMKEYS_CONFIG_SOURCE (default directory)",
    )
    parser.add_argument("--config-dir", help="compiled config directory (LLMKEYS_CONFIG_DIR)")
    parser.add_argument("--namespace", help="namespace of the config Secrets (LLMKEYS_NAMESPACE)")
    parser.add_argument("--log-level", help="LLMKEYS_LOG_LEVEL (default INFO)")
    add_tls_arguments(parser)
    # No --redis-url flag on purpose: a password on a command line is visible in `ps`.


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS listener flags (`llmkeys proxy` and `llmkeys serve`)."""
    parser.add_argument(
        "--tls-cert-file",
        help="PEM certificate chain: serve HTTPS (LLMKEYS_TLS_CERT_FILE; with --tls-key-file)",
    )
    parser.add_argument("--tls-key-file", help="PEM private key of --tls-cert-file (LLMKEYS_TLS_KEY_FILE)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `llmkeys proxy`."""
    try:
        proxy_settings = settings.ProxySettings.from_env(
            host=args.host,
            port=args.port,
            workers=args.workers,
            config_source=args.config_source,
            config_dir=args.config_dir,
            namespace=args.namespace,
            log_level=args.log_level,
            tls_cert_file=args.tls_cert_file,
            tls_key_file=args.tls_key_file,
        )
        check_tls_files(proxy_settings)
        encodings_to_preload(proxy_settings)
    except ValueError as exc:
        print(f"llmkeys proxy: {exc}", file=sys.stderr)
        return 2
    if proxy_settings.workers > 1 and not proxy_settings.redis_url:
        # Each worker would keep its own counters: every limit would be held per worker, not per pod.
        print(
            f"llmkeys proxy: {proxy_settings.workers} workers need LLMKEYS_REDIS_URL (shared limit "
            "counters); the in-process limiter works with one worker only",
            file=sys.stderr,
        )
        return 2
    configure_logging(proxy_settings.log_level)
    if proxy_settings.workers > 1:
        return run_workers(proxy_settings)
    return run_event_loop(_serve_settings(proxy_settings))


def configure_logging(level: str) -> None:
    """Plain log lines on stderr; audit lines (already JSON) alone on stdout; every record redacted."""
    redaction.install()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    audit_logger = logging.getLogger("llmkeys.audit")
    if not audit_logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        audit_logger.addHandler(handler)
        audit_logger.propagate = False
        audit_logger.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def build_limiter(proxy_settings: settings.ProxySettings) -> limits_base.Limiter:
    """Redis when LLMKEYS_REDIS_URL is set, else the in-process backend."""
    if proxy_settings.redis_url:
        from llmkeys_proxy.limits import redis as redis_limiter

        return redis_limiter.RedisLimiter(
            redis_limiter.url_with_password(proxy_settings.redis_url, proxy_settings.redis_password),
            reservation_ttl_s=proxy_settings.reservation_ttl_s,
        )
    from llmkeys_proxy.limits import memory

    return memory.MemoryLimiter(reservation_ttl_s=proxy_settings.reservation_ttl_s)


def check_tls_files(proxy_settings: settings.ProxySettings) -> None:
    """Fail early (ValueError) when the TLS listener's files cannot be loaded."""
    if proxy_settings.tls_cert_file and proxy_settings.tls_key_file:
        tls.load_server_context(proxy_settings.tls_cert_file, proxy_settings.tls_key_file)


@contextlib.asynccontextmanager
async def listener_tls(
    proxy_settings: settings.ProxySettings, stop: asyncio.Event
) -> AsyncIterator[ssl.SSLContext | None]:
    """The listener's TLS context (None: plain HTTP); rotated files are watched until the block ends."""
    if not proxy_settings.tls_cert_file or not proxy_settings.tls_key_file:
        yield None
        return
    server_tls = tls.ServerTls(proxy_settings.tls_cert_file, proxy_settings.tls_key_file)
    watcher = asyncio.create_task(server_tls.watch(stop), name="llmkeys-tls-reload")
    try:
        yield server_tls.context
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def build_source(proxy_settings: settings.ProxySettings) -> sources.ConfigSource:
    """The config source LLMKEYS_CONFIG_SOURCE names."""
    if proxy_settings.config_source == "directory":
        assert proxy_settings.config_dir is not None  # validated by ProxySettings
        return sources.DirectorySource(proxy_settings.config_dir, proxy_settings.reload_interval_s)
    kubesource: Any = importlib.import_module("llmkeys_proxy.kubesource")
    source: sources.ConfigSource = kubesource.KubernetesSource(namespace=proxy_settings.namespace)
    return source


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    reuse_port: bool = False,
    shutdown_timeout_s: float = 30.0,
    on_ready: Callable[[int], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    header_timeout_s: float = _DEFAULTS.header_timeout_s,
    idle_timeout_s: float = _DEFAULTS.idle_timeout_s,
) -> None:
    """Serve `app` until `stop` is set, then shut down gracefully: stop accepting, let in-flight
    requests finish (up to `shutdown_timeout_s`), run the app's cleanup. `on_ready(port)` is
    called once listening (the actual port when `port` is 0). With `ssl_context`, HTTPS only.
    Connection deadlines: see listener.py."""
    runner = listener.ProxyRunner(
        app,
        head_timeout_s=header_timeout_s,
        idle_timeout_s=idle_timeout_s,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        handle_signals=False,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, host, port, reuse_port=reuse_port or None, backlog=1024, ssl_context=ssl_context
        )
        await site.start()
        if on_ready is not None:
            on_ready(_bound_port(runner, port))
        await stop.wait()
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback


async def _serve_settings(proxy_settings: settings.ProxySettings) -> None:
    from llmkeys_proxy import app as proxy_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    preload_encodings(proxy_settings)  # a no-op in forked workers: the master built them
    application = proxy_app.create_app(
        proxy_settings, build_source(proxy_settings), build_limiter(proxy_settings)
    )

    def ready(port: int) -> None:
        logger.info(
            "proxy listening on %s:%d (pid %d)%s",
            proxy_settings.host,
            port,
            os.getpid(),
            " with TLS" if proxy_settings.tls_cert_file else "",
        )
        freeze_startup_heap()

    async with listener_tls(proxy_settings, stop) as ssl_context:
        await serve_app(
            application,
            proxy_settings.host,
            proxy_settings.port,
            stop,
            reuse_port=proxy_settings.workers > 1,
            shutdown_timeout_s=proxy_settings.shutdown_timeout_s,
            on_ready=ready,
            ssl_context=ssl_context,
            header_timeout_s=proxy_settings.header_timeout_s,
            idle_timeout_s=proxy_settings.idle_timeout_s,
        )
    logger.info("proxy stopped (pid %d)", os.getpid())


def encodings_to_preload(proxy_settings: settings.ProxySettings) -> tuple[str, ...]:
    """The encodings LLMKEYS_PRELOAD_ENCODINGS names; ValueError for one we do not ship."""

    names = tuple(
        name
        for name in (part.strip() for part in proxy_settings.preload_encodings.split(","))
        if name not in ("", "none")
    )
    unknown = sorted(set(names) - set(tokens.ENCODINGS))
    if unknown:
        raise ValueError(
            f"LLMKEYS_PRELOAD_ENCODINGS names unknown encodings {unknown}; "
            f"shipped: {sorted(tokens.ENCODINGS)}"
        )
    return names


def preload_encodings(proxy_settings: settings.ProxySettings) -> None:
    """Build the configured tiktoken encodings now, before traffic (see ProxySettings)."""

    tokens.preload_encodings(encodings_to_preload(proxy_settings))


def freeze_startup_heap() -> None:
    """Collect start-up garbage, then move every object alive now (modules, config, routing table)
    out of the cyclic collector's view: a full collection would otherwise walk them all, a pause
    of ~70 ms in the middle of serving (measured under load), for objects that live forever."""
    gc.collect()
    gc.freeze()


def run_event_loop(main: Coroutine[Any, Any, None]) -> int:
    """Run `main` on uvloop when installed (asyncio's loop otherwise)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)
    return 0


async def serve_directory(
    config_dir: str | os.PathLike[str],
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    redis_url: str | None = None,
    ready: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    reload_interval_s: float = 0.5,
    reuse_port: bool = False,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    on_limiter: Callable[[limits_base.Limiter], None] | None = None,
    audit_file_stream: str | None = None,
) -> None:
    """Serve the compiled config in `config_dir` (standalone mode) until `stop` is set; `ready` is
    set and `on_ready()` called once listening and the first config is loaded. `reuse_port`: one of
    several processes sharing the port (`llmkeys serve --workers`), each with its own
    `audit_file_stream`. `on_limiter` is given the limiter the proxy counts with (standalone mode
    reads usage from it for its status files)."""
    from llmkeys_proxy import app as proxy_app

    proxy_settings = settings.ProxySettings.from_env(
        host=host,
        port=port,
        config_source="directory",
        config_dir=str(config_dir),
        reload_interval_s=reload_interval_s,
        redis_url=redis_url or None,
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        audit_file_stream=audit_file_stream,
    )
    preload_encodings(proxy_settings)
    source = sources.DirectorySource(config_dir, reload_interval_s)
    limiter = build_limiter(proxy_settings)
    if on_limiter is not None:
        on_limiter(limiter)
    application = proxy_app.create_app(proxy_settings, source, limiter)

    def listening(_port: int) -> None:
        if ready is not None:
            ready.set()
        if on_ready is not None:
            on_ready()

    async with listener_tls(proxy_settings, stop) as ssl_context:
        await serve_app(
            application,
            host,
            port,
            stop,
            reuse_port=reuse_port,
            shutdown_timeout_s=proxy_settings.shutdown_timeout_s,
            on_ready=listening,
            ssl_context=ssl_context,
            header_timeout_s=proxy_settings.header_timeout_s,
            idle_timeout_s=proxy_settings.idle_timeout_s,
        )


def worker_settings(proxy_settings: settings.ProxySettings, n: int) -> settings.ProxySettings:
    """Worker `n`'s settings: its own audit file chain (two processes must not share one)."""
    return dataclasses.replace(proxy_settings, audit_file_stream=f"{proxy_settings.audit_file_stream}-w{n}")


def _worker(proxy_settings: settings.ProxySettings) -> None:
    # Forked from the master: drop its signal handlers (they stop workers) until the loop installs
    # this worker's own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    configure_logging(proxy_settings.log_level)
    run_event_loop(_serve_settings(proxy_settings))


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for the worker processes started inside the block, so /metrics of any
    worker shows the sum over all: the one set in the environment, else a temporary one removed after."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    own_metrics_dir = tempfile.mkdtemp(prefix="llmkeys-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(own_metrics_dir, ignore_errors=True)


def run_workers(proxy_settings: settings.ProxySettings) -> int:
    """Start `workers` processes on one port (SO_REUSEPORT); stop them all on SIGTERM/SIGINT; if
    one dies, stop the rest and fail (the orchestrator restarts the pod)."""
    with shared_metrics_dir():
        return _run_workers(proxy_settings)


def _run_workers(proxy_settings: settings.ProxySettings) -> int:
    # Fork after importing what workers run: each starts in milliseconds instead of re-importing
    # everything (a spawned worker took ~1 s, 2 s on a busy machine), and the imported code's pages
    # stay shared between workers. Safe here: the master has no event loop and no other thread.
    importlib.import_module("llmkeys_proxy.app")
    importlib.import_module(
        "llmkeys_proxy.limits.redis" if proxy_settings.redis_url else "llmkeys_proxy.limits.memory"
    )
    if proxy_settings.trusted_issuers or proxy_settings.kubernetes_issuer != "off":
        importlib.import_module("llmkeys_proxy.identity").load_jose()
    # Built once here, the encodings' tables are shared copy-on-write by every forked worker.
    preload_encodings(proxy_settings)
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(
            target=_worker,
            args=(worker_settings(proxy_settings, n),),
            name=f"llmkeys-proxy-{n}",
            daemon=False,
        )
        for n in range(proxy_settings.workers)
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.start()
    logger.info("started %d proxy workers", len(children))
    failed = False
    while any(child.is_alive() for child in children):
        for child in children:
            child.join(timeout=0.5)
            if not child.is_alive() and child.exitcode not in (0, None) and not stopping:
                logger.error("worker %s exited with %s; stopping the others", child.name, child.exitcode)
                failed = True
                forward(signal.SIGTERM, None)
    return 1 if failed else 0
