"""The constrained types every request, usage item, command and the price catalog are validated with.

Defined once, here, so that a limit cannot drift between two places that check the same thing (a model code
of 128 characters in the price table and 100 in a usage report; 100 items in a report and 1,000 in a hold).
Each is a pydantic ``Annotated`` type: models use it as a field type, and the JSON Schema of ``/openapi.json``
carries its pattern and bounds. Commands built from validated models trust their input.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainSerializer,
    StrictInt,
    StrictStr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from billing_core.errors import PATTERN_MESSAGES, InvalidAmount
from billing_core.units import MAX_CREDITS, MAX_MC, format_credits, parse_credits

# -- limits -------------------------------------------------------------------------------------------------
MAX_KEY_LEN = 255  # a ledger idempotency key, whole (client keys are prefixed before they reach the ledger)
MAX_ACCOUNT_LEN = 128
MAX_NAME_LEN = 128  # provider, model, fee and agent codes
MAX_ITEMS = 100  # items in one usage report, hold, capture or estimate
MAX_REPORTS_PER_REQUEST = 1000  # usage reports in one POST /v1/usage or billing.record_usage message
MAX_TOKENS = 10**9
MAX_QUANTITY = 10**6
MAX_METADATA_BYTES = 16 * 1024
MAX_TTL_SECONDS = 7 * 24 * 3600
MAX_URL_LEN = 2048
MAX_TEXT_LEN = 500  # reasons and other operator text
MAX_ACTOR_LEN = 200
MAX_REF_LEN = 255  # an external reference (a Stripe object id, a grant's cause)
MAX_CLIENT_KEY_LEN = 200  # a client's key for a Checkout Session, scoped by account before Stripe sees it
MAX_UNIT_AMOUNT = 99_999_999  # Stripe's ceiling for a Checkout amount in minor units
MAX_PRICE_DECIMALS = 6
MAX_PRIORITY = 1000  # a grant's spending priority (lower is spent first among grants expiring together)

ACCOUNT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}$"
# Printable ASCII without spaces: keys are built from causes (``checkout:cs_123``) and travel in URLs.
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
HOLD_ID_PATTERN = r"^hold_[0-9a-z]{1,34}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+\-]{0,127}$"
PACKAGE_ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
CURRENCY_PATTERN = r"^[a-z]{3}$"
STRIPE_CUSTOMER_PATTERN = r"^cus_[A-Za-z0-9]{1,250}$"
# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is the mail server's call.
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"

PATTERN_MESSAGES.update(
    {
        ACCOUNT_PATTERN: "must be 1-128 letters, digits or _.:@+- starting with a letter or digit",
        KEY_PATTERN: "must be 1-255 printable ASCII characters without spaces",
        HOLD_ID_PATTERN: "is not a hold id (hold_...)",
        NAME_PATTERN: "must be 1-128 letters, digits or _.:@/+- starting with a letter or digit",
        PACKAGE_ID_PATTERN: "must be 1-64 lowercase letters, digits, _ or - starting with a letter or digit",
        CURRENCY_PATTERN: "must be a lowercase ISO 4217 code such as usd",
        STRIPE_CUSTOMER_PATTERN: "must be a Stripe customer id (cus_...)",
        EMAIL_PATTERN: "must be an email address such as ada@example.com",
        r"\S": "must not be blank",
    }
)

ACCOUNT_RE = re.compile(ACCOUNT_PATTERN)
KEY_RE = re.compile(KEY_PATTERN)
HOLD_ID_RE = re.compile(HOLD_ID_PATTERN)
NAME_RE = re.compile(NAME_PATTERN)

# -- identifiers --------------------------------------------------------------------------------------------
Account = Annotated[StrictStr, Field(pattern=ACCOUNT_PATTERN, description="the customer's account id in your app")]
IdempotencyKey = Annotated[
    StrictStr, Field(pattern=KEY_PATTERN, description="1-255 printable ASCII characters without spaces")
]
HoldId = Annotated[StrictStr, Field(pattern=HOLD_ID_PATTERN, examples=["hold_8f0c2a7d5e1b4c3a9d6e0f12"])]
Name = Annotated[StrictStr, Field(pattern=NAME_PATTERN, description="a provider, model, fee or agent code")]
StripeCustomerId = Annotated[StrictStr, Field(pattern=STRIPE_CUSTOMER_PATTERN)]
Email = Annotated[StrictStr, Field(max_length=320, pattern=EMAIL_PATTERN)]
DisplayName = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=r"\S")]
Reason = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_LEN, pattern=r"\S")]
Actor = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ACTOR_LEN, pattern=r"\S")]
ExternalRef = Annotated[StrictStr, Field(min_length=1, max_length=MAX_REF_LEN, pattern=r"\S")]
PackageId = Annotated[StrictStr, Field(pattern=PACKAGE_ID_PATTERN, examples=["starter"])]
Currency = Annotated[StrictStr, Field(pattern=CURRENCY_PATTERN, description="a lowercase ISO 4217 code such as usd")]
PackageName = DisplayName
ClientKey = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_CLIENT_KEY_LEN, description="your key for retrying this request")
]
# An aware datetime: a naive one would be read in the server's zone, and the ledger works in UTC.
Timestamp = AwareDatetime


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError("url_scheme", "must be an http(s) URL")
    return value


HttpUrl = Annotated[
    StrictStr,
    Field(max_length=MAX_URL_LEN, json_schema_extra={"format": "uri"}),
    AfterValidator(_http_url),
]


# -- counts -------------------------------------------------------------------------------------------------
def _in_range(low: int, high: int) -> WrapValidator:
    """Keep pydantic's error code but say what is wanted: ``1e20`` is a JSON number pydantic would call "not a
    valid integer", while the client needs to hear the range."""

    def check(value: object, handler: ValidatorFunctionWrapHandler, _info: ValidationInfo) -> int:
        try:
            return int(handler(value))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            errors = getattr(exc, "errors", None)
            kind = errors()[0]["type"] if callable(errors) else "int_type"
            raise PydanticCustomError(kind, f"must be an integer from {low} to {high}") from None

    return WrapValidator(check)


