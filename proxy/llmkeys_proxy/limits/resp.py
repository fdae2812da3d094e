"""A lean Redis client for the limiter's hot path: one multiplexed connection, automatic pipelining.

Used by `limits.redis.RedisLimiter` for its script calls (reserve, settle, release, seed) against a
single Redis node. Why not redis-py's asyncio client there: it spends ~250 us of CPU per pipelined
call (connection pool, command packing, per-call timeouts, response parsing), more than the rest of
the proxy's work on a request together. Here every command issued during one event-loop tick goes
out in one write on one connection (requests of many clients share a round trip), replies are
matched to callers in order, and one watchdog bounds the wait for the oldest reply instead of a
timer per call. The URL is understood exactly as redis-py does (`redis.asyncio.connection.parse_url`,
its TLS context for `rediss://`), including `user:password@`, `/db`, `unix://` and `ssl_*` options.
RESP2 replies: simple strings, errors, integers, bulk strings, arrays (nested), nulls.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import connection as redis_connection

#: What a command argument may be; str is sent as UTF-8, int as its decimal digits.
Arg = bytes | str | int
#: A decoded reply: bytes (simple and bulk strings), int, None, list of replies, or a `ReplyError`.
Reply = Any


class ReplyError(Exception):
    """An error reply of one command (e.g. NOSCRIPT); returned in its place, not raised."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RespConnectionError(ConnectionError):
    """The connection could not be made, broke, or Redis did not answer in time."""


class RespTimeoutError(RespConnectionError):
    """Redis did not answer in time (the connection is dropped; the batch is not retried)."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where and how to connect, from a redis URL. The password never shows in repr."""

    host: str | None = None
    port: int = 6379
    path: str | None = None  # unix socket
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)


