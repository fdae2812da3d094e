"""Standalone mode's status: limiter usage -> `<state-dir>/status/`, the resources as the API would show them.

Run by `standalone.serve` every few seconds (the operator's usage sync does the same job into
`.status` in a cluster, with the same builders from `usage_sync`). One JSON file per VirtualKey
(`status/virtualkeys/<namespace>/<name>.json`) and per LLMPolicy (`status/llmpolicies/<name>.json`),
each written atomically; `llmkeys report --state-dir` reads them. Files of resources no longer in
the manifests are removed. No key material is ever written here (key ids only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from llmkeys_operator import api, compile, usage_sync
from llmkeys_proxy.limits import base

logger = logging.getLogger("llmkeys.standalone.status")

#: Seconds between two status writes of `llmkeys serve`.
DEFAULT_INTERVAL_S = 5.0


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: pathlib.Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write(path: pathlib.Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _conditions(
    contents: tuple[compile.ConditionContent, ...], previous: Any, now: datetime
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    conditions = []
    for content in contents:
        old = before.get(content.type)
        unchanged = old is not None and old.get("status") == content.status
        conditions.append(
            {
                "type": content.type,
                "status": content.status,
                "reason": content.reason,
                "message": content.message,
                "lastTransitionTime": old.get("lastTransitionTime") if unchanged and old else _time(now),
            }
        )
    return conditions


def key_document(
    vk: api.VirtualKey,
    outcome: compile.KeyOutcome | None,
    key_id: str | None,
    issued_at: datetime | None,
    snapshot: base.UsageSnapshot | None,
    previous: Mapping[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """A VirtualKey as `kubectl get -o json` would show it, status included."""
    old_status = previous.get("status") or {}
    metadata: dict[str, Any] = {
        "name": vk.metadata.name,
        "namespace": vk.metadata.namespace or compile.DEFAULT_NAMESPACE,
    }
    created = vk.metadata.creation_timestamp or issued_at
    if created is not None:
        metadata["creationTimestamp"] = _time(created)
    if vk.metadata.labels:
        metadata["labels"] = dict(vk.metadata.labels)
    status: dict[str, Any] = {}
    if outcome is not None:
        status["conditions"] = _conditions(outcome.conditions, old_status.get("conditions"), now)
        if outcome.expires_at is not None:
            status["expiresAt"] = _time(outcome.expires_at)
        if outcome.effective is not None:
            status["effective"] = outcome.effective.model_dump(mode="json", by_alias=True, exclude_none=True)
    if key_id is not None:
        status["keyId"] = key_id
    usage = old_status.get("usage")
    if snapshot is not None and (usage is not None or snapshot.month.requests or snapshot.month_tallies):
        usage = usage_sync.usage_status(snapshot, usage)
    if usage is not None:
        status["usage"] = usage
    return {
        "apiVersion": api.API_VERSION,
        "kind": "VirtualKey",
        "metadata": metadata,
        "spec": vk.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": status,
    }


def shown_usage(root: pathlib.Path, namespace: str, name: str) -> dict[str, Any] | None:
    """`status.usage` of a VirtualKey's status file, or None."""
    usage = (_read(root / "virtualkeys" / namespace / f"{name}.json").get("status") or {}).get("usage")
    return usage if isinstance(usage, dict) else None


async def write_status(
    root: pathlib.Path,
    manifests_keys: list[api.VirtualKey],
    policies: list[api.LLMPolicy],
    result: compile.CompileResult,
    issued_at: Mapping[tuple[str, str], datetime],
    limiter: base.Limiter,
    now: datetime,
) -> int:
    """Read usage of every key and pool in one call and rewrite the status files; returns how many
    files were written."""
    entries = {(k.namespace, k.name): k for k in result.config.keys}
    pools = {pool.id: pool for pool in result.config.pools}
    snapshots = await limiter.read_usage(sorted({k.key_id for k in entries.values()}), sorted(pools), now)
    keys_dir, policies_dir = root / "virtualkeys", root / "llmpolicies"
    wanted: set[pathlib.Path] = set()
    written = 0
    seeds: list[base.SeedTarget] = []
    for vk in manifests_keys:
        ref = (vk.metadata.namespace or compile.DEFAULT_NAMESPACE, vk.metadata.name)
        path = keys_dir / ref[0] / f"{ref[1]}.json"
        wanted.add(path)
        entry = entries.get(ref)
        previous = _read(path)
        shown = (previous.get("status") or {}).get("usage")
        snapshot = snapshots.get(entry.key_id) if entry is not None else None
        if entry is not None and snapshot is not None and usage_sync.counters_lost(shown, snapshot):
            # The limiter lost this key's counters (Redis restarted empty): put back what the status
            # shows, as the operator does, and keep showing it (never lower within a period).
            month, day = compile.usage_seeds(api.UsageByPeriod.model_validate(shown))
            seeds.append(base.SeedTarget(scope_id=entry.key_id, month=month, day=day))
            continue
        document = key_document(
            vk,
            result.keys.get(ref),
            entry.key_id if entry is not None else None,
            issued_at.get(ref),
            snapshots.get(entry.key_id) if entry is not None else None,
            previous,
            now,
        )
        if document != previous:
            _write(path, document)
            written += 1
    for policy in policies:
        name = policy.metadata.name
        path = policies_dir / f"{name}.json"
        wanted.add(path)
        outcome = result.policies.get(name)
        previous = _read(path)
        shown = {
            (p.get("budget"), p.get("group")): p for p in (previous.get("status") or {}).get("pools") or []
        }
        pool_rows = []
        for pool_id in outcome.pools if outcome is not None else []:
            pool, snapshot = pools.get(pool_id), snapshots.get(pool_id)
            if pool is not None and snapshot is not None:
                pool_rows.append(
                    usage_sync.pool_usage(pool, snapshot, shown.get((pool.budget, pool.group_value)))
                )
        document = {
            "apiVersion": api.API_VERSION,
            "kind": "LLMPolicy",
            "metadata": {"name": name},
            "spec": policy.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            "status": {
                "selectedKeys": len(outcome.selected_keys) if outcome is not None else 0,
                "pools": pool_rows,
            },
        }
        if document != previous:
            _write(path, document)
            written += 1
    if seeds:
        seeded = await limiter.seed_usage(seeds, now)
        logger.warning(
            "usage counters were lost for %d key(s); re-seeded %d from the status files", len(seeds), seeded
        )
    for directory in (keys_dir, policies_dir):
        for stale in directory.rglob("*.json") if directory.is_dir() else ():
            if stale not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
    return written


async def run_status_writer(
    root: pathlib.Path,
    current: Callable[[], Any],
    limiter: Callable[[], base.Limiter | None],
    stop: asyncio.Event,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> None:
    """Write the status files every `interval_s` until `stop`. `current()` gives the latest
    `standalone.CompiledState`; `limiter()` the limiter serving requests (None before it exists)."""
    failing = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        compiled, backend = current(), limiter()
        if compiled is None or backend is None:
            continue
        try:
            await write_status(
                root,
                compiled.manifests.virtual_keys,
                compiled.manifests.policies,
                compiled.result,
                {ref: issued.issued_at for ref, issued in compiled.issued.items()},
                backend,
                datetime.now(UTC),
            )
        except asyncio.CancelledError:
            raise
        except base.LimiterUnavailable as exc:
            if not failing:
                logger.warning("cannot read usage counters (%s); status files are left as they were", exc)
            failing = True
            continue
        except Exception:
            logger.exception("writing the status files failed; retrying next interval")
            continue
        failing = False
