"""Token limit windows, counter keys, what counts as a token, plans with overrides, and the refusals' shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from billing_core.errors import QuotaExceeded, RateLimited, UnknownPlan
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.items import parse_items
from billing_core.pricing.limits import (
    LimitPolicy,
    check_plan,
    count_tokens,
    counter_key,
    parse_counter_key,
    policy_of,
    refusal_for,
    window,
)
from billing_core.pricing.plans import DEFAULT_DAILY_TOKENS, DEFAULT_HOURLY_TOKENS, LimitOverrides


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("hour", "2026-12-02 13:59:59.999999", "2026-12-02 13:00", "2026-12-02 14:00"),
        ("hour", "2026-12-02 14:00:00", "2026-12-02 14:00", "2026-12-02 15:00"),
        ("day", "2026-12-02 23:59:59", "2026-12-02 00:00", "2026-12-03 00:00"),
        ("day", "2026-12-31 00:00:00", "2026-12-31 00:00", "2027-01-01 00:00"),
        ("month", "2026-12-31 23:59:59", "2026-12-01 00:00", "2027-01-01 00:00"),
        ("month", "2027-02-10 08:00:00", "2027-02-01 00:00", "2027-03-01 00:00"),
        ("month", "2028-02-29 12:00:00", "2028-02-01 00:00", "2028-03-01 00:00"),
    ],
)
def test_windows_are_utc_hours_days_and_calendar_months(period, now, start, end):
    assert window(period, at(now)) == (at(start), at(end))


def test_a_window_is_computed_in_utc_whatever_the_clock_zone():
    # 00:30 on the 3rd in UTC+2 is 22:30 on the 2nd in UTC
    plus_two = datetime(2026, 12, 3, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert window("day", plus_two) == (at("2026-12-02 00:00"), at("2026-12-03 00:00"))


def test_counter_keys_round_trip_with_an_account_holding_colons():
    start = at("2026-12-02 13:00")
    key = counter_key("billing:tokens", "org:acme:42", "hour", start)
    assert key == "billing:tokens:h:2026120213:org:acme:42"
    assert parse_counter_key("billing:tokens", key) == ("org:acme:42", "hour", start)
    assert parse_counter_key("billing:tokens", "billing:tokens:touched") is None
    assert parse_counter_key("billing:tokens", "other:h:2026120213:acme") is None


def test_tokens_count_input_output_and_cached_and_nothing_in_own_mode():
    items = parse_items(
        [
            {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300},
            {
                "type": "llm_tokens",
                "provider": "openai",
                "model": "gpt-4o",
                "input_tokens": 10,
                "output_tokens": 5,
                "cached_input_tokens": 7,
            },
            {"type": "fee", "code": "tier1b_experiment"},
            {"type": "credits", "credits": "2"},
        ]
    )
    assert count_tokens(items) == 1200 + 300 + 10 + 5 + 7
    assert count_tokens(items, "own") == 0
    assert count_tokens(parse_items([{"type": "credits", "credits": "2"}])) == 0


def test_a_tokens_item_counts_its_tokens():
    class TokensItem:  # the catalog's {"type": "tokens", "tokens": N}, read by attribute like any item
        type = "tokens"
        tokens = 640

    assert count_tokens([TokensItem(), TokensItem()]) == 1280


def test_the_shipped_catalog_has_the_seed_plans_and_a_default():
    spec = PriceTable.default().spec
    assert {"free", "pro", "business"} <= set(spec.plans)
    assert spec.default_plan in spec.plans
    assert spec.plans["free"].monthly_tokens == 100_000
    assert all(plan.upgrade_url == "/billing/upgrade" for plan in spec.plans.values())
    assert spec.plans[spec.default_plan].hourly_tokens == DEFAULT_HOURLY_TOKENS
    assert spec.plans[spec.default_plan].daily_tokens == DEFAULT_DAILY_TOKENS


def test_a_policy_is_the_plan_with_the_accounts_overrides():
    table = PriceTable.default()
    free = policy_of(table, "free", {})
    assert (free.plan, free.hourly, free.daily, free.monthly) == ("free", 500_000, 2_000_000, 100_000)
    # a key present overrides (null: unlimited), a key absent keeps the plan's
    custom = policy_of(table, "free", {"hourly_tokens": 1_000, "monthly_tokens": None})
    assert (custom.hourly, custom.daily, custom.monthly) == (1_000, 2_000_000, None)
    # no plan, or a plan the catalog no longer has: the default plan
    default = table.spec.default_plan
    assert policy_of(table, None, {}).plan == default
    assert policy_of(table, "retired", {}).plan == default
    # junk in the stored JSON is ignored rather than trusted
    assert policy_of(table, "free", {"hourly_tokens": "many", "colour": 3}).hourly == 500_000


def test_an_unknown_plan_is_refused_naming_the_known_ones():
    with pytest.raises(UnknownPlan) as refused:
        check_plan(PriceTable.default(), "platinum")
    assert refused.value.code == "unknown_plan"
    assert "free" in refused.value.details["known_plans"]


def test_overrides_accept_counts_and_null_and_refuse_negatives_and_unknown_fields():
    assert LimitOverrides.model_validate({"hourly_tokens": 5, "daily_tokens": None}).given() == {
        "hourly_tokens": 5,
        "daily_tokens": None,
    }
    with pytest.raises(ValueError):
        LimitOverrides.model_validate({"hourly_tokens": -1})
    with pytest.raises(ValueError):
        LimitOverrides.model_validate({"weekly_tokens": 5})


POLICY = LimitPolicy("free", 1_000, 5_000, 100_000, "/billing/upgrade")


def test_a_rate_refusal_says_how_long_until_the_window_resets():
    now = at("2026-12-02 13:59:30")
    refusal = refusal_for("acme", "hour", 900, 1_000, 200, POLICY, now)
    assert isinstance(refusal, RateLimited)
    assert refusal.code == "rate_limited"
    assert refusal.details["retry_after"] == 30
    assert (refusal.details["limit"], refusal.details["window"], refusal.details["current"]) == (1_000, "hour", 900)
    # right at the boundary the whole next window is ahead; a fraction of a second rounds up
    assert (
        refusal_for("acme", "hour", 1_000, 1_000, 1, POLICY, at("2026-12-02 14:00:00")).details["retry_after"] == 3600
    )
    late = at("2026-12-02 23:59:59.250000")
    assert refusal_for("acme", "day", 5_000, 5_000, 1, POLICY, late).details["retry_after"] == 1


def test_a_quota_refusal_has_seed_002s_shape():
    refusal = refusal_for("acme", "month", 101_000, 100_000, 10, POLICY, at("2026-12-15 00:00"))
    assert isinstance(refusal, QuotaExceeded)
    assert refusal.as_dict() | {"message": None} == {
        "code": "quota_exceeded",
        "message": None,
        "metric": "tokens_month",
        "current": 101_000,
        "limit": 100_000,
        "percentage": 101.0,
        "upgrade_url": "/billing/upgrade",
        "account": "acme",
        "requested": 10,
        "resets_at": "2027-01-01T00:00:00+00:00",
    }
