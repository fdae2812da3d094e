"""Bench output: the results table, the issue-6 targets check, and the JSON files under bench/results/.

Called by `bench.__main__` with everything measured. Pure formatting apart from `write_results`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence

import orjson

from bench import stats


@dataclasses.dataclass(frozen=True, slots=True)
class TargetCheck:
    """One number issue 6 asks for, what was measured, and whether it holds."""

    name: str
    goal: str
    measured: str
    passed: bool | None  # None: not measured


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


TABLE_COLUMNS = (
    "scenario",
    "conns",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "+p50 ms",
    "+p99 ms",
    "proxy CPU%",
    "CPU us/req",
    "CPU wait%",
    "RSS MB",
    "load CPU%",
    "errors",
    "noise%",
)


def table_rows(summaries: Sequence[stats.ScenarioSummary], failures: Mapping[str, str]) -> list[list[str]]:
    rows = []
    for summary in summaries:
        rows.append(
            [
                summary.name + (" (SSE)" if summary.stream else ""),
                str(summary.connections),
                f"{summary.requests_per_s:,.0f}",
                f"{summary.p50_ms:.3f}",
                f"{summary.p90_ms:.3f}",
                f"{summary.p99_ms:.3f}",
                _signed(summary.added_p50_ms),
                _signed(summary.added_p99_ms),
                _num(summary.proxy_cpu_percent, 0),
                _num(summary.proxy_cpu_us_per_request, 0),
                _num(summary.proxy_cpu_wait_percent, 0),
                _num(summary.proxy_rss_mb, 1),
                _num(summary.load_cpus_busy_percent, 0),
                str(summary.errors),
                _num(summary.noise_percent, 1),
            ]
        )
    for name, reason in failures.items():
        rows.append(
            [name, "NOT MEASURED: " + reason.replace("\n", " ")[:160]] + [""] * (len(TABLE_COLUMNS) - 2)
        )
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table; a row of two cells (name + message) spans the remaining columns."""
    widths = [len(cell) for cell in header]
    for row in rows:
        if len(row) == len(header) and not (len(row) > 2 and row[1].startswith("NOT MEASURED")):
            widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        if len(row) > 1 and row[1].startswith("NOT MEASURED"):
            lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
            continue
        lines.append(
            "  ".join(
                cell.rjust(width) if i else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def check_targets(
    summaries: Mapping[str, stats.ScenarioSummary], idle_rss_mb: list[float], ready_s: list[float]
) -> list[TargetCheck]:
    """Issue 6's numbers against what was measured (scenario names as in `bench.scenarios`)."""
    checks: list[TargetCheck] = []
    # The one-CPU run measures the proxy's own added latency; the split-CPU run (also in the table)
    # adds cross-CPU wake-ups and whatever else runs on the load CPU of a shared machine.
    one = summaries.get("redis-1cpu") or summaries.get("redis-1c")
    if one is not None and one.added_p50_ms is not None and one.added_p99_ms is not None:
        checks.append(
            TargetCheck(
                "1 conn, Redis limits: added p50",
                "<= 0.5 ms",
                f"{one.added_p50_ms:.3f} ms ({one.name})",
                one.added_p50_ms <= 0.5,
            )
        )
        checks.append(
            TargetCheck(
                "1 conn, Redis limits: added p99",
                "<= 2 ms",
                f"{one.added_p99_ms:.3f} ms ({one.name})",
                one.added_p99_ms <= 2.0,
            )
        )
    else:
        checks.append(
            TargetCheck("1 conn, Redis limits: added latency", "p50 <= 0.5, p99 <= 2 ms", "-", None)
        )
    for name, goal, label in (
        ("redis", 3000, "32 conns, Redis limits, non-streaming"),
        ("redis-stream", 1500, "32 conns, Redis limits, streaming"),
    ):
        summary = summaries.get(name)
        if summary is None:
            checks.append(TargetCheck(label, f">= {goal:,} req/s, 0 errors", "-", None))
            continue
        checks.append(
            TargetCheck(
                label,
                f">= {goal:,} req/s, 0 errors",
                f"{summary.requests_per_s:,.0f} req/s, {summary.errors} errors",
                summary.requests_per_s >= goal and summary.errors == 0,
            )
        )
    # Keyless keys: a repeated token is verified once, then looked up; the rest of the path is the same.
    static, keyless = summaries.get("proxy-1c"), summaries.get("jwt-1c")
    if static is not None and keyless is not None:
        extra_ms = keyless.p50_ms - static.p50_ms
        checks.append(
            TargetCheck(
                "1 conn, JWT identity vs static key: p50",
                "<= +0.1 ms",
                f"{extra_ms:+.3f} ms (jwt-1c vs proxy-1c)",
                extra_ms <= 0.1,
            )
        )
    else:
        checks.append(TargetCheck("1 conn, JWT identity vs static key: p50", "<= +0.1 ms", "-", None))
    if idle_rss_mb:
        worst = max(idle_rss_mb)
        checks.append(TargetCheck("idle RSS per worker", "<= 80 MB", f"{worst:.1f} MB (max)", worst <= 80))
    else:
        checks.append(TargetCheck("idle RSS per worker", "<= 80 MB", "-", None))
    if ready_s:
        worst_ready = max(ready_s)
        checks.append(
            TargetCheck("startup to ready", "<= 1.5 s", f"{worst_ready:.2f} s (max)", worst_ready <= 1.5)
        )
    else:
        checks.append(TargetCheck("startup to ready", "<= 1.5 s", "-", None))
    return checks


def format_targets(checks: Sequence[TargetCheck]) -> str:
    verdict = {True: "PASS", False: "MISS", None: "n/a"}
    rows = [[check.name, check.goal, check.measured, verdict[check.passed]] for check in checks]
    return format_table(("target (issue 6)", "goal", "measured", "verdict"), rows)


def format_extra(title: str, result: Mapping[str, object]) -> str:
    """A guarded sub-bench (limiter, propagation) as indented `key: value` lines."""
    if not result.get("available", False):
        return f"{title}: not available ({result.get('reason', 'unknown reason')})"
    lines = [f"{title}:"]
    for key, value in result.items():
        if key == "available":
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def write_results(results_dir: pathlib.Path, timestamp: str, document: Mapping[str, object]) -> pathlib.Path:
    """`<results_dir>/<timestamp>.json` and a copy as `latest.json`; returns the first path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=_default)
    path = results_dir / f"{timestamp}.json"
    path.write_bytes(data)
    (results_dir / "latest.json").write_bytes(data)
    return path


def _default(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
