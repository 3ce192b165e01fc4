"""The three pricing schemes used together (per-token prices, token bundles, flat agent and tier costs), and
the key mode: ``system`` charges tokens, ``own`` charges base fees only and is refused on tiers that require
system credits. Plus the version tools that need no database: the file-only PriceBook and diffs."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.errors import InvalidCommand, KeyModeNotAllowed, UnknownModel, UnknownPriceCode
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.quotes import price_items
from billing_core.pricing.versions import PriceBook, diff_tables

TABLE = PriceTable.default()
GPT4O = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}


# ------------------------------------------------------------------------------------------ tier fees
def test_tier_fees_of_seed_000():
    quote = price_items(
        TABLE,
        [
            {"type": "tier", "tier": "tier1a", "quantity": 3},  # 3 scenarios * 10 credits = 30 credits
            {"type": "tier", "tier": "tier1b"},  # 1 experiment * 50 credits = 50 credits
            {"type": "tier", "tier": "tier2"},  # no base fee
        ],
    )
    assert [line.amount_mc for line in quote.lines] == [30_000, 50_000, 0]
    assert quote.total_mc == 80_000
    assert quote.lines[0].breakdown == {
        "tier": "tier1a",
        "unit": "scenario",
        "unit_credits": "10",
        "quantity": 3,
        "requires_system_credits": True,
    }
    assert quote.lines[1].breakdown["unit"] == "experiment"
    assert {t.code: (t.fee, t.requires_system_credits) for t in TABLE.tiers} == {
        "tier1a": (10, True),
        "tier1b": (50, True),
        "tier2": (0, False),
    }


def test_an_unknown_tier_is_refused_naming_the_field():
    with pytest.raises(UnknownPriceCode) as err:
        price_items(TABLE, [GPT4O, {"type": "tier", "tier": "tier3"}])
    assert err.value.details == {"kind": "tier", "code": "tier3", "field": "items[1].tier"}


# ------------------------------------------------------------------------------------------ agent costs
def test_agent_costs_of_seed_003():
    agents = TABLE.agents
    assert len(agents) == 22
    assert min(a.credits for a in agents) == 20 and max(a.credits for a in agents) == 150
    assert len({a.name for a in agents}) == 22 and all(a.description for a in agents)
    # profile_my_data 20 + forecast_timeseries 150 * 2 = 320 credits
    quote = price_items(
        TABLE,
        [{"type": "agent", "code": "profile_my_data"}, {"type": "agent", "code": "forecast_timeseries", "quantity": 2}],
    )
    assert [line.amount_mc for line in quote.lines] == [20_000, 300_000]
    assert quote.lines[1].breakdown == {"code": "forecast_timeseries", "unit_credits": "150", "quantity": 2}


# ------------------------------------------------------------------------------------------ token bundles
def test_tokens_item_is_priced_by_the_bundle_whatever_the_model():
    # seed 001: 1 credit = 1,000 tokens. 12,345 tokens = 12.345 credits; 1 token = 0.001 credit = 1 mc.
    quote = price_items(
        TABLE,
        [
            {"type": "tokens", "tokens": 12_345, "provider": "openai", "model": "gpt-4o"},
            {"type": "tokens", "tokens": 1, "provider": "anthropic", "model": "not-even-a-model"},
            {"type": "tokens", "tokens": 0},
        ],
    )
    assert [line.amount_mc for line in quote.lines] == [12_345, 1, 0]
    assert quote.lines[0].breakdown == {
        "scheme": "token_bundle",
        "tokens": 12_345,
        "tokens_per_credit": 1000,
        "provider": "openai",
        "model": "gpt-4o",
    }


def test_a_bundle_model_counts_every_kind_of_token():
    # self-hosted/analysis-assistant is a token_bundle model: (1200 + 300 + 500) / 1000 = 2 credits
    item = {**GPT4O, "provider": "self-hosted", "model": "analysis-assistant", "cached_input_tokens": 500}
    quote = price_items(TABLE, [item])
    assert quote.total_mc == 2000
    assert quote.lines[0].breakdown["scheme"] == "token_bundle"


def test_a_bundle_rate_rounds_at_the_millicredit():
    data = copy.deepcopy(TABLE.catalog)
    data["token_bundle"] = {"tokens_per_credit": 3000}
    table = PriceTable(data)
    # 1 token / 3000 = 0.000333 credits = 0.333 mc -> 0; 2 tokens = 0.667 mc -> 1; 1500 tokens = 500 mc
    amounts = [price_items(table, [{"type": "tokens", "tokens": n}]).total_mc for n in (1, 2, 1500)]
    assert amounts == [0, 1, 500]


# ------------------------------------------------------------------------------------------ key modes
MIXED = [
    GPT4O,  # 1200 * 2.5 + 300 * 10 mc = 6 credits in system mode
    {"type": "tokens", "tokens": 5000},  # 5 credits in system mode
    {"type": "agent", "code": "clean_my_data"},  # 40 credits
    {"type": "agent", "code": "profile_my_data"},  # 20 credits
    {"type": "fee", "code": "tier2_analysis"},  # 0, tier 2's fee: own keys allowed
]


def test_system_mode_charges_tokens_and_base_fees():
    quote = price_items(TABLE, MIXED, mode="system")
    assert [line.amount_mc for line in quote.lines] == [6000, 5000, 40_000, 20_000, 0]
    assert (quote.total_mc, quote.mode) == (71_000, "system")


def test_own_mode_charges_base_fees_only():
    quote = price_items(TABLE, MIXED, mode="own")
    assert [line.amount_mc for line in quote.lines] == [0, 0, 40_000, 20_000, 0]
    assert (quote.total_mc, quote.mode) == (60_000, "own")
    # the token line still says what was used and at which price, though it was not charged
    assert quote.lines[0].breakdown["input_per_1m"] == "2500"
    assert "not charged" in quote.lines[0].description
    assert quote.as_metadata()["mode"] == "own"


@pytest.mark.parametrize("tier", ["tier1a", "tier1b"])
def test_own_mode_is_refused_on_tiers_that_require_system_credits(tier):
    with pytest.raises(KeyModeNotAllowed) as err:
        price_items(TABLE, [GPT4O, {"type": "tier", "tier": tier}], mode="own")
    assert err.value.code == "key_mode_not_allowed"
    assert err.value.details == {"field": "items[1].tier", "tier": tier, "mode": "own"}
    # the same in system mode is fine
    assert price_items(TABLE, [GPT4O, {"type": "tier", "tier": tier}]).total_mc > 0


@pytest.mark.parametrize(("code", "tier"), [("tier1a_scenario", "tier1a"), ("tier1b_experiment", "tier1b")])
def test_a_tiers_fee_by_its_fee_code_follows_the_tiers_key_mode_rule(code, tier):
    # The shipped catalog binds the seed's fee codes to their tiers: a fee item cannot go round the rule.
    table = PriceTable.default()
    with pytest.raises(KeyModeNotAllowed) as err:
        price_items(table, [{"type": "fee", "code": code}], mode="own")
    assert err.value.details == {"field": "items[0].code", "tier": tier, "mode": "own"}
    assert price_items(table, [{"type": "fee", "code": code}]).total_mc == table.tier(tier).fee * 1000
    # tier 2 allows own keys, and a plain fee (no tier) is charged in either mode
    assert price_items(table, [{"type": "fee", "code": "tier2_analysis"}], mode="own").total_mc == 0


def test_a_fee_naming_a_tier_the_catalog_lacks_is_refused_at_load():
    data = {**PriceTable.default().catalog, "fees": {"setup": {"credits": "5", "tier": "tier9"}}}
    with pytest.raises(ValueError, match=r"fees\.setup\.tier: not a tier of the catalog: 'tier9'"):
        PriceTable(data)


def test_own_mode_still_refuses_an_unknown_model():
    with pytest.raises(UnknownModel) as err:
        price_items(TABLE, [{**GPT4O, "model": "gpt-9"}], mode="own")
    assert "gpt-4o" in err.value.details["known_models"]


def test_an_unknown_mode_is_refused():
    with pytest.raises(InvalidCommand) as err:
        price_items(TABLE, [GPT4O], mode="theirs")
    assert err.value.details["field"] == "mode"


_codes = st.sampled_from(TABLE.agent_codes)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(lambda n: {"type": "tokens", "tokens": n}, st.integers(0, 10**7)),
            st.builds(
                lambda a, b: {**GPT4O, "input_tokens": a, "output_tokens": b},
                st.integers(0, 10**7),
                st.integers(0, 10**7),
            ),
            st.builds(lambda c, q: {"type": "agent", "code": c, "quantity": q}, _codes, st.integers(1, 100)),
            st.builds(lambda q: {"type": "tier", "tier": "tier2", "quantity": q}, st.integers(1, 100)),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_own_mode_is_system_mode_without_the_token_lines(items):
    system, own = price_items(TABLE, items), price_items(TABLE, items, mode="own")
    tokens = {"tokens", "llm_tokens"}
    assert own.total_mc == sum(line.amount_mc for line in system.lines if line.type not in tokens)
    assert all(line.amount_mc == 0 for line in own.lines if line.type in tokens)


# ------------------------------------------------------------------------------------------ versions without a database
def _variant(version: str, **changes) -> PriceTable:
    data = copy.deepcopy(dict(TABLE.catalog))
    data["version"] = version
    for key, value in changes.items():
        data[key] = value
    return PriceTable(data)


def test_a_file_only_book_prices_with_the_file_at_any_time():
    book = PriceBook(TABLE)
    with freeze_time("2031-05-01T00:00:00Z"):
        assert book.current() is TABLE
    assert book.current(datetime(1999, 1, 1, tzinfo=UTC)) is TABLE
    assert book.base is TABLE
    assert [v.version for v in book.schedule()] == [TABLE.version]
    assert book.refresh() is False


def test_diff_lists_added_removed_and_changed_prices():
    data = copy.deepcopy(dict(TABLE.catalog))
    data["version"] = "next"
    data["llm_tokens"]["openai"]["gpt-4o"] = {**data["llm_tokens"]["openai"]["gpt-4o"], "input_usd_per_1m": "2.00"}
    data["llm_tokens"]["openai"]["gpt-6"] = {"input_usd_per_1m": "3", "output_usd_per_1m": "12", "as_of": "2026-11-30"}
    del data["agents"]["build_dashboard"]
    data["tiers"]["tier1b"] = {**data["tiers"]["tier1b"], "fee": "50.000"}  # the same price, written otherwise
    changes = {(c.kind, c.path): (c.old, c.new) for c in diff_tables(TABLE, PriceTable(data))}
    assert changes == {
        ("changed", "llm_tokens.openai.gpt-4o.input_usd_per_1m"): ("2.50", "2.00"),
        ("added", "llm_tokens.openai.gpt-6.input_usd_per_1m"): (None, "3"),
        ("added", "llm_tokens.openai.gpt-6.output_usd_per_1m"): (None, "12"),
        ("added", "llm_tokens.openai.gpt-6.as_of"): (None, "2026-11-30"),
        ("removed", "agents.build_dashboard.credits"): ("130", None),
    }
    assert diff_tables(TABLE, _variant("same-prices")) == []


def test_a_book_whose_database_fails_keeps_pricing_with_what_it_has(caplog):
    def broken():
        raise ConnectionError("database down")

    book = PriceBook(TABLE, session_factory=broken, refresh_seconds=60)  # type: ignore[arg-type]
    assert book.current() is TABLE
    assert "price versions not refreshed" in caplog.text
    caplog.clear()
    assert book.current() is TABLE  # and it does not ask again before its interval
    assert caplog.text == ""
