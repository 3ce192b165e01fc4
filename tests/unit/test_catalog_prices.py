"""The shipped catalog: real list prices of at least 8 providers and 40 models, each with its date, dated
aliases, and charges computed by hand for models across providers (cached input, rounding at the millicredit).

At the default credit (1 credit = $0.001, markup 1) a price of $X per 1M tokens is X * 1000 credits per 1M,
i.e. X millicredits per token: the arithmetic in the comments below uses that.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal

import pytest

from billing_core.pricing.catalog import PER_TOKEN, PriceTable, load_price_table
from billing_core.pricing.quotes import price_items

TABLE = PriceTable.default()


def llm(provider: str, model: str, input_tokens: int, output_tokens: int, cached: int = 0) -> dict:
    return {
        "type": "llm_tokens",
        "provider": provider,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached,
    }


def priced_models(table: PriceTable) -> list[tuple[str, str]]:
    # Models with their own per-token price (not aliases, not token bundles).
    return [(p, m) for p, m, price in table.priced_models() if price.model == m and price.scheme == PER_TOKEN]


# ------------------------------------------------------------------------------------------ the catalog
def test_the_catalog_has_at_least_8_providers_and_40_models_each_with_its_date():
    models = priced_models(TABLE)
    providers = {p for p, _ in models}
    assert len(providers) >= 8, providers
    assert len(models) >= 40, len(models)
    assert {"openai", "anthropic", "google", "mistral", "deepseek", "xai", "cohere"} <= providers
    # Meta's models on a hosted API
    assert any("llama" in m.lower() for p, m in models if p in ("together", "groq"))
    for provider, model in models:
        price = TABLE.model_price(provider, model)
        assert isinstance(price.as_of, date), (provider, model)
        assert date(2024, 1, 1) <= price.as_of <= date(2026, 12, 31)
        assert price.input_usd_per_1m is not None and price.input_usd_per_1m > 0
        assert price.output_usd_per_1m is not None and price.output_usd_per_1m >= price.input_usd_per_1m / 10
        # credits per 1M = USD * markup / usd_per_credit, exactly
        assert price.input_per_1m == price.input_usd_per_1m * 1000
        assert price.output_per_1m == price.output_usd_per_1m * 1000
        if price.cached_input_usd_per_1m is not None:
            assert price.cached_input_usd_per_1m < price.input_usd_per_1m
            assert price.cached_input_per_1m == price.cached_input_usd_per_1m * 1000
    # providers with a cached-input price have it on their models
    for provider in ("openai", "anthropic", "deepseek", "xai"):
        assert all(TABLE.model_price(p, m).cached_input_per_1m is not None for p, m in models if p == provider)


def test_the_credit_unit_is_a_thousandth_of_a_dollar_without_markup():
    assert (TABLE.usd_per_credit, TABLE.markup) == (Decimal("0.001"), Decimal(1))
    assert TABLE.tokens_per_credit == 1000
    assert isinstance(TABLE.version, str) and TABLE.version


@pytest.mark.parametrize(
    ("provider", "alias", "target"),
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("google", "gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("mistral", "mistral-large-2411", "mistral-large"),
        ("xai", "grok-4-0709", "grok-4"),
        ("cohere", "command-r-08-2024", "command-r"),
    ],
)
def test_dated_names_are_aliases_of_their_model(provider, alias, target):
    aliased, priced = TABLE.model_price(provider, alias), TABLE.model_price(provider, target)
    assert (aliased.input_per_1m, aliased.output_per_1m, aliased.cached_input_per_1m, aliased.model) == (
        priced.input_per_1m,
        priced.output_per_1m,
        priced.cached_input_per_1m,
        target,
    )
    quote = price_items(TABLE, [llm(provider, alias, 1000, 1000)])
    assert quote.total_mc == price_items(TABLE, [llm(provider, target, 1000, 1000)]).total_mc
    assert quote.lines[0].breakdown["priced_as"] == target


def test_every_alias_has_a_date_in_its_name():
    aliases = [(p, m) for p, m, price in TABLE.priced_models() if price.model != m]
    assert len(aliases) >= 20
    dated = re.compile(r"(\d{4}-?\d{2}-?\d{2}|\d{4}|\d{2}-\d{4}|latest|exp|reasoning|001)")
    assert all(dated.search(m) for _, m in aliases), aliases


# ------------------------------------------------------------------------------------------ charges by hand
@pytest.mark.parametrize(
    ("provider", "model", "tokens", "expected_mc"),
    [
        # gpt-5 $1.25 / $10 / cached $0.125: 1001*1.25 + 333*10 + 2000*0.125 = 1251.25 + 3330 + 250 = 4831.25 -> 4831
        ("openai", "gpt-5", (1001, 333, 2000), 4831),
        # gpt-4.1-mini $0.40 / $1.60 / $0.10: 12345*0.4 + 678*1.6 + 5000*0.1 = 4938 + 1084.8 + 500 = 6522.8 -> 6523
        ("openai", "gpt-4.1-mini", (12345, 678, 5000), 6523),
        # o4-mini $1.10 / $4.40 / $0.275: 1.1 + 4.4 + 2*0.275 = 6.05 -> 6
        ("openai", "o4-mini", (1, 1, 2), 6),
        # claude-sonnet-4-5 $3 / $15 / $0.30: 1500*3 + 500*15 + 10000*0.3 = 4500 + 7500 + 3000 = 15000 (15 credits)
        ("anthropic", "claude-sonnet-4-5-20250929", (1500, 500, 10000), 15000),
        # claude-haiku-4-5 $1 / $5 / $0.10: 333 + 77*5 + 1005*0.1 = 333 + 385 + 100.5 = 818.5 -> 819 (half up)
        ("anthropic", "claude-haiku-4-5", (333, 77, 1005), 819),
        # claude-opus-4-1 $15 / $75 / $1.50: 100*15 + 100*75 + 1*1.5 = 1500 + 7500 + 1.5 = 9001.5 -> 9002
        ("anthropic", "claude-opus-4-1", (100, 100, 1), 9002),
        # gemini-2.5-flash $0.30 / $2.50 / $0.03: 10000*0.3 + 2000*2.5 + 50000*0.03 = 3000 + 5000 + 1500 = 9500
        ("google", "gemini-2.5-flash", (10000, 2000, 50000), 9500),
        # gemini-2.0-flash-lite $0.075 / $0.30, no cached price (cached at input): 75 + 300 + 75 = 450
        ("google", "gemini-2.0-flash-lite", (1000, 1000, 1000), 450),
        # mistral-large $2 / $6, no cached price: 2500*2 + 750*6 + 100*2 = 5000 + 4500 + 200 = 9700
        ("mistral", "mistral-large-latest", (2500, 750, 100), 9700),
        # deepseek-chat $0.28 / $0.42 / $0.028: 7*0.28 + 3*0.42 + 11*0.028 = 1.96 + 1.26 + 0.308 = 3.528 -> 4
        ("deepseek", "deepseek-chat", (7, 3, 11), 4),
        # grok-4-fast $0.20 / $0.50 / $0.05: 12345*0.2 + 6789*0.5 + 10*0.05 = 2469 + 3394.5 + 0.5 = 5864
        ("xai", "grok-4-fast-reasoning", (12345, 6789, 10), 5864),
        # grok-3-mini $0.30 / $0.50 / $0.075: 0.3 + 0 + 2*0.075 = 0.45 -> 0 (below the half)
        ("xai", "grok-3-mini", (1, 0, 2), 0),
        # command-r7b $0.0375 / $0.15: 40000*0.0375 + 1000*0.15 = 1500 + 150 = 1650
        ("cohere", "command-r7b", (40000, 1000, 0), 1650),
        # command-a $2.50 / $10: 1*2.5 = 2.5 -> 3 (half up at the millicredit)
        ("cohere", "command-a", (1, 0, 0), 3),
        # Llama 3.3 70B on Together $0.88 / $0.88: 1234*0.88 + 567*0.88 = 1085.92 + 498.96 = 1584.88 -> 1585
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", (1234, 567, 0), 1585),
        # Llama 3.1 8B on Groq $0.05 / $0.08: 10*0.05 + 10*0.08 = 0.5 + 0.8 = 1.3 -> 1
        ("groq", "llama-3.1-8b-instant", (10, 10, 0), 1),
        # ... and 10*0.05 = 0.5 -> 1 (exactly half: up)
        ("groq", "llama-3.1-8b-instant", (10, 0, 0), 1),
    ],
)
def test_hand_computed_charges(provider, model, tokens, expected_mc):
    quote = price_items(TABLE, [llm(provider, model, *tokens)])
    assert quote.total_mc == expected_mc
    line = quote.lines[0]
    # the line explains itself: tokens by kind and the unit prices (credits per 1M) that priced them
    price = TABLE.model_price(provider, model)
    assert (line.breakdown["input_tokens"], line.breakdown["output_tokens"]) == tokens[:2]
    assert line.breakdown["cached_input_tokens"] == tokens[2]
    assert Decimal(line.breakdown["input_per_1m"]) == price.input_per_1m
    assert Decimal(line.breakdown["output_per_1m"]) == price.output_per_1m
    # re-priced on paper from the breakdown alone
    on_paper = (
        tokens[0] * Decimal(line.breakdown["input_per_1m"])
        + tokens[1] * Decimal(line.breakdown["output_per_1m"])
        + tokens[2] * Decimal(line.breakdown["cached_input_per_1m"])
    ) / 1000  # credits per 1M tokens -> mc per token: * 1000 mc / 1e6 tokens
    assert int(on_paper.quantize(Decimal(1), rounding="ROUND_HALF_UP")) == expected_mc


def test_models_of_different_providers_in_one_quote_round_line_by_line():
    items = [
        llm("openai", "gpt-5", 1001, 333, 2000),  # 4831.25 -> 4831
        llm("anthropic", "claude-haiku-4-5", 333, 77, 1005),  # 818.5 -> 819
        llm("deepseek", "deepseek-chat", 7, 3, 11),  # 3.528 -> 4
        llm("xai", "grok-3-mini", 1, 0, 2),  # 0.45 -> 0
    ]
    quote = price_items(TABLE, items)
    assert [line.amount_mc for line in quote.lines] == [4831, 819, 4, 0]
    # the sum of the rounded lines, not the rounded sum (5654.728 -> 5655)
    assert quote.total_mc == 5654


# ------------------------------------------------------------------------------------------ credit and markup
def _one_model_catalog(**credit: str) -> dict:
    return {
        "version": "t-1",
        "credit": credit,
        "llm_tokens": {
            "openai": {"gpt-4o": {"input_usd_per_1m": "2.50", "output_usd_per_1m": "10", "as_of": "2025-08-15"}}
        },
        "fees": {},
        "agents": {},
        "packages": [],
    }


def test_markup_and_credit_value_convert_exactly():
    # $2.50 * 1.2 / $0.001 = 3000 credits per 1M input; $10 * 1.2 / 0.001 = 12000 output
    table = PriceTable(_one_model_catalog(usd_per_credit="0.001", markup="1.2"))
    price = table.model_price("openai", "gpt-4o")
    assert (price.input_per_1m, price.output_per_1m) == (3000, 12000)
    # 1000 input tokens: 1000 * 3000 / 1e6 = 3 credits
    assert price_items(table, [llm("openai", "gpt-4o", 1000, 0)]).total_mc == 3000
    # a cent per credit: $2.50 / 0.01 = 250 credits per 1M
    assert PriceTable(_one_model_catalog(usd_per_credit="0.01")).model_price("openai", "gpt-4o").input_per_1m == 250


def test_a_conversion_that_is_not_exact_is_refused():
    with pytest.raises(ValueError, match=r"^llm_tokens\.openai\.gpt-4o\.input_usd_per_1m: .*not an exact"):
        PriceTable(_one_model_catalog(usd_per_credit="0.003"))


def test_the_shipped_file_is_the_default_and_valid_json():
    from importlib import resources

    raw = resources.files("billing_core.pricing").joinpath("price_table.json").read_text()
    data = json.loads(raw)
    assert data["credit"] == {"usd_per_credit": "0.001", "markup": "1"}
    assert load_price_table(None) is TABLE
