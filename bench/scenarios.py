"""The bench scenarios and how each is run: direct to the fake upstream, through the proxy, with limits.

Called by `bench.__main__`. Layout on this 2-core machine: the proxy is pinned to CPU 0, the fake
upstream processes, redis-server and wrk to the other CPUs, so the proxy's numbers are per core.
Every scenario runs after a short warm-up, `runs` times; the proxy's CPU and RSS are read around
each run. A smoke request checks each scenario's answer before it is measured.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Literal

from bench import loadgen, processes, stats
from llmkeys_proxy import config, keys

Target = Literal["direct", "floor", "proxy", "proxy-redis", "proxy-audit-stalled", "proxy-jwt"]

UPSTREAM_API_KEY = "sk-upstream-bench-0123456789"
BENCH_MODEL = "gpt-bench"
KEY_NAMESPACE = "bench"
#: The ServiceAccount (of KEY_NAMESPACE) the keyless key binds; its token is what the jwt scenarios send.
KEYLESS_ACCOUNT = "bench"
#: Directory holding another checkout's `proxy/` and `operator/` to run as the proxy instead of
#: this one (before/after comparisons across commits); set by `--proxy-src`.
PROXY_SRC_ENV = "BENCH_PROXY_SRC"


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """One measured load: where requests go, how many connections, streaming or not."""

    name: str
    description: str
    target: Target
    connections: int
    stream: bool
    #: The direct scenario with the same load, to compute the added latency against.
    baseline: str | None = None
    #: Run the whole chain (wrk, proxy, Redis, upstream) on the proxy's CPU: no cross-CPU wake-ups,
    #: so the added latency is the proxy's own work plus a same-CPU Redis round trip.
    one_cpu: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("direct", "fake upstream directly, 32 conns (the limit)", "direct", 32, False),
    Scenario("direct-stream", "fake upstream directly, SSE, 32 conns", "direct", 32, True),
    Scenario("direct-1c", "fake upstream directly, 1 conn", "direct", 1, False),
    Scenario("floor", "bare aiohttp pass-through, static key (the floor)", "floor", 32, False, "direct"),
    Scenario("floor-1c", "bare aiohttp pass-through, 1 conn", "floor", 1, False, "direct-1c"),
    Scenario("proxy", "proxy, no limits, in-process limiter, 32 conns", "proxy", 32, False, "direct"),
    Scenario("proxy-stream", "proxy, no limits, SSE, 32 conns", "proxy", 32, True, "direct-stream"),
    Scenario("proxy-1c", "proxy, no limits, 1 conn", "proxy", 1, False, "direct-1c"),
    Scenario(
        "audit-stalled",
        "proxy, no limits, audit sink stalled (stdout never read), 32 conns",
        "proxy-audit-stalled",
        32,
        False,
        "direct",
    ),
    Scenario(
        "jwt",
        "proxy, keyless key (ServiceAccount JWT), no limits, 32 conns",
        "proxy-jwt",
        32,
        False,
        "direct",
    ),
    Scenario("jwt-1c", "proxy, keyless key (ServiceAccount JWT), 1 conn", "proxy-jwt", 1, False, "direct-1c"),
    Scenario("redis", "proxy, RPM+TPM+spend on Redis, 32 conns", "proxy-redis", 32, False, "direct"),
    Scenario(
        "redis-stream", "proxy, limits on Redis, SSE, 32 conns", "proxy-redis", 32, True, "direct-stream"
    ),
    Scenario(
        "redis-1c", "proxy, limits on Redis, 1 conn (added latency)", "proxy-redis", 1, False, "direct-1c"
    ),
    Scenario(
        "direct-1cpu", "fake upstream directly, 1 conn, all on one CPU", "direct", 1, False, one_cpu=True
    ),
    Scenario(
        "redis-1cpu",
        "proxy, limits on Redis, 1 conn, all on one CPU (added latency)",
        "proxy-redis",
        1,
        False,
        "direct-1cpu",
        one_cpu=True,
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class BenchKeys:
    """The virtual keys the bench sends (full keys: bench-local, generated per run, never stored)."""

    unlimited: str
    limited: str


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """Which CPUs each party runs on."""

    proxy_cpus: set[int]
    load_cpus: set[int]  # fake upstream, redis-server and wrk

    @classmethod
    def detect(cls) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(proxy_cpus=set(cpus), load_cpus=set(cpus))
        return cls(proxy_cpus={cpus[0]}, load_cpus=set(cpus[1:]))


@dataclasses.dataclass
class ScenarioOutcome:
    """A scenario's summary, raw runs, and why it could not run (if so)."""

    scenario: Scenario
    summary: stats.ScenarioSummary | None
    runs: list[stats.RunMeasure]
    failure: str | None = None


