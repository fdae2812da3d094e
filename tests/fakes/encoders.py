"""Encoders of the streaming wire framings, for provider fakes and tests (the proxy only decodes):
SSE events and AWS event-stream frames with correct CRCs."""

from __future__ import annotations

import binascii
import struct
from collections.abc import Mapping
from typing import Any

import orjson

_CRC = struct.Struct(">I")


def sse_event(data: str | bytes, event: str | None = None) -> bytes:
    """One SSE event as bytes (`event:` line when named, one `data:` line per data line)."""
    payload = data.encode() if isinstance(data, str) else data
    lines = [b"event: " + event.encode()] if event else []
    lines.extend(b"data: " + line for line in payload.split(b"\n"))
    return b"\n".join(lines) + b"\n\n"


def event_message(headers: Mapping[str, str | bytes | bool | int], payload: bytes) -> bytes:
    """One event-stream frame with correct CRCs (strings, byte arrays, bools and int32 headers)."""
    encoded = bytearray()
    for name, value in headers.items():
        raw_name = name.encode()
        encoded += bytes([len(raw_name)]) + raw_name
        if isinstance(value, bool):
            encoded.append(0 if value else 1)
        elif isinstance(value, int):
            encoded += b"\x04" + struct.pack(">i", value)
        else:
            raw = value.encode() if isinstance(value, str) else value
            encoded += (b"\x07" if isinstance(value, str) else b"\x06") + struct.pack(">H", len(raw)) + raw
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    head = prelude + _CRC.pack(binascii.crc32(prelude)) + bytes(encoded) + payload
    return head + _CRC.pack(binascii.crc32(head))


def aws_event(event_type: str, body: Mapping[str, Any]) -> bytes:
    """A Bedrock-style `event` frame carrying a JSON body (what fake upstreams send)."""
    return event_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        orjson.dumps(body),
    )
