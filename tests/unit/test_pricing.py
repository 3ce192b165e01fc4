"""Pricing: exact per-line Decimal prices, one half-up rounding per line, a validated price table."""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.errors import InvalidAmount, InvalidCommand, UnknownModel, UnknownPackage, UnknownPriceCode
from billing_core.pricing.catalog import ModelPrice, PriceTable, load_price_table
from billing_core.pricing.packages import Package
from billing_core.pricing.quotes import Quote, decimal_token_mc, price_items, token_mc
from billing_core.types import MAX_ITEMS, MAX_QUANTITY, MAX_TOKENS
from billing_core.units import MAX_CREDITS, MAX_MC
from webhook_receiver.schemas import quote_json

AS_OF = "2025-08-15"


def small_table(**overrides) -> dict:
    # One USD per credit, no markup: the USD prices below are the credits the tests compute with.
    data = {
        "version": 1,
        "credit": {"usd_per_credit": "1", "markup": "1"},
        "llm_tokens": {
            "acme": {
                "half": {"input_usd_per_1m": "500", "output_usd_per_1m": "1500", "as_of": AS_OF},
                "just_under": {"input_usd_per_1m": "499.999999", "output_usd_per_1m": "0", "as_of": AS_OF},
                "cachey": {
                    "input_usd_per_1m": "1000",
                    "output_usd_per_1m": "2000",
                    "cached_input_usd_per_1m": "100",
                    "as_of": AS_OF,
                },
                "cachey-2025": {"alias_of": "cachey"},
            }
        },
        "fees": {"half_mc": "0.0005", "tier2_analysis": "0"},
        "agents": {"robot": {"name": "Robot", "credits": "12.345"}},
        "packages": [{"id": "p1", "name": "One", "credits": "1000", "unit_amount": 100, "currency": "usd"}],
    }
    data.update(overrides)
    return data


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.default()


@pytest.fixture(scope="module")
def small() -> PriceTable:
    return PriceTable(small_table())


def llm(provider="openai", model="gpt-4o", input_tokens=0, output_tokens=0, **extra) -> dict:
    return {
        "type": "llm_tokens",
        "provider": provider,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        **extra,
    }


# ------------------------------------------------------------------------------------------ exact amounts


def test_gpt4o_example_from_the_design(table):
    # gpt-4o: 2500 credits / 1M input, 10000 credits / 1M output.
    # 1200 * 2500 / 1e6 = 3 credits; 300 * 10000 / 1e6 = 3 credits -> 6 credits = 6000 mc.
    quote = price_items(table, [llm(input_tokens=1200, output_tokens=300)])
    assert quote.total_mc == 6000
    breakdown = {
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cached_input_tokens": 0,
        "scheme": "per_token",
        "input_per_1m": "2500",
        "output_per_1m": "10000",
        "cached_input_per_1m": "1250",
    }
    description = "openai/gpt-4o: 1200 input + 300 output tokens"
    [line] = quote.lines
    assert (line.index, line.type, line.description, line.amount_mc) == (0, "llm_tokens", description, 6000)
    assert line.breakdown == breakdown
    assert line.prices == {
        key: breakdown[key] for key in ("scheme", "input_per_1m", "output_per_1m", "cached_input_per_1m")
    }
    assert (quote.version, quote.mode) == (table.version, "system")
    assert quote_json(quote) == {
        "credits": "6.000",
        "lines": [{"type": "llm_tokens", "description": description, "credits": "6.000", "breakdown": breakdown}],
        "version": table.version,
        "mode": "system",
    }


def test_design_usage_report_items(table):
    items = [
        llm(input_tokens=1200, output_tokens=300),
        {"type": "fee", "code": "tier1b_experiment"},
        {"type": "agent", "code": "profile_my_data"},
    ]
    quote = price_items(table, items)
    # 6 credits of tokens + 50 (tier 1b fee) + 20 (profile_my_data) = 76 credits.
    assert [line.amount_mc for line in quote.lines] == [6000, 50_000, 20_000]
    assert quote.total_mc == 76_000
    assert quote_json(quote)["credits"] == "76.000"
    assert [line.index for line in quote.lines] == [0, 1, 2]


