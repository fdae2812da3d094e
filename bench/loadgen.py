"""Load generation with wrk: builds the Lua script (POST body, headers, JSON summary) and parses it.

Called by `bench.scenarios`. wrk keeps N connections busy from a C event loop, so it costs far less
CPU than the proxy it measures; its Lua `done()` hook prints one line `BENCH_JSON {...}` with
the counts and latency percentiles (microseconds) that `parse_wrk_output` turns into a `WrkResult`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import orjson

RESULT_MARKER = "BENCH_JSON "

_DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"latency_mean_us":%.1f,' ..
    '"latency_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    "RESULT_MARKER", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclasses.dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Latencies in microseconds; `errors` counts every kind (non-2xx/3xx included)."""

    requests: int
    duration_s: float
    bytes_read: int
    errors_connect: int
    errors_read: int
    errors_write: int
    errors_status: int
    errors_timeout: int
    latency_mean_us: float
    latency_max_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int

    @property
    def errors(self) -> int:
        return (
            self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_status
            + self.errors_timeout
        )

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def lua_long_string(text: str) -> str:
    """`text` as a Lua long bracket literal whose level never collides with the content."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    # A long string drops a newline right after its opening bracket; start with one so none is lost.
    return f"[{eq}[\n{text}]{eq}]"


def build_script(method: str, body: bytes | None, headers: dict[str, str]) -> str:
    """The wrk Lua script: fixed request, and a done() hook printing the JSON summary line."""
    lines = [f"wrk.method = {lua_long_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {lua_long_string(body.decode())}")
    for name, value in headers.items():
        lines.append(f"wrk.headers[ {lua_long_string(name)} ] = {lua_long_string(value)}")
    lines.append(_DONE_HOOK.replace("RESULT_MARKER", RESULT_MARKER))
    return "\n".join(lines) + "\n"


def parse_wrk_output(stdout: str) -> WrkResult:
    """The WrkResult from wrk's stdout; ValueError when the summary line is missing or malformed."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            data = json.loads(line[len(RESULT_MARKER) :])
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=int(data["duration_us"]) / 1_000_000,
                bytes_read=int(data["bytes"]),
                errors_connect=int(data["errors_connect"]),
                errors_read=int(data["errors_read"]),
                errors_write=int(data["errors_write"]),
                errors_status=int(data["errors_status"]),
                errors_timeout=int(data["errors_timeout"]),
                latency_mean_us=float(data["latency_mean_us"]),
                latency_max_us=int(data["latency_max_us"]),
                p50_us=int(data["p50_us"]),
                p90_us=int(data["p90_us"]),
                p99_us=int(data["p99_us"]),
                p999_us=int(data["p999_us"]),
            )
    raise ValueError(f"no {RESULT_MARKER.strip()} line in wrk output: {stdout[-500:]!r}")


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is required for the bench: apt-get install wrk (Debian/Ubuntu)")
    return found


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: float,
    body: dict[str, object] | None,
    headers: dict[str, str],
    threads: int = 1,
    cpus: set[int] | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk against `url` (POST when a body is given) and return its parsed summary."""
    raw_body = orjson.dumps(body) if body is not None else None
    all_headers = dict(headers)
    if raw_body is not None:
        all_headers.setdefault("Content-Type", "application/json")
    script = build_script("POST" if raw_body is not None else "GET", raw_body, all_headers)
    with tempfile.TemporaryDirectory(prefix="llmkeys-wrk-") as tmp:
        script_path = pathlib.Path(tmp) / "request.lua"
        script_path.write_text(script)
        command = [
            wrk_binary(),
            f"-t{max(1, min(threads, connections))}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script_path),
            url,
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if cpus:
            os.sched_setaffinity(process.pid, cpus)
        stdout, stderr = process.communicate(timeout=duration_s + timeout_s + 30)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stderr.strip()[-500:]}")
    return parse_wrk_output(stdout)
