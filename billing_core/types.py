"""The constrained types every request, usage item, command and the price catalog are validated with.

Defined once, here, so that a limit cannot drift between two places that check the same thing (a model code
of 128 characters in the price table and 100 in a usage report; 100 items in a report and 1,000 in a hold).
Each is a pydantic ``Annotated`` type: models use it as a field type, and the JSON Schema of ``/openapi.json``
carries its pattern and bounds. Commands built from validated models trust their input.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, StrictInt, StrictStr, WithJsonSchema

from billing_core.errors import InvalidAmount
from billing_core.units import MAX_CREDITS, format_credits, parse_credits

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

ACCOUNT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}$"
# Printable ASCII without spaces: keys are built from causes (``checkout:cs_123``) and travel in URLs.
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
HOLD_ID_PATTERN = r"^hold_[0-9a-z]{1,34}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+\-]{0,127}$"
STRIPE_CUSTOMER_PATTERN = r"^cus_[A-Za-z0-9]{1,250}$"
# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is the mail server's call.
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"

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

# -- counts -------------------------------------------------------------------------------------------------
Tokens = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]
TtlSeconds = Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS)]


# -- money --------------------------------------------------------------------------------------------------
def _millicredits(value: object) -> int:
    # parse_credits is the one parser of credit amounts: decimal strings (no JSON parser on the way can turn
    # them into binary floats) or whole numbers; never floats, at most 3 decimals.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError('credit amounts are decimal strings such as "12.5"')
    try:
        return parse_credits(value)
    except InvalidAmount as exc:
        raise ValueError(exc.message) from None


def _non_negative(mc: int) -> int:
    if mc < 0:
        raise ValueError("must not be negative")
    return mc


def _positive(mc: int) -> int:
    if mc <= 0:
        raise ValueError("must be positive")
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
CreditsNonNegative = Annotated[
    int, BeforeValidator(_millicredits), AfterValidator(_non_negative), _CREDITS_SCHEMA, _AS_CREDITS
]
CreditsPositive = Annotated[
    int, BeforeValidator(_millicredits), AfterValidator(_positive), _CREDITS_SCHEMA, _AS_CREDITS
]


def check_metadata_size(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except TypeError as exc:
        raise ValueError(f"metadata is not plain JSON: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata exceeds {MAX_METADATA_BYTES} bytes")
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
