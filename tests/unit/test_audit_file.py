"""The hash-chained audit file sink: rotation by size and day, retention removal on an injected clock,
`verify` naming the first bad record of an edited, deleted or reordered trail, the chain continuing
across a restart; and `llmkeys audit query|verify` over the files."""

from __future__ import annotations

import csv
import io
import json
import pathlib
from datetime import UTC, datetime, timedelta

import pytest

from llmkeys_operator import audit_cli, cli
from llmkeys_proxy import audit_file

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def record(n: int, **fields: object) -> dict[str, object]:
    values: dict[str, object] = {
        "time": START + timedelta(seconds=n),
        "kind": "request",
        "request_id": f"r{n}",
        "key_id": "abcdefabcdef",
        "namespace": "team-a",
        "name": "dev",
        "owner": {"team": "payments", "app": "chatbot"},
        "model": "gpt-4o-mini",
        "provider": "llmkeys/openai",
        "code": "ok",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_micro_usd": 100 + n,
    }
    values.update(fields)
    return values


def lines_of(path: pathlib.Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def only_report(directory: pathlib.Path) -> audit_file.StreamReport:
    reports = audit_file.verify(directory)
    assert len(reports) == 1
    return reports[0]


def test_chain_verifies_and_rotates_by_size_and_day(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    sink = audit_file.ChainedFileSink(tmp_path, "proxy", max_bytes=2000, clock=clock, fsync=False)
    for n in range(30):
        sink.emit([record(n)])
    clock.now += timedelta(days=1)
    sink.emit([record(30), record(31)])
    sink.close()
    files = audit_file.trail_files(tmp_path)
    days = [f.day for f in files]
    assert len(files) > 3 and days.count(START.date()) == len(files) - 1
    assert files[-1].day == START.date() + timedelta(days=1) and files[-1].index == 0
    assert all(f.path.stat().st_size <= 2000 for f in files)
    report = only_report(tmp_path)
    assert report.problem is None and report.records == 32 and report.files == len(files)
    seqs = [r["seq"] for r in audit_file.read_records(tmp_path)]
    assert seqs == list(range(32))


def test_chain_continues_across_a_restart(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    first = audit_file.ChainedFileSink(tmp_path, "proxy", clock=clock, fsync=False)
    first.emit([record(0), record(1)])
    first.close()
    second = audit_file.ChainedFileSink(tmp_path, "proxy", clock=clock, fsync=False)
    assert second.seq == 2
    second.emit([record(2)])
    second.close()
    assert len(audit_file.trail_files(tmp_path)) == 1  # appended to the day's file
    report = only_report(tmp_path)
    assert report.problem is None and report.records == 3
    # A restart with a fresh chain (prev lost) would not verify: the link is what is checked.
    path = audit_file.trail_files(tmp_path)[0].path
    forged, _ = audit_file.chained_line(record(3), 3, audit_file.GENESIS)
    with path.open("ab") as handle:
        handle.write(forged + b"\n")
    problem = only_report(tmp_path).problem
    assert problem is not None and problem.seq == 3 and problem.line == 4 and "prev" in problem.reason


@pytest.fixture
def trail(tmp_path: pathlib.Path) -> pathlib.Path:
    sink = audit_file.ChainedFileSink(tmp_path, "proxy", clock=Clock(), fsync=False)
    sink.emit([record(n) for n in range(6)])
    sink.close()
    return audit_file.trail_files(tmp_path)[0].path


def test_verify_names_an_edited_record(trail: pathlib.Path) -> None:
    lines = lines_of(trail)
    lines[3] = lines[3].replace(b'"cost_micro_usd":103', b'"cost_micro_usd":1')
    trail.write_bytes(b"".join(lines))
    problem = only_report(trail.parent).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.seq) == (trail.name, 4, 3) and "edited" in problem.reason


def test_verify_names_the_record_after_a_deleted_one(trail: pathlib.Path) -> None:
    lines = lines_of(trail)
    del lines[2]
    trail.write_bytes(b"".join(lines))
    problem = only_report(trail.parent).problem
    assert problem is not None
    assert (problem.line, problem.seq) == (3, 3) and "expected seq 2" in problem.reason


def test_verify_names_the_first_reordered_record(trail: pathlib.Path) -> None:
    lines = lines_of(trail)
    lines[1], lines[4] = lines[4], lines[1]
    trail.write_bytes(b"".join(lines))
    problem = only_report(trail.parent).problem
    assert problem is not None
    assert (problem.line, problem.seq) == (2, 4) and "expected seq 1" in problem.reason


def test_verify_refuses_a_trail_whose_start_was_cut_off(trail: pathlib.Path) -> None:
    lines = lines_of(trail)
    trail.write_bytes(b"".join(lines[2:]))
    problem = only_report(trail.parent).problem
    assert problem is not None and problem.seq == 2 and "no retention record" in problem.reason


def test_verify_refuses_a_forged_record_with_a_recomputed_hash_in_the_middle(trail: pathlib.Path) -> None:
    lines = lines_of(trail)
    previous = json.loads(lines[1])
    forged, _ = audit_file.chained_line(record(2, cost_micro_usd=0), 2, previous["hash"])
    lines[2] = forged + b"\n"
    trail.write_bytes(b"".join(lines))
    # The forged line links to its predecessor, but the next record still links to the original.
    problem = only_report(trail.parent).problem
    assert problem is not None and problem.seq == 3 and "prev" in problem.reason


def test_retention_removes_old_files_and_the_rest_still_verifies(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    sink = audit_file.ChainedFileSink(tmp_path, "proxy", retain_days=3, clock=clock, fsync=False)
    sink.emit([record(0), record(1)])  # day 0: default retention (3 days)
    clock.now += timedelta(days=1)
    sink.emit([record(2, retain_days=10)])  # day 1: a key that keeps its records 10 days
    clock.now += timedelta(days=1)
    sink.emit([record(3)])  # day 2
    clock.now += timedelta(days=2, hours=1)  # day 4: day 0 is past 3 days
    sink.emit([record(4)])
    names = [f.path.name for f in audit_file.trail_files(tmp_path)]
    assert names == [audit_file.file_name("proxy", START.date() + timedelta(days=d), 0) for d in (1, 2, 4)], (
        "only the day-0 file is past its retention"
    )
    report = only_report(tmp_path)
    assert report.problem is None
    retention = [r for r in audit_file.read_records(tmp_path) if r.get("kind") == "retention"]
    assert len(retention) == 1 and retention[0]["first_seq"] == 2
    assert retention[0]["removed"] == [audit_file.file_name("proxy", START.date(), 0)]
    # Day 1 holds a 10-day record: it stays past the default retention, and so does what follows.
    clock.now += timedelta(days=5)
    sink.emit([record(5)])
    assert audit_file.trail_files(tmp_path)[0].day == START.date() + timedelta(days=1)
    clock.now += timedelta(days=6)
    sink.emit([record(6)])
    sink.close()
    assert audit_file.trail_files(tmp_path)[0].day == clock.now.date()
    assert only_report(tmp_path).problem is None


def test_streams_of_several_writers_verify_apart(tmp_path: pathlib.Path) -> None:
    for stream in ("proxy-w0", "proxy-w1", "operator"):
        sink = audit_file.ChainedFileSink(tmp_path, stream, clock=Clock(), fsync=False)
        sink.emit([record(0), record(1)])
        sink.close()
    reports = audit_file.verify(tmp_path)
    assert [(r.stream, r.records, r.problem) for r in reports] == [
        ("operator", 2, None),
        ("proxy-w0", 2, None),
        ("proxy-w1", 2, None),
    ]


def write_sample(directory: pathlib.Path) -> None:
    sink = audit_file.ChainedFileSink(directory, "proxy", clock=Clock(), fsync=False)
    sink.emit(
        [
            record(0),
            record(1, model="gpt-4o", owner={"team": "payments", "app": "search"}, cost_micro_usd=5000),
            record(2, code="budget_exceeded", input_tokens=0, output_tokens=0, cost_micro_usd=0),
            record(3, key_id="zzzzzzzzzzzz", name="ci", owner={"team": "infra", "app": "ci"}),
            {"time": START, "kind": "lifecycle", "act": "created", "namespace": "team-a", "name": "dev"},
        ]
    )
    sink.close()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().out


def test_query_filters_and_formats(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sample(tmp_path)
    base = ["audit", "query", "--dir", str(tmp_path)]
    code, out = run_cli([*base, "--format", "json", "--owner", "team=payments", "--kind", "request"], capsys)
    assert code == 0 and [json.loads(x)["request_id"] for x in out.splitlines()] == ["r0", "r1", "r2"]
    _, out = run_cli([*base, "--format", "json", "--model", "gpt-4o", "--outcome", "ok"], capsys)
    assert [json.loads(x)["request_id"] for x in out.splitlines()] == ["r1"]
    _, out = run_cli([*base, "--format", "json", "--outcome", "error"], capsys)
    assert [json.loads(x)["request_id"] for x in out.splitlines()] == ["r2"]
    _, out = run_cli([*base, "--format", "json", "--key", "team-a/ci"], capsys)
    assert [json.loads(x)["key_id"] for x in out.splitlines()] == ["zzzzzzzzzzzz"]
    since = (START + timedelta(seconds=2)).isoformat()
    _, out = run_cli([*base, "--format", "csv", "--since", since, "--kind", "request"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["code"] for r in rows] == ["budget_exceeded", "ok"] and rows[1]["owner"] == "app=ci,team=infra"
    _, out = run_cli([*base, "--kind", "lifecycle"], capsys)
    header, row = out.splitlines()
    assert header.split() == ["TIME", "KIND", "NAMESPACE", "NAME", "ACT"] and "created" in row


def test_query_group_by_answers_who_used_which_model_at_what_cost(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_sample(tmp_path)
    argv = ["audit", "query", "--dir", str(tmp_path), "--group-by", "owner.team,owner.app,model"]
    code, out = run_cli([*argv, "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert [(r["owner.team"], r["owner.app"], r["model"], r["requests"], r["cost_usd"]) for r in rows] == [
        ("payments", "search", "gpt-4o", "1", "0.005000"),
        ("infra", "ci", "gpt-4o-mini", "1", "0.000103"),
        ("payments", "chatbot", "gpt-4o-mini", "2", "0.000100"),
    ]


def test_query_refuses_bad_filters(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sample(tmp_path)
    assert cli.main(["audit", "query", "--dir", str(tmp_path), "--owner", "team"]) == 2
    assert cli.main(["audit", "query", "--dir", str(tmp_path), "--since", "yesterday"]) == 2
    assert "not a time" in capsys.readouterr().err
    assert audit_cli.parse_time("24h", START) == START - timedelta(hours=24)


def test_verify_command_reports_ok_and_the_first_broken_record(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_sample(tmp_path)
    code, out = run_cli(["audit", "verify", "--dir", str(tmp_path)], capsys)
    assert code == 0 and out.startswith("ok      proxy: 5 records in 1 files")
    path = audit_file.trail_files(tmp_path)[0].path
    lines = lines_of(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    code, out = run_cli(["audit", "verify", "--dir", str(tmp_path)], capsys)
    assert code == 1
    assert out.strip() == (
        f"BROKEN  proxy: {path.name} line 2 (seq 2): expected seq 1, found 2: records missing (deleted)"
    )
