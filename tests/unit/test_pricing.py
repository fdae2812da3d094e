"""Price table: shipped data, name normalisation, overrides, default for unpriced models, cost rounding."""

from __future__ import annotations

import json
import re

import pytest

from llmkeys_proxy import config, pricing, tokens

TABLE = pricing.PriceTable.shipped()


def table_price(
    model: str, overrides: dict[str, config.ModelPrice] | None = None
) -> config.ModelPrice | None:
    """The price the overrides or the shipped table give `model`; None where only the default would."""
    resolved = TABLE.resolve(model, overrides or {})
    return None if resolved.source == "default" else resolved.price


def usd(value: float) -> int:
    """USD per 1M tokens -> micro-USD per 1M tokens."""
    return round(value * 1_000_000)


def test_shipped_table_is_dated_and_valid() -> None:
    document = json.loads(pricing.PRICES_PATH.read_text())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", document["as_of"])
    assert document["source"]
    for name, entry in document["models"].items():
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["as_of"]), name
        config.ModelPrice(
            **{k: entry[k] for k in ("input", "cached_input", "cache_write", "output") if k in entry}
        )
        assert pricing.price_keys(name)[0] == name
    assert TABLE.as_of == document["as_of"]


@pytest.mark.parametrize(
    ("model", "input_usd", "cached_usd", "output_usd"),
    [
        # PROVIDERS.md seed prices
        ("gpt-6.2-sol", 2.00, 0.10, 10.00),
        ("gpt-6.1-terra", 1.00, 0.05, 5.00),
        ("gpt-6-luna", 0.10, 0.01, 0.50),
        ("gpt-5.4-mini", 0.75, 0.075, 4.50),
        ("gpt-5.4-nano", 0.20, 0.02, 1.25),
        ("text-embedding-3-small", 0.02, None, 0.0),
        ("claude-opus-5", 5.00, 0.50, 25.00),
        ("claude-sonnet-5-5", 2.00, 0.10, 10.00),
        ("claude-haiku-4-5", 1.00, 0.10, 5.00),
        ("gemini-3.5-flash", 1.50, 0.15, 9.00),
        ("gemini-3.1-pro-preview", 2.00, 0.20, 12.00),
    ],
)
def test_seed_prices(model: str, input_usd: float, cached_usd: float | None, output_usd: float) -> None:
    price = table_price(model)
    assert price is not None
    assert price.input == usd(input_usd)
    assert price.cached_input == (None if cached_usd is None else usd(cached_usd))
    assert price.output == usd(output_usd)


