"""End to end: three proxy PROCESSES share one real Redis; the official `openai` SDK calls them
concurrently through a fake OpenAI upstream process. Limits hold for the fleet, not per process:
exactly N of 5N requests admitted (the rest 429 with Retry-After), tokens per minute likewise, a spend
cap with streaming requests (overshoot printed), streams charged their real usage even when cut off,
a team pool shared by two keys, and Redis killed (Reject -> 503, Allow -> served) then restarted
empty (month counters re-seeded from the config's seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from tests import redis_server
from tests.fakes import loopback, openai_server

from llmkeys_proxy import apis, config, keys, sources
from llmkeys_proxy.limits import base, periods
from llmkeys_proxy.limits import redis as redis_limits

N = 20
PROXIES = 3
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello to the fleet"}]
MAX_TOKENS = 5
#: 1 micro-USD per input token, 4 per output token: costs are easy to check by hand.
PRICE = config.ModelPrice(input=1_000_000, output=4_000_000)
#: What the fake upstream reports for MESSAGES: its word count plus its fixed overhead.
FAKE_PROMPT_TOKENS = 5 + openai_server.FakeOpenAI().input_overhead
FAKE_COST = FAKE_PROMPT_TOKENS * 1 + MAX_TOKENS * 4
#: The proxy's own estimate (tiktoken + chat framing + requested output cap) that it reserves.
ESTIMATED_TOKENS = apis.estimate_prompt_tokens("openai-chat", MODEL, {"messages": MESSAGES}) + MAX_TOKENS
ESTIMATED_COST = (ESTIMATED_TOKENS - MAX_TOKENS) * 1 + MAX_TOKENS * 4
#: The spend scenario's requests name no max_tokens: the proxy reserves the key's default output
#: reservation, smaller than what the fake then writes (its whole reply): a real estimate-vs-actual gap.
SPEND_DEFAULT_OUTPUT = 2
SPEND_ESTIMATE = (ESTIMATED_TOKENS - MAX_TOKENS) * 1 + SPEND_DEFAULT_OUTPUT * 4
SPEND_ACTUAL = FAKE_PROMPT_TOKENS * 1 + len(openai_server.REPLY_WORDS) * 4
SPEND_CAP = 20 * SPEND_ESTIMATE + SPEND_ESTIMATE // 2
WAVE = 9  # concurrent streaming requests per wave in the spend scenario
POOL_ID = "team-budget/monthly/team=ml"
POOL_CAP = 3 * ESTIMATED_COST
SEED_MICRO_USD = 5000
GIVE_UP_S = 30.0


@dataclasses.dataclass(frozen=True)
class Fleet:
    urls: list[str]
    virtual_keys: dict[str, str] = dataclasses.field(repr=False)
    redis: redis_server.RedisServer

    def key_id(self, name: str) -> str:
        parsed = keys.parse_key(self.virtual_keys[name])
        assert parsed is not None
        return parsed.key_id


def _key(name: str, virtual_key: str, **fields: Any) -> config.KeyEntry:
    parsed = keys.parse_key(virtual_key)
    assert parsed is not None
    return config.KeyEntry(
        key_id=parsed.key_id,
        hashes=(config.SecretHash(sha256=keys.hash_secret(parsed.secret)),),
        namespace="fleet",
        name=name,
        owner={"team": "ml"},
        providers=("gateway/openai",),
        model_allowlists=(("*",),),
        **fields,
    )


def _wait_until(check: Any, what: str, timeout_s: float = GIVE_UP_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:  # noqa: S310 (http:// only)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir: pathlib.Path = tmp_path_factory.mktemp("fleet")
    month = periods.month_id(datetime.now(UTC))
    names = ["rpm", "tpm", "spend", "stream", "cut", "pool-a", "pool-b", "reject", "allow", "seeded"]
    virtual_keys = {name: keys.generate_key() for name in names}
    entries = [
        _key("rpm", virtual_keys["rpm"], limits=config.Limits(requests_per_minute=N)),
        _key("tpm", virtual_keys["tpm"], limits=config.Limits(tokens_per_minute=N * ESTIMATED_TOKENS)),
        _key(
            "spend",
            virtual_keys["spend"],
            limits=config.Limits(spend_per_month_micro_usd=SPEND_CAP),
            default_output_reservation=SPEND_DEFAULT_OUTPUT,
        ),
        _key("stream", virtual_keys["stream"]),
        _key("cut", virtual_keys["cut"]),
        _key("pool-a", virtual_keys["pool-a"], pools=(POOL_ID,)),
        _key("pool-b", virtual_keys["pool-b"], pools=(POOL_ID,)),
        _key("reject", virtual_keys["reject"], on_limiter_unavailable="Reject"),
        _key("allow", virtual_keys["allow"], on_limiter_unavailable="Allow"),
        _key(
            "seeded",
            virtual_keys["seeded"],
            limits=config.Limits(
                spend_per_month_micro_usd=SEED_MICRO_USD + ESTIMATED_COST + ESTIMATED_COST // 2
            ),
            month_usage_seed=config.UsageSeed(
                period=month, requests=40, tokens=4000, micro_usd=SEED_MICRO_USD
            ),
        ),
    ]
    upstream_port = loopback.free_port()
    provider = config.ProviderEntry(
        id="gateway/openai",
        provider="openai",
        base_url=f"http://127.0.0.1:{upstream_port}/v1",
        api_key=openai_server.DEFAULT_API_KEY,
        models=(config.ModelRoute(name="gpt-*"),),
        pricing={MODEL: PRICE},
    )
    pool = config.PoolEntry(
        id=POOL_ID,
        policy="team-budget",
        budget="monthly",
        group_by="team",
        group_value="ml",
        spend_per_month_micro_usd=POOL_CAP,
    )
    config_dir = workdir / "config"
    config_dir.mkdir()
    sources.write_config_dir(
        config_dir, config.ProxyConfig(keys=tuple(entries), providers=(provider,), pools=(pool,))
    )

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server.RedisServer())
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(upstream_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(_stop, upstream)
        env = {**os.environ, "LLMKEYS_REDIS_URL": redis.url, "LLMKEYS_LOG_LEVEL": "ERROR"}
        urls = []
        for _ in range(PROXIES):
            port = loopback.free_port()
            command = [sys.executable, "-m", "llmkeys_operator.cli", "proxy", "--host", "127.0.0.1"]
            command += ["--port", str(port), "--config-source", "directory", "--config-dir", str(config_dir)]
            log = stack.enter_context((workdir / f"proxy-{port}.log").open("wb"))
            proxy = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop, proxy)
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            _wait_until(lambda url=url: _ready(url), f"proxy {url} ready")
        _wait_until(lambda: _port_open(upstream_port), "fake upstream")
        yield Fleet(urls, virtual_keys, redis)


def _port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.asynccontextmanager
async def clients(fleet: Fleet, name: str) -> AsyncIterator[list[openai.AsyncOpenAI]]:
    """One SDK client per proxy process, all with the same virtual key."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                openai.AsyncOpenAI(
                    api_key=fleet.virtual_keys[name], base_url=url + "/v1", max_retries=0, timeout=60
                )
            )
            for url in fleet.urls
        ]


