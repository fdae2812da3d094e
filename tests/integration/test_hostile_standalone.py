"""Standalone mode against hostile manifests and restarts: a `tokensPerDay: 200` cap across a `serve`
restart and a Redis restart (empty), a deleted and re-created VirtualKey, path-traversal names.

`llmkeys serve` runs in-process (`standalone.serve`) on loopback with the built-in mock provider.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator

import httpx
from tests import redis_server
from tests.fakes import loopback

from llmkeys_operator import standalone

CREDENTIAL = """apiVersion: llmkeys.io/v1alpha1
kind: ProviderCredential
metadata:
  name: mock
spec:
  provider: mock
  models:
    - name: gpt-5.4-mini
"""

KEY = """apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata:
  name: {name}
spec:
  owner:
    user: {user}
    team: demo
  limits:
    tokensPerDay: 200
"""


def _manifests(root: pathlib.Path, *keys: tuple[str, str]) -> pathlib.Path:
    folder = root / "manifests"
    folder.mkdir(exist_ok=True)
    (folder / "credential.yaml").write_text(CREDENTIAL)
    (folder / "keys.yaml").write_text("---\n".join(KEY.format(name=n, user=u) for n, u in keys))
    return folder


@contextlib.asynccontextmanager
async def _serve(manifests: pathlib.Path, state: pathlib.Path, redis_url: str = "") -> AsyncIterator[str]:
    port = loopback.free_port()
    args = argparse.Namespace(
        manifests=manifests,
        state_dir=state,
        host="127.0.0.1",
        port=port,
        redis_url=redis_url,
        public_url=None,
        log_level="INFO",
        workers=1,
        tls_cert_file=None,
        tls_key_file=None,
        status_interval=0.2,
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(standalone.serve(args, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        assert await task == 0


def _key(state: pathlib.Path, name: str) -> str:
    env = (state / "keys" / "default" / f"{name}.env").read_text()
    return next(line.split("=", 1)[1] for line in env.splitlines() if line.startswith("OPENAI_API_KEY="))


async def _spend_until_refused(url: str, key: str) -> int:
    """Requests until the day cap refuses one; the number admitted."""
    async with httpx.AsyncClient(timeout=30) as http:
        for admitted in range(100):
            answer = await http.post(
                url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "model": "gpt-5.4-mini",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 20,
                },
            )
            if answer.status_code == 429:
                assert answer.json()["error"]["code"] == "token_limit_exceeded"
                return admitted
            assert answer.status_code == 200, answer.text
    raise AssertionError("the day cap never refused")


async def _refused(url: str, key: str) -> bool:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
        )
    return answer.status_code == 429


async def test_a_day_cap_holds_across_a_serve_restart(tmp_path: pathlib.Path) -> None:
    manifests, state = _manifests(tmp_path, ("capped", "alice")), tmp_path / "state"
    async with _serve(manifests, state) as url:
        key = _key(state, "capped")
        assert await _spend_until_refused(url, key) > 0
        await asyncio.sleep(0.8)  # the status files record the usage
    async with _serve(manifests, state) as url:  # a fresh in-process limiter: counters start empty
        assert await _refused(url, key)


async def test_a_day_cap_holds_across_a_redis_restart(
    tmp_path: pathlib.Path, private_redis: redis_server.RedisServer
) -> None:
    manifests, state = _manifests(tmp_path, ("capped", "alice")), tmp_path / "state"
    async with _serve(manifests, state, private_redis.url) as url:
        key = _key(state, "capped")
        assert await _spend_until_refused(url, key) > 0
        await asyncio.sleep(0.8)
        private_redis.flushall()  # Redis restarted empty
        await asyncio.sleep(0.8)  # the status writer sees the loss and re-seeds
        assert await _refused(url, key)


async def test_a_deleted_key_is_revoked_and_a_recreated_one_gets_a_new_secret(tmp_path: pathlib.Path) -> None:
    manifests, state = _manifests(tmp_path, ("shared", "alice"), ("other", "carol")), tmp_path / "state"
    async with _serve(manifests, state) as url:
        old = _key(state, "shared")
        _manifests(tmp_path, ("other", "carol"))  # deleted
        for _ in range(100):
            if not (state / "keys" / "default" / "shared.env").exists():
                break
            await asyncio.sleep(0.1)
        assert not (state / "keys" / "default" / "shared.env").exists()
        _manifests(tmp_path, ("other", "carol"), ("shared", "bob"))  # re-created, another owner
        for _ in range(100):
            if (state / "keys" / "default" / "shared.env").exists():
                break
            await asyncio.sleep(0.1)
        new = _key(state, "shared")
        assert new != old
        await asyncio.sleep(1.0)  # the proxy loads the recompiled config
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.get(url + "/v1/models", headers={"Authorization": f"Bearer {old}"})
            assert answer.status_code == 401
            answer = await http.get(url + "/v1/models", headers={"Authorization": f"Bearer {new}"})
            assert answer.status_code == 200


async def test_names_that_are_not_kubernetes_names_are_refused_and_nothing_escapes(
    tmp_path: pathlib.Path,
) -> None:
    manifests, state = _manifests(tmp_path, ("fine", "alice")), tmp_path / "state"
    (manifests / "evil.yaml").write_text(
        KEY.format(name="../../../escaped", user="mallory")
        + "---\n"
        + KEY.format(name="fine2", user="mallory").replace("metadata:\n", "metadata:\n  namespace: ../../x\n")
    )
    async with _serve(manifests, state):
        assert _key(state, "fine")
    loaded = standalone.load_manifests(manifests)
    assert [vk.metadata.name for vk in loaded.virtual_keys] == ["fine"]
    assert len([p for p in loaded.problems if "not a Kubernetes" in p]) == 2
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.env")}
    assert written == {"state/keys/default/fine.env"}
