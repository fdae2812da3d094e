"""View models of the portal's pages, built from API objects as returned (pure; no API access).

Called by `app`. A VirtualKey becomes a `KeyView` (owner, state and reason, models, limits,
spend against cap this month, tokens today, last use, expiry, daily spend history); lists of them
become the admin views (inactive keys, keys near their cap, top spenders by an owner field).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from llmkeys_operator import api, keysecret
from llmkeys_operator.portal import guardrails, identity

PENDING_APPROVAL = "PendingApproval"
#: What the top-spenders view groups by: owner fields, and the model (from status byModel).
GROUP_BY_FIELDS = ("team", "app", "agent", "user", "service", "costCenter", "model")


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class DaySpend:
    day: date
    spend: Decimal
    tokens: int


@dataclasses.dataclass(frozen=True)
class KeyView:
    """One VirtualKey as a person reads it."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    owner: dict[str, str]
    created_by: str | None
    description: str
    ready: bool
    reason: str
    message: str
    suspended: bool
    models: tuple[str, ...]
    limits: dict[str, Any]
    spend_month: Decimal
    spend_cap: Decimal | None
    tokens_today: int
    requests_today: int
    last_used: datetime | None
    expires_at: datetime | None
    key_id: str | None
    secret_name: str
    grace_period: str
    history: tuple[DaySpend, ...]
    approval: str | None
    approved_by: str | None
    denied_by: str | None
    denied_reason: str | None
    raw_spec: dict[str, Any]
    #: Month spend by model, from status (names the config does not know are "other").
    spend_by_model: dict[str, Decimal] = dataclasses.field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cap_share(self) -> float | None:
        if not self.spend_cap:
            return None
        return float(self.spend_month / self.spend_cap)

    @property
    def pending_approval(self) -> bool:
        return self.reason == PENDING_APPROVAL

    def owned_by(self, who: identity.Identity) -> bool:
        return who.username in (self.owner.get("user"), self.created_by)


def key_view(raw: Mapping[str, Any]) -> KeyView:
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    annotations = meta.get("annotations") or {}
    ready_cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    effective = status.get("effective") or {}
    limits = dict(effective.get("limits") or spec.get("limits") or {})
    usage = status.get("usage") or {}
    month, day = usage.get("month") or {}, usage.get("day") or {}
    today = datetime.now(UTC).date()
    day_start = _time(day.get("periodStart"))
    month_start = _time(month.get("periodStart"))
    current_day = day_start is not None and day_start.date() == today
    current_month = month_start is not None and (month_start.year, month_start.month) == (
        today.year,
        today.month,
    )
    name = str(meta.get("name", ""))
    return KeyView(
        namespace=str(meta.get("namespace", "")),
        name=name,
        uid=str(meta.get("uid", "")),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        owner={str(k): str(v) for k, v in (spec.get("owner") or {}).items()},
        created_by=status.get("createdBy") or annotations.get(api.ANNOTATION_CREATED_BY),
        description=str(spec.get("description") or ""),
        ready=(ready_cond or {}).get("status") == "True",
        reason=str((ready_cond or {}).get("reason") or "Pending"),
        message=str((ready_cond or {}).get("message") or "waiting for the operator"),
        suspended=spec.get("suspended") is True,
        models=tuple(effective.get("models") or spec.get("models") or ()),
        limits=limits,
        spend_month=(_decimal(month.get("spendUSD")) or Decimal(0)) if current_month else Decimal(0),
        spend_cap=_decimal(limits.get("spendPerMonthUSD")),
        tokens_today=(int(day.get("inputTokens") or 0) + int(day.get("outputTokens") or 0))
        if current_day
        else 0,
        requests_today=int(day.get("requests") or 0) if current_day else 0,
        last_used=_time(usage.get("lastUsedAt"))
        or _time(month.get("lastUsedAt"))
        or _time(day.get("lastUsedAt")),
        expires_at=_time(status.get("expiresAt")),
        key_id=status.get("keyId"),
        secret_name=str(
            status.get("secretName") or spec.get("secretName") or f"{name}{keysecret.SECRET_NAME_SUFFIX}"
        ),
        grace_period=str(spec.get("rotationGracePeriod") or "1h"),
        history=daily_history(usage, today),
        approval=annotations.get(api.ANNOTATION_APPROVAL),
        approved_by=annotations.get(api.ANNOTATION_APPROVED_BY),
        denied_by=annotations.get(api.ANNOTATION_DENIED_BY),
        denied_reason=annotations.get(api.ANNOTATION_DENIED_REASON),
        raw_spec=dict(spec),
        spend_by_model={
            str(entry.get("name")): _decimal(entry.get("spendUSD")) or Decimal(0)
            for entry in (month.get("byModel") or [] if current_month else [])
            if isinstance(entry, Mapping)
        },
    )


