"""The lean Redis client (llmkeys_proxy/limits/resp.py) against a real redis-server: pipelining,
ordering under concurrency, auth and TLS, reconnect after a restart, and a hung server timing out."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal

import pytest
from tests import redis_server

from llmkeys_proxy.limits import resp


async def test_concurrent_callers_get_their_own_replies_in_one_connection(redis_url: str) -> None:
    client = resp.RespClient(redis_url)
    try:

        async def roundtrip(n: int) -> None:
            replies = await client.execute([("SET", f"k{n}", n), ("INCRBY", f"k{n}", n), ("GET", f"k{n}")])
            assert replies == [b"OK", 2 * n, str(2 * n).encode()]

        first = await client.execute([("CLIENT", "ID")])
        await asyncio.gather(*(roundtrip(n) for n in range(500)))
        # Every caller shared that one connection.
        assert await client.execute([("CLIENT", "ID")]) == first
        script = await client.execute([("SCRIPT", "LOAD", "return {1, 'a', {2, false}}")])
        assert await client.execute([("EVALSHA", script[0], 0)]) == [[1, b"a", [2, None]]]
        missing = await client.execute([("EVALSHA", "0" * 40, 0), ("PING",)])
        assert isinstance(missing[0], resp.ReplyError) and missing[0].message.startswith("NOSCRIPT")
        assert missing[1] == b"PONG"
    finally:
        await client.close()


async def test_password_tls_and_db_selection(tmp_path: pathlib.Path) -> None:
    tls = redis_server.make_tls_files(tmp_path)
    with redis_server.RedisServer(password="p@ss word", tls=tls) as server:
        url = server.url.replace("/0?", "/2?")
        client = resp.RespClient(url)
        try:
            replies = await client.execute([("SET", "x", "1"), ("CLIENT", "INFO")])
            assert replies[0] == b"OK" and b" db=2 " in replies[1]
        finally:
            await client.close()
        wrong = resp.RespClient(url.replace("p%40ss%20word", "nope"))
        try:
            with pytest.raises(resp.RespConnectionError) as caught:
                await wrong.execute([("PING",)])
            assert "nope" not in str(caught.value)
        finally:
            await wrong.close()


async def test_reconnects_after_a_restart_and_retries_once(private_redis: redis_server.RedisServer) -> None:
    client = resp.RespClient(private_redis.url, connect_timeout_s=2)
    try:
        assert await client.execute([("PING",)]) == [b"PONG"]
        private_redis.restart()
        # The old connection is dead; the batch is retried once on a fresh one.
        assert await client.execute([("INCR", "n")]) == [1]
        private_redis.kill()
        with pytest.raises(resp.RespConnectionError):
            await client.execute([("PING",)])
        private_redis.start()
        assert await client.execute([("PING",)]) == [b"PONG"]
    finally:
        await client.close()


async def test_hung_server_times_out_without_retry(private_redis: redis_server.RedisServer) -> None:
    client = resp.RespClient(private_redis.url, reply_timeout_s=0.3)
    assert private_redis.process is not None
    pid = private_redis.process.pid
    try:
        assert await client.execute([("PING",)]) == [b"PONG"]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(resp.RespTimeoutError):
                await client.execute([("PING",)])
            # Generous bound: one reply timeout, not a retry's second one on top.
            assert asyncio.get_running_loop().time() - started < 5
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await client.execute([("PING",)]) == [b"PONG"]
    finally:
        await client.close()
