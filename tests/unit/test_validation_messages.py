"""Refusals say what a value should have been, in words: a client never has to read a regular expression."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from billing_core.errors import InvalidCommand, from_validation_error
from billing_core.intake.usage_reports import InvalidUsage, accept_reports
from billing_core.pricing.catalog import PriceTable
from webhook_receiver.schemas import AccountUpdateBody, PlaceHoldBody


def _refusal(model: type, body: dict[str, object]) -> InvalidCommand:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    error = from_validation_error(caught.value)
    assert isinstance(error, InvalidCommand)
    return error


def test_a_malformed_account_is_described_not_quoted_as_a_pattern() -> None:
    # given a hold for an account name that starts with a space
    error = _refusal(PlaceHoldBody, {"account": " ada", "idempotency_key": "k1", "credits": "1"})
    # then the refusal names the field and the rule, and no regular expression
    assert error.details["field"] == "account"
    assert "letters, digits" in error.message
    assert "^" not in error.message and "pattern" not in error.message


def test_a_malformed_email_and_customer_id_are_described() -> None:
    assert "email address" in _refusal(AccountUpdateBody, {"email": "not-an-email"}).message
    assert "cus_" in _refusal(AccountUpdateBody, {"stripe_customer_id": "acct_1"}).message


def test_usage_problems_describe_the_pattern_too() -> None:
    # given a usage report whose key has a space in it
    report = {"idempotency_key": "a b", "account": "ada", "items": [{"type": "fee", "code": "tier1b_experiment"}]}
    with pytest.raises(InvalidUsage) as caught:
        accept_reports(report, PriceTable.default())
    # then its problem keeps pydantic's code but says the rule in words
    [problem] = caught.value.details["problems"]
    assert problem["field"] == "idempotency_key"
    assert problem["code"] == "string_pattern_mismatch"
    assert problem["message"] == "must be 1-255 printable ASCII characters without spaces"
