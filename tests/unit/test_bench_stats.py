"""Unit tests of the bench's own parsing, statistics and reporting code (bench/)."""

from __future__ import annotations

import re

import pytest
from bench import loadgen, profile, report, stats, upstream


def _wrk(
    requests: int = 1000, duration_us: int = 1_000_000, p50_us: int = 500, status: int = 0
) -> loadgen.WrkResult:
    return loadgen.WrkResult(
        requests=requests,
        duration_s=duration_us / 1_000_000,
        bytes_read=0,
        errors_connect=0,
        errors_read=1,
        errors_write=0,
        errors_status=status,
        errors_timeout=0,
        latency_mean_us=float(p50_us),
        latency_max_us=p50_us * 10,
        p50_us=p50_us,
        p90_us=p50_us * 2,
        p99_us=p50_us * 4,
        p999_us=p50_us * 8,
    )


def test_parse_wrk_output_reads_the_summary_line_among_wrk_text() -> None:
    stdout = (
        "Running 3s test @ http://127.0.0.1:1/v1/chat/completions\n  2 threads and 32 connections\n"
        'BENCH_JSON {"requests":9000,"duration_us":3000000,"bytes":123,"errors_connect":0,"errors_read":2,'
        '"errors_write":0,"errors_status":5,"errors_timeout":1,"latency_mean_us":812.5,"latency_max_us":9000,'
        '"p50_us":700,"p90_us":1200,"p99_us":3000,"p999_us":8000}\n'
        "Requests/sec: 3000.00\n"
    )
    result = loadgen.parse_wrk_output(stdout)
    assert result.requests_per_s == pytest.approx(3000)
    assert result.errors == 8
    assert (result.p50_us, result.p90_us, result.p99_us) == (700, 1200, 3000)
    assert result.latency_mean_us == pytest.approx(812.5)


def test_parse_wrk_output_without_summary_raises() -> None:
    with pytest.raises(ValueError, match="BENCH_JSON"):
        loadgen.parse_wrk_output("Running 1s test\n/tmp/x.lua: syntax error\n")


@pytest.mark.parametrize("text", ["plain", "has ]] inside", "has ]=] and ]] both", "ends with ]"])
def test_lua_long_string_never_closes_early(text: str) -> None:
    literal = loadgen.lua_long_string(text)
    level = literal.index("[", 1)  # opening is "[" + "="*n + "["
    closing = "]" + "=" * (level - 1) + "]"
    assert literal.endswith(closing)
    inner = literal[level + 1 : -len(closing)]
    assert inner == "\n" + text  # Lua drops the first newline, leaving exactly `text`
    assert closing not in inner


def test_build_script_sets_method_body_headers_and_summary_hook() -> None:
    script = loadgen.build_script("POST", b'{"model":"m"}', {"Authorization": "Bearer k"})
    assert "wrk.method = [[\nPOST]]" in script
    assert 'wrk.body = [[\n{"model":"m"}]]' in script
    assert "wrk.headers[ [[\nAuthorization]] ] = [[\nBearer k]]" in script
    assert "BENCH_JSON " in script and "done = function" in script


def test_relative_spread() -> None:
    assert stats.relative_spread_percent([100.0]) == 0
    assert stats.relative_spread_percent([90.0, 110.0]) == pytest.approx(20.0)
    assert stats.relative_spread_percent([0.0, 0.0]) == 0


def test_summarize_means_errors_and_noise() -> None:
    runs = [
        stats.RunMeasure(_wrk(requests=3000, p50_us=400), proxy_cpu_percent=90, proxy_rss_mb=50),
        stats.RunMeasure(_wrk(requests=3300, p50_us=600, status=2), proxy_cpu_percent=100, proxy_rss_mb=None),
    ]
    summary = stats.summarize("redis", "d", 32, False, runs)
    assert summary.requests_per_s == pytest.approx(3150)
    assert summary.p50_ms == pytest.approx(0.5)
    assert summary.errors == 4  # one read error per run plus two status errors
    assert summary.noise_percent == pytest.approx(40.0)  # p50 spread (0.2 / 0.5) beats req/s spread
    assert summary.proxy_cpu_percent == pytest.approx(95)
    assert summary.proxy_rss_mb == pytest.approx(50)
    with pytest.raises(ValueError):
        stats.summarize("empty", "d", 1, False, [])