async def chat(client: openai.AsyncOpenAI, **extra: Any) -> Any:
    """One non-streaming call; the raw response (headers) on success, the APIStatusError otherwise."""
    try:
        return await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, **extra
        )
    except openai.APIStatusError as exc:
        return exc


async def stream(
    client: openai.AsyncOpenAI, cut_after: int | None = None, max_tokens: int | None = MAX_TOKENS
) -> str:
    """One streaming call with usage asked for: 'ok', 'cut' (ended without the usage chunk: the
    upstream dropped it) or the error code."""
    headers = {"x-fake-cut-after": str(cut_after)} if cut_after is not None else {}
    extra: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    try:
        response = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            **extra,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
    except openai.APIStatusError as exc:
        return str(exc.code)
    usage_seen = False
    try:
        async for chunk in response:
            usage_seen = usage_seen or chunk.usage is not None
    except openai.APIError:
        return "cut"
    finally:
        await response.close()
    # A stream the upstream dropped ends without its final usage chunk.
    return "ok" if usage_seen else "cut"


async def month_usage(fleet: Fleet, scope: str, *, is_pool: bool = False) -> base.PeriodUsage:
    limiter = redis_limits.RedisLimiter(fleet.redis.url)
    try:
        if is_pool:
            return (await limiter.read_usage([], [scope], datetime.now(UTC)))[scope].month
        key_id = fleet.key_id(scope)
        return (await limiter.read_usage([key_id], [], datetime.now(UTC)))[key_id].month
    finally:
        await limiter.close()