@dataclasses.dataclass
class ProxyStart:
    """A proxy start: time to ready and idle memory per worker."""

    label: str
    workers: int
    ready_s: float
    idle_rss_mb_per_worker: list[float]
    idle_pss_mb_per_worker: list[float] = dataclasses.field(default_factory=list)


def request_body(stream: bool) -> dict[str, object]:
    """A typical small chat request (about 100 prompt tokens), the same for every target."""
    body: dict[str, object] = {
        "model": BENCH_MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant that answers in one sentence."},
            {
                "role": "user",
                "content": "Summarise why a gateway in front of language model APIs should add as "
                "little latency as possible, and what it must still enforce on every request: "
                "authentication, model allowlists, rate limits, token limits and spend caps.",
            },
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return body


def make_keys() -> BenchKeys:
    return BenchKeys(unlimited=keys.generate_key(), limited=keys.generate_key())


def _key_entry(name: str, full_key: str, limits: config.Limits) -> config.KeyEntry:
    parsed = keys.parse_key(full_key)
    assert parsed is not None
    return config.KeyEntry(
        key_id=parsed.key_id,
        hashes=(config.SecretHash(sha256=keys.hash_secret(parsed.secret)),),
        namespace=KEY_NAMESPACE,
        name=name,
        owner={"team": "bench"},
        providers=("llmkeys/bench-upstream",),
        model_allowlists=(("*",),),
        limits=limits,
    )


def build_proxy_config(upstream_url: str, bench_keys: BenchKeys) -> config.ProxyConfig:
    """One openai-compatible credential pointing at the fake upstream; one key without limits and
    one with RPM+TPM+spend limits far above what the bench can reach (checked, never hit)."""
    provider = config.ProviderEntry(
        id="llmkeys/bench-upstream",
        provider="openai-compatible",
        base_url=f"{upstream_url}/v1",
        api_key=UPSTREAM_API_KEY,
        models=(config.ModelRoute(name="gpt-*"),),
        pricing={BENCH_MODEL: config.ModelPrice(input=1_000_000, output=4_000_000)},
    )
    high_limits = config.Limits(
        requests_per_minute=100_000_000,
        tokens_per_minute=100_000_000_000,
        tokens_per_day=1_000_000_000_000,
        spend_per_month_micro_usd=1_000_000_000_000_000,
    )
    keyless = _key_entry("keyless", keys.generate_key(), config.Limits()).model_copy(
        update={
            "hashes": (),
            "identities": (
                config.Identity(
                    issuer=config.KUBERNETES_ISSUER,
                    subject=f"system:serviceaccount:{KEY_NAMESPACE}:{KEYLESS_ACCOUNT}",
                ),
            ),
        }
    )
    return config.ProxyConfig(
        keys=(
            _key_entry("unlimited", bench_keys.unlimited, config.Limits()),
            _key_entry("limited", bench_keys.limited, high_limits),
            keyless,
        ),
        providers=(provider,),
    )


def write_proxy_config(directory: pathlib.Path, proxy_config: config.ProxyConfig) -> None:
    """The config directory `llmkeys proxy` reads with LLMKEYS_CONFIG_SOURCE=directory."""
    from llmkeys_proxy import sources  # the proxy's own writer: the layout stays its business

    sources.write_config_dir(directory, proxy_config)


def proxy_command() -> list[str]:
    """`llmkeys proxy` from this interpreter's environment."""
    script = pathlib.Path(sys.executable).with_name("llmkeys")
    if script.exists():
        return [str(script), "proxy"]
    return [sys.executable, "-m", "llmkeys_operator.cli", "proxy"]


#: Audit queue of the stalled-sink scenario: small, so a short run overflows it and drops are counted.
STALLED_AUDIT_QUEUE = 1000


def proxy_env(
    config_dir: pathlib.Path,
    port: int,
    redis_url: str,
    workers: int,
    stall_audit: bool = False,
    issuer_url: str = "",
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLMKEYS_")}
    env.update(
        LLMKEYS_HOST="127.0.0.1",
        LLMKEYS_PORT=str(port),
        LLMKEYS_WORKERS=str(workers),
        LLMKEYS_CONFIG_SOURCE="directory",
        LLMKEYS_CONFIG_DIR=str(config_dir),
        LLMKEYS_REDIS_URL=redis_url,
        LLMKEYS_LOG_LEVEL="INFO",
        # The jwt scenarios' issuer (bench.identity_issuer) stands in for the cluster's.
        LLMKEYS_KUBERNETES_ISSUER=issuer_url or "off",
    )
    if stall_audit:
        env["LLMKEYS_AUDIT_QUEUE_SIZE"] = str(STALLED_AUDIT_QUEUE)
    source = os.environ.get(PROXY_SRC_ENV)
    if source:
        # Bench another commit's proxy: `git archive <commit> proxy operator | tar -x -C DIR`.
        paths = [str(pathlib.Path(source) / "proxy"), str(pathlib.Path(source) / "operator")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_proxy(
    label: str,
    *,
    config_dir: pathlib.Path,
    redis_url: str,
    log_dir: pathlib.Path,
    cpus: set[int] | None,
    workers: int = 1,
    stall_audit: bool = False,
    issuer_url: str = "",
) -> tuple[processes.ManagedProcess, str, ProxyStart]:
    """Start `llmkeys proxy`, wait for /readyz; returns the process, its base URL and start facts.
    `stall_audit`: the proxy's stdout (its audit sink) goes to a pipe nobody reads, so the sink's
    writes block once the pipe buffer is full (a log collector that stopped reading)."""
    port = processes.free_port()
    managed = processes.start(
        f"proxy-{label}",
        proxy_command(),
        log_dir=log_dir,
        cpus=cpus,
        env=proxy_env(config_dir, port, redis_url, workers, stall_audit, issuer_url),
        capture_stdout=stall_audit,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        ready_s = processes.wait_ready(f"{base_url}/readyz", managed)
        if workers > 1:
            _wait_for_workers(managed, workers)
    except Exception:
        managed.stop()
        raise
    time.sleep(0.2)  # let the worker settle after its first answers (freeze, first GC)
    rss = [processes.rss_bytes(pid) / 2**20 for pid in managed.workers()]
    pss = [processes.pss_bytes(pid) / 2**20 for pid in managed.workers()]
    return managed, base_url, ProxyStart(label, workers, ready_s, rss, pss)


def start_floor(
    *, upstream_url: str, api_key: str, log_dir: pathlib.Path, cpus: set[int] | None
) -> tuple[processes.ManagedProcess, str]:
    """The bare aiohttp pass-through (bench.floor_proxy), pinned like the proxy."""
    port = processes.free_port()
    command = [sys.executable, "-m", "bench.floor_proxy", "--port", str(port), "--upstream", upstream_url]
    command += ["--api-key", api_key, "--upstream-key", UPSTREAM_API_KEY]
    managed = processes.start("floor", command, log_dir=log_dir, cpus=cpus)
    base_url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_ready(f"{base_url}/readyz", managed)
    except Exception:
        managed.stop()
        raise
    return managed, base_url


def _wait_for_workers(managed: processes.ManagedProcess, workers: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(processes.children_of(managed.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.05)


def smoke_check(url: str, headers: dict[str, str], stream: bool) -> None:
    """One request as the bench sends it; raises when the answer is not a proper chat completion
    (non-2xx, no usage, or a stream without its 20+ chunks and [DONE])."""
    body = json.dumps(request_body(stream)).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback http only
        url, data=body, headers={**headers, "Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback http only
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"smoke request got HTTP {exc.code}: {exc.read()[:300]!r}") from None
    if not stream:
        answer = json.loads(payload)
        if not answer.get("choices") or not answer.get("usage"):
            raise RuntimeError(f"smoke request: not a chat completion: {payload[:300]!r}")
        return
    events = [line[6:] for line in payload.decode().splitlines() if line.startswith("data: ")]
    if len(events) < 22 or events[-1] != "[DONE]":
        raise RuntimeError(f"smoke stream: {len(events)} events, last {events[-1:]!r}")
    if any(json.loads(event).get("usage") for event in events[:-1]):
        # The client did not ask for include_usage: the proxy must hide the usage chunk it added.
        raise RuntimeError("smoke stream: usage chunk visible to a client that did not ask for it")


def run_scenario(
    scenario: Scenario,
    *,
    base_url: str,
    api_key: str,
    duration_s: float,
    warmup_s: float,
    layout: Layout,
    proxy: processes.ManagedProcess | None,
    load_pids: list[int] | None = None,
) -> stats.RunMeasure:
    """Warm up, then one measured wrk run with the proxy's CPU and RSS read around it. A one-CPU
    scenario moves `load_pids` (upstream, Redis) and wrk onto the proxy's CPU for the run."""
    if scenario.one_cpu:
        one = Layout(proxy_cpus=layout.proxy_cpus, load_cpus=layout.proxy_cpus)
        processes.pin(load_pids or [], layout.proxy_cpus)
        try:
            return run_scenario(
                dataclasses.replace(scenario, one_cpu=False),
                base_url=base_url,
                api_key=api_key,
                duration_s=duration_s,
                warmup_s=warmup_s,
                layout=one,
                proxy=proxy,
            )
        finally:
            processes.pin(load_pids or [], layout.load_cpus)
    url = f"{base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"}
    body = request_body(scenario.stream)
    threads = 1 if scenario.connections == 1 else 2
    if warmup_s > 0:
        loadgen.run_wrk(
            url,
            connections=scenario.connections,
            duration_s=warmup_s,
            body=body,
            headers=headers,
            threads=threads,
            cpus=layout.load_cpus,
        )
    pids = proxy.tree() if proxy is not None else []
    cpu_before = processes.cpu_seconds(pids)
    wait_before = processes.run_queue_wait_seconds(pids)
    load_before = processes.cpu_busy_ticks(layout.load_cpus)
    started = time.monotonic()
    result = loadgen.run_wrk(
        url,
        connections=scenario.connections,
        duration_s=duration_s,
        body=body,
        headers=headers,
        threads=threads,
        cpus=layout.load_cpus,
    )
    wall = time.monotonic() - started
    load_busy = processes.busy_percent(load_before, processes.cpu_busy_ticks(layout.load_cpus))
    if proxy is None:
        return stats.RunMeasure(wrk=result, load_cpus_busy_percent=load_busy)
    cpu_percent = (processes.cpu_seconds(pids) - cpu_before) / wall * 100
    wait_percent = (processes.run_queue_wait_seconds(pids) - wait_before) / wall * 100
    rss_mb = sum(processes.rss_bytes(pid) for pid in pids) / 2**20
    return stats.RunMeasure(
        wrk=result,
        proxy_cpu_percent=cpu_percent,
        proxy_rss_mb=rss_mb,
        load_cpus_busy_percent=load_busy,
        proxy_cpu_wait_percent=wait_percent,
    )


def audit_drops(base_url: str) -> float:
    """llmkeys_audit_dropped_total summed over sinks, from the proxy's /metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    prefix = "llmkeys_audit_dropped_total{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def utc_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def by_target(scenarios: tuple[Scenario, ...], target: Target) -> Iterator[Scenario]:
    return (scenario for scenario in scenarios if scenario.target == target)
