"""Buying a credit package: the Stripe Checkout Session for one, created through the gateway.

The sales guard is asked first (``SalesPaused`` before anything reaches Stripe); then the customer is ensured
(``accounts.profile.ensure_stripe_customer``: the Stripe call outside any transaction) and the session is
created, selling the package's Stripe Price (pinned in the price file, or stored by ``billing stripe
sync-products``) or, before any sync, the amount inline (``price_data``). A stored Price Stripe no longer
knows or has deactivated (an emulator restarted, a Price archived by hand) falls back to the inline amount,
so a sale never fails on the catalog's bookkeeping. Nothing is credited here: the paid session's webhook
does that, with the credits (bonus included) its metadata names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from billing_core.accounts.profile import CustomerGateway, ensure_stripe_customer
from billing_core.errors import PaymentsRefused, PaymentsUnavailable
from billing_core.pricing.packages import Package
from billing_core.stripe.catalog_sync import price_for
from billing_core.stripe.gateway import GatewayError, StripeNotFound, StripeRejected, StripeUnavailable
from billing_core.units import format_credits

log = logging.getLogger(__name__)


class CheckoutGateway(CustomerGateway, Protocol):
    def create_checkout_session(
        self,
        *,
        account: str,
        package_id: str,
        package_name: str,
        credits: str,
        unit_amount: int,
        currency: str,
        success_url: str,
        cancel_url: str,
        customer: str | None = None,
        idempotency_key: str | None = None,
        price: str | None = None,
        payment_method_types: list[str] | None = None,
        bonus_credits: str | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


def _stale_price(exc: GatewayError) -> bool:
    """Stripe refused the line item's Price itself (unknown, or inactive): the inline amount will do."""
    return isinstance(exc, StripeNotFound | StripeRejected) and (exc.param or "").startswith("line_items")


def open_checkout(
    session_factory: sessionmaker[Session],
    gateway: CheckoutGateway | None,
    *,
    account: str,
    package: Package,
    success_url: str,
    cancel_url: str,
    client_key: str | None = None,
    guard: Callable[[], object] | None = None,
) -> CheckoutSession:
    """A Checkout Session selling ``package`` to ``account``. ``client_key`` makes a retried request open the
    same session; ``guard`` (the sales guard's ``check``) may refuse first. Raises ``SalesPaused``,
    ``PaymentsUnavailable`` (no gateway, or Stripe unreachable) or ``PaymentsRefused``."""
    if gateway is None:
        raise PaymentsUnavailable("payments are not configured on this server (STRIPE_API_KEY)")
    if guard is not None:
        guard()
    with session_factory() as db:
        price = price_for(db, package)
    # Scoped to the account: the same client key from two accounts must open two sessions.
    key = f"checkout:{account}:{client_key}" if client_key else None
    try:
        customer = ensure_stripe_customer(session_factory, gateway, account)
        fields: dict[str, Any] = {
            "account": account,
            "package_id": package.id,
            "package_name": package.name,
            # What the paid session credits: the package's credits and its bonus, in one purchase grant.
            "credits": format_credits(package.total_mc),
            "bonus_credits": format_credits(package.bonus_mc) if package.bonus_mc else None,
            "unit_amount": package.unit_amount,
            "currency": package.currency,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "customer": customer,
            "payment_method_types": list(package.payment_methods),
        }
        try:
            session = gateway.create_checkout_session(**fields, price=price, idempotency_key=key)
        except GatewayError as exc:
            if price is None or not _stale_price(exc):
                raise
            log.warning("Stripe refused price %s of package %s (%s); selling it inline", price, package.id, exc)
            session = gateway.create_checkout_session(
                **fields, price=None, idempotency_key=f"{key}:inline" if key else None
            )
    except StripeUnavailable as exc:
        raise PaymentsUnavailable(f"Stripe is unavailable: {exc.message}") from None
    except GatewayError as exc:
        raise PaymentsRefused(f"Stripe refused the request: {exc.message}", stripe_code=exc.code) from None
    return CheckoutSession(id=session["id"], url=session["url"])
