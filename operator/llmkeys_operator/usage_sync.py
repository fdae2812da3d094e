"""Usage sync: limiter counters (Redis) -> `VirtualKey.status.usage` and `LLMPolicy.status.pools`.

Run by the operator (`runner`, only on the elected leader) every `usage_sync_interval_s`: one
pipelined `read_usage` per chunk of keys and pools, then a status patch only where the usage
changed (a bounded write rate). When the counters read lower than the status already showed for
the same period, Redis lost them (restarted without persistence): the counters are re-seeded from
the status instead of writing the lower numbers back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from llmkeys_operator import alerts, api, compile, events, kube, notifier, reconcile
from llmkeys_proxy import config
from llmkeys_proxy.limits import base

logger = logging.getLogger("llmkeys.operator.usage")

#: Keys and pools read per pipelined call.
CHUNK = 500


def open_limiter(url: str, password: str | None) -> base.Limiter:
    from llmkeys_proxy.limits import redis as redis_limits  # imported only when usage sync is on

    return redis_limits.RedisLimiter(redis_limits.url_with_password(url, password))


def period_start(period: str) -> datetime:
    """`YYYY-MM` or `YYYY-MM-DD` -> the UTC instant it starts."""
    if len(period) == 7:
        return datetime.strptime(period + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
    return datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=UTC)


def refusals(tallies: Mapping[str, int]) -> dict[str, int]:
    """Refusal counts by error code from a scope's tallies."""
    prefix = base.TALLY_REFUSAL
    return {name[len(prefix) :]: count for name, count in sorted(tallies.items()) if name.startswith(prefix)}


def breakdown(tallies: Mapping[str, int], prefix: str) -> list[api.UsageBreakdown]:
    """Usage by model (prefix `m:`) or credential (`p:`) from a scope's tallies, largest spend first,
    at most `api.BREAKDOWN_MAX` entries."""
    rows: dict[str, list[int]] = {}
    for field, count in tallies.items():
        if not field.startswith(prefix):
            continue
        name, _, what = field[len(prefix) :].rpartition(":")
        slot = "qtu".find(what)
        if slot >= 0:
            rows.setdefault(name, [0, 0, 0])[slot] = count
    ordered = sorted(rows.items(), key=lambda item: (-item[1][2], -item[1][1], item[0]))
    return [
        api.UsageBreakdown(
            name=name[: api.GLOB_MAX],
            requests=requests,
            tokens=tokens,
            spend_usd=str(compile.micro_to_usd(micro_usd)),
        )
        for name, (requests, tokens, micro_usd) in ordered[: api.BREAKDOWN_MAX]
    ]


def _usage(period: base.PeriodUsage, tallies: Mapping[str, int]) -> api.Usage:
    return api.Usage(
        period_start=period_start(period.period),
        requests=period.requests,
        input_tokens=period.input_tokens + period.seeded_tokens,
        cached_input_tokens=period.cached_input_tokens,
        output_tokens=period.output_tokens,
        spend_usd=str(compile.micro_to_usd(period.micro_usd)),
        last_used_at=period.last_used_at,
        refusals=refusals(tallies),
        by_model=breakdown(tallies, base.TALLY_MODEL),
        by_provider=breakdown(tallies, base.TALLY_PROVIDER),
    )


_OMITTED_WHEN_EMPTY = ("refusals", "byModel", "byProvider", "history")


def _compact(dumped: dict[str, Any]) -> dict[str, Any]:
    """Leave out empty tallies and history (most keys have none: smaller statuses)."""
    for field in _OMITTED_WHEN_EMPTY:
        if field in dumped and not dumped[field]:
            del dumped[field]
    for nested in ("day", "month"):
        if isinstance(dumped.get(nested), dict):
            _compact(dumped[nested])
    return dumped


def _day_entry(period: base.PeriodUsage) -> dict[str, Any]:
    return api.DailyUsage(
        date=period.period,
        requests=period.requests,
        tokens=period.total_tokens,
        spend_usd=str(compile.micro_to_usd(period.micro_usd)),
    ).model_dump(mode="json", by_alias=True)