def test_fractional_line_rounds_once(table):
    # gpt-4o-mini: 150 / 600 credits per 1M.
    # 1234 * 150 / 1e6 = 0.1851 credits = 185.1 mc; 567 * 600 / 1e6 = 0.3402 credits = 340.2 mc.
    # Line = 525.3 mc -> 525 mc (rounded once, on the line's exact sum).
    quote = price_items(table, [llm(model="gpt-4o-mini", input_tokens=1234, output_tokens=567)])
    assert quote.total_mc == 525
    assert quote_json(quote)["credits"] == "0.525"


def test_cached_input_tokens_use_the_cached_price(table, small):
    # claude-sonnet-4: 3000 in, 15000 out, 300 cached per 1M.
    # 1000 * 3000/1e6 = 3 cr; 100 * 15000/1e6 = 1.5 cr; 10000 * 300/1e6 = 3 cr -> 7.5 credits = 7500 mc.
    quote = price_items(
        table,
        [llm("anthropic", "claude-sonnet-4", 1000, 100, cached_input_tokens=10_000)],
    )
    assert quote.total_mc == 7500
    assert "10000 cached input tokens" in quote.lines[0].description
    # An alias prices as its target; a model without a cached price bills cached tokens at the input price.
    aliased = price_items(small, [llm("acme", "cachey-2025", 0, 0, cached_input_tokens=1_000_000)])
    assert aliased.total_mc == 100_000  # 100 credits
    no_cache_price = price_items(small, [llm("acme", "half", 0, 0, cached_input_tokens=2)])
    assert no_cache_price.total_mc == 1  # 2 * 500 / 1e6 credits = 1 mc


def test_fee_agent_quantities_and_raw_credits(small):
    quote = price_items(
        small,
        [
            {"type": "agent", "code": "robot", "quantity": 3},
            {"type": "fee", "code": "tier2_analysis"},
            {"type": "credits", "credits": "1.234"},
            {"type": "fee", "code": "half_mc", "quantity": None},
        ],
    )
    # 3 * 12.345 = 37.035 credits; tier 2 has no fee; 1.234 raw; 0.0005 credits = 0.5 mc -> 1 mc.
    assert [line.amount_mc for line in quote.lines] == [37_035, 0, 1_234, 1]
    assert quote.total_mc == 38_270
    assert quote.lines[0].description == "agent robot x 3"
    assert quote_json(quote)["lines"][2] == {
        "type": "credits",
        "description": "credits",
        "credits": "1.234",
        "breakdown": {},
    }


# ------------------------------------------------------------------------------------------ rounding


def test_half_up_at_the_half_millicredit(small):
    # "half": 500 credits / 1M input tokens = 0.5 mc per input token.
    assert price_items(small, [llm("acme", "half", 1, 0)]).total_mc == 1  # 0.5 -> 1
    assert price_items(small, [llm("acme", "half", 3, 0)]).total_mc == 2  # 1.5 -> 2
    assert price_items(small, [llm("acme", "half", 2, 0)]).total_mc == 1  # 1.0 exactly
    # 499.999999 / 1M = 0.499999999 mc per token: below the half, rounds down.
    assert price_items(small, [llm("acme", "just_under", 1, 0)]).total_mc == 0
    # Output 1500 / 1M = 1.5 mc -> 2.
    assert price_items(small, [llm("acme", "half", 0, 1)]).total_mc == 2


def test_rounding_is_per_line_not_per_total(small):
    # Two lines of 0.5 mc each: per-line half-up gives 1 + 1 = 2 mc (rounding the 1.0 mc total would give 1).
    quote = price_items(small, [llm("acme", "half", 1, 0), llm("acme", "half", 1, 0)])
    assert [line.amount_mc for line in quote.lines] == [1, 1]
    assert quote.total_mc == 2
    # Same with fees: 3 lines of 0.5 mc -> 3 mc, while one line of quantity 3 (1.5 mc) -> 2 mc.
    fee = {"type": "fee", "code": "half_mc"}
    assert price_items(small, [fee, fee, fee]).total_mc == 3
    assert price_items(small, [{**fee, "quantity": 3}]).total_mc == 2
    # Within one llm line the input and output parts are summed exactly, then rounded once: 0.5 + 1.5 = 2.
    assert price_items(small, [llm("acme", "half", 1, 1)]).total_mc == 2


def test_gpt4o_single_token_half_boundary(table):
    # 2500 credits / 1M = 2.5 mc per input token: 1 token -> 3 mc, two 1-token lines -> 6 mc, not 5.
    assert price_items(table, [llm(input_tokens=1)]).total_mc == 3
    assert price_items(table, [llm(input_tokens=1), llm(input_tokens=1)]).total_mc == 6
    assert price_items(table, [llm(input_tokens=2)]).total_mc == 5


