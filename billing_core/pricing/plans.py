"""Plans as the catalog declares them: their token limits, and for a plan one subscribes to, its Stripe prices
and credit allowance.

A plan names its token limits: hourly and daily rate limits and a monthly quota; ``None`` is unlimited.

A plan with ``prices`` is sold as a Stripe subscription (``POST /v1/subscriptions``): one recurring price per
interval (``month``, ``year``), each ``unit_amount`` minor units of ``currency``, optionally pinned to a Stripe
Price id (``stripe_price``) that then wins over the one ``billing stripe sync-products`` stored. A plan without
prices (``payg``, ``free``) cannot be subscribed to. ``allowance_credits`` is credited per month of the plan
(a yearly plan too), ``trial_allowance_credits`` once for a trial of ``trial_days`` days (0: no trial), and
``rollover_cap_credits`` caps what an unspent allowance carries into the next month. The allowance terms
travel to Stripe as the Price's metadata (``billing_core.stripe.catalog_sync``), where the invoice handlers
read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import Field, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from billing_core.pricing.file_spec import FileSpec
from billing_core.pricing.packages import StripePriceId
from billing_core.types import CreditsNonNegative, Currency, DisplayName, UnitAmount

DEFAULT_HOURLY_TOKENS = 500_000
DEFAULT_DAILY_TOKENS = 2_000_000
# Stripe's own ceiling for ``trial_period_days``.
MAX_TRIAL_DAYS = 730

Interval = Literal["month", "year"]
INTERVALS: tuple[Interval, ...] = ("month", "year")
# Months of the plan one payment of an interval covers (the allowance is per month).
MONTHS_PER_INTERVAL = {"month": 1, "year": 12}


class PlanPriceSpec(FileSpec):
    """What one interval of a plan costs: ``unit_amount`` minor units of ``currency`` per interval."""

    unit_amount: UnitAmount
    currency: Currency
    stripe_price: StripePriceId | None = None


TrialDays = Annotated[StrictInt, Field(ge=0, le=MAX_TRIAL_DAYS, description="0: no trial")]


class PlanSpec(FileSpec):
    name: DisplayName
    hourly_tokens: int | None = Field(DEFAULT_HOURLY_TOKENS, ge=0)
    daily_tokens: int | None = Field(DEFAULT_DAILY_TOKENS, ge=0)
    monthly_tokens: int | None = Field(None, ge=0)
    upgrade_url: str | None = None
    # Subscriptions (none of these: a plan nobody subscribes to).
    prices: dict[Interval, PlanPriceSpec] = {}
    allowance_credits: CreditsNonNegative = 0
    trial_days: TrialDays = 0
    trial_allowance_credits: CreditsNonNegative = 0
    rollover_cap_credits: CreditsNonNegative = 0

    @model_validator(mode="after")
    def _trial_allowance_needs_a_trial(self) -> PlanSpec:
        if self.trial_allowance_credits and not self.trial_days:
            raise PydanticCustomError("trial", "trial_allowance_credits needs trial_days above 0")
        if (self.trial_days or self.allowance_credits) and not self.prices:
            raise PydanticCustomError("prices", "a plan with an allowance or a trial needs prices")
        return self


@dataclass(frozen=True, slots=True)
class PlanPrice:
    """One interval of a subscribable plan, with the allowance terms its Stripe Price carries (millicredits;
    ``allowance_mc`` per month of the plan)."""

    plan: str
    name: str
    interval: Interval
    unit_amount: int
    currency: str
    allowance_mc: int
    trial_days: int
    trial_allowance_mc: int
    rollover_cap_mc: int
    stripe_price: str | None = None

    @property
    def ref(self) -> str:
        """Its key in ``stripe_catalog`` (kind ``plan``): ``<plan>:<interval>``."""
        return f"{self.plan}:{self.interval}"

    @property
    def monthly_amount(self) -> Fraction:
        """What a month of it costs, exactly: to compare two prices of one currency."""
        return Fraction(self.unit_amount, MONTHS_PER_INTERVAL[self.interval])

    @classmethod
    def of(cls, plan_id: str, spec: PlanSpec, interval: Interval) -> PlanPrice:
        price = spec.prices[interval]
        return cls(
            plan=plan_id,
            name=spec.name,
            interval=interval,
            unit_amount=price.unit_amount,
            currency=price.currency,
            allowance_mc=spec.allowance_credits,
            trial_days=spec.trial_days,
            trial_allowance_mc=spec.trial_allowance_credits,
            rollover_cap_mc=spec.rollover_cap_credits,
            stripe_price=price.stripe_price,
        )


def plan_prices(plans: dict[str, PlanSpec]) -> list[PlanPrice]:
    """Every (plan, interval) sold as a subscription, in the file's plan order, month before year."""
    return [PlanPrice.of(plan_id, spec, i) for plan_id, spec in plans.items() for i in INTERVALS if i in spec.prices]


# The token limits a plan sets and an account may override, in the order hour, day, month.
LIMIT_FIELDS = ("hourly_tokens", "daily_tokens", "monthly_tokens")
# Above any real count, below JSON's and bigint's limits.
MAX_LIMIT_TOKENS = 10**15


class LimitOverrides(FileSpec):
    """Per-account overrides of the plan's limits: a field given overrides (``null`` = unlimited), a field
    left out keeps the plan's."""

    hourly_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)
    daily_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)
    monthly_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)

    def given(self) -> dict[str, int | None]:
        """The fields the client sent, as stored in ``wallets.limit_overrides``."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS if name in self.model_fields_set}
