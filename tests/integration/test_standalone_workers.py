"""`llmkeys serve --workers N`: the parent compiles and watches the manifests, N processes serve on one port
(SO_REUSEPORT) with one Redis; a key's requests-per-minute limit holds exactly across the workers, and
without Redis more than one worker is refused. Also `serve --tls-cert-file/--tls-key-file` (HTTPS)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.fakes import loopback, tls

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "standalone"
CI_KEY_RPM = 5  # examples/standalone/keys.yaml: VirtualKey ci-job, requestsPerMinute: 5


def serve_command(tmp_path: pathlib.Path, port: int, *extra: str) -> list[str]:
    manifests = tmp_path / "manifests"
    if not manifests.exists():
        shutil.copytree(EXAMPLES, manifests)
    return [
        sys.executable, "-m", "llmkeys_operator.cli", "serve",
        "--manifests", str(manifests), "--state-dir", str(tmp_path / "state"), "--port", str(port), *extra,
    ]  # fmt: skip


@pytest.fixture
def serve_workers(tmp_path: pathlib.Path, redis_url: str) -> Iterator[tuple[str, pathlib.Path]]:
    """`llmkeys serve --workers 2` sharing the test Redis; yields its URL and its log file."""
    port = loopback.free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "LLMKEYS_LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("w") as output:
        process = subprocess.Popen(
            serve_command(tmp_path, port, "--workers", "2", "--redis-url", redis_url),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while "llmkeys proxy listening on" not in log.read_text():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"serve --workers 2 not ready:\n{log.read_text()}"
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", log
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                exit_code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
    assert exit_code == 0, log.read_text()


def _env_file(path: pathlib.Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {name: value for name, value in pairs}


async def test_rpm_holds_exactly_across_two_workers(
    serve_workers: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    url, log = serve_workers
    key = _env_file(tmp_path / "state" / "keys" / "default" / "ci-job.env")["OPENAI_API_KEY"]
    assert "(2 workers)" in log.read_text()

    async def call() -> httpx.Response:
        # A connection of its own per request: SO_REUSEPORT spreads connections over the workers.
        async with httpx.AsyncClient(timeout=30) as http:
            return await http.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "model": "gpt-6-luna",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3,
                },
            )

    answers = await asyncio.gather(*(call() for _ in range(5 * CI_KEY_RPM)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * CI_KEY_RPM + [429] * (4 * CI_KEY_RPM)
    refused = [a for a in answers if a.status_code == 429]
    assert {a.json()["error"]["code"] for a in refused} == {"rate_limit_exceeded"}
    # Up to the window (plus the skew between request start times in flight together).
    assert all(1 <= int(a.headers["retry-after"]) <= 61 for a in refused), [
        a.headers["retry-after"] for a in refused
    ]
    # Both workers answered (each audit line carries its process id in the log prefix).
    deadline = time.monotonic() + 10
    while True:
        audit_pids = set(re.findall(r"\[(\d+)\] \{.*\"key_id\"", log.read_text()))
        if len(audit_pids) >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(audit_pids) == 2, log.read_text()


def test_more_than_one_worker_without_redis_is_refused(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "LLMKEYS_REDIS_URL": ""}
    completed = subprocess.run(
        serve_command(tmp_path, loopback.free_port(), "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert completed.returncode == 2
    assert "--workers 2 needs --redis-url" in completed.stderr
    assert not (tmp_path / "state").exists()  # refused before issuing any key


def test_serve_over_tls_writes_https_urls_and_serves_https(tmp_path: pathlib.Path) -> None:
    files = tls.make_self_signed(tmp_path)
    port = loopback.free_port()
    log = tmp_path / "serve.log"
    flags = ("--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key))
    with log.open("w") as output:
        process = subprocess.Popen(
            serve_command(tmp_path, port, *flags),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
        try:
            deadline = time.monotonic() + 60
            while "llmkeys proxy listening on" not in log.read_text():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            entries = _env_file(tmp_path / "state" / "keys" / "default" / "developer.env")
            assert entries["OPENAI_BASE_URL"] == f"https://127.0.0.1:{port}/v1"
            with httpx.Client(verify=files.client_context(), timeout=10) as http:
                answer = http.get(
                    f"https://127.0.0.1:{port}/v1/models",
                    headers={"Authorization": f"Bearer {entries['OPENAI_API_KEY']}"},
                )
            assert answer.status_code == 200
            assert "gpt-6-luna" in {model["id"] for model in answer.json()["data"]}
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, log.read_text()