# ------------------------------------------------------------------------------------------ lookups


def test_unknown_model_and_provider(table):
    with pytest.raises(UnknownModel) as err:
        price_items(table, [llm(input_tokens=1), llm(model="gpt-9", input_tokens=1)])
    assert err.value.code == "unknown_model"
    assert err.value.details == {
        "provider": "openai",
        "model": "gpt-9",
        "field": "items[1].model",
        "known_models": table.models("openai"),
    }
    assert "gpt-4o" in err.value.details["known_models"]

    with pytest.raises(UnknownModel) as err:
        price_items(table, [llm(provider="nope", model="gpt-4o")])
    assert err.value.code == "unknown_model"
    assert err.value.details["field"] == "items[0].provider"
    assert err.value.details["provider"] == "nope"
    assert err.value.details["known_models"] == []
    assert err.value.details["known_providers"] == table.providers
    assert err.value.as_dict()["code"] == "unknown_model"

    # Lookups are exact: a model of another provider is unknown here.
    with pytest.raises(UnknownModel) as err:
        price_items(table, [llm(provider="google", model="gpt-4o")])
    assert err.value.details["field"] == "items[0].model"


@pytest.mark.parametrize("kind", ["fee", "agent"])
def test_unknown_price_codes(table, kind):
    items = [{"type": "fee", "code": "tier1b_experiment"}, {"type": kind, "code": "does_not_exist"}]
    with pytest.raises(UnknownPriceCode) as err:
        price_items(table, items)
    assert err.value.code == "unknown_price_code"
    assert err.value.details == {"kind": kind, "code": "does_not_exist", "field": "items[1].code"}


def test_fee_code_is_not_an_agent_code(table):
    with pytest.raises(UnknownPriceCode):
        price_items(table, [{"type": "agent", "code": "tier1b_experiment"}])


# ------------------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("input_tokens", -1),
        ("input_tokens", True),
        ("input_tokens", 1.0),
        ("input_tokens", 1200.5),
        ("input_tokens", "1200"),
        ("input_tokens", Decimal(5)),
        ("input_tokens", MAX_TOKENS + 1),
        ("output_tokens", -5),
        ("output_tokens", False),
        ("output_tokens", float("nan")),
        ("cached_input_tokens", -1),
        ("cached_input_tokens", 2.0),
        ("cached_input_tokens", True),
    ],
)
def test_bad_token_counts_are_refused(table, field, bad):
    item = llm(input_tokens=10, output_tokens=10)
    item[field] = bad
    with pytest.raises(InvalidCommand) as err:
        price_items(table, [{"type": "fee", "code": "tier1b_experiment"}, item])
    assert err.value.details["field"] == f"items[1].{field}"
    assert err.value.code == "invalid_request"


def test_token_count_bounds_are_inclusive(table):
    assert price_items(table, [llm(input_tokens=0, output_tokens=0)]).total_mc == 0
    # 10^9 gpt-4o output tokens: 10^9 * 10000 / 1e6 = 10^7 credits.
    assert price_items(table, [llm(output_tokens=MAX_TOKENS)]).total_mc == 10**10


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2", MAX_QUANTITY + 1])
@pytest.mark.parametrize("kind", ["fee", "agent"])
def test_bad_quantities_are_refused(table, kind, bad):
    code = "tier1b_experiment" if kind == "fee" else "profile_my_data"
    with pytest.raises(InvalidCommand) as err:
        price_items(table, [{"type": kind, "code": code, "quantity": bad}])
    assert err.value.details["field"] == "items[0].quantity"


@pytest.mark.parametrize("bad", ["0", "-1", "1.0001", 1.5, True, "abc", "NaN", "Infinity", str(MAX_CREDITS + 1)])
def test_bad_raw_credits_are_refused(table, bad):
    with pytest.raises(InvalidAmount) as err:
        price_items(table, [{"type": "credits", "credits": bad}])
    assert err.value.details["field"] == "items[0].credits"
    assert err.value.code == "invalid_amount"


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        ("abc", "items"),
        ({"type": "fee"}, "items"),
        (None, "items"),
        ([{"type": "fee", "code": "tier1b_experiment"}, "fee"], "items[1]"),
        ([{"type": "token"}], "items[0].type"),
        ([{"code": "x"}], "items[0].type"),
        ([{"type": "fee"}], "items[0].code"),
        ([{"type": "fee", "code": 5}], "items[0].code"),
        ([{"type": "fee", "code": ""}], "items[0].code"),
        ([{"type": "agent", "code": "profile_my_data", "credits": "5"}], "items[0].credits"),
        (
            [{"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1}],
            "items[0].output_tokens",
        ),
        ([{"type": "llm_tokens", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}], "items[0].provider"),
        ([llm(cache_input_tokens=5)], "items[0].cache_input_tokens"),
        ([{"type": "credits"}], "items[0].credits"),
        ([{"type": "fee", "code": "tier1b_experiment"}] * (MAX_ITEMS + 1), "items"),
    ],
)
def test_malformed_items_are_refused(table, items, field):
    with pytest.raises(InvalidCommand) as err:
        price_items(table, items)
    assert err.value.details["field"] == field


