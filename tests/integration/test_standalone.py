"""Standalone mode as a person runs it: `llmkeys serve` / `llmkeys demo` as real processes.

Covers: keys issued once into 0600 env files and kept across restarts and across processes sharing
a state dir, suspended/expired keys issued but refused, manifest edits taking effect while serving,
bad manifests reported without stopping the gateway, and README's first command (`llmkeys demo`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.fakes import loopback

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "standalone"


class Serve:
    """One `llmkeys serve` process."""

    def __init__(self, manifests: pathlib.Path, state_dir: pathlib.Path, log: pathlib.Path) -> None:
        self.port = loopback.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_handle = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmkeys_operator.cli",
                "serve",
                "--manifests",
                str(manifests),
                "--state-dir",
                str(state_dir),
                "--port",
                str(self.port),
            ],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LLMKEYS_LOG_LEVEL": "INFO"},
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited early:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"serve not ready in {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()
        return self.process.returncode


@pytest.fixture
def manifests(tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "manifests"
    shutil.copytree(EXAMPLES, target)
    return target


@pytest.fixture
def start(tmp_path: pathlib.Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for proc in started:
        proc.stop()


def _serve(started: list[Serve], manifests: pathlib.Path, state: pathlib.Path, tmp: pathlib.Path) -> Serve:
    proc = Serve(manifests, state, tmp / f"serve-{len(started)}.log")
    started.append(proc)
    proc.wait_ready()
    return proc


def _env(path: pathlib.Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {name: value for name, value in pairs}


def _chat(url: str, key: str, model: str = "gpt-6-luna") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        timeout=10.0,
    )


def test_keys_are_issued_once_kept_across_restarts_and_written_0600(
    manifests: pathlib.Path, tmp_path: pathlib.Path, start: list[Serve]
) -> None:
    state = tmp_path / "state"
    first = _serve(start, manifests, state, tmp_path)
    env_file = state / "keys" / "default" / "developer.env"
    env = _env(env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env["OPENAI_BASE_URL"] == f"{first.url}/v1"
    assert env["OPENAI_API_KEY"].startswith("sk-llmk-")
    assert env["ANTHROPIC_API_KEY"] == env["OPENAI_API_KEY"]
    # Every schema-valid key gets one, suspended and expired ones too (their use is refused).
    for name in ("ci-job", "suspended", "expired"):
        assert (state / "keys" / "default" / f"{name}.env").is_file()
    assert str(env_file) in first.output()
    assert _chat(first.url, env["OPENAI_API_KEY"]).status_code == 200
    assert first.stop() == 0

    second = _serve(start, manifests, state, tmp_path)
    again = _env(env_file)
    assert again["OPENAI_API_KEY"] == env["OPENAI_API_KEY"]
    assert again["OPENAI_BASE_URL"] == f"{second.url}/v1"  # the URL follows the new port
    assert _chat(second.url, env["OPENAI_API_KEY"]).status_code == 200


def test_two_processes_sharing_a_state_dir_serve_the_same_keys(
    manifests: pathlib.Path, tmp_path: pathlib.Path, start: list[Serve]
) -> None:
    state = tmp_path / "state"
    procs = [Serve(manifests, state, tmp_path / f"parallel-{n}.log") for n in range(2)]
    start.extend(procs)
    for proc in procs:
        proc.wait_ready()
    key = _env(state / "keys" / "default" / "developer.env")["OPENAI_API_KEY"]
    for proc in procs:
        assert _chat(proc.url, key).status_code == 200


def test_suspended_and_expired_keys_are_refused_with_their_own_codes(
    manifests: pathlib.Path, tmp_path: pathlib.Path, start: list[Serve]
) -> None:
    state = tmp_path / "state"
    proc = _serve(start, manifests, state, tmp_path)
    for name, code in (("suspended", "key_suspended"), ("expired", "key_expired")):
        key = _env(state / "keys" / "default" / f"{name}.env")["OPENAI_API_KEY"]
        response = _chat(proc.url, key)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == code


def test_editing_a_manifest_takes_effect_while_serving(
    manifests: pathlib.Path, tmp_path: pathlib.Path, start: list[Serve]
) -> None:
    state = tmp_path / "state"
    proc = _serve(start, manifests, state, tmp_path)
    key = _env(state / "keys" / "default" / "developer.env")["OPENAI_API_KEY"]
    assert _chat(proc.url, key).status_code == 200

    keys_file = manifests / "keys.yaml"
    text = keys_file.read_text()
    marker = "name: developer\n"
    assert marker in text
    # Suspend the developer key by adding `suspended: true` to its spec.
    documents = text.split("\n---")
    edited = []
    for document in documents:
        if marker in document and "suspended: true" not in document:
            document = document.replace("\nspec:\n", "\nspec:\n  suspended: true\n", 1)
        edited.append(document)
    keys_file.write_text("\n---".join(edited))

    started = time.monotonic()
    deadline = started + 20.0
    status = 200
    while time.monotonic() < deadline:
        response = _chat(proc.url, key)
        status = response.status_code
        if status == 403:
            assert response.json()["error"]["code"] == "key_suspended"
            break
        time.sleep(0.05)
    assert status == 403, "suspending the key in its manifest did not take effect"
    print(f"manifest edit -> enforced in {time.monotonic() - started:.2f}s")


def test_a_broken_manifest_is_reported_and_the_rest_still_served(
    manifests: pathlib.Path, tmp_path: pathlib.Path, start: list[Serve]
) -> None:
    (manifests / "broken.yaml").write_text(
        "apiVersion: llmkeys.io/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: typo\n"
        "spec:\n  limits:\n    requestsPerMinut: 5\n"
    )
    state = tmp_path / "state"
    proc = _serve(start, manifests, state, tmp_path)
    assert "VirtualKey 'typo' is invalid" in proc.output()
    assert "requestsPerMinut" in proc.output()
    assert not (state / "keys" / "default" / "typo.env").exists()
    key = _env(state / "keys" / "default" / "developer.env")["OPENAI_API_KEY"]
    assert _chat(proc.url, key).status_code == 200


def test_demo_command_passes(tmp_path: pathlib.Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "llmkeys_operator.cli", "demo", "--manifests", str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "demo passed" in completed.stdout
    assert "429 rate_limit_exceeded" in completed.stdout
    assert "403 key_suspended" in completed.stdout
    # The demo prints where keys are, never the keys themselves.
    assert "sk-llmk-" not in completed.stdout + completed.stderr
