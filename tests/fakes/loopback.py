"""Run an aiohttp application on a free 127.0.0.1 port for the length of a test (provider fakes)."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve `app` on a fresh loopback port; yields its base URL (`http(s)://127.0.0.1:<port>`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
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
