"""Plans as the catalog sells them: prices per interval, allowance, trial and rollover cap (seed 002), checked
by the file's pydantic models like every other price."""

from __future__ import annotations

from fractions import Fraction

import pytest

from billing_core.errors import UnknownPlan
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.plans import PlanPrice, PlanSpec, plan_prices
from billing_core.stripe.catalog_sync import plan_price_metadata
from billing_core.stripe.subscription_checkout import UnknownInterval, find_plan_price, is_upgrade

TABLE = PriceTable.default()
BASE = {"name": "X", "prices": {"month": {"unit_amount": 1000, "currency": "usd"}}}


def test_the_shipped_plans_are_seed_002s_with_their_allowances_and_the_limits_they_had():
    plans = TABLE.spec.plans
    pro, business = plans["pro"], plans["business"]
    assert {i: (p.unit_amount, p.currency) for i, p in pro.prices.items()} == {
        "month": (2900, "usd"),
        "year": (29000, "usd"),
    }
    assert {i: p.unit_amount for i, p in business.prices.items()} == {"month": 14900, "year": 149000}
    # credits as millicredits inside
    assert (pro.allowance_credits, pro.trial_days, pro.trial_allowance_credits, pro.rollover_cap_credits) == (
        30_000_000,
        14,
        5_000_000,
        30_000_000,
    )
    assert (business.allowance_credits, business.trial_allowance_credits, business.rollover_cap_credits) == (
        160_000_000,
        20_000_000,
        160_000_000,
    )
    assert (pro.monthly_tokens, business.hourly_tokens, business.monthly_tokens) == (10_000_000, 5_000_000, None)
    assert plans["payg"].prices == {} and plans["free"].prices == {}
    assert [(p.plan, p.interval) for p in plan_prices(plans)] == [
        ("pro", "month"),
        ("pro", "year"),
        ("business", "month"),
        ("business", "year"),
    ]


def test_the_plan_models_refuse_what_cannot_be_sold():
    with pytest.raises(ValueError, match="trial_allowance_credits needs trial_days"):
        PlanSpec.model_validate({**BASE, "trial_allowance_credits": "10"})
    with pytest.raises(ValueError, match="needs prices"):
        PlanSpec.model_validate({"name": "X", "allowance_credits": "10"})
    for bad in (
        {**BASE, "prices": {"week": {"unit_amount": 100, "currency": "usd"}}},
        {**BASE, "prices": {"month": {"unit_amount": 0, "currency": "usd"}}},
        {**BASE, "prices": {"month": {"unit_amount": 100, "currency": "USD"}}},
        {**BASE, "prices": {"month": {"unit_amount": 100, "currency": "usd", "stripe_price": "prod_1"}}},
        {**BASE, "allowance_credits": 1.5},
        {**BASE, "allowance_credits": "-1"},
        {**BASE, "trial_days": 731},
        {**BASE, "rollover": "1"},
    ):
        with pytest.raises(ValueError):
            PlanSpec.model_validate(bad)
    spec = PlanSpec.model_validate({**BASE, "allowance_credits": "12.5", "_note": "comments are fine"})
    assert spec.allowance_credits == 12_500 and spec.trial_days == 0


def test_a_bad_plan_in_the_file_names_its_path():
    data = TABLE.catalog
    data["plans"]["pro"]["prices"]["month"]["unit_amount"] = -5
    with pytest.raises(ValueError, match=r"^plans\.pro\.prices\.month\.unit_amount"):
        PriceTable(data)


def test_plan_lookup_and_the_metadata_its_price_carries():
    price = find_plan_price(TABLE, "business", "year")
    assert plan_price_metadata(price) == {
        "billing_plan": "business",
        "interval": "year",
        "allowance_mc": "160000000",
        "trial_allowance_mc": "20000000",
        "rollover_cap_mc": "160000000",
    }
    with pytest.raises(UnknownPlan) as unknown:
        find_plan_price(TABLE, "gold", "month")
    assert unknown.value.details["known_plans"] == ["pro", "business"]
    with pytest.raises(UnknownInterval) as unpriced:
        find_plan_price(TABLE, "payg", "month")
    assert unpriced.value.details["known_intervals"] == []
    with pytest.raises(UnknownInterval):
        find_plan_price(TABLE, "pro", "week")


def test_an_upgrade_is_a_higher_monthly_allowance_or_price():
    pro_month, pro_year = find_plan_price(TABLE, "pro", "month"), find_plan_price(TABLE, "pro", "year")
    business_month = find_plan_price(TABLE, "business", "month")
    assert is_upgrade(pro_month, business_month) and not is_upgrade(business_month, pro_month)
    # the same allowance: the price a month decides ($290/year is less a month than $29/month)
    assert pro_year.monthly_amount == Fraction(29000, 12)
    assert is_upgrade(pro_year, pro_month) and not is_upgrade(pro_month, pro_year)
    assert is_upgrade(None, pro_month)
    assert isinstance(pro_month, PlanPrice) and pro_month.ref == "pro:month"