Tokens = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS), _in_range(0, MAX_TOKENS)]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY), _in_range(1, MAX_QUANTITY)]
TtlSeconds = Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS), _in_range(1, MAX_TTL_SECONDS)]
GrantPriority = Annotated[
    StrictInt,
    Field(
        ge=0,
        le=MAX_PRIORITY,
        description="lower is spent first among grants expiring at the same time; defaults by source "
        "(promotion 10, plan 20, admin 30, purchase 40)",
    ),
    _in_range(0, MAX_PRIORITY),
]
UnitAmount = Annotated[StrictInt, Field(ge=1, le=MAX_UNIT_AMOUNT), _in_range(1, MAX_UNIT_AMOUNT)]


# -- money --------------------------------------------------------------------------------------------------
INVALID_AMOUNT = "invalid_amount"


def _millicredits(value: object) -> int:
    # parse_credits is the one parser of credit amounts: decimal strings (no JSON parser on the way can turn
    # them into binary floats) or whole numbers; never floats, at most 3 decimals.
    # The error type ``invalid_amount`` is what ``errors.from_validation_error`` turns into ``InvalidAmount``.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PydanticCustomError(INVALID_AMOUNT, 'credit amounts are decimal strings such as "12.5"')
    try:
        return parse_credits(value)
    except InvalidAmount as exc:
        raise PydanticCustomError(INVALID_AMOUNT, exc.message) from None


def _non_negative(mc: int) -> int:
    if mc < 0:
        raise PydanticCustomError(INVALID_AMOUNT, "must not be negative")
    return mc


def _positive(mc: int) -> int:
    if mc <= 0:
        raise PydanticCustomError(INVALID_AMOUNT, "must be positive")
    return mc


_CREDITS_SCHEMA = WithJsonSchema(
    {
        "type": "string",
        "pattern": r"^-?\d{1,13}(\.\d{1,3})?$",
        "description": f"credits as a decimal string, at most 3 decimals and {MAX_CREDITS} in magnitude",
        "examples": ["12.345"],
    }
)
_AS_CREDITS = PlainSerializer(format_credits, return_type=str)

# Millicredits inside, a credit string on the wire: ``"12.345"`` validates to 12345.
Credits = Annotated[int, BeforeValidator(_millicredits), _CREDITS_SCHEMA, _AS_CREDITS]
# An amount the API answers with: millicredits inside, already exact, written as a credit string.
CreditString = Annotated[StrictInt, _CREDITS_SCHEMA, _AS_CREDITS]
CreditsNonNegative = Annotated[
    int, BeforeValidator(_millicredits), AfterValidator(_non_negative), _CREDITS_SCHEMA, _AS_CREDITS
]
CreditsPositive = Annotated[
    int, BeforeValidator(_millicredits), AfterValidator(_positive), _CREDITS_SCHEMA, _AS_CREDITS
]


def _amount_mc(value: int) -> int:
    if not -MAX_MC <= value <= MAX_MC:
        raise PydanticCustomError(INVALID_AMOUNT, f"exceeds {MAX_CREDITS} credits")
    return value


def _mc_error(value: object, handler: ValidatorFunctionWrapHandler, _info: ValidationInfo) -> int:
    try:
        return int(handler(value))
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        message = errors()[0]["msg"] if callable(errors) else str(exc)
        raise PydanticCustomError(INVALID_AMOUNT, message) from None


# Millicredits as commands take them (already parsed from credit strings): ints only, never a float or bool.
Millicredits = Annotated[StrictInt, AfterValidator(_amount_mc), AfterValidator(_positive), WrapValidator(_mc_error)]
MillicreditsNonNegative = Annotated[
    StrictInt, AfterValidator(_amount_mc), AfterValidator(_non_negative), WrapValidator(_mc_error)
]


def _non_zero(mc: int) -> int:
    if mc == 0:
        raise PydanticCustomError(INVALID_AMOUNT, "must not be zero")
    return mc


MillicreditsSigned = Annotated[
    StrictInt, AfterValidator(_amount_mc), AfterValidator(_non_zero), WrapValidator(_mc_error)
]


def check_metadata_size(value: dict[str, Any]) -> dict[str, Any]:
    # The standard library's encoder because it refuses NaN and infinities, which orjson writes as null:
    # what is stored must read back as it was sent.
    try:
        size = len(json.dumps(value, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise PydanticCustomError(
            "metadata_not_json", "metadata is not plain JSON: {error}", {"error": str(exc)}
        ) from None
    if size > MAX_METADATA_BYTES:
        raise PydanticCustomError("too_large", f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    return value


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(check_metadata_size),
    Field(description=f"your own JSON object, kept with the entry (at most {MAX_METADATA_BYTES} bytes)"),
]

__all__ = [
    "ACCOUNT_RE",
    "HOLD_ID_RE",
    "KEY_RE",
    "NAME_RE",
    "Account",
    "Credits",
    "CreditsNonNegative",
    "CreditsPositive",
    "DisplayName",
    "Email",
    "HoldId",
    "IdempotencyKey",
    "Metadata",
    "Name",
    "Quantity",
    "Reason",
    "StripeCustomerId",
    "Tokens",
    "TtlSeconds",
]