def test_absent_optional_fields_may_be_none(table):
    quote = price_items(
        table,
        [
            llm(input_tokens=1200, output_tokens=300, cached_input_tokens=None, code=None),
            {"type": "fee", "code": "tier1b_experiment", "quantity": None, "provider": None},
        ],
    )
    assert quote.total_mc == 56_000


def test_total_above_max_is_refused():
    big = PriceTable(small_table(fees={"huge": str(MAX_CREDITS)}))
    assert price_items(big, [{"type": "fee", "code": "huge"}]).total_mc == MAX_MC
    with pytest.raises(InvalidAmount) as err:
        price_items(big, [{"type": "fee", "code": "huge"}, {"type": "credits", "credits": "0.001"}])
    assert err.value.details["field"] == "items"
    with pytest.raises(InvalidAmount) as err:
        price_items(big, [{"type": "fee", "code": "huge", "quantity": 2}])
    assert err.value.details["field"] == "items[0]"


# ------------------------------------------------------------------------------------------ properties

_DEFAULT = PriceTable.default()
_MODELS = [(p, m) for p in _DEFAULT.providers for m in _DEFAULT.models(p)]
_tokens = st.integers(min_value=0, max_value=MAX_TOKENS)


@st.composite
def usage_items(draw):
    kind = draw(st.sampled_from(["llm_tokens", "fee", "agent", "credits"]))
    if kind == "llm_tokens":
        provider, model = draw(st.sampled_from(_MODELS))
        item = llm(provider, model, draw(_tokens), draw(_tokens))
        if draw(st.booleans()):
            item["cached_input_tokens"] = draw(_tokens)
        return item
    if kind in ("fee", "agent"):
        codes = _DEFAULT.fee_codes if kind == "fee" else _DEFAULT.agent_codes
        return {"type": kind, "code": draw(st.sampled_from(codes)), "quantity": draw(st.integers(1, MAX_QUANTITY))}
    mc = draw(st.integers(min_value=1, max_value=10**9))
    return {"type": "credits", "credits": f"{mc // 1000}.{mc % 1000:03d}"}


@settings(max_examples=300, deadline=None)
@given(st.lists(usage_items(), min_size=1, max_size=20))
def test_total_is_the_sum_of_the_lines(items):
    quote = price_items(_DEFAULT, items)
    assert isinstance(quote, Quote)
    assert quote.total_mc == sum(line.amount_mc for line in quote.lines)
    assert all(isinstance(line.amount_mc, int) and line.amount_mc >= 0 for line in quote.lines)
    assert [line.index for line in quote.lines] == list(range(len(items)))
    # Each line equals the same item priced alone: lines never influence each other.
    for item, line in zip(items, quote.lines, strict=True):
        assert price_items(_DEFAULT, [item]).total_mc == line.amount_mc


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_MODELS),
    st.tuples(_tokens, _tokens, _tokens),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_price_is_monotone_in_tokens(model, counts, extra):
    provider, name = model
    base = llm(provider, name, counts[0], counts[1], cached_input_tokens=counts[2])
    more = llm(
        provider,
        name,
        min(counts[0] + extra[0], MAX_TOKENS),
        min(counts[1] + extra[1], MAX_TOKENS),
        cached_input_tokens=min(counts[2] + extra[2], MAX_TOKENS),
    )
    assert price_items(_DEFAULT, [more]).total_mc >= price_items(_DEFAULT, [base]).total_mc


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_line_matches_exact_decimal_half_up(input_tokens, output_tokens):
    # Independent oracle in integer arithmetic: price in units of 1e-6 credits per 1M tokens -> mc * 1e9.
    price = _DEFAULT.model_price("openai", "gpt-4o-mini")
    num = input_tokens * int(price.input_per_1m * 10**6) + output_tokens * int(price.output_per_1m * 10**6)
    # credits = num / 1e6 / 1e6; mc = num / 1e9; half-up for non-negative values:
    expected = (num * 2 + 10**9) // (2 * 10**9)
    got = price_items(_DEFAULT, [llm("openai", "gpt-4o-mini", input_tokens, output_tokens)]).total_mc
    assert got == expected


