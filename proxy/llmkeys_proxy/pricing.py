"""Model prices: the shipped dated price table, per-credential overrides, and the cost of a request.

The proxy's pipeline calls `PriceTable.cost` (or `resolve` + `cost_micro_usd`) to price the
reservation before forwarding and the settlement after. Money is integer micro-USD; prices are
micro-USD per 1M tokens (`config.ModelPrice`).

Lookup order for a model name (first hit wins):
1. an exact override (ProviderCredential `pricing`) for the name or one of its normalised forms;
2. an override glob other than a bare `*` (most specific pattern first);
3. the shipped table (`data/prices.json`), for the name or a normalised form;
4. a bare `*` override: the credential's price for models nobody priced;
5. the table's conservative default (USD 15 in / 75 out per 1M).
Normalised forms drop provider/path prefixes (`models/`, `openai/`, ARNs), Bedrock region and
vendor prefixes (`us.anthropic.`), version suffixes (`-v1:0`, `@20250514`), dated snapshots
(`-2026-03-05`, `-20250929`, `-0613`) and `-latest`. Fine-tuned models (`ft:...`) are not normalised:
they cost more than their base model, so they fall to the default unless someone prices them.

Why a default rather than cost 0: a spend cap must not be bypassable by naming a model the table
lacks. `ResolvedPrice.source == "default"` lets the caller log and count such requests.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkeys_proxy import config, tokens

#: The shipped table.
PRICES_PATH = Path(__file__).parent / "data" / "prices.json"
TOKENS_PER_PRICE_UNIT = 1_000_000

PriceSource = Literal["override", "table", "override-default", "default"]

_EMPTY: Mapping[str, config.ModelPrice] = {}


@dataclass(frozen=True, slots=True)
class LongContextTier:
    """A higher price that applies to the whole request once its input exceeds a threshold."""

    above_input_tokens: int
    price: config.ModelPrice


@dataclass(frozen=True, slots=True)
class TableEntry:
    price: config.ModelPrice
    as_of: str
    long_context: LongContextTier | None = None


@dataclass(frozen=True, slots=True)
class ResolvedPrice:
    """The price used for a model and where it came from (`key` = the entry or pattern matched)."""

    price: config.ModelPrice
    source: PriceSource
    key: str


@dataclass(frozen=True, slots=True)
class Cost:
    micro_usd: int
    resolved: ResolvedPrice


def cost_micro_usd(price: config.ModelPrice, counts: tokens.TokenCounts) -> int:
    """Cost of `counts` at `price` in integer micro-USD, rounded UP to the next micro-USD.

    Cached input is charged at `cached_input` and cache writes at `cache_write` (each falls back to
    the input price when the entry has none); the rest of the input at `input`; output (reasoning
    included) at `output`. One rounding of the exact total: never under-charges, at most 1 micro-USD
    over, so a flood of tiny requests is never free.
    """
    cached = min(counts.cached_input_tokens, counts.input_tokens)
    written = min(counts.cache_write_tokens, counts.input_tokens - cached)
    plain = counts.input_tokens - cached - written
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    total = (
        plain * price.input
        + cached * cached_price
        + written * write_price
        + counts.output_tokens * price.output
    )
    return -(-total // TOKENS_PER_PRICE_UNIT)


_REGION_PREFIX = re.compile(r"^(?:us|eu|apac|ap|jp|au|ca|us-gov|global)\.")
_VENDOR_PREFIX = re.compile(
    r"^(?:anthropic|openai|meta|mistral|amazon|cohere|google|deepseek|ai21|writer|qwen|moonshot)\."
)
_SUFFIXES = (
    re.compile(r"@\d{8}$"),  # Vertex: claude-sonnet-4@20250514
    re.compile(r"-v\d+(?::\d+)?$"),  # Bedrock: -v1:0, -v2
    re.compile(r":\d+$"),
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI snapshots
    re.compile(r"-\d{8}$"),  # Anthropic snapshots
    re.compile(r"-\d{4}$"),  # gpt-4-0613, gpt-3.5-turbo-0125
    re.compile(r"-\d{3}$"),  # gemini-1.5-pro-002
    re.compile(r"-latest$"),
)


@functools.lru_cache(maxsize=4096)
def price_keys(model: str) -> tuple[str, ...]:
    """`model` and its normalised forms, most specific first (see the module docstring)."""
    keys = [model]

    def add(name: str) -> str:
        if name and name not in keys:
            keys.append(name)
        return name

    name = model
    if name.startswith("ft:"):
        return tuple(keys)
    name = add(name.lower())
    if "/" in name:
        name = add(name.rsplit("/", 1)[1])
    for pattern in (_REGION_PREFIX, _VENDOR_PREFIX):
        name = add(pattern.sub("", name))
    changed = True
    while changed:  # suffixes stack: claude-3-5-sonnet-20241022-v2:0
        changed = False
        for pattern in _SUFFIXES:
            stripped = pattern.sub("", name)
            if stripped != name and stripped:
                name = add(stripped)
                changed = True
    return tuple(keys)


def _specificity(pattern: str) -> tuple[int, int]:
    literal = sum(1 for char in pattern if char not in "*?[]")
    return (-literal, -len(pattern))


def _model_price(raw: Mapping[str, Any]) -> config.ModelPrice:
    return config.ModelPrice(
        input=raw["input"],
        cached_input=raw.get("cached_input"),
        cache_write=raw.get("cache_write"),
        output=raw["output"],
    )


class PriceTable:
    """Shipped model prices plus a conservative default; immutable, safe to share."""

    def __init__(self, models: Mapping[str, TableEntry], default: config.ModelPrice, as_of: str) -> None:
        self.models: Mapping[str, TableEntry] = dict(models)
        self.default = default
        self.as_of = as_of

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> PriceTable:
        models: dict[str, TableEntry] = {}
        for name, raw in document["models"].items():
            tier = raw.get("long_context")
            models[name] = TableEntry(
                price=_model_price(raw),
                as_of=raw.get("as_of", document["as_of"]),
                long_context=LongContextTier(tier["above_input_tokens"], _model_price(tier))
                if tier
                else None,
            )
        return cls(models, _model_price(document["default"]), document["as_of"])

    @classmethod
    def load(cls, path: Path = PRICES_PATH) -> PriceTable:
        return cls.from_document(json.loads(path.read_text(encoding="utf-8")))

    @staticmethod
    @functools.cache
    def shipped() -> PriceTable:
        """The table shipped in the package (loaded once per process)."""
        return PriceTable.load()

    def _table_entry(self, model: str) -> tuple[str, TableEntry] | None:
        for key in price_keys(model):
            entry = self.models.get(key)
            if entry is not None:
                return key, entry
        return None

    def resolve(
        self,
        model: str,
        overrides: Mapping[str, config.ModelPrice] = _EMPTY,
        *,
        input_tokens: int | None = None,
    ) -> ResolvedPrice:
        """The price for `model` (never None: unknown models get the default); `input_tokens`
        selects a long-context tier where the table has one."""
        keys = price_keys(model)
        wildcard: config.ModelPrice | None = None
        if overrides:
            for key in keys:
                if key in overrides:
                    return ResolvedPrice(overrides[key], "override", key)
            patterns = sorted(
                (p for p in overrides if p != "*" and any(c in p for c in "*?[")), key=_specificity
            )
            for pattern in patterns:
                if any(fnmatch.fnmatchcase(key, pattern) for key in keys):
                    return ResolvedPrice(overrides[pattern], "override", pattern)
            wildcard = overrides.get("*")
        found = self._table_entry(model)
        if found is not None:
            key, entry = found
            tier = entry.long_context
            if tier is not None and input_tokens is not None and input_tokens > tier.above_input_tokens:
                return ResolvedPrice(tier.price, "table", key)
            return ResolvedPrice(entry.price, "table", key)
        if wildcard is not None:
            return ResolvedPrice(wildcard, "override-default", "*")
        return ResolvedPrice(self.default, "default", "*")

    def cost(
        self, model: str, counts: tokens.TokenCounts, overrides: Mapping[str, config.ModelPrice] = _EMPTY
    ) -> Cost:
        """Price `counts` for `model` (long-context tier chosen from `counts.input_tokens`)."""
        resolved = self.resolve(model, overrides, input_tokens=counts.input_tokens)
        return Cost(cost_micro_usd(resolved.price, counts), resolved)
