"""`llmkeys audit query|verify`: read the hash-chained audit files the gateway writes (file sink).

Called by cli.py. `query` filters request and lifecycle records by key, owner field, model,
provider, outcome and time range and prints a table, JSON lines or CSV; `verify` checks every
stream's chain and names the first bad record (exit 1). The file format is llmkeys_proxy.audit_file.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson

from llmkeys_proxy import audit_file

#: Columns of the table and CSV formats.
COLUMNS = (
    "time",
    "kind",
    "key_id",
    "namespace",
    "name",
    "owner",
    "model",
    "provider",
    "code",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "act",
    "by",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    query = sub.add_parser("query", help="list audit records, filtered")
    _dir_argument(query)
    query.add_argument("--key", help="key id, or namespace/name")
    query.add_argument(
        "--owner", action="append", default=[], metavar="FIELD=VALUE", help="owner field (repeatable)"
    )
    query.add_argument("--model", help="model name or glob")
    query.add_argument("--provider", help="provider credential (namespace/name) or glob")
    query.add_argument("--outcome", help="ok, an error code (budget_exceeded, ...), or error (all but ok)")
    query.add_argument("--kind", choices=("request", "lifecycle"), help="only requests or lifecycle acts")
    query.add_argument("--since", help="ISO time (2026-12-01T00:00Z) or an age like 24h, 7d")
    query.add_argument("--until", help="ISO time or an age")
    query.add_argument(
        "--group-by",
        metavar="FIELDS",
        help="sum requests, tokens and cost per group, e.g. owner.user,owner.app,model",
    )
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")
    verify = sub.add_parser("verify", help="check the hash chain of every stream")
    _dir_argument(verify)


def _dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        default=os.environ.get("LLMKEYS_AUDIT_FILE_DIR"),
        help="the audit file directory (LLMKEYS_AUDIT_FILE_DIR)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.dir:
        print("llmkeys audit: --dir (or LLMKEYS_AUDIT_FILE_DIR) is required", file=sys.stderr)
        return 2
    if args.audit_command == "verify":
        return run_verify(args.dir, sys.stdout)
    try:
        filters = Filters.from_args(args, datetime.now(UTC))
    except ValueError as exc:
        print(f"llmkeys audit: {exc}", file=sys.stderr)
        return 2
    selected = filters.select(audit_file.read_records(args.dir))
    if args.group_by:
        fields = [f.strip() for f in args.group_by.split(",") if f.strip()]
        write_rows(summarise(selected, fields), [*fields, *SUMMARY_COLUMNS], args.format, sys.stdout)
    else:
        write(selected, args.format, sys.stdout)
    return 0


def run_verify(directory: str, out: TextIO) -> int:
    reports = audit_file.verify(directory)
    if not reports:
        print(f"no audit files in {directory}", file=out)
        return 1
    broken = False
    for report in reports:
        problem = report.problem
        if problem is None:
            print(f"ok      {report.stream}: {report.records} records in {report.files} files", file=out)
            continue
        broken = True
        seq = "" if problem.seq is None else f" (seq {problem.seq})"
        print(f"BROKEN  {report.stream}: {problem.file} line {problem.line}{seq}: {problem.reason}", file=out)
    return 1 if broken else 0


class Filters:
    """What `query` keeps (every given filter must match)."""

    def __init__(
        self,
        key: str | None = None,
        owner: Iterable[tuple[str, str]] = (),
        model: str | None = None,
        provider: str | None = None,
        outcome: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> None:
        self.key = key
        self.owner = tuple(owner)
        self.model = model
        self.provider = provider
        self.outcome = outcome
        self.kind = kind
        self.since = since
        self.until = until

    @classmethod
    def from_args(cls, args: argparse.Namespace, now: datetime) -> Filters:
        owner = []
        for item in args.owner:
            field, sep, value = item.partition("=")
            if not sep or not field:
                raise ValueError(f"--owner takes FIELD=VALUE, not {item!r}")
            owner.append((field, value))
        return cls(
            key=args.key,
            owner=owner,
            model=args.model,
            provider=args.provider,
            outcome=args.outcome,
            kind=args.kind,
            since=parse_time(args.since, now) if args.since else None,
            until=parse_time(args.until, now) if args.until else None,
        )

    def select(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            if record.get("kind") == "retention" or not self.matches(record):
                continue
            yield record

    def matches(self, record: dict[str, Any]) -> bool:
        if self.kind is not None and record.get("kind", "request") != self.kind:
            return False
        if self.key is not None:
            names = (record.get("key_id"), f"{record.get('namespace')}/{record.get('name')}")
            if self.key not in names:
                return False
        owner = record.get("owner") or {}
        if any(owner.get(field) != value for field, value in self.owner):
            return False
        if self.model is not None and not fnmatch.fnmatchcase(str(record.get("model") or ""), self.model):
            return False
        if self.provider is not None and not fnmatch.fnmatchcase(
            str(record.get("provider") or ""), self.provider
        ):
            return False
        if self.outcome is not None:
            code = record.get("code")
            if self.outcome == "error" and code in (None, "ok"):
                return False
            if self.outcome != "error" and code != self.outcome:
                return False
        if self.since is not None or self.until is not None:
            when = _record_time(record)
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when >= self.until:
                return False
        return True


def parse_time(text: str, now: datetime) -> datetime:
    """An ISO time (UTC when it names no zone) or an age back from `now` (30m, 24h, 7d)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return now - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO 8601, or an age like 30m, 24h, 7d)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _record_time(record: dict[str, Any]) -> datetime | None:
    value = record.get("time")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def row(record: dict[str, Any]) -> dict[str, str]:
    """One record as the table/CSV columns."""
    owner = record.get("owner") or {}
    values: dict[str, str] = {}
    for column in COLUMNS:
        if column == "owner":
            values[column] = ",".join(f"{k}={v}" for k, v in sorted(owner.items()))
        elif column == "cost_usd":
            micro = record.get("cost_micro_usd")
            values[column] = f"{micro / 1e6:.6f}" if isinstance(micro, int) else ""
        elif column == "kind":
            values[column] = str(record.get("kind", "request"))
        else:
            value = record.get(column)
            values[column] = "" if value is None else str(value)
    return values


