"""Credit packages sold through Stripe Checkout, as the price table lists them: their file model
(``PackageSpec``, one entry of the ``packages`` list) and what the rest of the code works with (``Package``).

A package sells ``credits`` for ``unit_amount`` minor units of ``currency`` (any lowercase ISO code Stripe
accepts), optionally with ``bonus_credits`` on top (the volume discount of the larger packages). The bonus
is credited with the purchase, in the same grant: a refund of the payment then takes back its share of both,
in proportion, and no bonus outlives the purchase that earned it (a separate promotional grant would be
spent first and survive a refund).

``payment_methods`` are the Checkout Session's ``payment_method_types``; some settle later (PIX, boleto,
bank debits): the session completes unpaid, and the credits come with
``checkout.session.async_payment_succeeded`` (``stripe.event_handlers``). ``stripe_price`` pins a Stripe
Price id in the file; it wins over the one ``billing stripe sync-products`` stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from billing_core.pricing.file_spec import FileSpec
from billing_core.types import CreditsNonNegative, CreditsPositive, Currency, DisplayName, PackageId, UnitAmount

if TYPE_CHECKING:
    from billing_core.pricing.catalog import PriceTable

# The Checkout payment method types a package may offer, and the one currency a method is limited to (PIX and
# boleto are Brazilian: BRL only; a US bank debit USD, SEPA EUR). ``card`` and ``link`` take any currency.
PaymentMethod = Literal["card", "link", "pix", "boleto", "us_bank_account", "sepa_debit"]
METHOD_CURRENCY: dict[str, str] = {"pix": "brl", "boleto": "brl", "us_bank_account": "usd", "sepa_debit": "eur"}
# Methods whose money arrives after the session completes (its payment_status is "unpaid" until then).
ASYNC_METHODS = frozenset({"pix", "boleto", "us_bank_account", "sepa_debit"})
STRIPE_PRICE_PATTERN = r"^price_[A-Za-z0-9_]{1,250}$"
StripePriceId = Annotated[StrictStr, Field(pattern=STRIPE_PRICE_PATTERN, description="a Stripe Price id (price_...)")]


class PackageSpec(FileSpec):
    """One entry of the price file's ``packages`` list."""

    id: PackageId
    name: DisplayName
    credits: CreditsPositive
    unit_amount: UnitAmount
    currency: Currency
    bonus_credits: CreditsNonNegative = 0
    payment_methods: tuple[PaymentMethod, ...] = Field(("card",), min_length=1, max_length=6)
    description: DisplayName | None = None
    stripe_price: StripePriceId | None = None

    @model_validator(mode="after")
    def _methods_fit_the_currency(self) -> PackageSpec:
        if len(set(self.payment_methods)) != len(self.payment_methods):
            raise PydanticCustomError("payment_methods", "payment_methods lists a method twice")
        for method in self.payment_methods:
            only = METHOD_CURRENCY.get(method)
            if only is not None and only != self.currency:
                raise PydanticCustomError(
                    "payment_methods",
                    "payment method {method} takes {only} only, not {currency}",
                    {"method": method, "only": only, "currency": self.currency},
                )
        return self


@dataclass(frozen=True, slots=True)
class Package:
    """``credits_mc`` (+ ``bonus_mc``) for ``unit_amount`` minor units of ``currency``."""

    id: str
    name: str
    credits_mc: int
    unit_amount: int
    currency: str
    bonus_mc: int = 0
    payment_methods: tuple[str, ...] = ("card",)
    description: str | None = None
    stripe_price: str | None = None

    @property
    def total_mc(self) -> int:
        """What a paid purchase credits: the credits and the bonus."""
        return self.credits_mc + self.bonus_mc

    @property
    def is_async(self) -> bool:
        """Whether some of its methods settle after the session completes."""
        return any(m in ASYNC_METHODS for m in self.payment_methods)

    @classmethod
    def from_spec(cls, spec: PackageSpec) -> Package:
        return cls(
            id=spec.id,
            name=spec.name,
            credits_mc=spec.credits,
            unit_amount=spec.unit_amount,
            currency=spec.currency,
            bonus_mc=spec.bonus_credits,
            payment_methods=tuple(spec.payment_methods),
            description=spec.description,
            stripe_price=spec.stripe_price,
        )


def sellable_packages(table: PriceTable, *, currency: str | None = None) -> list[Package]:
    """Every package of ``table`` in file order, with all its fields (bonus, methods, pinned price),
    optionally only those in ``currency``."""
    packages = [Package.from_spec(spec) for spec in table.spec.packages]
    return packages if currency is None else [p for p in packages if p.currency == currency]


def find_package(table: PriceTable, package_id: str, *, field: str = "package") -> Package:
    """The package ``package_id`` of ``table`` with all its fields, or ``UnknownPackage``."""
    table.package(package_id, field=field)  # the table's own lookup and refusal
    return next(Package.from_spec(spec) for spec in table.spec.packages if spec.id == package_id)
