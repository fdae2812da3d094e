"""Profile the proxy's hot path under load: py-spy samples the pinned proxy while wrk drives a scenario.

`python -m bench.profile [--scenario redis] [--duration 10]` (py-spy comes with the `bench` extra:
`pip install -e '.[bench]'`). Prints where the time went, by package and by function (self and
inclusive share of the samples), and keeps the raw collapsed stacks under bench/results/ for a
flame graph. `summarize_collapsed` is pure and unit-tested.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading

from bench import processes, scenarios, stats

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileSummary:
    """Shares of all samples (0..1): by package (self time), by function (self and inclusive)."""

    samples: int
    by_package: list[tuple[str, float]]
    by_function_self: list[tuple[str, float]]
    by_function_inclusive: list[tuple[str, float]]


def package_of(file: str) -> str:
    """A short owner name for a source file: `aiohttp`, `redis`, `asyncio`, or for our own code the
    module (`llmkeys_proxy/pipeline.py`), from py-spy's full file names."""
    path = file.replace("\\", "/")
    for ours in ("llmkeys_proxy/", "llmkeys_operator/"):
        if ours in path:
            return ours + path.split(ours, 1)[1]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return rest.split("/", 1)[0].removesuffix(".py")
    return path.split("/", 1)[0].removesuffix(".py") or "<native>"


def _frame_name(frame: str) -> tuple[str, str]:
    """(`function (file)`, package) of one collapsed-stack frame `function (file:line)`."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip() or "<native>", "<native>"
    file = match.group("file")
    return f"{match.group('function')} ({package_of(file)})", package_of(file)


def summarize_collapsed(lines: list[str], top: int = 25) -> ProfileSummary:
    """Aggregate py-spy's raw collapsed stacks (`frame;frame;... count` per line)."""
    self_by_function: collections.Counter[str] = collections.Counter()
    self_by_package: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        # An empty stack: the sample caught native code with no Python frame (uvloop, the kernel).
        frames = [_frame_name(frame) for frame in stack.split(";") if frame] or [("<native>", "<native>")]
        total += count
        function, package = frames[-1]
        self_by_function[function] += count
        self_by_package[package] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(top)] if total else []

    return ProfileSummary(total, shares(self_by_package), shares(self_by_function), shares(inclusive))


def format_summary(title: str, summary: ProfileSummary) -> str:
    lines = [f"{title}: {summary.samples} samples (active time only)"]
    for heading, rows in (
        ("self time by package/module", summary.by_package),
        ("self time by function", summary.by_function_self),
        ("inclusive time by function", summary.by_function_inclusive),
    ):
        lines.append(f"  {heading}:")
        lines += [f"    {share * 100:5.1f}%  {name}" for name, share in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    names = [s.name for s in scenarios.SCENARIOS if s.target in ("proxy", "proxy-redis")]
    parser.add_argument("--scenario", default="redis", choices=names)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--label", default="", help="added to the output file names (e.g. before/after)")
    parser.add_argument(
        "--proxy-src",
        type=pathlib.Path,
        help="run the proxy from DIR/proxy and DIR/operator (another commit, via git archive)",
    )
    args = parser.parse_args(argv)
    if args.proxy_src:
        os.environ[scenarios.PROXY_SRC_ENV] = str(args.proxy_src.resolve())
    py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    if not pathlib.Path(py_spy).exists():
        print("py-spy is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    scenario = next(s for s in scenarios.SCENARIOS if s.name == args.scenario)
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, -20)  # as `python -m bench` does: less noise from other work
    layout = scenarios.Layout.detect()
    bench_keys = scenarios.make_keys()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"profile-{scenarios.utc_timestamp()}-{scenario.name}" + (f"-{args.label}" if args.label else "")
    raw_path = RESULTS_DIR / f"{stem}.collapsed"
    with tempfile.TemporaryDirectory(prefix="llmkeys-profile-") as tmp:
        work = pathlib.Path(tmp)
        log_dir = work / "logs"
        log_dir.mkdir()
        with (
            processes.upstream(
                processes=2, api_key=scenarios.UPSTREAM_API_KEY, log_dir=log_dir, cpus=layout.load_cpus
            ) as (upstream_url, upstreams),
            processes.redis_server(log_dir=log_dir, cpus=layout.load_cpus) as (redis_url, redis_process),
        ):
            load_pids = [process.pid for process in upstreams] + [redis_process.pid]
            config_dir = work / "config"
            scenarios.write_proxy_config(config_dir, scenarios.build_proxy_config(upstream_url, bench_keys))
            use_redis = scenario.target == "proxy-redis"
            managed, base_url, _ = scenarios.start_proxy(
                "profile",
                config_dir=config_dir,
                redis_url=redis_url if use_redis else "",
                log_dir=log_dir,
                cpus=layout.proxy_cpus,
            )
            key = bench_keys.limited if use_redis else bench_keys.unlimited
            try:
                scenarios.smoke_check(
                    f"{base_url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}, scenario.stream
                )
                # Warm up, then sample while wrk runs a little longer than py-spy.
                scenarios.run_scenario(
                    scenario,
                    base_url=base_url,
                    api_key=key,
                    duration_s=2,
                    warmup_s=0,
                    layout=layout,
                    proxy=managed,
                    load_pids=load_pids,
                )
                spy_options = ["--duration", str(round(args.duration)), "--rate", str(args.rate)]
                spy_options += ["--format", "raw", "--nonblocking", "--full-filenames", "-o", str(raw_path)]
                spy_command = processes.pinned(
                    [py_spy, "record", "--pid", str(managed.pid), *spy_options], layout.load_cpus
                )
                spy = subprocess.Popen(spy_command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                measure: list[stats.RunMeasure] = []
                load = threading.Thread(
                    target=lambda: measure.append(
                        scenarios.run_scenario(
                            scenario,
                            base_url=base_url,
                            api_key=key,
                            duration_s=args.duration + 2,
                            warmup_s=0,
                            layout=layout,
                            proxy=managed,
                            load_pids=load_pids,
                        )
                    )
                )
                load.start()
                _, spy_err = spy.communicate(timeout=args.duration + 60)
                load.join()
                if spy.returncode != 0:
                    print(f"py-spy failed: {spy_err.decode(errors='replace')[-800:]}", file=sys.stderr)
                    return 1
            finally:
                managed.stop()
    summary = summarize_collapsed(raw_path.read_text().splitlines(), args.top)
    text = format_summary(f"profile of scenario {scenario.name} ({scenario.description})", summary)
    if measure:
        run = measure[0]
        text += (
            f"\n  load while sampled: {run.wrk.requests_per_s:,.0f} req/s, "
            f"p50 {run.wrk.p50_us / 1000:.3f} ms, "
            f"p99 {run.wrk.p99_us / 1000:.3f} ms, proxy CPU {run.proxy_cpu_percent or 0:.0f}%, "
            f"errors {run.wrk.errors} (py-spy itself slows the proxy)"
        )
    (RESULTS_DIR / f"{stem}.txt").write_text(text + "\n")
    print(text)
    print(f"\nraw stacks: {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