SUMMARY_COLUMNS = ("requests", "input_tokens", "output_tokens", "cost_usd")


def field_value(record: dict[str, Any], field: str) -> str:
    """A record's value of a --group-by field (`owner.<f>` reads the owner map; `key` is
    namespace/name)."""
    if field.startswith("owner."):
        return str((record.get("owner") or {}).get(field[6:], ""))
    if field == "key":
        return f"{record.get('namespace')}/{record.get('name')}"
    value = record.get(field)
    return "" if value is None else str(value)


def summarise(records: Iterable[dict[str, Any]], fields: list[str]) -> list[dict[str, str]]:
    """Request records summed per distinct value of `fields`, most expensive group first."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for record in records:
        if record.get("kind", "request") != "request":
            continue
        group = tuple(field_value(record, f) for f in fields)
        sums = groups.setdefault(group, [0, 0, 0, 0])
        sums[0] += 1
        sums[1] += int(record.get("input_tokens") or 0)
        sums[2] += int(record.get("output_tokens") or 0)
        sums[3] += int(record.get("cost_micro_usd") or 0)
    rows = []
    for group, (requests, input_tokens, output_tokens, micro) in sorted(
        groups.items(), key=lambda item: (-item[1][3], item[0])
    ):
        values = dict(zip(fields, group, strict=True))
        values.update(
            requests=str(requests),
            input_tokens=str(input_tokens),
            output_tokens=str(output_tokens),
            cost_usd=f"{micro / 1e6:.6f}",
        )
        rows.append(values)
    return rows


def write(records: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for record in records:
            out.write(orjson.dumps(record).decode() + "\n")
        return
    write_rows((row(record) for record in records), list(COLUMNS), fmt, out, hide_empty=True)


def write_rows(
    rows_in: Iterable[dict[str, str]], columns: list[str], fmt: str, out: TextIO, hide_empty: bool = False
) -> None:
    """Rows as a table, CSV or JSON lines."""
    if fmt == "json":
        for one in rows_in:
            out.write(orjson.dumps(one).decode() + "\n")
        return
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows_in)
        return
    rows = list(rows_in)
    shown = [c for c in columns if not hide_empty or any(r[c] for r in rows)] or columns[:3]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in shown}
    out.write("  ".join(c.upper().ljust(widths[c]) for c in shown).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(r[c].ljust(widths[c]) for c in shown).rstrip() + "\n")