_rates = st.decimals(min_value=0, max_value=10**9, places=9, allow_nan=False, allow_infinity=False)


@settings(max_examples=500, deadline=None)
@given(st.tuples(_tokens, _tokens, _tokens), st.tuples(_rates, _rates, _rates))
def test_integer_token_pricing_equals_the_decimal_reference(tokens, rates):
    # The hot path's integer arithmetic against the exact Decimal sum rounded by round_mc, for any rates of up to
    # nine decimals (the catalog's credits per 1M tokens after markup) and any token counts a report may carry.
    assert token_mc(tokens, rates) == decimal_token_mc(tokens, rates)


def test_integer_token_pricing_rounds_half_up_at_the_millicredit():
    # 1 token at 500 credits per 1M = 0.5 mc exactly: up; 499.999999 = 0.499999999 mc: down
    assert token_mc((1, 0, 0), (Decimal("500"), Decimal(0), Decimal(0))) == 1
    assert token_mc((1, 0, 0), (Decimal("499.999999"), Decimal(0), Decimal(0))) == 0
    assert token_mc((3, 0, 0), (Decimal("500"), Decimal(0), Decimal(0))) == 2  # 1.5 mc: up, not to even


# ------------------------------------------------------------------------------------------ the table


def test_default_table_contents(table):
    assert PriceTable.default() is table  # cached
    assert load_price_table(None) is table
    assert load_price_table("") is table
    for provider, model in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "o3-mini"),
        ("anthropic", "claude-sonnet-4"),
        ("anthropic", "claude-3-5-haiku"),
        ("google", "gemini-2.0-flash"),
    ]:
        assert isinstance(table.model_price(provider, model), ModelPrice)
    gpt4o = table.model_price("openai", "gpt-4o")
    assert isinstance(gpt4o, ModelPrice)
    # $2.50 / $10.00 / $1.25 per 1M at $0.001 per credit: 2500 / 10000 / 1250 credits per 1M.
    assert (gpt4o.input_per_1m, gpt4o.output_per_1m, gpt4o.cached_input_per_1m) == (2500, 10000, 1250)
    assert table.model_price("openai", "gpt-4o-2024-08-06").input_per_1m == gpt4o.input_per_1m
    assert table.fee("tier1b_experiment") == Decimal(50)
    assert table.agent("profile_my_data") == Decimal(20)


def test_packages_listed(table):
    packages = table.packages
    assert [p.id for p in packages] == ["starter", "pro", "scale", "starter_brl", "professional_brl", "enterprise_brl"]
    assert packages[0] == Package(id="starter", name="Starter", credits_mc=10_000_000, unit_amount=1000, currency="usd")
    assert table.package("pro") is packages[1]
    packages.clear()  # a copy: the table is unaffected
    assert len(table.packages) == 6
    with pytest.raises(UnknownPackage) as err:
        table.package("mega")
    assert err.value.code == "unknown_package"
    assert err.value.details == {"package": "mega", "field": "package"}


def test_table_is_immutable(table):
    with pytest.raises(AttributeError):
        table._fees = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        table._fees["tier1b_experiment"] = Decimal(0)  # type: ignore[index]


