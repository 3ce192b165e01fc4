"""Money units: integer millicredits inside, credit strings at the edges.

1 credit = 1,000 millicredits (mc). Nothing here ever goes through ``float``: a float has already lost
the exact value by the time we would see it, so floats are refused rather than converted.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from billing_core.errors import InvalidAmount

MC_PER_CREDIT = 1000
# 10^12 credits (10^15 mc) is far beyond any real wallet yet 9,000 times below the bigint limit, so sums
# of many such amounts in one entry still cannot overflow a PostgreSQL bigint.
MAX_CREDITS = 10**12
MAX_MC = MAX_CREDITS * MC_PER_CREDIT
_MC = Decimal(1)


def parse_credits(value: object) -> int:
    """Parse a credit amount given as a string (``"12.345"``), an ``int`` or a ``Decimal`` into millicredits.

    Raises ``InvalidAmount`` for floats, booleans, NaN, infinities, more than 3 decimals and magnitudes
    above ``MAX_CREDITS``. The sign is kept; callers decide whether zero or negatives are allowed.
    """
    if isinstance(value, (bool, float)):
        raise InvalidAmount(
            f"credit amounts must be decimal strings or integers, not {type(value).__name__}",
            value=repr(value),
        )
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 40:
            raise InvalidAmount("credit amount is empty or too long", value=value[:50])
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise InvalidAmount("credit amount is not a decimal number", value=value[:50]) from None
    else:
        raise InvalidAmount(f"unsupported credit amount type {type(value).__name__}", value=repr(value)[:50])
    if not number.is_finite():
        raise InvalidAmount("credit amount must be finite", value=str(value)[:50])
    if abs(number) > MAX_CREDITS:
        raise InvalidAmount(f"credit amount exceeds {MAX_CREDITS} credits", value=str(value)[:50])
    millis = number * MC_PER_CREDIT
    if millis != millis.to_integral_value():
        raise InvalidAmount("credit amounts have at most 3 decimals", value=str(value)[:50])
    return int(millis)


def format_credits(millicredits: int) -> str:
    """Format millicredits as a credit string with exactly three decimals (``12345 -> "12.345"``)."""
    if isinstance(millicredits, bool) or not isinstance(millicredits, int):
        raise InvalidAmount("millicredits must be an int", value=repr(millicredits))
    sign = "-" if millicredits < 0 else ""
    whole, frac = divmod(abs(millicredits), MC_PER_CREDIT)
    return f"{sign}{whole}.{frac:03d}"


def round_mc(amount: Decimal) -> int:
    """Round a priced amount, in millicredits, half-up to a whole millicredit.

    The one place pricing rounds: every priced item is rounded once, here, and the rounded items are
    summed (never the other way round), so a report's total equals the sum of its lines.
    """
    if not isinstance(amount, Decimal):
        raise InvalidAmount("pricing works in Decimal", value=repr(amount))
    if not amount.is_finite():
        raise InvalidAmount("priced amount must be finite", value=str(amount))
    return int(amount.quantize(_MC, rounding=ROUND_HALF_UP))