def parse_address(url: str) -> Address:
    """The `Address` of `url` as redis-py reads it; ValueError (never echoing the URL) otherwise."""
    try:
        kwargs: dict[str, Any] = dict(redis_connection.parse_url(url))
    except ValueError:
        raise ValueError("invalid Redis URL (expected redis://, rediss:// or unix://)") from None
    connection_class = kwargs.pop("connection_class", None)
    ssl_context = None
    if connection_class is redis_connection.SSLConnection:
        ssl_kwargs = {name: value for name, value in kwargs.items() if name.startswith("ssl_")}
        ssl_context = redis_connection.SSLConnection(**ssl_kwargs).ssl_context.get()
    return Address(
        host=kwargs.get("host", "localhost") if "path" not in kwargs else None,
        port=int(kwargs.get("port", 6379)),
        path=kwargs.get("path"),
        db=int(kwargs.get("db", 0) or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        ssl_context=ssl_context,
    )


class _NotText(Exception):
    """An argument that is neither str nor int: take the general path."""


def _decimal(arg: Arg) -> str:
    if arg.__class__ is int:
        return str(arg)
    raise _NotText


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    # Fast path for the limiter's calls (ASCII str and int only): one str built, encoded once.
    try:
        texts = [arg if arg.__class__ is str else _decimal(arg) for arg in args]
    except _NotText:
        return _encode_any(args)
    body = "".join([f"${len(text)}\r\n{text}\r\n" for text in texts])
    if not body.isascii():  # lengths above are characters: right for ASCII only
        return _encode_any(args)
    return f"*{len(texts)}\r\n{body}".encode()


def _encode_any(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        else:
            raise TypeError(f"unsupported Redis argument type {type(arg).__name__}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def parse_reply(buffer: bytes | bytearray, position: int) -> tuple[Reply, int]:
    """The reply starting at `position` and the position after it; `_Incomplete` if cut short."""
    end = buffer.find(b"\r\n", position)
    if end < 0:
        raise _Incomplete
    kind = buffer[position]
    if kind == 58:  # ':' integer
        return int(buffer[position + 1 : end]), end + 2
    if kind == 36:  # '$' bulk string
        length = int(buffer[position + 1 : end])
        if length < 0:
            return None, end + 2
        start = end + 2
        if len(buffer) < start + length + 2:
            raise _Incomplete
        return bytes(buffer[start : start + length]), start + length + 2
    if kind == 42:  # '*' array
        count = int(buffer[position + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        position = end + 2
        for _ in range(count):
            item, position = parse_reply(buffer, position)
            items.append(item)
        return items, position
    if kind == 43:  # '+' simple string
        return bytes(buffer[position + 1 : end]), end + 2
    if kind == 45:  # '-' error
        return ReplyError(bytes(buffer[position + 1 : end]).decode(errors="replace")), end + 2
    raise RespConnectionError(f"unexpected reply type byte {kind!r} from Redis")


class _Waiter:
    """A caller waiting for `expected` replies (its commands were sent together, in order)."""

    __slots__ = ("deadline", "expected", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Reply]], expected: int, deadline: float) -> None:
        self.future = future
        self.expected = expected
        self.deadline = deadline
        self.replies: list[Reply] = []


class _Protocol(asyncio.Protocol):
    """One connection: writes coalesced per loop tick, replies handed out in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout_s: float) -> None:
        self._loop = loop
        self._reply_timeout_s = reply_timeout_s
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    # asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RespConnectionError("connection to Redis lost"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        position = 0
        waiters = self._waiters
        try:
            while position < len(buffer) and waiters:
                reply, position = parse_reply(buffer, position)
                waiter = waiters[0]
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.expected:
                    waiters.popleft()
                    if not waiter.future.done():
                        waiter.future.set_result(waiter.replies)
        except _Incomplete:
            pass
        except (RespConnectionError, ValueError) as exc:
            self._fail(RespConnectionError(f"unreadable reply from Redis: {exc}"))
            return
        del buffer[:position]

    # sending --------------------------------------------------------------------------------------

    def send(self, payload: bytes, expected: int) -> asyncio.Future[list[Reply]]:
        """Queue `payload` (`expected` commands) for the next flush; the future gets their replies."""
        future: asyncio.Future[list[Reply]] = self._loop.create_future()
        if self.closed:
            future.set_exception(RespConnectionError("connection to Redis closed"))
            return future
        self._waiters.append(_Waiter(future, expected, self._loop.time() + self._reply_timeout_s))
        self._outgoing.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._reply_timeout_s, self._check_deadline)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outgoing and self._transport is not None and not self.closed:
            payload = self._outgoing[0] if len(self._outgoing) == 1 else b"".join(self._outgoing)
            self._outgoing.clear()
            self._transport.write(payload)

    def _check_deadline(self) -> None:
        # Replies come in order: only the oldest waiter can be the first one late.
        self._watchdog = None
        if not self._waiters or self.closed:
            return
        late_by = self._loop.time() - self._waiters[0].deadline
        if late_by >= 0:
            self._fail(RespTimeoutError("Redis did not answer in time"))
            return
        self._watchdog = self._loop.call_later(-late_by, self._check_deadline)

    def _fail(self, error: RespConnectionError) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._outgoing.clear()
        if self._transport is not None:
            self._transport.abort()  # an unanswered reply may still arrive: never reuse the stream

    def close(self) -> None:
        self._fail(RespConnectionError("connection to Redis closed"))


class RespClient:
    """Commands to one Redis node over one shared connection, reconnecting when it breaks.

    `execute(commands)` sends the commands together (one round trip, pipelined with whatever else
    is sent in the same loop tick) and returns their replies in order; error replies are returned
    as `ReplyError` values. A broken connection or a reply later than `reply_timeout_s` raises
    `RespConnectionError` (`RespTimeoutError` for the latter); a batch whose connection broke is
    retried once on a new one when `retry_once` (the limiter's scripts are idempotent), a late one
    is not (a hung server would only make the caller wait twice)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 0.5, reply_timeout_s: float = 1.5) -> None:
        self._address = parse_address(url)
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._closed = False

    async def execute(self, commands: Sequence[Sequence[Arg]], *, retry_once: bool = True) -> list[Reply]:
        payload = b"".join([encode_command(command) for command in commands])
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connection()
        try:
            return await protocol.send(payload, len(commands))
        except RespTimeoutError:
            raise
        except RespConnectionError:
            if not retry_once or self._closed:
                raise
        protocol = await self._connection()
        return await protocol.send(payload, len(commands))

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._closed:
            raise RespConnectionError("client closed")
        if self._connecting is None or self._connecting.done():
            # One connect attempt shared by every caller that needs it meanwhile.
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        try:
            protocol = await asyncio.shield(self._connecting)
        except RespConnectionError:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise RespConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from None
        return protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        address = self._address

        def factory() -> _Protocol:
            return _Protocol(loop, self._reply_timeout_s)

        async with asyncio.timeout(self._connect_timeout_s):
            if address.path is not None:
                _, protocol = await loop.create_unix_connection(factory, address.path)
            else:
                _, protocol = await loop.create_connection(
                    factory,
                    address.host or "localhost",
                    address.port,
                    ssl=address.ssl_context,
                    server_hostname=address.host if address.ssl_context is not None else None,
                )
            setup: list[list[Arg]] = []
            if address.password is not None:
                setup.append(
                    ["AUTH", address.username, address.password]
                    if address.username
                    else ["AUTH", address.password]
                )
            if address.db:
                setup.append(["SELECT", address.db])
            if setup:
                replies = await protocol.send(b"".join(encode_command(c) for c in setup), len(setup))
                for reply in replies:
                    if isinstance(reply, ReplyError):
                        protocol.close()
                        # The server's words only (e.g. WRONGPASS ...); never the password.
                        raise RespConnectionError(f"Redis refused the connection setup: {reply.message[:80]}")
        self._protocol = protocol
        return protocol