def _mutate(path, value):
    data = copy.deepcopy(small_table())
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), "-1", "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), 1.5, "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), True, "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), "1.0000001", "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), "NaN", "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), "Infinity", "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), "two", "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "input_usd_per_1m"), None, "llm_tokens.acme.half.input_usd_per_1m"),
        (("llm_tokens", "acme", "half", "output_usd_per_1m"), _DELETE, "llm_tokens.acme.half.output_usd_per_1m"),
        (
            ("llm_tokens", "acme", "half", "cached_input_usd_per_1m"),
            "-0.5",
            "llm_tokens.acme.half.cached_input_usd_per_1m",
        ),
        (("llm_tokens", "acme", "half", "input_per_million"), "1", "llm_tokens.acme.half.input_per_million"),
        (("llm_tokens", "acme", "cachey-2025", "alias_of"), "nope", "llm_tokens.acme.cachey-2025.alias_of"),
        (("llm_tokens", "acme", "half"), "500", "llm_tokens.acme.half"),
        (
            ("llm_tokens", "acme", "bad name"),
            {"input_usd_per_1m": "1", "output_usd_per_1m": "1"},
            "llm_tokens.acme.bad name",
        ),
        (("llm_tokens", "acme"), [], "llm_tokens.acme"),
        (("fees", "half_mc"), "1e-7", "fees.half_mc"),
        (("agents", "robot", "credits"), -3, "agents.robot.credits"),
        (("agents", "robot", "credits"), str(MAX_CREDITS + 1), "agents.robot.credits"),
        (("agents", "robot"), "12", "agents.robot"),
        (("llm_tokens", "acme", "half", "as_of"), _DELETE, "llm_tokens.acme.half.as_of"),
        (("llm_tokens", "acme", "half", "as_of"), "yesterday", "llm_tokens.acme.half.as_of"),
        (("credit", "usd_per_credit"), "0", "credit.usd_per_credit"),
        (("credit", "markup"), "-1", "credit.markup"),
        (("token_bundle",), {"tokens_per_credit": 0}, "token_bundle.tokens_per_credit"),
        (("tiers",), {"t": {"name": "T", "fee": "1"}}, "tiers.t.unit"),
        (("version",), "has space", "version"),
        (("effective_at",), "2027-01-01T00:00:00", "effective_at"),
        (("packages", 0, "unit_amount"), 0, "packages[0].unit_amount"),
        (("packages", 0, "unit_amount"), "100", "packages[0].unit_amount"),
        (("packages", 0, "unit_amount"), 10.0, "packages[0].unit_amount"),
        (("packages", 0, "credits"), "0", "packages[0].credits"),
        (("packages", 0, "credits"), "1.0001", "packages[0].credits"),
        (("packages", 0, "currency"), "USD", "packages[0].currency"),
        (("packages", 0, "id"), "Has Space", "packages[0].id"),
        (("packages", 0, "name"), "", "packages[0].name"),
        (("packages", 0, "currency"), _DELETE, "packages[0].currency"),
        (("packages", 0, "price"), 5, "packages[0].price"),
        (("packages", 0), "starter", "packages[0]"),
        (("packages",), {"id": "x"}, "packages"),
        (("fees",), _DELETE, "fees"),
        (("surprise",), {}, "surprise"),
    ],
)
def test_bad_table_names_the_path(path, value, named):
    with pytest.raises(ValueError) as err:
        PriceTable(_mutate(path, value))
    assert str(err.value).startswith(f"{named}:"), str(err.value)


def test_duplicate_package_ids_refused():
    packages = small_table()["packages"] * 2
    with pytest.raises(ValueError, match=r"^packages\[1\]\.id: duplicate"):
        PriceTable(small_table(packages=packages))


def test_comment_keys_are_ignored():
    data = small_table(_comment="hello")
    data["fees"]["_note"] = "not a price"
    assert PriceTable(data).fee_codes == ["half_mc", "tier2_analysis"]


def test_from_file_round_trip_and_env_style_loading(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(small_table()))
    loaded = load_price_table(str(path))
    assert loaded.agent("robot") == Decimal("12.345")
    assert PriceTable.from_file(path).packages == loaded.packages


def test_from_file_json_numbers_are_exact(tmp_path):
    # A JSON number with a fraction is read as a Decimal, never through float.
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(small_table()).replace('"12.345"', "12.345"))
    assert PriceTable.from_file(path).agent("robot") == Decimal("12.345")


def test_bad_table_file_refused_naming_file_and_path(tmp_path):
    data = small_table()
    data["llm_tokens"]["acme"]["half"]["output_usd_per_1m"] = "-2"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        load_price_table(str(path))
    message = str(err.value)
    assert str(path) in message
    assert "llm_tokens.acme.half.output_usd_per_1m" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"fees": {"a": "1", "a": "2"}, "agents": {}, "packages": [], "llm_tokens": {}}', "duplicate key 'a'"),
        ('{"fees": {"a": NaN}, "agents": {}, "packages": [], "llm_tokens": {}}', "NaN"),
        ("[]", "must be a JSON object"),
    ],
)
def test_bad_table_file_content(tmp_path, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        PriceTable.from_file(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_missing_table_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="cannot read") as err:
        load_price_table(str(missing))
    assert str(missing) in str(err.value)
