"""`llmkeys report` (also the kubectl plugin `kubectl-llmkeys report`): answers from status, for
FinOps, DevOps and Security.

Reads VirtualKeys and LLMPolicies, either from the cluster with the caller's own kubeconfig (so
RBAC decides what a person sees) or from a standalone state dir (`<state-dir>/status/`, written by
`llmkeys serve`). Every number comes from what the operator (or `serve`) wrote into status: usage
per UTC day and month with refusals by code and breakdowns by model and credential, the daily
history of the last 31 days, pool usage, expiry. Pure functions build the rows; `run` prints them
as a table, CSV or JSON (chargeback input). Called by `cli` (`llmkeys report ...`) and by the
`kubectl-llmkeys` entry point.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from llmkeys_operator import api

#: Dimensions `usage` groups by: owner fields (manifest spelling), then model and provider.
GROUP_FIELDS: tuple[str, ...] = (*api.OWNER_FIELDS, "model", "provider", "key", "namespace")
SORTS = ("spend", "tokens", "requests")
#: Shown for an owner field a key leaves empty.
UNSET = "(none)"


# --------------------------------------------------------------------------------------- input


@dataclasses.dataclass(frozen=True)
class Inventory:
    """The resources a report reads, as the API shows them (JSON objects)."""

    virtual_keys: list[dict[str, Any]]
    policies: list[dict[str, Any]]


def load_state_dir(state_dir: pathlib.Path) -> Inventory:
    """The resources `llmkeys serve` wrote into `<state-dir>/status/`."""
    root = state_dir / "status"
    if not root.is_dir():
        raise ReportError(f"{state_dir} holds no status/ folder: is it the --state-dir of `llmkeys serve`?")
    return Inventory(
        virtual_keys=_read_json_files(root / "virtualkeys"), policies=_read_json_files(root / "llmpolicies")
    )


def _read_json_files(directory: pathlib.Path) -> list[dict[str, Any]]:
    objects = []
    for path in sorted(directory.rglob("*.json")) if directory.is_dir() else ():
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"cannot read {path}: {exc}") from None
        if isinstance(value, dict):
            objects.append(value)
    return objects


def load_cluster(kubeconfig: str | None, context: str | None, namespace: str | None) -> Inventory:
    """VirtualKeys (all namespaces, or one) and LLMPolicies, read with the caller's kubeconfig."""
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.client import exceptions

    try:
        kube_config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    except Exception as exc:  # no kubeconfig, unknown context, ...: say so, no stack trace
        raise ReportError(f"cannot load kubeconfig: {exc}") from None
    keys: Any
    policies: Any
    with client.ApiClient() as api_client:
        objects = client.CustomObjectsApi(api_client)
        try:
            if namespace:
                keys = objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, "virtualkeys")
            else:
                keys = objects.list_cluster_custom_object(api.GROUP, api.VERSION, "virtualkeys")
            try:
                policies = objects.list_cluster_custom_object(api.GROUP, api.VERSION, "llmpolicies")
            except exceptions.ApiException as exc:
                if exc.status != 403:
                    raise
                policies = {"items": []}  # a namespace user may not read policies: keys only
        except exceptions.ApiException as exc:
            raise ReportError(f"the API server refused the listing: {exc.status} {exc.reason}") from None
        except Exception as exc:  # connection refused, TLS, ...
            raise ReportError(f"cannot reach the API server: {type(exc).__name__}") from None
    return Inventory(virtual_keys=list(keys.get("items") or []), policies=list(policies.get("items") or []))


class ReportError(Exception):
    """A report cannot be produced; the message says why (printed without a traceback)."""


# --------------------------------------------------------------------------------------- model


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _usd(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


@dataclasses.dataclass(frozen=True)
class Amount:
    requests: int = 0
    tokens: int = 0
    spend: Decimal = Decimal(0)

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.requests + other.requests, self.tokens + other.tokens, self.spend + other.spend)


def _key_ref(vk: Mapping[str, Any]) -> str:
    meta = vk.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _owner(vk: Mapping[str, Any]) -> dict[str, str]:
    owner = (vk.get("spec") or {}).get("owner") or {}
    return {k: v for k, v in owner.items() if isinstance(v, str)}


