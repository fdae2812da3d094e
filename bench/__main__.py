"""`python -m bench` (what `make bench` runs): every scenario twice, the table, targets and JSON results.

Options: `--quick` (short runs), `--duration S` or env BENCH_DURATION, `--runs N`, `--only a,b`
(scenario names), `--no-extras` (skip the limiter, propagation and worker-memory benches).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from bench import identity_issuer, processes, report, scenarios, stats

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs (a smoke run of the whole bench)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured run (default 8)")
    parser.add_argument("--runs", type=int, default=2, help="measured runs per scenario (default 2)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--upstream-processes", type=int, default=2)
    parser.add_argument("--no-extras", action="store_true", help="skip limiter/propagation/worker benches")
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR)
    parser.add_argument(
        "--proxy-src",
        type=pathlib.Path,
        help="run the proxy from DIR/proxy and DIR/operator (another commit, via git archive)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-20,
        help="niceness of the bench and everything it starts (default -20, needs root; 0 to keep)",
    )
    args = parser.parse_args(argv)
    if args.proxy_src:
        os.environ[scenarios.PROXY_SRC_ENV] = str(args.proxy_src.resolve())
    if args.duration is None:
        env_duration = os.environ.get("BENCH_DURATION")
        args.duration = float(env_duration) if env_duration else (3.0 if args.quick else 8.0)
    args.warmup = 1.0
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def optional_bench(module_name: str, *arguments: object) -> dict[str, object]:
    """Run `<module>.run(*arguments)` if the module exists; a clear reason otherwise."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return {"available": False, "reason": f"{module_name} is not in this checkout"}
        return {"available": False, "reason": f"{module_name} cannot be imported: {exc}"}
    try:
        result = module.run(*arguments)
        if inspect.isawaitable(result):
            result = asyncio.run(result)  # type: ignore[arg-type]
    except Exception as exc:
        return {"available": False, "reason": f"{module_name}.run failed: {type(exc).__name__}: {exc}"}
    if not isinstance(result, dict):
        return {"available": False, "reason": f"{module_name}.run returned {type(result).__name__}"}
    return {"available": True, **result}


def raise_priority(niceness: int) -> None:
    """Run the bench (and, inherited, the proxy, upstream, Redis and wrk) at `niceness`, so other
    work on a shared machine disturbs the measurements less."""
    if niceness == 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except PermissionError:
        log(
            f"bench: niceness {niceness} not allowed (not root); "
            "other load on this machine shows in the numbers"
        )


