"""Units: integer millicredits inside, credit strings at the edges, one rounding rule."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from billing_core.errors import InvalidAmount
from billing_core.ledger.commands import DebitUsage
from billing_core.types import Millicredits, MillicreditsNonNegative
from billing_core.units import MAX_CREDITS, MAX_MC, format_credits, parse_credits, round_mc


@pytest.mark.parametrize(
    ("given", "mc"),
    [
        ("12.345", 12_345),
        ("0.001", 1),
        ("1", 1_000),
        ("-2.5", -2_500),
        (" 7.10 ", 7_100),
        (3, 3_000),
        (Decimal("0.5"), 500),
        ("1e3", 1_000_000),
        (str(MAX_CREDITS), MAX_MC),
    ],
)
def test_parse_credits(given, mc):
    assert parse_credits(given) == mc


@pytest.mark.parametrize(
    "bad",
    [
        1.5,
        1.0,
        float("nan"),
        True,
        None,
        "1.0001",
        "NaN",
        "inf",
        "-Infinity",
        "1e400",
        "",
        "1,5",
        "0x10",
        str(MAX_CREDITS + 1),
        "1" * 41,
        b"1",
        [1],
        Decimal("sNaN"),
    ],
)
def test_parse_credits_refuses(bad):
    with pytest.raises(InvalidAmount) as err:
        parse_credits(bad)
    assert err.value.code == "invalid_amount"


@pytest.mark.parametrize(("mc", "text"), [(12_345, "12.345"), (0, "0.000"), (1, "0.001"), (-1_500, "-1.500")])
def test_format_credits(mc, text):
    assert format_credits(mc) == text


@given(st.integers(min_value=-MAX_MC, max_value=MAX_MC))
def test_format_then_parse_is_the_identity(mc):
    assert parse_credits(format_credits(mc)) == mc


@pytest.mark.parametrize(
    ("amount", "mc"),
    [("0.5", 1), ("1.5", 2), ("2.5", 3), ("0.4999", 0), ("-0.5", -1), ("-1.5", -2), ("12.0", 12)],
)
def test_round_mc_is_half_up_away_from_zero(amount, mc):
    assert round_mc(Decimal(amount)) == mc


def test_round_mc_refuses_floats_and_nan():
    with pytest.raises(InvalidAmount):
        round_mc(0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        round_mc(Decimal("NaN"))


def test_millicredit_types_take_ints_in_range_only():
    positive, non_negative = TypeAdapter(Millicredits), TypeAdapter(MillicreditsNonNegative)
    assert positive.validate_python(5) == 5
    assert non_negative.validate_python(0) == 0
    for bad in (0, -1, 1.0, True, MAX_MC + 1, "5"):
        with pytest.raises(ValidationError) as err:
            positive.validate_python(bad)
        assert err.value.errors()[0]["type"] == "invalid_amount"


def test_a_command_built_from_unchecked_values_names_the_bad_amount():
    with pytest.raises(InvalidAmount) as err:
        DebitUsage.validated("acme", 1.0, "k")
    assert err.value.details == {"field": "amount_mc"}
