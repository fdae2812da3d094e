"""A fake OpenAI-compatible provider built for speed, so the bench measures the proxy and not it.

Started by `bench.processes.start_upstream` as several processes sharing one port (SO_REUSEPORT),
or by hand: `python -m bench.upstream --port 9000 --api-key sk-upstream`. It speaks the real wire
format of POST /v1/chat/completions (JSON, and SSE streaming with 20+ chunks and the final usage
chunk when `stream_options.include_usage` is set) and GET /v1/models, with HTTP/1.1 keep-alive.
A raw asyncio protocol on uvloop instead of aiohttp: several times cheaper per request, because on
this machine the fake shares a core with the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import typing
from dataclasses import dataclass

import orjson

STREAM_CONTENT_CHUNKS = 20
COMPLETION_WORDS = ("Hello", " from", " the", " bench", " upstream", ".")
CREATED = 1_760_000_000


@dataclass(frozen=True, slots=True)
class ChatShape:
    """What the fake needs from a chat request to pick its (cached) answer."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int


def chat_shape(body: bytes) -> ChatShape:
    """Read the few fields the answer depends on; prompt tokens are a cheap stand-in (bytes / 4)."""
    payload = orjson.loads(body) if body else {}
    if not isinstance(payload, dict):
        payload = {}
    options = payload.get("stream_options") or {}
    return ChatShape(
        model=str(payload.get("model", "unknown")),
        stream=bool(payload.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage", False)),
        prompt_tokens=max(1, len(body) // 4),
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def chat_completion_body(shape: ChatShape) -> bytes:
    """A complete non-streaming chat.completion response body."""
    content = "".join(COMPLETION_WORDS[i % len(COMPLETION_WORDS)] for i in range(STREAM_CONTENT_CHUNKS))
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": shape.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(shape.prompt_tokens, STREAM_CONTENT_CHUNKS),
            "system_fingerprint": "fp_bench",
        }
    )


def chat_stream_events(shape: ChatShape) -> list[bytes]:
    """The SSE events of a streamed chat completion, each a complete `data: ...\\n\\n` frame:
    a role chunk, 20 content chunks, a finish chunk, the usage chunk if asked, and [DONE]."""
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": shape.model,
    }
    base["system_fingerprint"] = "fp_bench"
    if shape.include_usage:
        base["usage"] = None
    deltas: list[tuple[dict[str, object], str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [
        ({"content": COMPLETION_WORDS[i % len(COMPLETION_WORDS)]}, None) for i in range(STREAM_CONTENT_CHUNKS)
    ]
    deltas.append(({}, "stop"))
    events = [
        b"data: "
        + orjson.dumps(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}]}
        )
        + b"\n\n"
        for delta, fin in deltas
    ]
    if shape.include_usage:
        usage_chunk = {**base, "choices": [], "usage": _usage(shape.prompt_tokens, STREAM_CONTENT_CHUNKS)}
        events.append(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_UNAUTHORIZED = _response(
    "401 Unauthorized",
    b"application/json",
    b'{"error":{"message":"Incorrect API key provided","type":"invalid_request_error",'
    b'"param":null,"code":"invalid_api_key"}}',
)
_NOT_FOUND = _response(
    "404 Not Found",
    b"application/json",
    b'{"error":{"message":"Unknown path","type":"invalid_request_error","param":null,"code":null}}',
)
_HEALTHY = _response("200 OK", b"text/plain", b"ok")


class _Answers:
    """Responses cached by request shape: building JSON once per shape keeps the fake cheap."""

    def __init__(self, api_key: str) -> None:
        self.auth_header = b"authorization: bearer " + api_key.lower().encode()
        self._plain: dict[ChatShape, bytes] = {}
        self._streams: dict[ChatShape, list[bytes]] = {}
        self.models = _response(
            "200 OK",
            b"application/json",
            orjson.dumps(
                {
                    "object": "list",
                    "data": [{"id": "gpt-bench", "object": "model", "created": CREATED, "owned_by": "bench"}],
                }
            ),
        )

    def plain(self, shape: ChatShape) -> bytes:
        answer = self._plain.get(shape)
        if answer is None:
            answer = self._plain[shape] = _response(
                "200 OK", b"application/json", chat_completion_body(shape)
            )
        return answer

    def stream(self, shape: ChatShape) -> list[bytes]:
        frames = self._streams.get(shape)
        if frames is None:
            frames = [b"%x\r\n%s\r\n" % (len(event), event) for event in chat_stream_events(shape)]
            frames.append(b"0\r\n\r\n")
            self._streams[shape] = frames
        return frames


class _UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length or chunked request bodies, one request at a time."""

    def __init__(self, answers: _Answers, chunk_delay_s: float) -> None:
        self._answers = answers
        self._chunk_delay_s = chunk_delay_s
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = typing.cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            parsed = parse_request(self._buffer)
            if parsed is None:
                return
            head, body, consumed = parsed
            del self._buffer[:consumed]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        lowered = head.lower()
        request_line = head[: head.find(b"\r\n")]
        close = b"\r\nconnection: close" in lowered
        if request_line.startswith(b"GET /healthz"):
            transport.write(_HEALTHY)
        elif self._answers.auth_header not in lowered:
            transport.write(_UNAUTHORIZED)
        elif request_line.startswith(b"POST ") and b"/chat/completions" in request_line:
            shape = chat_shape(body)
            if not shape.stream:
                transport.write(self._answers.plain(shape))
            elif self._chunk_delay_s > 0:
                self._write_paced(self._answers.stream(shape), close)
                return
            else:
                transport.write(_STREAM_HEAD)
                for frame in self._answers.stream(shape):
                    transport.write(frame)  # one write per event, as a real provider sends them
        elif request_line.startswith(b"GET ") and b"/models" in request_line:
            transport.write(self._answers.models)
        else:
            transport.write(_NOT_FOUND)
        if close:
            transport.close()

    def _write_paced(self, frames: list[bytes], close: bool) -> None:
        loop = asyncio.get_running_loop()
        transport = self._transport
        assert transport is not None
        transport.write(_STREAM_HEAD)

        def send(index: int) -> None:
            if transport.is_closing():
                return
            transport.write(frames[index])
            if index + 1 < len(frames):
                loop.call_later(self._chunk_delay_s, send, index + 1)
            elif close:
                transport.close()

        loop.call_later(self._chunk_delay_s, send, 0)


def parse_request(buffer: bytearray) -> tuple[bytes, bytes, int] | None:
    """(head, body, bytes consumed) of the first complete request in `buffer`, or None if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    lowered = head.lower()
    start = end + 4
    marker = lowered.find(b"\r\ncontent-length:")
    if marker >= 0:
        line_end = lowered.find(b"\r\n", marker + 2)
        length = int(lowered[marker + 17 : line_end if line_end >= 0 else len(lowered)].strip())
        if len(buffer) < start + length:
            return None
        return head, bytes(buffer[start : start + length]), start + length
    if b"\r\ntransfer-encoding: chunked" in lowered:
        body = bytearray()
        position = start
        while True:
            size_end = buffer.find(b"\r\n", position)
            if size_end < 0:
                return None
            size = int(bytes(buffer[position:size_end]).split(b";", 1)[0], 16)
            chunk_start = size_end + 2
            if len(buffer) < chunk_start + size + 2:
                return None
            if size == 0:
                # Trailers are not used by clients of this fake: the chunked body ends with CRLF.
                return head, bytes(body), chunk_start + 2
            body += buffer[chunk_start : chunk_start + size]
            position = chunk_start + size + 2
    return head, b"", start


async def listen(host: str, port: int, api_key: str, chunk_delay_s: float = 0.0) -> asyncio.Server:
    """A listening fake upstream on the running loop (port 0 picks a free one); SO_REUSEPORT lets
    several processes share `port`."""
    loop = asyncio.get_running_loop()
    answers = _Answers(api_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return await loop.create_server(lambda: _UpstreamProtocol(answers, chunk_delay_s), sock=sock)


async def serve(host: str, port: int, api_key: str, chunk_delay_s: float) -> None:
    """Serve until SIGTERM/SIGINT; prints `ready <pid>` once listening (the parent waits for it)."""
    loop = asyncio.get_running_loop()
    server = await listen(host, port, api_key, chunk_delay_s)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {os.getpid()}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True, help="the only credential accepted (Bearer)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between SSE events")
    args = parser.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, args.api_key, args.chunk_delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
