"""The proxy's own TLS listener: `llmkeys proxy --tls-cert-file/--tls-key-file` as a real process serves
boto3's bedrock-runtime client (which sends AWS_BEARER_TOKEN_BEDROCK only over HTTPS); rotated
certificate files are served to new connections without a restart; bad TLS settings fail clearly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import botocore.config
import httpx
import pytest
from aiohttp import web
from tests import proxy_harness
from tests.fakes import bedrock_server, loopback, tls

from llmkeys_operator import cli
from llmkeys_proxy import config, server, sources
from llmkeys_proxy import tls as proxy_tls

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "what is a llama"}]}]


@pytest.fixture
async def fake_bedrock() -> AsyncIterator[tuple[bedrock_server.FakeBedrock, str]]:
    fake = bedrock_server.FakeBedrock(region="us-east-1")
    async with loopback.serve_app(fake.app()) as url:
        yield fake, url


@contextlib.contextmanager
def proxy_process(
    tmp_path: pathlib.Path, *args: str, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmkeys_operator.cli", "proxy", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_boto3_bearer_key_over_the_proxys_own_tls(
    tmp_path: pathlib.Path,
    fake_bedrock: tuple[bedrock_server.FakeBedrock, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, upstream_url = fake_bedrock
    files = tls.make_self_signed(tmp_path)
    key = proxy_harness.issue_key(providers=("llmkeys/bedrock",))
    credential = config.ProviderEntry(
        id="llmkeys/bedrock",
        provider="bedrock",
        base_url=upstream_url,
        region=fake.region,
        api_key=fake.api_key,
        models=(config.ModelRoute(name="anthropic.*"),),
    )
    config_dir = tmp_path / "config"
    sources.write_config_dir(config_dir, proxy_harness.proxy_config([key], [credential]))
    port = loopback.free_port()
    env = {**os.environ, "LLMKEYS_HOST": "127.0.0.1", "LLMKEYS_REDIS_URL": "", "LLMKEYS_WORKERS": "1"}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    flags = ("--config-dir", str(config_dir), "--port", str(port))
    tls_flags = ("--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key))
    with proxy_process(tmp_path, *flags, *tls_flags, env=env) as process:
        base = f"https://127.0.0.1:{port}"
        async with httpx.AsyncClient(verify=files.client_context(), timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, (tmp_path / "stderr").read_text()
                assert time.monotonic() < deadline, "the proxy did not become ready over HTTPS"
                try:
                    if (await http.get(base + "/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        # Plain HTTP on the TLS port is not served.
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/readyz")

        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key.key)
        client: Any = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=base,
            verify=str(files.cert),
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )
        try:
            answer = await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        finally:
            client.close()
    assert answer["output"]["message"]["content"][0]["text"] == "".join(bedrock_server.REPLY_PIECES)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    # The upstream saw the real credential, never the virtual key.
    assert [r.headers["authorization"] for r in fake.requests] == [f"Bearer {fake.api_key}"]
    assert key.key not in repr(fake.requests)
    assert "proxy listening on 127.0.0.1" in (tmp_path / "stderr").read_text()


async def _served_certificate(port: int, trust: tls.TlsFiles) -> bool:
    """Whether a TLS client trusting only `trust` completes a request to the listener."""
    async with httpx.AsyncClient(verify=trust.client_context(), timeout=5) as http:
        try:
            return (await http.get(f"https://127.0.0.1:{port}/ping")).status_code == 200
        except httpx.ConnectError:
            return False


async def test_rotated_certificate_files_are_served_to_new_connections(tmp_path: pathlib.Path) -> None:
    live, first, second = tmp_path / "live", tmp_path / "first", tmp_path / "second"
    for folder in (live, first, second):
        folder.mkdir()
    old, new = tls.make_self_signed(first), tls.make_self_signed(second)
    cert, key = live / "tls.crt", live / "tls.key"
    shutil.copy(old.cert, cert)
    shutil.copy(old.key, key)
    listener = proxy_tls.ServerTls(str(cert), str(key))

    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/ping", ping)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(
        server.serve_app(
            app,
            "127.0.0.1",
            0,
            stop,
            shutdown_timeout_s=1,
            on_ready=ready.set_result,
            ssl_context=listener.context,
        )
    )
    try:
        port = await asyncio.wait_for(ready, 30)
        assert await _served_certificate(port, old)
        assert not await _served_certificate(port, new)
        assert not listener.reload_if_changed()  # nothing changed

        # A half-rotated pair (new certificate, old key) does not load: the old one stays in service.
        shutil.copy(new.cert, cert)
        assert not listener.reload_if_changed()
        assert await _served_certificate(port, old)

        # The whole pair in place (as the kubelet swaps a Secret's files): new connections get it.
        shutil.copy(new.key, key)
        assert listener.reload_if_changed()
        assert await _served_certificate(port, new)
        assert not await _served_certificate(port, old)
    finally:
        stop.set()
        await serving


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--tls-cert-file", "/etc/ssl/some.crt"],
            "LLMKEYS_TLS_CERT_FILE and LLMKEYS_TLS_KEY_FILE go together",
        ),
        (
            ["--tls-key-file", "/etc/ssl/some.key"],
            "LLMKEYS_TLS_CERT_FILE and LLMKEYS_TLS_KEY_FILE go together",
        ),
        (
            ["--tls-cert-file", "/nonexistent/tls.crt", "--tls-key-file", "/nonexistent/tls.key"],
            "TLS file not found",
        ),
    ],
)
def test_bad_tls_settings_fail_before_serving(
    flags: list[str], message: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(["proxy", "--config-dir", str(tmp_path), "--port", str(loopback.free_port()), *flags]) == 2
    )
    assert message in capsys.readouterr().err


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tls.make_self_signed(tmp_path / "a"), tls.make_self_signed(tmp_path / "b")
    with pytest.raises(ValueError, match="cannot load the TLS certificate") as raised:
        proxy_tls.load_server_context(str(first.cert), str(second.key))
    assert "PRIVATE KEY" not in str(raised.value)
    assert isinstance(proxy_tls.load_server_context(str(first.cert), str(first.key)), ssl.SSLContext)
