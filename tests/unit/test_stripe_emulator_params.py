"""How the Stripe emulator reads Stripe-style form parameters (pure: no server)."""

from __future__ import annotations

import pytest

from stripe_emulator.params import StripeError, decode, get_int


def test_bracketed_keys_become_nested_dicts_and_lists() -> None:
    pairs = [
        ("mode", "payment"),
        ("metadata[account]", "user_42"),
        ("line_items[0][price_data][unit_amount]", "500"),
        ("line_items[0][quantity]", "1"),
        ("line_items[1][quantity]", "2"),
        ("types[]", "charge.refunded"),
        ("types[]", "refund.created"),
        ("created[gte]", "1700000000"),
    ]

    assert decode(pairs) == {
        "mode": "payment",
        "metadata": {"account": "user_42"},
        "line_items": [{"price_data": {"unit_amount": "500"}, "quantity": "1"}, {"quantity": "2"}],
        "types": ["charge.refunded", "refund.created"],
        "created": {"gte": "1700000000"},
    }


def test_indexed_lists_keep_index_order() -> None:
    assert decode([("expand[1]", "b"), ("expand[0]", "a"), ("expand[10]", "c")]) == {"expand": ["a", "b", "c"]}


@pytest.mark.parametrize("value", ["ten", "1.5", " ", "1e3"])
def test_bad_integers_are_parameter_invalid_integer(value: str) -> None:
    with pytest.raises(StripeError) as caught:
        get_int({"limit": value}, "limit")
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "parameter_invalid_integer", "limit")


def test_integer_bounds_and_missing_values() -> None:
    with pytest.raises(StripeError) as too_big:
        get_int({"limit": "101"}, "limit", maximum=100, minimum=1)
    with pytest.raises(StripeError) as missing:
        get_int({}, "amount", required=True)

    assert too_big.value.code == "parameter_invalid_integer"
    assert (missing.value.code, missing.value.param) == ("parameter_missing", "amount")
    assert get_int({"amount": "-3"}, "amount") == -3
    assert get_int({"amount": ""}, "amount") is None


def test_idempotency_keys_stripe_cannot_carry_are_sent_as_their_hash():
    from billing_core.stripe.gateway import stripe_key

    assert stripe_key("checkout:acme:1") == "checkout:acme:1"
    hashed = stripe_key("café-1")  # not Latin-1-safe ASCII: a header could not carry it
    assert hashed.startswith("sha256:") and hashed == stripe_key("café-1") and hashed.isascii()
    assert stripe_key("k" * 256).startswith("sha256:") and len(stripe_key("k" * 256)) <= 255
    assert stripe_key("line\nbreak") != "line\nbreak"
