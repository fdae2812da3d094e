"""Budget and expiry alerts (LLMPolicy.spec.alerts): which ones a key or pool newly reached, raised once.

Called by `usage_sync` after each read of the counters. Pure functions decide; the state of what
was already raised lives in status (`status.alerts` of a VirtualKey, `alerts` of a pool entry:
the month and the thresholds announced in it, the expiry warned about), so a restarted operator
raises nothing twice. `usage_sync` writes that state first and raises (Event + notification) only
once the write succeeded: at most once per threshold per month, never twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from llmkeys_operator import api, durations


@dataclasses.dataclass(frozen=True)
class AlertRules:
    """The alert rules of every policy selecting one key (thresholds united, shortest warning)."""

    thresholds: frozenset[int]
    expiry_warning: timedelta | None
    webhooks: tuple[api.WebhookSpec, ...]


def rules_for(policies: Iterable[api.LLMPolicy]) -> AlertRules | None:
    thresholds: set[int] = set()
    warnings: list[timedelta] = []
    webhooks: list[api.WebhookSpec] = []
    found = False
    for policy in policies:
        alerts = policy.spec.alerts
        if alerts is None:
            continue
        found = True
        thresholds.update(alerts.thresholds)
        if alerts.expiry_warning:
            with contextlib.suppress(ValueError):
                warnings.append(durations.parse_duration(alerts.expiry_warning))
        if alerts.webhook is not None and alerts.webhook not in webhooks:
            webhooks.append(alerts.webhook)
    if not found:
        return None
    return AlertRules(frozenset(thresholds), min(warnings, default=None), tuple(webhooks))


def percent(used: int | Decimal, cap: int | Decimal | None) -> float | None:
    """Usage in percent of a cap (None without a cap, or a zero cap)."""
    if cap is None or cap <= 0:
        return None
    return float(Decimal(used) * 100 / Decimal(cap))


@dataclasses.dataclass(frozen=True)
class Reached:
    """Thresholds newly reached and the state to record before raising them."""

    thresholds: tuple[int, ...]
    state: dict[str, Any]
    expiry: datetime | None = None  # an expiry newly inside the warning period


def evaluate(
    shown: Mapping[str, Any] | None,
    month: str,
    used_percent: float | None,
    thresholds: Iterable[int],
    *,
    expires_at: datetime | None = None,
    expiry_warning: timedelta | None = None,
    now: datetime | None = None,
) -> Reached | None:
    """What is new against the recorded state `shown` (None: nothing new to record or raise)."""
    state = dict(shown or {})
    announced = set(state.get("thresholds") or []) if state.get("period") == month else set()
    crossed = {t for t in thresholds if used_percent is not None and used_percent >= t}
    new = tuple(sorted(crossed - announced))
    expiry = None
    if expires_at is not None and expiry_warning is not None and now is not None:
        warned = state.get("expiryWarned")
        if expires_at - expiry_warning <= now < expires_at and warned != _time(expires_at):
            expiry = expires_at
    if not new and expiry is None:
        return None
    if new:
        state["period"] = month
        state["thresholds"] = sorted(announced | set(new))
    if expiry is not None:
        state["expiryWarned"] = _time(expiry)
    return Reached(new, state, expiry)


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def key_usage_percent(limits: api.Limits | None, micro_usd: int, tokens: int) -> float | None:
    """The highest share of a key's monthly caps (spend, tokens) it used, in percent."""
    if limits is None:
        return None
    shares = [
        percent(Decimal(micro_usd) / 1_000_000, limits.spend_per_month_usd),
        percent(tokens, limits.tokens_per_month),
    ]
    known = [share for share in shares if share is not None]
    return max(known, default=None)


def pool_usage_percent(
    spend_cap_micro_usd: int | None, tokens_cap: int | None, micro_usd: int, tokens: int
) -> float | None:
    shares = [percent(micro_usd, spend_cap_micro_usd), percent(tokens, tokens_cap)]
    known = [share for share in shares if share is not None]
    return max(known, default=None)
