"""The lean Redis client's wire format (llmkeys_proxy/limits/resp.py): encoding, reply parsing, URLs."""

from __future__ import annotations

import ssl

import pytest

from llmkeys_proxy.limits import resp


def test_encode_command_bytes_str_int() -> None:
    assert resp.encode_command(("EVALSHA", b"ab", 2, "k\u00e9", -7)) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\nk\xc3\xa9\r\n$2\r\n-7\r\n"
    )
    with pytest.raises(TypeError):
        resp.encode_command(("SET", 1.5))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        resp.encode_command(("SET", True))


def _parse_all(data: bytes) -> list[object]:
    replies, position = [], 0
    while position < len(data):
        reply, position = resp.parse_reply(data, position)
        replies.append(reply)
    return replies


def test_parse_every_reply_type_including_nested_arrays_and_nulls() -> None:
    data = (
        b"+OK\r\n:-12\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n"
        b"*3\r\n:1\r\n*2\r\n$0\r\n\r\n$-1\r\n+x\r\n-NOSCRIPT No matching\r\n"
    )
    replies = _parse_all(data)
    assert replies[:6] == [b"OK", -12, b"he\r\no", None, None, [1, [b"", None], b"x"]]
    error = replies[6]
    assert isinstance(error, resp.ReplyError) and error.message.startswith("NOSCRIPT")


@pytest.mark.parametrize("cut", range(1, 30))
def test_every_truncation_is_incomplete_never_wrong(cut: int) -> None:
    data = b"*3\r\n:1\r\n$4\r\nabcd\r\n*1\r\n+OK\r\n"
    if cut >= len(data):
        return
    with pytest.raises(resp._Incomplete):
        resp.parse_reply(data[:cut], 0)
    assert resp.parse_reply(data, 0) == ([1, b"abcd", [b"OK"]], len(data))


def test_unknown_reply_type_is_a_connection_error() -> None:
    with pytest.raises(resp.RespConnectionError):
        resp.parse_reply(b"?what\r\n", 0)


def test_address_from_urls_as_redis_py_reads_them() -> None:
    plain = resp.parse_address("redis://user:p%40ss%20w@10.0.0.5:6380/3")
    assert (plain.host, plain.port, plain.db, plain.username, plain.password) == (
        "10.0.0.5",
        6380,
        3,
        "user",
        "p@ss w",
    )
    assert "p@ss" not in repr(plain) and plain.ssl_context is None
    assert resp.parse_address("redis://localhost").port == 6379
    unix = resp.parse_address("unix:///var/run/redis.sock?db=2")
    assert (unix.path, unix.host, unix.db) == ("/var/run/redis.sock", None, 2)
    tls = resp.parse_address("rediss://:pw@127.0.0.1:6390/0?ssl_cert_reqs=none")
    assert isinstance(tls.ssl_context, ssl.SSLContext) and tls.ssl_context.verify_mode == ssl.CERT_NONE
    strict = resp.parse_address("rediss://127.0.0.1:6390")
    assert strict.ssl_context is not None and strict.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_bad_url_never_echoes_it() -> None:
    with pytest.raises(ValueError) as caught:
        resp.parse_address("http://user:topsecret@host/")
    assert "topsecret" not in str(caught.value)
