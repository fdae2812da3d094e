"""The durable audit file sink: append-only, hash-chained JSON lines, rotated by size and UTC day,
old files removed after their records' retention; plus the reader and `verify` (`llmkeys audit`).

Written by `ChainedFileSink` in an audit sink thread (audit_sinks.py) of the proxy and of the
operator; read by llmkeys_operator.audit_cli. Each writer owns one *stream* (`proxy`, `proxy-w1`,
`operator`, ...) in the directory, so several processes never interleave one chain. Files are
`<stream>.<YYYY-MM-DD>.<NNNNNN>.jsonl`; each line is the record's JSON object with

    "seq": n, "prev": "<hash of record n-1>", ..., "hash": "<sha256(prev + '\n' + line without hash)>"

`seq` counts from 0 over the whole stream and `prev` of record 0 is 64 zeros; the chain continues
across rotations and restarts (a writer resumes from the last line of its newest file). Removing
files for retention appends a `retention` record naming the files and the first `seq` kept, so a
trail whose start is gone for that reason still verifies while any other missing record does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from llmkeys_proxy import audit_sinks

logger = logging.getLogger("llmkeys.audit_file")

GENESIS = "0" * 64
_FILE_RE = re.compile(r"^(?P<stream>[A-Za-z0-9_.-]+?)\.(?P<day>\d{4}-\d{2}-\d{2})\.(?P<index>\d{6})\.jsonl$")
_STREAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
#: How often (at most) the writer looks for files past their retention.
RETENTION_CHECK_S = 3600.0

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def file_name(stream: str, day: date, index: int) -> str:
    return f"{stream}.{day.isoformat()}.{index:06d}.jsonl"


def chain_hash(prev: str, body: bytes) -> str:
    """The hash of one record: SHA-256 over the previous hash, a newline and the record's JSON
    without its `hash` member."""
    return hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()


def chained_line(record: audit_sinks.Record, seq: int, prev: str) -> tuple[bytes, str]:
    """(line without newline, its hash) for `record` at position `seq` after `prev`."""
    fields = orjson.dumps(record, option=orjson.OPT_UTC_Z)
    head = b'{"seq":%d,"prev":"%s"' % (seq, prev.encode())
    body = head + (b"}" if fields == b"{}" else b"," + fields[1:])
    digest = chain_hash(prev, body)
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}', digest


@dataclasses.dataclass(frozen=True, slots=True)
class TrailFile:
    path: Path
    stream: str
    day: date
    index: int


def trail_files(directory: Path, stream: str | None = None) -> list[TrailFile]:
    """The trail's files (of one stream, or all), in chain order per stream."""
    found = []
    if not directory.is_dir():
        return []
    for path in directory.iterdir():
        match = _FILE_RE.match(path.name)
        if match is None or (stream is not None and match["stream"] != stream):
            continue
        found.append(TrailFile(path, match["stream"], date.fromisoformat(match["day"]), int(match["index"])))
    return sorted(found, key=lambda f: (f.stream, f.day, f.index))