def test_added_latency_against_direct() -> None:
    direct = stats.summarize("direct-1c", "d", 1, False, [stats.RunMeasure(_wrk(p50_us=100))])
    proxied = stats.summarize("redis-1c", "d", 1, False, [stats.RunMeasure(_wrk(p50_us=400))])
    added = stats.with_added_latency(proxied, direct)
    assert added.added_p50_ms == pytest.approx(0.3)
    assert added.added_p99_ms == pytest.approx(1.2)
    assert stats.with_added_latency(proxied, None).added_p50_ms is None


def test_targets_pass_and_miss() -> None:
    direct = stats.summarize("direct-1c", "d", 1, False, [stats.RunMeasure(_wrk(p50_us=100))])
    one = stats.with_added_latency(
        stats.summarize("redis-1c", "d", 1, False, [stats.RunMeasure(_wrk(p50_us=400))]), direct
    )
    fast = stats.summarize("redis", "d", 32, False, [stats.RunMeasure(_wrk(requests=5000))])
    checks = {
        check.name: check for check in report.check_targets({"redis-1c": one, "redis": fast}, [60.0], [2.0])
    }
    assert checks["1 conn, Redis limits: added p50"].passed is True
    assert checks["1 conn, Redis limits: added p99"].passed is True
    assert checks["32 conns, Redis limits, non-streaming"].passed is False  # one read error per run
    assert checks["32 conns, Redis limits, streaming"].passed is None
    assert checks["idle RSS per worker"].passed is True
    assert checks["startup to ready"].passed is False


def test_table_has_one_row_per_scenario_and_failures() -> None:
    summary = stats.summarize("proxy", "d", 32, True, [stats.RunMeasure(_wrk())])
    rows = report.table_rows([summary], {"redis": "proxy: RuntimeError: boom"})
    text = report.format_table(report.TABLE_COLUMNS, rows)
    assert "proxy (SSE)" in text
    assert re.search(r"^redis +NOT MEASURED: proxy: RuntimeError: boom$", text, re.MULTILINE)


def test_parse_request_content_length_chunked_and_incomplete() -> None:
    plain = bytearray(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET /x HTTP/1.1\r\n\r\n"
    )
    head, body, used = upstream.parse_request(plain) or (b"", b"", 0)
    assert body == b"abcd" and head.startswith(b"POST")
    del plain[:used]
    assert upstream.parse_request(plain) == (b"GET /x HTTP/1.1", b"", len(plain))
    chunked = bytearray(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    assert upstream.parse_request(chunked) == (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"abcde",
        len(chunked),
    )
    assert upstream.parse_request(bytearray(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")) is None
    assert (
        upstream.parse_request(bytearray(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"))
        is None
    )


def test_stream_events_carry_twenty_chunks_and_usage_only_when_asked() -> None:
    asked = upstream.chat_stream_events(
        upstream.chat_shape(b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}')
    )
    silent = upstream.chat_stream_events(upstream.chat_shape(b'{"model":"m","stream":true}'))
    assert asked[-1] == silent[-1] == b"data: [DONE]\n\n"
    assert len(silent) == 1 + upstream.STREAM_CONTENT_CHUNKS + 1 + 1
    assert len(asked) == len(silent) + 1
    assert b'"choices":[]' in asked[-2] and b'"completion_tokens":20' in asked[-2]
    assert all(b'"usage":{' not in event for event in silent)


def test_profile_summary_self_inclusive_and_packages() -> None:
    loop = "run (/x/lib/python3.11/asyncio/base_events.py:10)"
    handler = "handle (/v/lib/python3.11/site-packages/aiohttp/web_protocol.py:5)"
    lines = [
        f"{loop};{handler} 6",
        f"{loop};{handler};reserve (/w/proxy/llmkeys_proxy/limits/redis.py:7) 4",
        "garbage line",
        "",
    ]
    summary = profile.summarize_collapsed(lines)
    assert summary.samples == 10
    assert dict(summary.by_package) == pytest.approx({"aiohttp": 0.6, "llmkeys_proxy/limits/redis.py": 0.4})
    assert dict(summary.by_function_inclusive)["run (asyncio)"] == pytest.approx(1.0)
    assert dict(summary.by_function_self)["reserve (llmkeys_proxy/limits/redis.py)"] == pytest.approx(0.4)
    assert "60.0%  aiohttp" in profile.format_summary("t", summary)


def test_cpu_time_per_request() -> None:
    runs = [
        stats.RunMeasure(_wrk(requests=2000), proxy_cpu_percent=60),
        stats.RunMeasure(_wrk(requests=4000)),
    ]
    summary = stats.summarize("redis", "d", 32, False, runs)
    assert summary.proxy_cpu_us_per_request == pytest.approx(300.0)  # 0.6 s of CPU for 2,000 requests
