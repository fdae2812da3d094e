"""Loopback plumbing for tests: a free 127.0.0.1 port, a port nothing listens on, and an aiohttp
application served on a fresh port for the length of a test (provider fakes, the proxy harness)."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

from aiohttp import web


def free_port() -> int:
    """A 127.0.0.1 TCP port free right now (for a child process or server that binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, ssl_context: ssl.SSLContext | None = None, *, cancel_handlers: bool = False
) -> AsyncIterator[str]:
    """Serve `app` on a fresh loopback port; yields its base URL (`http(s)://127.0.0.1:<port>`).

    With `cancel_handlers`, handlers are cancelled when their client goes away and at shutdown: a
    fake that sleeps to play a slow provider must not hold the test up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if cancel_handlers:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    else:
        runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        if ssl_context is not None and runner.server is not None:
            # A TLS close waits for the peer's close_notify, which a pooled client connection that
            # its library has not released yet never sends: drop idle TLS connections outright.
            for handler in runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        await runner.cleanup()