class ChainedFileSink:
    """Writes one stream of the trail (see module docstring); runs in its audit sink thread."""

    name = "file"

    def __init__(
        self,
        directory: str | Path,
        stream: str = "proxy",
        *,
        max_bytes: int = 64 * 1024 * 1024,
        retain_days: int = 90,
        clock: Clock = _utcnow,
        fsync: bool = True,
    ) -> None:
        if not _STREAM_RE.match(stream):
            raise ValueError(f"audit file stream {stream!r}: use letters, digits, '-' and '_' only")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stream = stream
        self.max_bytes = max_bytes
        self.retain_days = retain_days
        self._clock = clock
        self._fsync = fsync
        self._file: Any = None
        self._day: date | None = None
        self._index = 0
        self._size = 0
        self._next_retention = 0.0
        self.seq, self.prev = self._resume()

    def _resume(self) -> tuple[int, str]:
        """Continue the chain after the last complete line of the stream's newest file."""
        files = trail_files(self.directory, self.stream)
        if not files:
            return 0, GENESIS
        newest = files[-1]
        self._day, self._index = newest.day, newest.index
        last = _last_line(newest.path)
        if last is None:
            return (0, GENESIS) if len(files) == 1 else self._resume_before(files[:-1])
        record = orjson.loads(last)
        return int(record["seq"]) + 1, str(record["hash"])

    def _resume_before(self, files: list[TrailFile]) -> tuple[int, str]:
        for trail_file in reversed(files):
            last = _last_line(trail_file.path)
            if last is not None:
                record = orjson.loads(last)
                return int(record["seq"]) + 1, str(record["hash"])
        return 0, GENESIS

    def emit(self, batch: list[audit_sinks.Record]) -> None:
        now = self._clock()
        self._maybe_remove_expired(now)
        lines = []
        for record in batch:
            line, self.prev = chained_line(record, self.seq, self.prev)
            self.seq += 1
            lines.append(line)
        self._write(lines, now.date())

    def _write(self, lines: list[bytes], day: date) -> None:
        data = b"\n".join(lines) + b"\n"
        if self._file is None or self._day != day or (self._size and self._size + len(data) > self.max_bytes):
            self._open(day)
        self._file.write(data)
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._size += len(data)

    def _open(self, day: date) -> None:
        if self._file is not None:
            self._file.close()
            self._index = 0 if self._day != day else self._index + 1
        elif self._day == day:
            # Restarted on the day of the newest file: append to it while it has room.
            path = self.directory / file_name(self.stream, day, self._index)
            if path.exists() and path.stat().st_size >= self.max_bytes:
                self._index += 1
        else:
            self._index = 0
        self._day = day
        path = self.directory / file_name(self.stream, day, self._index)
        self._file = path.open("ab")
        self._size = path.stat().st_size

    def _maybe_remove_expired(self, now: datetime) -> None:
        tick = now.timestamp()
        if tick < self._next_retention:
            return
        self._next_retention = tick + RETENTION_CHECK_S
        today = now.date()
        if self._file is not None and self._day != today:
            self.close()  # the next write starts today's file anyway
            self._index = 0
        removed: list[str] = []
        for trail_file in trail_files(self.directory, self.stream):
            if trail_file.day >= today:
                break
            keep_days = self._retention_of(trail_file.path)
            if trail_file.day + timedelta(days=keep_days) >= today:
                break  # chain order: never leave a hole behind a file that must stay
            trail_file.path.unlink()
            removed.append(trail_file.path.name)
        if removed:
            remaining = trail_files(self.directory, self.stream)
            first = _first_seq(remaining[0].path) if remaining else None
            logger.info("audit trail: removed %d files past retention", len(removed))
            line, self.prev = chained_line(
                {
                    "kind": "retention",
                    "time": now,
                    "removed": removed,
                    "first_seq": self.seq if first is None else first,
                },
                self.seq,
                self.prev,
            )
            self.seq += 1
            self._write([line], today)

    def _retention_of(self, path: Path) -> int:
        """The longest retention any record of the file asks for (the gateway's default where none)."""
        longest = self.retain_days
        with path.open("rb") as handle:
            for raw in handle:
                try:
                    days = orjson.loads(raw).get("retain_days")
                except orjson.JSONDecodeError:
                    return 1 << 30  # unreadable: keep it for `verify` to report
                if isinstance(days, int) and days > longest:
                    longest = days
        return longest

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _last_line(path: Path) -> bytes | None:
    """The last complete line of a file (None when it has none)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        chunk = 1 << 16
        position = end
        data = b""
        while position > 0:
            step = min(chunk, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
            lines = data.rstrip(b"\n").rsplit(b"\n", 1)
            if len(lines) == 2 or position == 0:
                last = lines[-1]
                return last if last else None
    return None


def _first_seq(path: Path) -> int | None:
    with path.open("rb") as handle:
        first = handle.readline()
    try:
        return int(orjson.loads(first)["seq"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


# -- reading and verifying ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """The first record of a stream that breaks the chain."""

    stream: str
    file: str
    line: int
    seq: int | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class StreamReport:
    stream: str
    files: int
    records: int
    problem: Problem | None = None


def read_records(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every parseable record of the trail, stream by stream in chain order (`query` reads this;
    `verify` says whether it is whole)."""
    for trail_file in trail_files(Path(directory)):
        with trail_file.path.open("rb") as handle:
            for raw in handle:
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield record


def verify(directory: str | Path) -> list[StreamReport]:
    """Check every stream's chain; each report names the first bad record, if any."""
    files = trail_files(Path(directory))
    streams: dict[str, list[TrailFile]] = {}
    for trail_file in files:
        streams.setdefault(trail_file.stream, []).append(trail_file)
    return [_verify_stream(name, stream_files) for name, stream_files in sorted(streams.items())]


def _verify_stream(stream: str, files: list[TrailFile]) -> StreamReport:
    expected_seq: int | None = None
    prev = GENESIS
    records = 0
    start_seq: int | None = None
    start_at: tuple[str, int] = ("", 0)
    retention_first: set[int] = set()
    for trail_file in files:
        with trail_file.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                where = (trail_file.path.name, number)
                line = raw.rstrip(b"\n")
                problem = _check_line(line, prev, expected_seq)
                if problem is not None:
                    reason, seq = problem
                    return StreamReport(stream, len(files), records, Problem(stream, *where, seq, reason))
                record = orjson.loads(line)
                seq = int(record["seq"])
                if start_seq is None:
                    start_seq, start_at = seq, where
                if record.get("kind") == "retention" and isinstance(record.get("first_seq"), int):
                    retention_first.add(record["first_seq"])
                prev = str(record["hash"])
                expected_seq = seq + 1
                records += 1
    if start_seq not in (None, 0) and start_seq not in retention_first:
        # Records removed from the start, and not by retention.
        reason = "the trail starts after seq 0 and no retention record says so"
        return StreamReport(stream, len(files), records, Problem(stream, *start_at, start_seq, reason))
    return StreamReport(stream, len(files), records)


def _check_line(line: bytes, prev: str, expected_seq: int | None) -> tuple[str, int | None] | None:
    """Why `line` breaks the chain (reason, its seq), or None when it links on."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not a JSON record (torn or edited line)", None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return "not an audit record (no seq)", None
    seq: int = record["seq"]
    tail = _HASH_TAIL.search(line)
    if tail is None:
        return "no hash at the end of the record", seq
    body = line[: tail.start()] + b"}"
    if expected_seq is not None and seq != expected_seq:
        kind = "missing (deleted)" if seq > expected_seq else "out of order (reordered or repeated)"
        return f"expected seq {expected_seq}, found {seq}: records {kind}", seq
    if (expected_seq is not None or seq == 0) and record.get("prev") != prev:
        return "prev does not match the previous record's hash (records removed or reordered)", seq
    if chain_hash(str(record.get("prev")), body) != tail.group(1).decode():
        return "hash does not match the record's content (edited)", seq
    return None
