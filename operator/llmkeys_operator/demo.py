"""`llmkeys demo` (README's first command): standalone gateway on a manifests folder, exercised with
the official `openai` SDK — a call, a stream, the model list, and the refusals a platform team expects.

Runs offline: the manifests use the built-in `mock` provider. Starts `standalone.serve` in-process on
a free loopback port with a fresh state dir, prints what happens, and exits 0 when every step
behaved as the manifests say it should (non-zero otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import socket
import sys
import tempfile
from typing import Any

from llmkeys_operator import standalone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifests", type=pathlib.Path, default=pathlib.Path("examples/standalone"))
    parser.add_argument("--state-dir", type=pathlib.Path, default=None, help="default: a fresh temp dir")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_env(path: pathlib.Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            entries[name] = value
    return entries


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _exercise(state: standalone.StateDir, compiled: standalone.CompiledState) -> bool:
    import openai  # the official SDK, as a workload would use it

    by_reason: dict[str, list[tuple[str, str]]] = {}
    for ref, outcome in sorted(compiled.result.keys.items()):
        by_reason.setdefault(outcome.reason, []).append(ref)
    ok = True

    def client_for(ref: tuple[str, str]) -> openai.AsyncOpenAI:
        env = _read_env(state.env_path(*ref))
        return openai.AsyncOpenAI(
            api_key=env["OPENAI_API_KEY"], base_url=env["OPENAI_BASE_URL"], max_retries=0
        )

    active = by_reason.get("Active", [])
    if not active:
        _say("! no Active VirtualKey in the manifests: nothing to call")
        return False

    # The main calls use the most generous key; the tightest rate limit is shown last.
    def rpm_of(key: tuple[str, str]) -> float:
        effective = compiled.result.keys[key].effective
        rpm = effective.limits.requests_per_minute if effective is not None else None
        return float("inf") if rpm is None else rpm

    ref = max(active, key=rpm_of)
    effective = compiled.result.keys[ref].effective
    async with client_for(ref) as client:
        models = [m.id async for m in client.models.list()]
        _say(f"$ source {state.env_path(*ref)}   # {ref[0]}/{ref[1]}")
        _say(f"GET /v1/models -> {models}")
        chat_models = [m for m in models if "embedding" not in m]
        if not chat_models:
            _say("! the key may use no chat model")
            return False
        model = chat_models[0]
        reply = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello to the platform team."}],
            max_tokens=40,
        )
        usage = reply.usage
        _say(f"POST /v1/chat/completions ({model}) -> {reply.choices[0].message.content!r}")
        if usage is not None:
            _say(f"   usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens")
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Stream a short line."}],
            max_tokens=20,
            stream=True,
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        _say(f"POST /v1/chat/completions stream=true -> {len(pieces)} chunks: {''.join(pieces)!r}")
        ok &= await _expect_error(client, "gpt-not-on-the-list", "model_not_allowed")
        if effective is not None and effective.limits.max_tokens_per_request:
            ok &= await _expect_error(
                client, model, "max_tokens_exceeded", max_tokens=effective.limits.max_tokens_per_request + 1
            )

    for reason, code in (("Suspended", "key_suspended"), ("Expired", "key_expired")):
        for other in by_reason.get(reason, [])[:1]:
            _say(f"$ source {state.env_path(*other)}   # {other[0]}/{other[1]} ({reason})")
            async with client_for(other) as client:
                ok &= await _expect_error(client, model, code)

    limited = [
        (outcome.effective.limits.requests_per_minute, key)
        for key, outcome in compiled.result.keys.items()
        if outcome.ready and outcome.effective is not None and outcome.effective.limits.requests_per_minute
    ]
    if limited:
        rpm, key = min(limited)
        if rpm <= 20:
            _say(f"$ source {state.env_path(*key)}   # {key[0]}/{key[1]}: requestsPerMinute={rpm}")
            async with client_for(key) as client:
                own = [m.id async for m in client.models.list() if "embedding" not in m.id]
                model = own[0] if own else model
                admitted = 0
                for _ in range(rpm):
                    await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5
                    )
                    admitted += 1
                _say(f"   {admitted} requests admitted within the minute; one more:")
                ok &= await _expect_error(client, model, "rate_limit_exceeded", max_tokens=5)
    return ok


async def _expect_error(client: Any, model: str, code: str, **extra: Any) -> bool:
    import openai

    try:
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], **extra
        )
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        got = body.get("code") if "code" in body else (body.get("error") or {}).get("code")
        retry = exc.response.headers.get("retry-after")
        hint = f" (retry-after: {retry}s)" if retry else ""
        _say(f"   -> {exc.status_code} {got}: {body.get('message', exc.message)}{hint}")
        if got != code:
            _say(f"   ! expected {code}")
            return False
        return True
    _say(f"   ! expected {code}, but the request was admitted")
    return False


async def _demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="llmkeys-demo-") as tmp:
        state_dir = args.state_dir or pathlib.Path(tmp) / "state"
        port = args.port or _free_port()
        serve_args = argparse.Namespace(
            manifests=args.manifests,
            state_dir=state_dir,
            host="127.0.0.1",
            port=port,
            redis_url="",
            public_url=None,
            log_level="WARNING",
        )
        ready = asyncio.Event()
        stop = asyncio.Event()
        first: list[standalone.CompiledState] = []
        server = asyncio.create_task(
            standalone.serve(serve_args, ready=ready, stop=stop, on_compiled=first.append)
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            waiter.cancel()
            return server.result() or 1
        _say()
        try:
            ok = await _exercise(standalone.StateDir(state_dir), first[0])
        finally:
            stop.set()
            await server
        _say()
        _say("demo " + ("passed" if ok else "FAILED") + ". Keep a gateway running with:")
        _say(f"  {_command_name()} serve --manifests {args.manifests} --state-dir .llmkeys")
        return 0 if ok else 1


def _command_name() -> str:
    """How to call `llmkeys` from here: the virtualenv's script when it is not on PATH."""
    script = pathlib.Path(sys.executable).parent / "llmkeys"
    if shutil.which("llmkeys") == str(script) or not script.exists():
        return "llmkeys"
    try:
        return str(script.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(script)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("LLMKEYS_LOG_LEVEL", "WARNING")
    from llmkeys_proxy import server

    outcome: list[int] = []

    async def main() -> None:
        outcome.append(await _demo(args))

    server.run_event_loop(main())
    return outcome[0] if outcome else 1