def _usage(vk: Mapping[str, Any]) -> dict[str, Any]:
    return dict((vk.get("status") or {}).get("usage") or {})


def _current(usage: Mapping[str, Any], which: str, now: datetime) -> dict[str, Any]:
    """The day or month usage when it covers the period `now` falls in (else nothing was used)."""
    period = usage.get(which) or {}
    start = _parse_time(period.get("periodStart"))
    if start is None:
        return {}
    if which == "day":
        current = start.date() == now.date()
    else:
        current = (start.year, start.month) == (now.year, now.month)
    return dict(period) if current else {}


def _period_amount(period: Mapping[str, Any]) -> Amount:
    return Amount(
        int(period.get("requests") or 0),
        int(period.get("inputTokens") or 0) + int(period.get("outputTokens") or 0),
        _usd(period.get("spendUSD")),
    )


def _history_amount(usage: Mapping[str, Any], first: str, last: str) -> Amount:
    total = Amount()
    for entry in usage.get("history") or []:
        date = entry.get("date") if isinstance(entry, Mapping) else None
        if isinstance(date, str) and first <= date <= last:
            total += Amount(
                int(entry.get("requests") or 0), int(entry.get("tokens") or 0), _usd(entry.get("spendUSD"))
            )
    return total


def _day_id(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d")


def parse_period(text: str) -> str | int:
    """`day`, `month`, or `Nd` (the last N UTC days, today included, 1..31) -> 'day'/'month'/N."""
    if text in ("day", "month"):
        return text
    if text.endswith("d") and text[:-1].isdigit() and 1 <= int(text[:-1]) <= api.HISTORY_DAYS:
        return int(text[:-1])
    raise ReportError(f"--period must be day, month or Nd with N from 1 to {api.HISTORY_DAYS} (got {text!r})")


def key_amount(vk: Mapping[str, Any], period: str | int, now: datetime) -> Amount:
    usage = _usage(vk)
    if isinstance(period, int):
        return _history_amount(usage, _day_id(now - timedelta(days=period - 1)), _day_id(now))
    return _period_amount(_current(usage, period, now))


# --------------------------------------------------------------------------------------- reports

Row = dict[str, Any]


def usage_report(
    inventory: Inventory,
    by: str,
    period: str | int,
    now: datetime,
    sort: str = "spend",
    top: int | None = None,
) -> list[Row]:
    """Usage and spend grouped by an owner field, model, provider, key or namespace."""
    totals: dict[str, Amount] = {}
    keys: dict[str, set[str]] = {}
    for vk in inventory.virtual_keys:
        ref = _key_ref(vk)
        if by in ("model", "provider"):
            if isinstance(period, int):
                raise ReportError(
                    f"--by {by} needs --period day or month: the daily history is kept per key, not per {by}"
                )
            current = _current(_usage(vk), period, now)
            field = "byModel" if by == "model" else "byProvider"
            for entry in current.get(field) or []:
                name = str(entry.get("name") or UNSET)
                amount = Amount(
                    int(entry.get("requests") or 0),
                    int(entry.get("tokens") or 0),
                    _usd(entry.get("spendUSD")),
                )
                totals[name] = totals.get(name, Amount()) + amount
                keys.setdefault(name, set()).add(ref)
            continue
        if by == "key":
            group = ref
        elif by == "namespace":
            group = ref.split("/", 1)[0]
        else:
            group = _owner(vk).get(by) or UNSET
        totals[group] = totals.get(group, Amount()) + key_amount(vk, period, now)
        keys.setdefault(group, set()).add(ref)
    rows: list[Row] = [
        {
            by: group,
            "keys": len(keys[group]),
            "requests": amount.requests,
            "tokens": amount.tokens,
            "spendUSD": amount.spend,
        }
        for group, amount in totals.items()
    ]
    column = {"spend": "spendUSD", "tokens": "tokens", "requests": "requests"}[sort]
    rows.sort(key=lambda row: (-row[column], str(row[by])))
    return rows[:top] if top else rows


def spikes_report(
    inventory: Inventory, by: str, days: int, now: datetime, top: int | None = None
) -> list[Row]:
    """Today's spend per group against its mean daily spend over the `days` days before today."""
    today, first = _day_id(now), _day_id(now - timedelta(days=days))
    yesterday = _day_id(now - timedelta(days=1))
    groups: dict[str, tuple[Decimal, Decimal]] = {}
    for vk in inventory.virtual_keys:
        group = _key_ref(vk) if by == "key" else (_owner(vk).get(by) or UNSET)
        usage = _usage(vk)
        spend_today = _history_amount(usage, today, today).spend
        before = _history_amount(usage, first, yesterday).spend
        seen_today, seen_before = groups.get(group, (Decimal(0), Decimal(0)))
        groups[group] = (seen_today + spend_today, seen_before + before)
    rows: list[Row] = []
    for group, (spend_today, before) in groups.items():
        baseline = before / days
        rows.append(
            {
                by: group,
                "todayUSD": spend_today,
                "dailyMeanUSD": baseline.quantize(Decimal("0.000001")),
                "increaseUSD": (spend_today - baseline).quantize(Decimal("0.000001")),
                "ratio": None if baseline == 0 else float(round(spend_today / baseline, 2)),
            }
        )
    rows.sort(key=lambda row: (-row["increaseUSD"], str(row[by])))
    return rows[:top] if top else rows


def _refusals(period: Mapping[str, Any], code: str | None) -> int:
    counts = period.get("refusals") or {}
    if code is not None:
        return int(counts.get(code) or 0)
    return sum(int(v) for v in counts.values() if isinstance(v, int))


def limited_report(
    inventory: Inventory, by: str, period: str, now: datetime, code: str | None = None, top: int | None = None
) -> list[Row]:
    """Keys (grouped by `by`) and pools refused by a limit in the period, most refusals first."""
    groups: dict[str, tuple[int, dict[str, int], set[str]]] = {}
    for vk in inventory.virtual_keys:
        current = _current(_usage(vk), period, now)
        refused = _refusals(current, code)
        if not refused:
            continue
        group = _key_ref(vk) if by == "key" else (_owner(vk).get(by) or UNSET)
        total, codes, refs = groups.get(group, (0, {}, set()))
        for name, count in (current.get("refusals") or {}).items():
            if code is None or name == code:
                codes[name] = codes.get(name, 0) + int(count)
        refs.add(_key_ref(vk))
        groups[group] = (total + refused, codes, refs)
    rows: list[Row] = [
        {"kind": "key", by: group, "refusals": total, "codes": _codes_text(codes), "keys": len(refs)}
        for group, (total, codes, refs) in groups.items()
    ]
    if period == "month":
        for policy, pool in _pools(inventory, now):
            refused = _refusals(pool, code)
            if refused:
                rows.append(
                    {
                        "kind": "pool",
                        by: f"{policy}/{pool.get('budget')}/{pool.get('group')}",
                        "refusals": refused,
                        "codes": _codes_text(pool.get("refusals") or {}),
                        "keys": None,
                    }
                )
    rows.sort(key=lambda row: (-row["refusals"], row["kind"], str(row[by])))
    return rows[:top] if top else rows


def _codes_text(codes: Mapping[str, Any]) -> str:
    return ",".join(f"{name}={codes[name]}" for name in sorted(codes))


def _pools(inventory: Inventory, now: datetime) -> Iterable[tuple[str, dict[str, Any]]]:
    """(policy name, pool) for every pool whose counters cover the current month."""
    for policy in inventory.policies:
        name = str((policy.get("metadata") or {}).get("name") or "")
        for pool in (policy.get("status") or {}).get("pools") or []:
            start = _parse_time(pool.get("periodStart"))
            if start is not None and (start.year, start.month) == (now.year, now.month):
                yield name, dict(pool)


def _percent(used: Decimal | int, cap: Decimal | int | None) -> float | None:
    if cap is None or cap == 0:
        return None
    return float(round(Decimal(used) * 100 / Decimal(cap), 1))


def near_caps_report(inventory: Inventory, threshold: float, now: datetime) -> list[Row]:
    """Keys and pools whose month spend or tokens reached `threshold` percent of a monthly cap."""
    rows: list[Row] = []
    for vk in inventory.virtual_keys:
        status = vk.get("status") or {}
        limits = ((status.get("effective") or {}).get("limits")) or {}
        month = _current(_usage(vk), "month", now)
        amount = _period_amount(month)
        owner = _owner(vk)
        for what, used, cap in (
            (
                "spendPerMonthUSD",
                amount.spend,
                _usd(limits["spendPerMonthUSD"]) if "spendPerMonthUSD" in limits else None,
            ),
            ("tokensPerMonth", amount.tokens, limits.get("tokensPerMonth")),
        ):
            percent = _percent(used, cap)
            if percent is not None and percent >= threshold:
                rows.append(
                    {
                        "kind": "key",
                        "name": _key_ref(vk),
                        "team": owner.get("team") or UNSET,
                        "cap": what,
                        "used": used,
                        "limit": cap,
                        "percent": percent,
                    }
                )
    for policy, pool in _pools(inventory, now):
        spend, tokens = _usd(pool.get("spendUSD")), int(pool.get("tokens") or 0)
        for what, used, cap in (
            ("spendPerMonthUSD", spend, _usd(pool["capUSD"]) if "capUSD" in pool else None),
            ("tokensPerMonth", tokens, pool.get("capTokens")),
        ):
            percent = _percent(used, cap)
            if percent is not None and percent >= threshold:
                rows.append(
                    {
                        "kind": "pool",
                        "name": f"{policy}/{pool.get('budget')}",
                        "team": pool.get("group") or UNSET,
                        "cap": what,
                        "used": used,
                        "limit": cap,
                        "percent": percent,
                    }
                )
    rows.sort(key=lambda row: (-row["percent"], row["kind"], row["name"]))
    return rows


def last_used_at(vk: Mapping[str, Any]) -> datetime | None:
    """When the key was last used, as far as status knows."""
    usage = _usage(vk)
    times = [_parse_time(usage.get("lastUsedAt"))]
    times += [_parse_time((usage.get(which) or {}).get("lastUsedAt")) for which in ("day", "month")]
    known = [at for at in times if at is not None]
    return max(known, default=None)


def inactive_report(inventory: Inventory, days: int, now: datetime) -> list[Row]:
    """Keys unused for `days` days, or never used and older than that: candidates to revoke."""
    cutoff = now - timedelta(days=days)
    rows: list[Row] = []
    for vk in inventory.virtual_keys:
        meta = vk.get("metadata") or {}
        created = _parse_time(meta.get("creationTimestamp"))
        last = last_used_at(vk)
        if last is not None and last > cutoff:
            continue
        if last is None and created is not None and created > cutoff:
            continue  # new, not yet used: too early to call it inactive
        idle_since = last or created
        ready = _condition(vk, "Ready")
        rows.append(
            {
                "key": _key_ref(vk),
                "keyId": (vk.get("status") or {}).get("keyId"),
                "user": _owner(vk).get("user") or UNSET,
                "team": _owner(vk).get("team") or UNSET,
                "lastUsedAt": _show_time(last) if last is not None else "never",
                "idleDays": None if idle_since is None else (now - idle_since).days,
                "ready": ready.get("reason") if ready else None,
            }
        )
    rows.sort(key=lambda row: (-(row["idleDays"] if row["idleDays"] is not None else 10**6), row["key"]))
    return rows


def expiring_report(inventory: Inventory, days: int, now: datetime) -> list[Row]:
    """Keys expiring within `days` days (and those already expired), soonest first."""
    horizon = now + timedelta(days=days)
    rows: list[Row] = []
    for vk in inventory.virtual_keys:
        expires = _parse_time((vk.get("status") or {}).get("expiresAt"))
        if expires is None or expires > horizon:
            continue
        rows.append(
            {
                "key": _key_ref(vk),
                "user": _owner(vk).get("user") or UNSET,
                "team": _owner(vk).get("team") or UNSET,
                "expiresAt": _show_time(expires),
                "daysLeft": round((expires - now).total_seconds() / 86400, 1),
            }
        )
    rows.sort(key=lambda row: (row["daysLeft"], row["key"]))
    return rows


def _condition(vk: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in (vk.get("status") or {}).get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return dict(condition)
    return None


def _show_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    return str(value)


def render(rows: Sequence[Row], output: str) -> str:
    """Rows as an aligned table, CSV (header first) or JSON (a list of objects; money as strings)."""
    if output == "json":
        return json.dumps([{k: _json_value(v) for k, v in row.items()} for row in rows], indent=2) + "\n"
    columns = list(rows[0]) if rows else []
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
        return buffer.getvalue()
    if not rows:
        return "No matching keys or pools.\n"
    cells = [[c.upper() for c in columns]] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in cells
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _cell(value)
    return value


# --------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("source (the cluster by default)")
    source.add_argument(
        "--state-dir", type=pathlib.Path, help="standalone state dir of `llmkeys serve` instead of a cluster"
    )
    source.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    source.add_argument("--context", help="kubeconfig context")
    source.add_argument("-n", "--namespace", help="only keys of this namespace (default: all you may list)")
    parser.add_argument("-o", "--output", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--now", help=argparse.SUPPRESS)  # RFC 3339; reproducible reports in tests
    sub = parser.add_subparsers(dest="report", required=True, metavar="REPORT")

    usage = sub.add_parser("usage", help="usage and spend grouped by an owner field, model or provider")
    usage.add_argument("--by", choices=GROUP_FIELDS, default="team")
    usage.add_argument("--period", default="month", help="day, month or Nd (last N UTC days, N <= 31)")
    usage.add_argument("--sort", choices=SORTS, default="spend")
    usage.add_argument("--top", type=int, help="only the first N rows")

    spikes = sub.add_parser("spikes", help="today's spend against the daily mean of the days before")
    spikes.add_argument("--by", choices=(*api.OWNER_FIELDS, "key"), default="app")
    spikes.add_argument("--days", type=int, default=7, help="days before today forming the baseline (<= 30)")
    spikes.add_argument("--top", type=int)

    limited = sub.add_parser("limited", help="keys and pools refused by a limit")
    limited.add_argument("--by", choices=(*api.OWNER_FIELDS, "key"), default="key")
    limited.add_argument("--period", choices=("day", "month"), default="day")
    limited.add_argument("--code", help="only this error code, e.g. rate_limit_exceeded")
    limited.add_argument("--top", type=int)

    near = sub.add_parser("near-caps", help="keys and pools at or above a percentage of a monthly cap")
    near.add_argument("--threshold", type=float, default=80.0, help="percent of the cap (default 80)")

    inactive = sub.add_parser("inactive", help="keys unused for N days, or never used")
    inactive.add_argument("--days", type=int, default=30)

    expiring = sub.add_parser("expiring", help="keys expiring within N days")
    expiring.add_argument("--days", type=int, default=14)


def build(args: argparse.Namespace, inventory: Inventory, now: datetime) -> list[Row]:
    """The rows of the report `args` ask for."""
    if args.report == "usage":
        return usage_report(inventory, args.by, parse_period(args.period), now, args.sort, args.top)
    if args.report == "spikes":
        if not 1 <= args.days <= api.HISTORY_DAYS - 1:
            raise ReportError(f"--days must be from 1 to {api.HISTORY_DAYS - 1}")
        return spikes_report(inventory, args.by, args.days, now, args.top)
    if args.report == "limited":
        return limited_report(inventory, args.by, args.period, now, args.code, args.top)
    if args.report == "near-caps":
        return near_caps_report(inventory, args.threshold, now)
    if args.report == "inactive":
        return inactive_report(inventory, args.days, now)
    return expiring_report(inventory, args.days, now)


def run(args: argparse.Namespace) -> int:
    try:
        now = _parse_time(args.now) if args.now else datetime.now(UTC)
        if now is None:
            raise ReportError("--now must be an RFC 3339 time")
        if args.state_dir is not None:
            inventory = load_state_dir(args.state_dir)
        else:
            inventory = load_cluster(args.kubeconfig, args.context, args.namespace)
        rows = build(args, inventory, now)
    except ReportError as exc:
        print(f"llmkeys report: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(rows, args.output))
    return 0


def kubectl_plugin(argv: list[str] | None = None) -> int:
    """`kubectl llmkeys report ...`: the same command, installed as the `kubectl-llmkeys` script."""
    from llmkeys_operator import cli

    return cli.main(argv if argv is not None else sys.argv[1:], prog="kubectl llmkeys", only=("report",))
