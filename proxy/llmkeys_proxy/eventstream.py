"""AWS event-stream decoding (`application/vnd.amazon.eventstream`); no format knowledge.

Used by the Bedrock stream meters (`streams`) to read ConverseStream and
InvokeModelWithResponseStream bodies as they pass: frames may span reads, both CRCs are checked,
and a corrupt stream fails for good (frame boundaries cannot be recovered). The encoder the fakes
and tests need lives in tests/fakes/encoders.py.
"""

from __future__ import annotations

import binascii
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

HeaderValue = bool | int | bytes | str | datetime | uuid.UUID

#: Largest frame accepted (AWS: payload <= 16 MiB, headers <= 128 KiB); bigger means corruption.
MAX_EVENT_FRAME_BYTES = 16 * 1024 * 1024 + 128 * 1024 + 16
_PRELUDE = struct.Struct(">III")
_CRC = struct.Struct(">I")


class EventStreamError(ValueError):
    """A frame failed its CRC or length checks: the stream is corrupt and cannot be resynchronised."""


@dataclass(frozen=True, slots=True)
class EventStreamMessage:
    """One decoded frame: its headers and raw payload."""

    headers: Mapping[str, HeaderValue]
    payload: bytes

    def _text(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None

    @property
    def message_type(self) -> str | None:
        """`event`, `exception` or `error`."""
        return self._text(":message-type")

    @property
    def event_type(self) -> str | None:
        return self._text(":event-type")

    @property
    def exception_type(self) -> str | None:
        return self._text(":exception-type")


def _decode_headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0
    end = len(data)
    try:
        while pos < end:
            name_len = data[pos]
            name = data[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = data[pos]
            pos += 1
            value: HeaderValue
            if kind == 7 or kind == 6:  # string / byte array
                (length,) = struct.unpack_from(">H", data, pos)
                raw = data[pos + 2 : pos + 2 + length]
                if len(raw) != length:
                    raise EventStreamError("truncated event-stream header")
                value = raw.decode("utf-8") if kind == 7 else raw
                pos += 2 + length
            elif kind == 0 or kind == 1:
                value = kind == 0
            elif kind == 2:
                value = struct.unpack_from(">b", data, pos)[0]
                pos += 1
            elif kind == 3:
                value = struct.unpack_from(">h", data, pos)[0]
                pos += 2
            elif kind == 4:
                value = struct.unpack_from(">i", data, pos)[0]
                pos += 4
            elif kind == 5:
                value = struct.unpack_from(">q", data, pos)[0]
                pos += 8
            elif kind == 8:
                millis = struct.unpack_from(">q", data, pos)[0]
                value = datetime.fromtimestamp(millis / 1000, tz=UTC)
                pos += 8
            elif kind == 9:
                value = uuid.UUID(bytes=data[pos : pos + 16])
                pos += 16
            else:
                raise EventStreamError(f"unknown event-stream header type {kind}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, EventStreamError):
            raise
        raise EventStreamError("malformed event-stream headers") from None
    if pos != end:
        raise EventStreamError("malformed event-stream headers")
    return headers


class EventStreamParser:
    """Incremental vnd.amazon.eventstream decoder: frames may span reads; both CRCs are checked.

    After an EventStreamError the parser stays failed (frame boundaries are lost)."""

    __slots__ = ("_buffer", "_failed")

    def __init__(self) -> None:
        self._buffer = b""
        self._failed = False

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        if self._failed:
            raise EventStreamError("event stream already failed")
        buffer = self._buffer + data if self._buffer else data
        messages: list[EventStreamMessage] = []
        pos = 0
        size = len(buffer)
        try:
            while size - pos >= 12:
                total, headers_len, prelude_crc = _PRELUDE.unpack_from(buffer, pos)
                if binascii.crc32(buffer[pos : pos + 8]) != prelude_crc:
                    raise EventStreamError("event-stream prelude CRC mismatch")
                if total < 16 or total > MAX_EVENT_FRAME_BYTES or headers_len > total - 16:
                    raise EventStreamError("event-stream frame length out of range")
                if size - pos < total:
                    break
                frame_end = pos + total
                (message_crc,) = _CRC.unpack_from(buffer, frame_end - 4)
                if binascii.crc32(buffer[pos : frame_end - 4]) != message_crc:
                    raise EventStreamError("event-stream message CRC mismatch")
                headers_start = pos + 12
                payload_start = headers_start + headers_len
                messages.append(
                    EventStreamMessage(
                        headers=_decode_headers(buffer[headers_start:payload_start]),
                        payload=buffer[payload_start : frame_end - 4],
                    )
                )
                pos = frame_end
        except EventStreamError:
            self._failed = True
            self._buffer = b""
            raise
        self._buffer = buffer[pos:] if pos < size else b""
        return messages

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back (non-zero at end of stream means truncation)."""
        return len(self._buffer)
