"""`llmkeys proxy` as a real process: settings from LLMKEYS_* variables, two SO_REUSEPORT workers sharing
one port, /metrics summed over the workers, audit lines on stdout, graceful exit on SIGTERM."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import openai
from tests import proxy_harness
from tests.fakes import loopback

from llmkeys_proxy import config, sources


def test_two_workers_without_redis_are_refused(tmp_path: pathlib.Path) -> None:
    env = {
        **os.environ,
        "LLMKEYS_CONFIG_SOURCE": "directory",
        "LLMKEYS_CONFIG_DIR": str(tmp_path),
        "LLMKEYS_WORKERS": "2",
        "LLMKEYS_REDIS_URL": "",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "llmkeys_operator.cli", "proxy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "2 workers need LLMKEYS_REDIS_URL" in completed.stderr


def test_proxy_command_with_two_workers(tmp_path: pathlib.Path, redis_url: str) -> None:
    key = proxy_harness.issue_key(providers=("llmkeys/mock",))
    mock = config.ProviderEntry(id="llmkeys/mock", provider="mock", models=(config.ModelRoute(name="*"),))
    config_dir = tmp_path / "config"
    sources.write_config_dir(config_dir, proxy_harness.proxy_config([key], [mock]))
    port = loopback.free_port()
    env = {
        **os.environ,
        "LLMKEYS_CONFIG_SOURCE": "directory",
        "LLMKEYS_CONFIG_DIR": str(config_dir),
        "LLMKEYS_HOST": "127.0.0.1",
        "LLMKEYS_PORT": str(port),
        "LLMKEYS_WORKERS": "2",
        "LLMKEYS_REDIS_URL": redis_url,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    stdout_path = tmp_path / "stdout"
    with stdout_path.open("wb") as stdout, (tmp_path / "stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmkeys_operator.cli", "proxy"], env=env, stdout=stdout, stderr=stderr
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            ready = 0
            while ready < 2:  # ready twice in a row (either worker may answer)
                assert process.poll() is None, (tmp_path / "stderr").read_text()
                assert time.monotonic() < deadline, "the proxy did not become ready"
                try:
                    ready = ready + 1 if httpx.get(base + "/readyz").status_code == 200 else 0
                except httpx.TransportError:
                    time.sleep(0.1)
            with openai.OpenAI(api_key=key.key, base_url=base + "/v1", max_retries=0) as client:
                for _ in range(8):
                    answer = client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                    )
                    assert answer.usage is not None and answer.usage.completion_tokens == 2
            # Each worker counts in its own process; /metrics (from whichever answers) shows the sum.
            samples = [
                line
                for line in httpx.get(base + "/metrics").text.splitlines()
                if line.startswith("llmkeys_requests_total{") and 'code="ok"' in line
            ]
            assert samples and sum(float(line.rsplit(" ", 1)[1]) for line in samples) == 8
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=30)
    errors_text = (tmp_path / "stderr").read_text()
    assert exit_code == 0, errors_text
    assert errors_text.count("proxy listening on 127.0.0.1") == 2
    assert errors_text.count("proxy stopped") == 2
    audit = [json.loads(line) for line in stdout_path.read_text().splitlines() if line.startswith("{")]
    assert len(audit) == 8 and {a["key_id"] for a in audit} == {key.key_id}
    assert len({a["request_id"] for a in audit}) == 8
    assert key.key not in stdout_path.read_text() and key.key not in errors_text


def test_unknown_preload_encoding_is_refused_before_serving(tmp_path: pathlib.Path) -> None:
    env = {
        **os.environ,
        "LLMKEYS_CONFIG_SOURCE": "directory",
        "LLMKEYS_CONFIG_DIR": str(tmp_path),
        "LLMKEYS_PRELOAD_ENCODINGS": "o200k_base,p50k_base",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "llmkeys_operator.cli", "proxy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "unknown encodings ['p50k_base']" in completed.stderr