def daily_history(usage: Mapping[str, Any], today: date, days: int = 31) -> tuple[DaySpend, ...]:
    """Spend per UTC day for the last `days` days (today included), oldest first; days without a
    record count as zero. Reads `status.usage.history` entries when the operator keeps them, and
    the current day's counters for today (fresher than the history's last entry)."""
    spends: dict[date, DaySpend] = {}
    for entry in usage.get("history") or []:
        if not isinstance(entry, Mapping):
            continue
        try:
            when = date.fromisoformat(str(entry.get("date")))
        except ValueError:
            continue
        spends[when] = DaySpend(
            when, _decimal(entry.get("spendUSD")) or Decimal(0), int(entry.get("tokens") or 0)
        )
    day = usage.get("day") or {}
    start = _time(day.get("periodStart"))
    if start is not None and start.date() == today:
        tokens = int(day.get("inputTokens") or 0) + int(day.get("outputTokens") or 0)
        spends[today] = DaySpend(today, _decimal(day.get("spendUSD")) or Decimal(0), tokens)
    first = today - timedelta(days=days - 1)
    return tuple(
        spends.get(first + timedelta(days=n), DaySpend(first + timedelta(days=n), Decimal(0), 0))
        for n in range(days)
    )


@dataclasses.dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


def spend_bars(history: Sequence[DaySpend], width: int = 620, height: int = 120) -> tuple[list[Bar], str]:
    """Bars of a small SVG chart of daily spend, and the label of its top (the largest day)."""
    top = max((d.spend for d in history), default=Decimal(0))
    slot = width / max(len(history), 1)
    bars = []
    for n, day in enumerate(history):
        h = float(day.spend / top) * (height - 4) if top > 0 else 0.0
        h = max(h, 1.0 if day.spend > 0 else 0.0)
        bars.append(
            Bar(
                x=n * slot + 1,
                y=height - h,
                width=max(slot - 2, 1),
                height=h,
                label=f"{day.day.isoformat()}: ${day.spend} ({day.tokens} tokens)",
            )
        )
    return bars, f"${top}"


def inactive(keys: Iterable[KeyView], days: int, now: datetime) -> list[KeyView]:
    """Keys unused for `days` days, or never used, most stale first."""
    cutoff = now - timedelta(days=days)
    stale = [k for k in keys if k.last_used is None or k.last_used < cutoff]
    return sorted(stale, key=lambda k: (k.last_used or datetime.min.replace(tzinfo=UTC), k.ref))


def near_cap(keys: Iterable[KeyView], threshold: float) -> list[KeyView]:
    """Keys whose month spend reached `threshold` (0..1) of their monthly cap, fullest first."""
    found = [k for k in keys if k.cap_share is not None and k.cap_share >= threshold]
    return sorted(found, key=lambda k: -(k.cap_share or 0.0))


@dataclasses.dataclass(frozen=True)
class Spender:
    group: str
    spend: Decimal
    tokens_today: int
    keys: int


def top_spenders(keys: Iterable[KeyView], by: str, limit: int = 10) -> list[Spender]:
    """Month spend summed per value of owner field `by` (keys without it under "(none)"), or per
    model when `by` is "model" (from each key's status byModel)."""
    totals: dict[str, list[Any]] = {}
    for key in keys:
        shares = (
            key.spend_by_model.items()
            if by == "model"
            else [(key.owner.get(by) or "(none)", key.spend_month)]
        )
        for group, spend in shares:
            entry = totals.setdefault(group, [Decimal(0), 0, 0])
            entry[0] += spend
            entry[1] += key.tokens_today if by != "model" else 0
            entry[2] += 1
    spenders = [Spender(group=g, spend=v[0], tokens_today=v[1], keys=v[2]) for g, v in totals.items()]
    return sorted(spenders, key=lambda s: (-s.spend, s.group))[:limit]


def fits_approver(key: KeyView, applying: Sequence[api.LLMPolicy], who: identity.Identity) -> bool:
    """True when `who` may approve `key` under one of the policies requiring approval of it."""
    return any(guardrails.may_approve(policy, who, key.owned_by(who)) for policy in applying)