def history(shown: Any, snapshot: base.UsageSnapshot) -> list[dict[str, Any]]:
    """The daily history: what the status showed, with the day before (its final numbers, while the
    limiter still holds them) and today replaced from the limiter; days without use are left out,
    and only the last `api.HISTORY_DAYS` UTC days are kept (oldest first)."""
    days: dict[str, dict[str, Any]] = {}
    for entry in shown if isinstance(shown, list) else ():
        if isinstance(entry, Mapping) and isinstance(entry.get("date"), str):
            days[entry["date"]] = dict(entry)
    for period in (snapshot.previous_day, snapshot.day):
        if period is not None and (period.requests or period.total_tokens or period.micro_usd):
            days[period.period] = _day_entry(period)
    first = (period_start(snapshot.day.period) - timedelta(days=api.HISTORY_DAYS - 1)).strftime("%Y-%m-%d")
    return [days[date] for date in sorted(days) if first <= date <= snapshot.day.period]


def usage_status(snapshot: base.UsageSnapshot, shown: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`status.usage` as JSON for a key's usage snapshot (`shown`: the usage the status holds)."""
    usage = api.UsageByPeriod(
        day=_usage(snapshot.day, snapshot.day_tallies),
        month=_usage(snapshot.month, snapshot.month_tallies),
    )
    dumped: dict[str, Any] = usage.model_dump(mode="json", by_alias=True, exclude_none=True)
    dumped["history"] = history((shown or {}).get("history"), snapshot)
    last_used = last_used_at((shown or {}).get("lastUsedAt"), snapshot)
    if last_used is not None:
        dumped["lastUsedAt"] = last_used
    return _compact(dumped)


def last_used_at(shown: Any, snapshot: base.UsageSnapshot) -> str | None:
    """The latest of what the status showed and the limiter's periods, as RFC 3339 text."""
    times = [at for at in (snapshot.day.last_used_at, snapshot.month.last_used_at) if at is not None]
    if isinstance(shown, str):
        with contextlib.suppress(ValueError):
            times.append(datetime.fromisoformat(shown.replace("Z", "+00:00")))
    latest = max(times, default=None)
    return None if latest is None else latest.astimezone(UTC).isoformat().replace("+00:00", "Z")


def pool_usage(
    pool: config.PoolEntry, snapshot: base.UsageSnapshot, shown: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One entry of `LLMPolicy.status.pools` (`shown`: the entry the status holds)."""
    month = snapshot.month
    last_used = max(
        (at for at in (month.last_used_at, snapshot.day.last_used_at) if at is not None), default=None
    )
    usage = api.PoolUsage(
        budget=pool.budget,
        group=pool.group_value,
        period_start=period_start(month.period),
        spend_usd=str(compile.micro_to_usd(month.micro_usd)),
        tokens=month.total_tokens,
        cap_usd=(
            str(compile.micro_to_usd(pool.spend_per_month_micro_usd))
            if pool.spend_per_month_micro_usd is not None
            else None
        ),
        cap_tokens=pool.tokens_per_month,
        last_used_at=last_used,
        refusals=refusals(snapshot.month_tallies),
    )
    dumped: dict[str, Any] = usage.model_dump(mode="json", by_alias=True, exclude_none=True)
    dumped["history"] = history((shown or {}).get("history"), snapshot)
    return _compact(dumped)


def _same_period(shown: Mapping[str, Any], period: str) -> bool:
    start = shown.get("periodStart")
    if not isinstance(start, str):
        return False
    try:
        return datetime.fromisoformat(start.replace("Z", "+00:00")) == period_start(period)
    except ValueError:
        return False


def _shown(status_usage: Mapping[str, Any] | None, which: str, period: str, field: str) -> int:
    """A counter the status shows for `which` (day/month) when it covers `period`, else 0."""
    usage = (status_usage or {}).get(which) or {}
    value = usage.get(field)
    return value if _same_period(usage, period) and isinstance(value, int) else 0


def counters_lost(status_usage: Mapping[str, Any] | None, snapshot: base.UsageSnapshot) -> bool:
    """True when the limiter shows fewer requests than the status already reported for the same
    period: within a period counters only grow, so Redis lost them."""
    return _shown(status_usage, "month", snapshot.month.period, "requests") > snapshot.month.requests or (
        _shown(status_usage, "day", snapshot.day.period, "requests") > snapshot.day.requests
    )


def pool_counters_lost(
    shown: list[Mapping[str, Any]], pool: config.PoolEntry, snapshot: base.UsageSnapshot
) -> bool:
    for entry in shown:
        if entry.get("budget") == pool.budget and entry.get("group") == pool.group_value:
            tokens = entry.get("tokens")
            if _same_period(entry, snapshot.month.period) and isinstance(tokens, int):
                return tokens > snapshot.month.total_tokens
    return False


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass
class SyncReport:
    keys_read: int = 0
    keys_patched: int = 0
    policies_patched: int = 0
    seeded: int = 0


async def sync_usage(ctx: reconcile.ReconcileContext, limiter: base.Limiter, now: datetime) -> SyncReport:
    """One pass over every issued key and every pool (see module docstring)."""
    report = SyncReport()
    result = ctx.last_result
    if ctx.indexes is None or result is None:
        return report
    entries = {(k.namespace, k.name): k for k in result.config.keys}
    pools = {pool.id: pool for pool in result.config.pools}
    key_ids = sorted({entry.key_id for entry in entries.values()})
    snapshots: dict[str, base.UsageSnapshot] = {}
    pool_ids = sorted(pools)
    for start in range(0, max(len(key_ids), len(pool_ids)), CHUNK):
        snapshots.update(
            await limiter.read_usage(key_ids[start : start + CHUNK], pool_ids[start : start + CHUNK], now)
        )
    report.keys_read = len(key_ids)

    seeds: list[base.SeedTarget] = []
    for ref, entry in entries.items():
        indexed = ctx.virtual_key(ref)
        snapshot = snapshots.get(entry.key_id)
        if indexed is None or indexed.deleting or snapshot is None:
            continue
        current = indexed.raw_status.get("usage")
        if counters_lost(current, snapshot):
            seeds.append(
                base.SeedTarget(scope_id=entry.key_id, month=entry.month_usage_seed, day=entry.day_usage_seed)
            )
            continue
        never_used = (
            current is None
            and snapshot.month.requests == 0
            and snapshot.day.requests == 0
            and not snapshot.month_tallies
        )
        desired = usage_status(snapshot, current)
        changes: dict[str, Any] = {}
        if not never_used and (current is None or _canonical(current) != _canonical(desired)):
            changes["usage"] = desired  # (never used: no need to write zeros into every key)
        reached = _key_alerts(ctx, result, ref, indexed, snapshot, now)
        if reached is not None:
            changes["alerts"] = reached.state
        if not changes:
            continue
        key_patch: dict[str, Any] = {"status": changes}
        if (
            await ctx.kube.patch(kube.VIRTUALKEYS, ref[0], ref[1], key_patch, subresource="status")
            is not None
        ):
            report.keys_patched += 1
            if reached is not None:  # recorded: now raise each alert once
                ctx.alert_states[("vk", ref)] = reached.state
                _raise_key_alerts(ctx, result, ref, indexed, entry.key_id, snapshot, reached)

    for name, outcome in sorted(result.policies.items()):
        if not outcome.pools or name not in ctx.indexes.policies:
            continue
        policy: api.LLMPolicy | None = next(iter(ctx.indexes.policies[name]), None)
        if policy is None:
            continue
        shown_status = (
            policy.status.model_dump(mode="json", by_alias=True, exclude_none=True) if policy.status else {}
        )
        shown = shown_status.get("pools") or []
        shown_by_pool = {(entry.get("budget"), entry.get("group")): entry for entry in shown}
        desired_pools = []
        raised: list[
            tuple[config.PoolEntry, base.UsageSnapshot, alerts.Reached, float, alerts.AlertRules]
        ] = []
        for pool_id in outcome.pools:
            pool, snapshot = pools.get(pool_id), snapshots.get(pool_id)
            if pool is None or snapshot is None:
                continue
            if pool_counters_lost(shown, pool, snapshot):
                seeds.append(base.SeedTarget(scope_id=pool_id, is_pool=True, month=pool.month_usage_seed))
            shown_pool = shown_by_pool.get((pool.budget, pool.group_value)) or {}
            entry_json = pool_usage(pool, snapshot, shown_pool)
            rules = alerts.rules_for([policy])
            reached_pool = None
            if rules is not None:
                used = alerts.pool_usage_percent(
                    pool.spend_per_month_micro_usd,
                    pool.tokens_per_month,
                    snapshot.month.micro_usd,
                    snapshot.month.total_tokens,
                )
                reached_pool = alerts.evaluate(
                    ctx.alert_states.get(("pool", pool.id)) or shown_pool.get("alerts"),
                    snapshot.month.period,
                    used,
                    rules.thresholds,
                )
                if reached_pool is not None:
                    raised.append((pool, snapshot, reached_pool, used or 0.0, rules))
            state = (
                reached_pool.state
                if reached_pool is not None
                else ctx.alert_states.get(("pool", pool.id)) or shown_pool.get("alerts")
            )
            if state:
                entry_json["alerts"] = state
            desired_pools.append(entry_json)
        if any(seed.is_pool for seed in seeds) or _canonical(shown) == _canonical(desired_pools):
            continue
        patch: dict[str, Any] = {"status": {"pools": desired_pools}}
        if await ctx.kube.patch(kube.LLMPOLICIES, None, name, patch, subresource="status") is not None:
            report.policies_patched += 1
            for pool, snapshot, reached_pool, used, rules in raised:
                ctx.alert_states[("pool", pool.id)] = reached_pool.state
                _raise_pool_alerts(ctx, policy, pool, snapshot, reached_pool, used, rules)

    if seeds:
        report.seeded = await limiter.seed_usage(seeds, now)
        logger.warning(
            "usage counters were lost for %d key(s)/pool(s); re-seeded %d from status",
            len(seeds),
            report.seeded,
        )
    return report


def _policies_of(ctx: reconcile.ReconcileContext, names: list[str]) -> list[api.LLMPolicy]:
    found = []
    for name in names:
        policy = next(iter(ctx.indexes.policies.get(name, ())), None) if ctx.indexes is not None else None
        if policy is not None:
            found.append(policy)
    return found


def _key_alerts(
    ctx: reconcile.ReconcileContext,
    result: compile.CompileResult,
    ref: tuple[str, str],
    indexed: reconcile.IndexedVirtualKey,
    snapshot: base.UsageSnapshot,
    now: datetime,
) -> alerts.Reached | None:
    outcome = result.keys.get(ref)
    if outcome is None or outcome.effective is None:
        return None
    rules = alerts.rules_for(_policies_of(ctx, outcome.policies))
    if rules is None:
        return None
    used = alerts.key_usage_percent(
        outcome.effective.limits, snapshot.month.micro_usd, snapshot.month.total_tokens
    )
    return alerts.evaluate(
        ctx.alert_states.get(("vk", ref)) or indexed.raw_status.get("alerts"),
        snapshot.month.period,
        used,
        rules.thresholds,
        expires_at=outcome.expires_at,
        expiry_warning=rules.expiry_warning,
        now=now,
    )


def _webhook_url(ctx: reconcile.ReconcileContext, webhook: api.WebhookSpec) -> str | None:
    if ctx.indexes is None:
        return None
    ref = (ctx.settings.namespace, webhook.url_secret_ref.name)
    data = next(iter(ctx.indexes.gateway_secrets.get(ref, ())), None)
    url = (data or {}).get(webhook.url_secret_ref.key)
    if not url or not url.strip().startswith(("http://", "https://")):
        logger.warning(
            "alert webhook Secret %s/%s holds no http(s) URL under %r", *ref, webhook.url_secret_ref.key
        )
        return None
    return url.strip()


def _notify(ctx: reconcile.ReconcileContext, rules: alerts.AlertRules, alert: notifier.Alert) -> None:
    if ctx.notifier is None:
        return
    for webhook in rules.webhooks:
        url = _webhook_url(ctx, webhook)
        if url is not None:
            ctx.notifier.send(url, webhook.format, alert)


def _cap_text(value: object) -> str:
    return "-" if value is None else str(value)


def _raise_key_alerts(
    ctx: reconcile.ReconcileContext,
    result: compile.CompileResult,
    ref: tuple[str, str],
    indexed: reconcile.IndexedVirtualKey,
    key_id: str,
    snapshot: base.UsageSnapshot,
    reached: alerts.Reached,
) -> None:
    outcome = result.keys.get(ref)
    if outcome is None or outcome.effective is None:
        return
    rules = alerts.rules_for(_policies_of(ctx, outcome.policies))
    if rules is None:
        return
    limits = outcome.effective.limits
    month = snapshot.month
    used = alerts.key_usage_percent(limits, month.micro_usd, month.total_tokens) or 0.0
    event_ref = events.ObjectReference(api.API_VERSION, "VirtualKey", ref[0], ref[1], indexed.uid or "")
    resource = {
        "apiVersion": api.API_VERSION,
        "kind": "VirtualKey",
        "namespace": ref[0],
        "name": ref[1],
        "keyId": key_id,
    }
    spend = str(compile.micro_to_usd(month.micro_usd))
    for threshold in reached.thresholds:
        message = (
            f"reached {threshold}% of a monthly cap in {month.period} ({used:.1f}% used: USD {spend} of "
            f"{_cap_text(limits.spend_per_month_usd)}, {month.total_tokens} tokens of "
            f"{_cap_text(limits.tokens_per_month)})"
        )
        ctx.events.record(
            event_ref, "Warning", "BudgetThreshold", message, instance=f"{month.period}/{threshold}"
        )
        details = {
            "threshold": threshold,
            "percent": round(used, 1),
            "period": month.period,
            "spendUSD": spend,
            "tokens": month.total_tokens,
        }
        text = f"VirtualKey {ref[0]}/{ref[1]} {message}"
        _notify(ctx, rules, notifier.Alert("BudgetThreshold", resource, text, details))
    if reached.expiry is not None:
        when = reached.expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        message = f"expires at {when}"
        ctx.events.record(event_ref, "Warning", "ExpiringSoon", message, instance=when)
        text = f"VirtualKey {ref[0]}/{ref[1]} {message}"
        _notify(ctx, rules, notifier.Alert("ExpiringSoon", resource, text, {"expiresAt": when}))


def _raise_pool_alerts(
    ctx: reconcile.ReconcileContext,
    policy: api.LLMPolicy,
    pool: config.PoolEntry,
    snapshot: base.UsageSnapshot,
    reached: alerts.Reached,
    used: float,
    rules: alerts.AlertRules,
) -> None:
    name = policy.metadata.name
    month = snapshot.month
    event_ref = events.ObjectReference(api.API_VERSION, "LLMPolicy", "", name, policy.metadata.uid or "")
    resource = {"apiVersion": api.API_VERSION, "kind": "LLMPolicy", "name": name, "pool": pool.id}
    spend = str(compile.micro_to_usd(month.micro_usd))
    for threshold in reached.thresholds:
        message = (
            f"pool {pool.budget} of {pool.group_by}={pool.group_value} reached {threshold}% of its "
            f"monthly cap in {month.period} ({used:.1f}% used: USD {spend}, {month.total_tokens} tokens)"
        )
        ctx.events.record(
            event_ref,
            "Warning",
            "BudgetThreshold",
            message,
            instance=f"{pool.id}/{month.period}/{threshold}",
        )
        details = {
            "threshold": threshold,
            "percent": round(used, 1),
            "period": month.period,
            "spendUSD": spend,
            "tokens": month.total_tokens,
        }
        _notify(
            ctx, rules, notifier.Alert("BudgetThreshold", resource, f"LLMPolicy {name}: {message}", details)
        )


async def run_usage_sync(ctx: reconcile.ReconcileContext, limiter: base.Limiter, interval_s: float) -> None:
    """Sync every `interval_s` for the operator's lifetime; limiter outages are logged once."""
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            report = await sync_usage(ctx, limiter, datetime.now(UTC))
        except asyncio.CancelledError:
            raise
        except base.LimiterUnavailable as exc:
            if not failing:
                logger.warning("cannot read usage counters (%s); status.usage is left as it was", exc)
            failing = True
            continue
        except Exception:
            logger.exception("usage sync failed; retrying next interval")
            continue
        if failing:
            logger.info("usage counters readable again")
        failing = False
        if report.keys_patched or report.policies_patched:
            logger.debug("usage sync: %s", report)
