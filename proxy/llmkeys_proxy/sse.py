"""Server-sent events framing (WHATWG HTML "server-sent events" parsing rules); no format knowledge.

Used by the stream meters of the SSE wire formats (`streams`, per-event usage capture) and by tests
(`SSEParser`, an incremental parser of a whole stream). The meters work on blocks of whole events:
`last_event_end` finds where the complete events of a read end, `raw_events` splits such a block
(with byte spans, so an event can be dropped), `event_start` / `event_data_at` find the one event
around a substring match without parsing the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched SSE event; `event` is "message" when the stream named none."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class RawEvent:
    """An event inside a block of whole events, with its byte span (for dropping it)."""

    event: bytes
    data: bytes
    start: int
    end: int
    id: bytes | None = None
    retry: bytes | None = None


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, sep, value = line.partition(b":")
    if sep and value[:1] == b" ":
        value = value[1:]
    return name, value


def raw_events(block: bytes, *, flush: bool = False) -> Iterator[RawEvent]:
    """Events of `block`; an unterminated last event is yielded only with `flush`."""
    data: list[bytes] = []
    event = b""
    event_id: bytes | None = None
    retry: bytes | None = None
    start = 0
    pos = 0
    for match in _LINE_END.finditer(block):
        line = block[pos : match.start()]
        pos = match.end()
        if not line:
            if data:
                yield RawEvent(event or b"message", b"\n".join(data), start, pos, event_id, retry)
            data, event, retry = [], b"", None
            start = pos
            continue
        if line[:1] == b":":
            continue
        name, value = _field(line)
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
        elif name == b"id" and b"\0" not in value:
            event_id = value
        elif name == b"retry" and value.isdigit():
            retry = value
    if flush:
        tail = block[pos:]
        if tail and tail[:1] != b":":
            name, value = _field(tail)
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
        if data:
            yield RawEvent(event or b"message", b"\n".join(data), start, len(block), event_id, retry)


def _boundary_before(data: bytes, pos: int) -> int:
    """Index just past the last blank line (event boundary) ending at or before `pos`, or -1.

    A boundary is two line endings in a row (LF LF, CRLF CRLF, CR CR, mixed). The rarer CR forms
    are searched only after the last LF LF, so a block is scanned about once."""
    end = data.rfind(b"\n\n", 0, pos)
    if end >= 0:
        end += 2
    low = max(end - 3, 0)
    crlf = data.rfind(b"\n\r\n", low, pos)
    if crlf >= 0 and crlf + 3 > end:
        end = crlf + 3
    cr = data.rfind(b"\r\r", low, pos)
    if cr >= 0 and cr + 2 > end:
        # CR CR LF: the LF belongs to the second line ending. (Cutting after CR CR when the LF only
        # arrives with the next read leaves it to start the next block, where it reads as an empty
        # line and dispatches nothing: harmless.)
        end = cr + 3 if data[cr + 2 : cr + 3] == b"\n" and cr + 3 <= pos else cr + 2
    return end


def last_event_end(data: bytes) -> int:
    """Index just past the last event boundary in `data`, or -1 when there is none."""
    return _boundary_before(data, len(data))


def event_start(block: bytes, pos: int) -> int:
    """Start of the event containing `pos`: just past the previous blank line (or 0)."""
    return max(_boundary_before(block, pos), 0)


class SSEParser:
    """Incremental SSE parser: feed raw bytes as they arrive, get the events completed so far.

    Handles CRLF, CR and LF line endings (also a CRLF split across two chunks), comments, multi-line
    data and a leading BOM. `close()` returns an unterminated last event (lenient: usage often sits
    in the last event of a stream whose server forgot the final blank line)."""

    __slots__ = ("_buffer", "_last_id", "_started")

    def __init__(self) -> None:
        self._buffer = b""
        self._last_id: str | None = None
        self._started = False

    def _convert(self, raw: Iterator[RawEvent]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for item in raw:
            if item.id is not None:
                self._last_id = item.id.decode("utf-8", "replace")
            events.append(
                SSEEvent(
                    event=item.event.decode("utf-8", "replace"),
                    data=item.data.decode("utf-8", "replace"),
                    id=self._last_id,
                    retry=int(item.retry) if item.retry is not None else None,
                )
            )
        return events

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._buffer + data if self._buffer else data
        if not self._started and buffer:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._buffer = buffer
                return []
            self._started = True
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
        cut = last_event_end(buffer)
        if cut < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[cut:]
        return self._convert(raw_events(buffer[:cut]))

    def close(self) -> list[SSEEvent]:
        buffer, self._buffer = self._buffer, b""
        return self._convert(raw_events(buffer, flush=True)) if buffer else []


def event_data_at(block: bytes, pos: int) -> bytes | None:
    """The data of the SSE event containing `pos` (a whole-events block)."""
    start = event_start(block, pos)
    for event in raw_events(block[start:], flush=True):
        return event.data
    return None
