"""The proxy's HTTP listener: aiohttp's server with connection deadlines and JSON parser errors.

Used by `server.serve_app` (every way the proxy is served) through `ProxyRunner`. aiohttp alone
keeps a connection that never completes a request head open for an hour, and answers what its
HTTP parser refuses in plain text that quotes the refused bytes and names the server software.
Here:
- a connection must deliver its first request head within `head_timeout_s`
  (LLMKEYS_HEADER_TIMEOUT_S) or is closed; later requests on it have `idle_timeout_s`
  (LLMKEYS_IDLE_TIMEOUT_S, aiohttp's keep-alive timeout, which also closes a connection stuck in a
  request head); the body has its own deadline in the pipeline (LLMKEYS_BODY_TIMEOUT_S), and a body
  left unread is drained for at most `LINGER_S` after the answer;
- a refused request gets the documented JSON error (`bad_request`) and one log line naming the
  parser's reason class only, never the request's bytes (which may hold a key);
- no response says `Server: Python/... aiohttp/...`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web, web_protocol, web_request

from llmkeys_proxy import apis, errors

logger = logging.getLogger("llmkeys.proxy.listener")

#: How long a connection whose request body was not read whole (refused early, or too slow) is
#: drained after the answer before it is closed (aiohttp's default: 10 s per such connection).
LINGER_S = 2.0
#: The Server header of every response (aiohttp's names its version and Python's).
SERVER_NAME = "llmkeys"


class GuardedRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler with a deadline for the first request head and JSON errors."""

    __slots__ = ("_head_handle", "_head_timeout_s")

    def __init__(self, manager: web.Server, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._head_timeout_s > 0:
            self._head_handle = self._loop.call_later(self._head_timeout_s, self._head_expired)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_handle is not None and self._request_count:
            self._head_handle.cancel()
            self._head_handle = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None
        super().connection_lost(exc)

    def _head_expired(self) -> None:
        self._head_handle = None
        if not self._request_count:
            self.force_close()

    def handle_error(
        self,
        request: web_request.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's version logs the exception (its message quotes the refused line) and answers it
        # in plain text. Neither may carry a client's bytes: they can hold a key.
        if status >= 500:
            logger.error("request from %s failed in the HTTP layer: %s", request.remote, type(exc).__name__)
            error = errors.ProxyError("internal_error", "Internal proxy error.", status=status)
        else:
            logger.info("refused a malformed request from %s: %s", request.remote, type(exc).__name__)
            error = errors.ProxyError(
                "bad_request",
                f"The request could not be parsed as HTTP ({_reason(exc)}).",
                status=status,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        response = apis.FAMILIES["openai"].error_response(error)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


def _reason(exc: BaseException | None) -> str:
    """A fixed phrase for the parser's complaint (its own message quotes the input)."""
    name = type(exc).__name__ if exc is not None else ""
    return {
        "LineTooLong": "request line or header too long",
        "BadHttpMethod": "bad method",
        "BadStatusLine": "bad request line",
        "InvalidHeader": "invalid header",
        "InvalidURLError": "invalid URL",
        "TransferEncodingError": "bad transfer encoding",
        "ContentLengthError": "bad content length",
    }.get(name, "malformed request")


class GuardedServer(web.Server):
    """`web.Server` whose connections are `GuardedRequestHandler`s."""

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout_s = head_timeout_s

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self, head_timeout_s=self._head_timeout_s, loop=self._loop, **self._kwargs
        )


class ProxyRunner(web.AppRunner):
    """`web.AppRunner` serving through `GuardedServer`; `idle_timeout_s` is aiohttp's keep-alive
    timeout (a connection without a request being handled is closed after it)."""

    def __init__(
        self, app: web.Application, *, head_timeout_s: float, idle_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(app, keepalive_timeout=idle_timeout_s, lingering_time=LINGER_S, **kwargs)
        self._head_timeout_s = head_timeout_s

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        # The same server aiohttp built (handler, request factory, settings), with guarded connections.
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            head_timeout_s=self._head_timeout_s,
            **plain._kwargs,
        )


async def name_server(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` signal of the proxy app: our Server header instead of aiohttp's."""
    response.headers["Server"] = SERVER_NAME
