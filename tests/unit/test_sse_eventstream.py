"""SSE and AWS event-stream framing: incremental parsers against the specs and botocore's decoder."""

from __future__ import annotations

import binascii
import itertools
import struct

import orjson
import pytest
from botocore import eventstream as botocore_eventstream
from tests.fakes import encoders

from llmkeys_proxy import eventstream, sse


def sse_all(data: bytes, splits: list[int] | None = None) -> list[sse.SSEEvent]:
    parser = sse.SSEParser()
    events: list[sse.SSEEvent] = []
    cuts = [0, *(splits or []), len(data)]
    for start, end in itertools.pairwise(cuts):
        events.extend(parser.feed(data[start:end]))
    return events + parser.close()


SSE_SAMPLE = (
    b"\xef\xbb\xbf: a comment\n"
    b"event: greeting\n"
    b"id: 7\n"
    b"data: line one\n"
    b"data:line two\n"
    b"\n"
    b'data: {"x": 1}\r\n'
    b"\r\n"
    b"retry: 3000\r"
    b"data: cr only\r"
    b"\r"
    b"event: empty\n"
    b"\n"
    b"data\n"
    b"\n"
    b"data: last\n"
)


def test_sse_events() -> None:
    assert sse_all(SSE_SAMPLE) == [
        sse.SSEEvent(event="greeting", data="line one\nline two", id="7"),
        sse.SSEEvent(event="message", data='{"x": 1}', id="7"),
        sse.SSEEvent(event="message", data="cr only", id="7", retry=3000),
        sse.SSEEvent(event="message", data="", id="7"),
        sse.SSEEvent(event="message", data="last", id="7"),  # unterminated: returned by close()
    ]


def test_sse_split_at_every_byte_boundary() -> None:
    expected = sse_all(SSE_SAMPLE)
    for cut in range(1, len(SSE_SAMPLE)):
        assert sse_all(SSE_SAMPLE, [cut]) == expected, cut
    assert sse_all(SSE_SAMPLE, list(range(1, len(SSE_SAMPLE)))) == expected


def test_sse_crlf_split_between_cr_and_lf() -> None:
    parser = sse.SSEParser()
    assert parser.feed(b"data: a\r\n\r") == []
    events = parser.feed(b"\ndata: b\r\n\r\n")
    assert [e.data for e in events] == ["a", "b"]
    assert parser.close() == []


def test_format_sse_event_round_trips() -> None:
    encoded = encoders.sse_event("a\nb", event="delta") + encoders.sse_event(b"{}")
    assert sse_all(encoded) == [sse.SSEEvent("delta", "a\nb"), sse.SSEEvent("message", "{}")]


# --- AWS event stream -------------------------------------------------------------------------------


def frames() -> list[bytes]:
    return [
        encoders.aws_event("messageStart", {"role": "assistant", "p": "abcd"}),
        encoders.aws_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi ☃"}}),
        encoders.event_message(
            {":message-type": "exception", ":exception-type": "throttlingException", "flag": True, "n": -5},
            b'{"message":"slow down"}',
        ),
        encoders.event_message({":event-type": "blob", "raw": b"\x00\x01"}, b""),
    ]


def test_event_stream_frames_decode_like_botocore() -> None:
    data = b"".join(frames())
    ours = eventstream.EventStreamParser().feed(data)
    buffer = botocore_eventstream.EventStreamBuffer()
    buffer.add_data(data)
    theirs = list(buffer)
    assert len(ours) == len(theirs) == 4
    for mine, reference in zip(ours, theirs, strict=True):
        assert dict(mine.headers) == reference.headers
        assert mine.payload == reference.payload
    assert ours[0].event_type == "messageStart"
    assert ours[0].message_type == "event"
    assert orjson.loads(ours[1].payload)["delta"]["text"] == "Hi ☃"
    assert ours[2].message_type == "exception"
    assert ours[2].exception_type == "throttlingException"
    assert ours[2].headers["flag"] is True
    assert ours[2].headers["n"] == -5
    assert ours[3].headers["raw"] == b"\x00\x01"


def test_event_stream_parses_botocore_typed_headers() -> None:
    # Header types our encoder does not produce (byte, short, long, timestamp, uuid), built by hand.
    def header(name: bytes, kind: int, value: bytes) -> bytes:
        return bytes([len(name)]) + name + bytes([kind]) + value

    headers = (
        header(b"b", 2, struct.pack(">b", -1))
        + header(b"s", 3, struct.pack(">h", 300))
        + header(b"l", 5, struct.pack(">q", 2**40))
        + header(b"t", 8, struct.pack(">q", 1_700_000_000_000))
        + header(b"u", 9, bytes(range(16)))
        + header(b"f", 1, b"")
    )
    payload = b"{}"
    prelude = struct.pack(">II", 12 + len(headers) + len(payload) + 4, len(headers))
    head = prelude + struct.pack(">I", binascii.crc32(prelude)) + headers + payload
    frame = head + struct.pack(">I", binascii.crc32(head))
    (message,) = eventstream.EventStreamParser().feed(frame)
    reference = botocore_eventstream.EventStreamBuffer()
    reference.add_data(frame)
    (theirs,) = list(reference)
    assert message.headers["b"] == -1 == theirs.headers["b"]
    assert message.headers["s"] == 300 == theirs.headers["s"]
    assert message.headers["l"] == 2**40 == theirs.headers["l"]
    assert message.headers["t"].timestamp() == 1_700_000_000  # type: ignore[union-attr]
    assert str(message.headers["u"]) == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert message.headers["f"] is False


def test_event_stream_split_across_reads() -> None:
    data = b"".join(frames())
    expected = eventstream.EventStreamParser().feed(data)
    for cut in range(1, len(data)):
        parser = eventstream.EventStreamParser()
        got = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert got == expected, cut
        assert parser.pending_bytes == 0
    parser = eventstream.EventStreamParser()
    one_by_one = [m for i in range(len(data)) for m in parser.feed(data[i : i + 1])]
    assert one_by_one == expected


def test_event_stream_truncated_frame_is_pending() -> None:
    data = b"".join(frames())
    parser = eventstream.EventStreamParser()
    assert len(parser.feed(data[:-3])) == 3
    assert parser.pending_bytes == len(frames()[-1]) - 3


@pytest.mark.parametrize("offset", [2, 9, 20, -6, -1])
def test_event_stream_crc_mismatch_is_refused(offset: int) -> None:
    frame = bytearray(frames()[1])
    frame[offset] ^= 0x40
    parser = eventstream.EventStreamParser()
    with pytest.raises(eventstream.EventStreamError):
        parser.feed(bytes(frame))
    with pytest.raises(eventstream.EventStreamError, match="already failed"):
        parser.feed(frames()[0])


def test_event_stream_refuses_absurd_lengths() -> None:
    prelude = struct.pack(">II", 1 << 30, 0)
    garbage = prelude + struct.pack(">I", binascii.crc32(prelude))
    with pytest.raises(eventstream.EventStreamError, match="length"):
        eventstream.EventStreamParser().feed(garbage)