def test_opus_5_cache_write_price() -> None:
    price = table_price("claude-opus-5")
    assert price is not None and price.cache_write == usd(6.25)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-5.4-mini-2026-03-05", "gpt-5.4-mini"),
        ("gpt-5.4-nano-2026-03-17", "gpt-5.4-nano"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a snapshot priced differently keeps its own entry
        ("gpt-4-0613", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("GPT-4o", "gpt-4o"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
        ("claude-sonnet-4@20250514", "claude-sonnet-4"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "claude-3-haiku",
        ),
    ],
)
def test_normalised_lookup(model: str, key: str) -> None:
    resolved = TABLE.resolve(model)
    assert (resolved.source, resolved.key) == ("table", key)


def test_fine_tuned_models_are_not_priced_as_their_base() -> None:
    resolved = TABLE.resolve("ft:gpt-4o-mini-2024-07-18:acme::abc123")
    assert resolved.source == "default"
    assert table_price("ft:gpt-4o-mini-2024-07-18:acme::abc123") is None


def test_unknown_model_gets_the_conservative_default() -> None:
    resolved = TABLE.resolve("some-new-model-9000")
    assert resolved.source == "default"
    assert resolved.price == TABLE.default
    assert table_price("some-new-model-9000") is None
    # The default is not cheaper than any mainstream model (pro tiers are priced explicitly).
    assert TABLE.default.input >= TABLE.resolve("claude-opus-5").price.input
    assert TABLE.default.output >= TABLE.resolve("gpt-6.2-sol").price.output
    cost = TABLE.cost("some-new-model-9000", tokens.TokenCounts(input_tokens=1000, output_tokens=1000))
    assert cost.micro_usd == 1000 * 15 + 1000 * 75  # never 0: a spend cap still bites


def test_overrides() -> None:
    cheap = config.ModelPrice(input=1, output=2)
    glob = config.ModelPrice(input=3, output=4)
    specific_glob = config.ModelPrice(input=5, output=6)
    wildcard = config.ModelPrice(input=0, output=0)
    overrides = {"gpt-4o": cheap, "gpt-*": glob, "gpt-4.1*": specific_glob, "*": wildcard}
    assert TABLE.resolve("gpt-4o-2024-08-06", overrides) == pricing.ResolvedPrice(cheap, "override", "gpt-4o")
    assert TABLE.resolve("gpt-4.1-mini", overrides) == pricing.ResolvedPrice(
        specific_glob, "override", "gpt-4.1*"
    )
    assert TABLE.resolve("gpt-5", overrides) == pricing.ResolvedPrice(glob, "override", "gpt-*")
    # A bare "*" prices only what nothing else prices: the table still wins for known models.
    assert TABLE.resolve("claude-opus-5", overrides).source == "table"
    assert TABLE.resolve("llama-3-70b", overrides) == pricing.ResolvedPrice(wildcard, "override-default", "*")
    assert table_price("llama-3-70b", overrides) == wildcard
    assert table_price("llama-3-70b", {}) is None
    # Overrides also match normalised names.
    assert TABLE.resolve("us.anthropic.claude-opus-5-v1:0", {"claude-opus-5": cheap}).price == cheap


def test_long_context_tier() -> None:
    short = TABLE.resolve("gemini-3.1-pro-preview", input_tokens=200_000)
    long = TABLE.resolve("gemini-3.1-pro-preview", input_tokens=200_001)
    assert (short.price.input, short.price.output) == (usd(2.00), usd(12.00))
    assert (long.price.input, long.price.output) == (usd(4.00), usd(18.00))
    counts = tokens.TokenCounts(input_tokens=300_000, output_tokens=1_000)
    assert TABLE.cost("gemini-3.1-pro-preview", counts).micro_usd == 300_000 * 4 + 1_000 * 18
    # Overrides are flat: no tier.
    flat = config.ModelPrice(input=1_000_000, output=1_000_000)
    assert TABLE.cost("gemini-3.1-pro-preview", counts, {"gemini-3.1-pro-preview": flat}).micro_usd == 301_000


def test_cost_uses_cached_and_cache_write_prices() -> None:
    price = config.ModelPrice(input=usd(5), cached_input=usd(0.5), cache_write=usd(6.25), output=usd(25))
    counts = tokens.TokenCounts(
        input_tokens=10_000,
        cached_input_tokens=6_000,
        cache_write_tokens=2_000,
        output_tokens=1_000,
        reasoning_tokens=400,
    )
    expected = 2_000 * 5 + 6_000 * 0.5 + 2_000 * 6.25 + 1_000 * 25  # micro-USD, exact here
    assert pricing.cost_micro_usd(price, counts) == expected
    # Without cached/cache-write prices, those tokens are charged at the input price.
    plain = config.ModelPrice(input=usd(5), output=usd(25))
    assert pricing.cost_micro_usd(plain, counts) == 10_000 * 5 + 1_000 * 25


def test_cost_rounds_up_once() -> None:
    price = config.ModelPrice(input=150_000, output=600_000)  # gpt-4o-mini: 0.15 / 0.60 USD per 1M
    assert pricing.cost_micro_usd(price, tokens.TokenCounts(input_tokens=1)) == 1  # 0.15 micro-USD -> 1
    assert pricing.cost_micro_usd(price, tokens.TokenCounts(input_tokens=0)) == 0
    # 10 input (1.5) + 1 output (0.6) = 2.1 -> 3
    assert pricing.cost_micro_usd(price, tokens.TokenCounts(input_tokens=10, output_tokens=1)) == 3
    assert (
        pricing.cost_micro_usd(price, tokens.TokenCounts(input_tokens=2, output_tokens=1)) == 1
    )  # 0.3 + 0.6 = 0.9


def test_cost_clamps_inconsistent_detail_counts() -> None:
    price = config.ModelPrice(input=usd(1), cached_input=0, cache_write=usd(2), output=0)
    # More cached+written tokens reported than input: never negative uncached input.
    counts = tokens.TokenCounts(input_tokens=100, cached_input_tokens=80, cache_write_tokens=50)
    assert pricing.cost_micro_usd(price, counts) == 20 * 2


def test_all_entries_resolve_to_themselves() -> None:
    for name in TABLE.models:
        resolved = TABLE.resolve(name)
        assert (resolved.source, resolved.key) == ("table", name)