async def settled_usage(
    fleet: Fleet, scope: str, requests: int, *, is_pool: bool = False
) -> base.PeriodUsage:
    """The month usage once `requests` requests are settled (the proxies settle off the hot path)."""
    async with asyncio.timeout(GIVE_UP_S):
        while True:
            found = await month_usage(fleet, scope, is_pool=is_pool)
            if found.requests >= requests:
                return found
            await asyncio.sleep(0.05)


async def test_requests_per_minute_hold_across_three_processes(fleet: Fleet) -> None:
    async with clients(fleet, "rpm") as sdk:
        results = await asyncio.gather(*(chat(sdk[i % PROXIES]) for i in range(5 * N)))
    served = [r for r in results if not isinstance(r, openai.APIStatusError)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(served) == N
    assert len(refused) == 4 * N
    for error in refused:
        assert error.status_code == 429
        assert error.code == "rate_limit_exceeded"
        assert int(error.response.headers["retry-after"]) >= 1
        assert int(error.response.headers["retry-after-ms"]) >= 1
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert error.response.headers.get("x-should-retry") != "false"
    limits = {int(r.headers["x-ratelimit-remaining-requests"]) for r in served}
    assert limits <= set(range(N)) and all(r.headers["x-ratelimit-limit-requests"] == str(N) for r in served)


async def test_tokens_per_minute_hold_across_three_processes(fleet: Fleet) -> None:
    # The upstream holds every answer, so all reservations are made before any settles.
    async with clients(fleet, "tpm") as sdk:
        results = await asyncio.gather(
            *(chat(sdk[i % PROXIES], extra_headers={"x-fake-delay-s": "3"}) for i in range(5 * N))
        )
    served = [r for r in results if not isinstance(r, openai.APIStatusError)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(served) == N
    assert {(e.status_code, e.code) for e in refused} == {(429, "token_limit_exceeded")}
    assert all(int(e.response.headers["retry-after"]) >= 1 for e in refused)
    remaining = sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in served)
    # Each admission reserved exactly the proxy's estimate.
    assert remaining == [k * ESTIMATED_TOKENS for k in range(N)]


async def test_spend_cap_with_streaming_requests_overshoots_at_most_the_gap_in_flight(fleet: Fleet) -> None:
    served = 0
    async with clients(fleet, "spend") as sdk:
        for wave in range(40):  # noqa: B007 (reported after the loop)
            outcomes = await asyncio.gather(
                *(
                    stream(sdk[i % PROXIES], cut_after=2 if i % 3 == 0 else None, max_tokens=None)
                    for i in range(WAVE)
                )
            )
            served += sum(outcome in ("ok", "cut") for outcome in outcomes)
            refused = [outcome for outcome in outcomes if outcome not in ("ok", "cut")]
            assert set(refused) <= {"budget_exceeded"}
            if len(refused) == WAVE:
                break
        else:
            raise AssertionError("the spend cap never closed")
    recorded = await settled_usage(fleet, "spend", served)
    assert recorded.requests == served
    overshoot = max(0, recorded.micro_usd - SPEND_CAP)
    # Each request reserved SPEND_ESTIMATE and cost at most SPEND_ACTUAL; at most WAVE are in flight.
    bound = WAVE * (SPEND_ACTUAL - SPEND_ESTIMATE)
    print(
        f"\nfleet spend cap {SPEND_CAP} micro-USD: {served} streaming requests over {PROXIES} proxies "
        f"({wave + 1} waves of {WAVE}, every third cut off), estimate {SPEND_ESTIMATE} vs actual up to "
        f"{SPEND_ACTUAL} each: recorded {recorded.micro_usd}, overshoot {overshoot} micro-USD "
        f"(bound {bound} = {WAVE} in flight x gap {SPEND_ACTUAL - SPEND_ESTIMATE})"
    )
    assert overshoot <= bound
    assert recorded.micro_usd > SPEND_CAP - WAVE * SPEND_ESTIMATE  # the cap was used, not refused early


async def test_streams_are_charged_real_usage_even_when_cut_off(fleet: Fleet) -> None:
    async with clients(fleet, "stream") as sdk:
        assert await stream(sdk[0]) == "ok"
    whole = await settled_usage(fleet, "stream", 1)
    # The provider's own usage chunk, not a local estimate.
    assert (whole.input_tokens, whole.output_tokens, whole.micro_usd) == (
        FAKE_PROMPT_TOKENS,
        MAX_TOKENS,
        FAKE_COST,
    )

    async with clients(fleet, "cut") as sdk:
        assert await stream(sdk[1], cut_after=2) == "cut"
    cut = await settled_usage(fleet, "cut", 1)
    assert cut.output_tokens >= 2  # counted from what passed before the cut
    assert cut.input_tokens > 0
    assert cut.micro_usd >= cut.input_tokens + 4 * cut.output_tokens > 0


async def test_two_keys_of_one_team_share_the_pool(fleet: Fleet) -> None:
    async with clients(fleet, "pool-a") as team_a, clients(fleet, "pool-b") as team_b:
        for client in team_a[:2]:
            assert not isinstance(await chat(client), openai.APIStatusError)
        await settled_usage(fleet, POOL_ID, 2, is_pool=True)
        assert not isinstance(await chat(team_b[2]), openai.APIStatusError)  # 2 actual + 1 estimate <= cap
        await settled_usage(fleet, POOL_ID, 3, is_pool=True)
        refused = await chat(team_b[0])
    assert isinstance(refused, openai.APIStatusError)
    assert (refused.status_code, refused.code) == (429, "pool_budget_exceeded")
    assert refused.response.headers["x-should-retry"] == "false"
    pool = await month_usage(fleet, POOL_ID, is_pool=True)
    assert pool.requests == 3
    assert pool.micro_usd == 3 * FAKE_COST


async def test_redis_killed_then_restarted_empty(fleet: Fleet) -> None:
    async with clients(fleet, "seeded") as seeded:
        assert not isinstance(await chat(seeded[0]), openai.APIStatusError)
    await settled_usage(fleet, "seeded", 41)

    fleet.redis.kill()
    async with clients(fleet, "reject") as reject, clients(fleet, "allow") as allow:
        for index in range(PROXIES):
            refused = await chat(reject[index])
            assert isinstance(refused, openai.APIStatusError)
            assert (refused.status_code, refused.code) == (503, "limiter_unavailable")
            assert not isinstance(await chat(allow[index]), openai.APIStatusError)

    fleet.redis.restart()
    assert (await month_usage(fleet, "seeded")).requests == 0  # Redis came back empty
    for url in fleet.urls:
        await asyncio.to_thread(_wait_until, lambda url=url: _ready(url), f"proxy {url} ready again")
    async with clients(fleet, "seeded") as seeded:
        assert not isinstance(await chat(seeded[1]), openai.APIStatusError)
        recovered = await settled_usage(fleet, "seeded", 41)
        # The month came back from the seed (what the operator last wrote to status), plus this request.
        assert (recovered.requests, recovered.micro_usd) == (41, SEED_MICRO_USD + FAKE_COST)
        assert recovered.seeded_tokens == 4000
        refused = await chat(seeded[2])
    assert isinstance(refused, openai.APIStatusError)
    assert (refused.status_code, refused.code) == (429, "budget_exceeded")
