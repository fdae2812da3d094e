"""Statistics over repeated bench runs: per-run measures, their mean, and the noise between runs.

Called by `bench.scenarios` (to build a `ScenarioSummary` from each scenario's runs) and by
`bench.report`. Pure functions, unit-tested in tests/unit/test_bench_stats.py.
"""

from __future__ import annotations

import dataclasses
import statistics

from bench import loadgen


@dataclasses.dataclass(frozen=True, slots=True)
class RunMeasure:
    """One run of one scenario: what wrk saw plus the proxy's CPU and memory during it."""

    wrk: loadgen.WrkResult
    proxy_cpu_percent: float | None = None  # 100 = one core fully busy
    proxy_rss_mb: float | None = None  # summed over the proxy's processes, at the end of the run
    #: How busy the load generator's CPUs were (upstream, Redis, wrk, and anything else running
    #: there): near 100 means the load side, not the proxy, limited the run.
    load_cpus_busy_percent: float | None = None
    #: Share of the run the proxy was runnable but waited for its CPU (other processes on it).
    proxy_cpu_wait_percent: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ScenarioSummary:
    """A scenario's runs reduced to means, with the spread between runs as the noise."""

    name: str
    description: str
    connections: int
    stream: bool
    runs: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # summed over all runs
    requests: int  # summed over all runs
    noise_percent: float  # max relative spread of req/s and p50 between runs
    proxy_cpu_percent: float | None
    proxy_rss_mb: float | None
    load_cpus_busy_percent: float | None = None
    #: Proxy CPU time per request in microseconds: robust to other load on the machine, and
    #: 1e6 / it is what one core could serve if the proxy had it to itself.
    proxy_cpu_us_per_request: float | None = None
    proxy_cpu_wait_percent: float | None = None
    added_p50_ms: float | None = None  # against the matching direct-to-upstream scenario
    added_p99_ms: float | None = None


def relative_spread_percent(values: list[float]) -> float:
    """(max - min) / mean in percent: 0 for one value or all equal, and for a zero mean."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    if mean == 0:
        return 0.0
    return (max(values) - min(values)) / mean * 100


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def summarize(
    name: str, description: str, connections: int, stream: bool, runs: list[RunMeasure]
) -> ScenarioSummary:
    """Means over `runs`; noise is the larger of the req/s and the p50 spread between runs."""
    if not runs:
        raise ValueError(f"scenario {name} has no runs")
    rates = [run.wrk.requests_per_s for run in runs]
    p50s = [run.wrk.p50_us / 1000 for run in runs]
    return ScenarioSummary(
        name=name,
        description=description,
        connections=connections,
        stream=stream,
        runs=len(runs),
        requests_per_s=statistics.fmean(rates),
        p50_ms=statistics.fmean(p50s),
        p90_ms=statistics.fmean(run.wrk.p90_us / 1000 for run in runs),
        p99_ms=statistics.fmean(run.wrk.p99_us / 1000 for run in runs),
        errors=sum(run.wrk.errors for run in runs),
        requests=sum(run.wrk.requests for run in runs),
        noise_percent=max(relative_spread_percent(rates), relative_spread_percent(p50s)),
        proxy_cpu_percent=_mean_or_none([run.proxy_cpu_percent for run in runs]),
        proxy_rss_mb=_mean_or_none([run.proxy_rss_mb for run in runs]),
        load_cpus_busy_percent=_mean_or_none([run.load_cpus_busy_percent for run in runs]),
        proxy_cpu_us_per_request=_mean_or_none([_cpu_per_request_us(run) for run in runs]),
        proxy_cpu_wait_percent=_mean_or_none([run.proxy_cpu_wait_percent for run in runs]),
    )


def _cpu_per_request_us(run: RunMeasure) -> float | None:
    if run.proxy_cpu_percent is None or run.wrk.requests_per_s <= 0:
        return None
    return run.proxy_cpu_percent / 100 / run.wrk.requests_per_s * 1_000_000


def with_added_latency(summary: ScenarioSummary, direct: ScenarioSummary | None) -> ScenarioSummary:
    """`summary` with its p50/p99 minus those of the direct scenario under the same load."""
    if direct is None:
        return summary
    return dataclasses.replace(
        summary,
        added_p50_ms=summary.p50_ms - direct.p50_ms,
        added_p99_ms=summary.p99_ms - direct.p99_ms,
    )