def git_revision() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Runner:
    """Runs groups of scenarios against one target and collects outcomes."""

    def __init__(self, args: argparse.Namespace, layout: scenarios.Layout) -> None:
        self.args = args
        self.layout = layout
        self.outcomes: dict[str, scenarios.ScenarioOutcome] = {}
        self.starts: list[scenarios.ProxyStart] = []
        #: Fake upstream and Redis processes (moved onto the proxy's CPU for one-CPU scenarios).
        self.load_pids: list[int] = []

    def selected(self, target: scenarios.Target) -> list[scenarios.Scenario]:
        wanted = {name.strip() for name in self.args.only.split(",") if name.strip()}
        return [s for s in scenarios.by_target(scenarios.SCENARIOS, target) if not wanted or s.name in wanted]

    def fail(self, group: list[scenarios.Scenario], reason: str) -> None:
        for scenario in group:
            self.outcomes[scenario.name] = scenarios.ScenarioOutcome(scenario, None, [], reason)
            log(f"  {scenario.name}: NOT MEASURED ({reason.splitlines()[0] if reason else ''})")

    def run_group(
        self,
        group: list[scenarios.Scenario],
        *,
        base_url: str,
        api_key: str,
        proxy: processes.ManagedProcess | None,
    ) -> None:
        runs: dict[str, list[stats.RunMeasure]] = {scenario.name: [] for scenario in group}
        failed: dict[str, str] = {}
        url = f"{base_url}/v1/chat/completions"
        for scenario in group:
            try:
                scenarios.smoke_check(url, {"Authorization": f"Bearer {api_key}"}, scenario.stream)
            except Exception as exc:
                failed[scenario.name] = f"smoke check failed: {exc}"
        for run_index in range(self.args.runs):
            for scenario in group:
                if scenario.name in failed:
                    continue
                log(f"  {scenario.name} run {run_index + 1}/{self.args.runs} ...")
                try:
                    measure = scenarios.run_scenario(
                        scenario,
                        base_url=base_url,
                        api_key=api_key,
                        duration_s=self.args.duration,
                        warmup_s=self.args.warmup if run_index == 0 else 0,
                        layout=self.layout,
                        proxy=proxy,
                        load_pids=self.load_pids,
                    )
                except Exception as exc:
                    failed[scenario.name] = f"{type(exc).__name__}: {exc}"
                    continue
                runs[scenario.name].append(measure)
                log(
                    f"    {measure.wrk.requests_per_s:,.0f} req/s p50 {measure.wrk.p50_us / 1000:.3f} ms "
                    f"p99 {measure.wrk.p99_us / 1000:.3f} ms errors {measure.wrk.errors}"
                )
        for scenario in group:
            if scenario.name in failed:
                self.outcomes[scenario.name] = scenarios.ScenarioOutcome(
                    scenario, None, [], failed[scenario.name]
                )
                continue
            summary = stats.summarize(
                scenario.name,
                scenario.description,
                scenario.connections,
                scenario.stream,
                runs[scenario.name],
            )
            self.outcomes[scenario.name] = scenarios.ScenarioOutcome(scenario, summary, runs[scenario.name])

    @contextlib.contextmanager
    def proxy(
        self,
        label: str,
        *,
        config_dir: pathlib.Path,
        redis_url: str,
        log_dir: pathlib.Path,
        stall_audit: bool = False,
        issuer_url: str = "",
    ) -> Iterator[tuple[processes.ManagedProcess, str]]:
        managed, base_url, start = scenarios.start_proxy(
            label,
            config_dir=config_dir,
            redis_url=redis_url,
            log_dir=log_dir,
            cpus=self.layout.proxy_cpus,
            stall_audit=stall_audit,
            issuer_url=issuer_url,
        )
        self.starts.append(start)
        log(f"  proxy ({label}) ready in {start.ready_s:.2f} s, idle RSS {start.idle_rss_mb_per_worker} MB")
        try:
            yield managed, base_url
        finally:
            if stall_audit and managed.process.stdout is not None:
                managed.process.stdout.close()  # the stalled sink fails fast instead of holding shutdown
            managed.stop()

    def summaries(self) -> dict[str, stats.ScenarioSummary]:
        found = {name: outcome.summary for name, outcome in self.outcomes.items() if outcome.summary}
        result: dict[str, stats.ScenarioSummary] = {}
        for scenario in scenarios.SCENARIOS:
            summary = found.get(scenario.name)
            if summary is None:
                continue
            baseline = found.get(scenario.baseline) if scenario.baseline else None
            result[scenario.name] = stats.with_added_latency(summary, baseline)
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = scenarios.Layout.detect()
    raise_priority(args.nice)
    began = time.monotonic()
    timestamp = scenarios.utc_timestamp()
    log(
        f"bench: {args.runs} runs x {args.duration:.0f} s per scenario; "
        f"proxy on CPU {sorted(layout.proxy_cpus)}, upstream/redis/wrk on CPU {sorted(layout.load_cpus)}"
    )
    runner = Runner(args, layout)
    extras: dict[str, dict[str, object]] = {}
    bench_keys = scenarios.make_keys()
    with tempfile.TemporaryDirectory(prefix="llmkeys-bench-") as tmp:
        work = pathlib.Path(tmp)
        log_dir = work / "logs"
        log_dir.mkdir()
        with (
            processes.upstream(
                processes=args.upstream_processes,
                api_key=scenarios.UPSTREAM_API_KEY,
                log_dir=log_dir,
                cpus=layout.load_cpus,
            ) as (upstream_url, upstreams),
            processes.redis_server(log_dir=log_dir, cpus=layout.load_cpus) as (redis_url, redis_process),
            identity_issuer.running_issuer() as issuer,
        ):
            runner.load_pids = [managed.pid for managed in upstreams] + [redis_process.pid]
            group = runner.selected("direct")
            if group:
                log("direct to the fake upstream")
                runner.run_group(group, base_url=upstream_url, api_key=scenarios.UPSTREAM_API_KEY, proxy=None)
            group = runner.selected("floor")
            if group:
                log("bare aiohttp pass-through (the floor)")
                try:
                    floor, floor_url = scenarios.start_floor(
                        upstream_url=upstream_url,
                        api_key=bench_keys.unlimited,
                        log_dir=log_dir,
                        cpus=layout.proxy_cpus,
                    )
                except Exception as exc:
                    runner.fail(group, f"floor proxy: {type(exc).__name__}: {exc}")
                else:
                    try:
                        runner.run_group(group, base_url=floor_url, api_key=bench_keys.unlimited, proxy=floor)
                    finally:
                        floor.stop()
            config_dir = work / "config"
            config_error = None
            try:
                scenarios.write_proxy_config(
                    config_dir, scenarios.build_proxy_config(upstream_url, bench_keys)
                )
            except Exception as exc:
                config_error = f"cannot write the proxy config: {type(exc).__name__}: {exc}"
            token = issuer.token(scenarios.KEY_NAMESPACE, scenarios.KEYLESS_ACCOUNT)
            for target, label, redis, key in (
                ("proxy", "memory", "", bench_keys.unlimited),
                ("proxy-audit-stalled", "memory, stalled audit sink", "", bench_keys.unlimited),
                ("proxy-jwt", "jwt", "", token),
                ("proxy-redis", "redis", redis_url, bench_keys.limited),
            ):
                group = runner.selected(target)  # type: ignore[arg-type]
                if not group:
                    continue
                log(f"through the proxy ({label} limiter)")
                if config_error:
                    runner.fail(group, config_error)
                    continue
                try:
                    stall = target == "proxy-audit-stalled"
                    with runner.proxy(
                        label,
                        config_dir=config_dir,
                        redis_url=redis,
                        log_dir=log_dir,
                        stall_audit=stall,
                        issuer_url=issuer.url if target == "proxy-jwt" else "",
                    ) as (managed, base_url):
                        runner.run_group(group, base_url=base_url, api_key=key, proxy=managed)
                        if stall:
                            drops = scenarios.audit_drops(base_url)
                            log(f"  audit records dropped by the stalled sink (counted): {drops:,.0f}")
                            extras["audit_stalled"] = {"dropped": drops}
                except Exception as exc:
                    runner.fail(group, f"proxy: {type(exc).__name__}: {exc}")
            if not args.no_extras:
                if not config_error:
                    extras["workers"] = measure_workers(config_dir, redis_url, log_dir, runner)
                log("limiter micro-bench")
                extras["limiter"] = optional_bench("bench.limiter_bench", redis_url)
                log("propagation bench")
                extras["propagation"] = optional_bench("bench.propagation_bench")
    summaries = runner.summaries()
    failures = {name: outcome.failure for name, outcome in runner.outcomes.items() if outcome.failure}
    idle = [mb for start in runner.starts for mb in start.idle_rss_mb_per_worker]
    ready = [start.ready_s for start in runner.starts]
    checks = report.check_targets(summaries, idle, ready)

    print()
    print(
        f"llmkeys bench {timestamp} (commit {git_revision()}, {os.cpu_count()} CPUs, "
        f"{args.runs} runs x {args.duration:.0f} s)"
        + (f", proxy from {args.proxy_src}" if args.proxy_src else "")
    )
    print("latencies are means over runs; +p50/+p99 = added against the direct scenario with the same load;")
    print("noise = largest spread between runs of req/s or p50, in % of the mean; load CPU% = how busy the")
    print("CPUs of upstream/Redis/wrk were (near 100: the load side, not the proxy, set the pace);")
    print("CPU us/req = proxy CPU time per request (1e6 / it = req/s one core could serve); CPU wait% =")
    print("share of the run the proxy was runnable but other processes had its CPU")
    print()
    print(report.format_table(report.TABLE_COLUMNS, report.table_rows(list(summaries.values()), failures)))
    print()
    for start in runner.starts:
        rss = ", ".join(f"{mb:.1f}" for mb in start.idle_rss_mb_per_worker)
        pss = ", ".join(f"{mb:.1f}" for mb in start.idle_pss_mb_per_worker)
        print(
            f"proxy start ({start.label}, {start.workers} worker(s)): ready in {start.ready_s:.2f} s, "
            f"idle RSS per worker {rss} MB (PSS {pss} MB)"
        )
    for title, key in (("limiter micro-bench", "limiter"), ("propagation bench", "propagation")):
        if key in extras:
            print(report.format_extra(title, extras[key]))
    print()
    print(report.format_targets(checks))
    elapsed = time.monotonic() - began
    document = {
        "timestamp": timestamp,
        "commit": git_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "runs": args.runs,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "upstream_processes": args.upstream_processes,
            "proxy_src": str(args.proxy_src) if args.proxy_src else None,
            "proxy_cpus": layout.proxy_cpus,
            "load_cpus": layout.load_cpus,
        },
        "scenarios": {
            name: {"summary": summaries.get(name), "runs": outcome.runs, "failure": outcome.failure}
            for name, outcome in runner.outcomes.items()
        },
        "proxy_starts": runner.starts,
        "extras": extras,
        "targets": checks,
        "elapsed_s": elapsed,
    }
    path = report.write_results(args.results_dir, timestamp, document)
    print(f"\nresults: {path} (and latest.json); bench took {elapsed:.0f} s")
    return 0


def measure_workers(
    config_dir: pathlib.Path, redis_url: str, log_dir: pathlib.Path, runner: Runner
) -> dict[str, object]:
    """Start the proxy once with 2 SO_REUSEPORT workers (unpinned): time to ready, idle RSS of each."""
    log("proxy with 2 workers (memory per worker)")
    try:
        managed, _, start = scenarios.start_proxy(
            "workers", config_dir=config_dir, redis_url=redis_url, log_dir=log_dir, cpus=None, workers=2
        )
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    managed.stop()
    runner.starts.append(start)
    return {
        "available": True,
        "ready_s": start.ready_s,
        "idle_rss_mb_per_worker": start.idle_rss_mb_per_worker,
        "idle_pss_mb_per_worker": start.idle_pss_mb_per_worker,
    }


if __name__ == "__main__":
    sys.exit(main())
