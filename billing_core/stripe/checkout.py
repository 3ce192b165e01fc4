"""Buying a credit package: the Stripe Checkout Session for one, created through the gateway.

The customer is ensured first (``accounts.profile.ensure_stripe_customer``: the Stripe call outside any
transaction), then the session is created; nothing is credited here, the paid session's webhook does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from billing_core.accounts.profile import CustomerGateway, ensure_stripe_customer
from billing_core.errors import PaymentsRefused, PaymentsUnavailable
from billing_core.pricing.packages import Package
from billing_core.stripe.gateway import GatewayError, StripeUnavailable
from billing_core.units import format_credits


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
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


def open_checkout(
    session_factory: sessionmaker[Session],
    gateway: CheckoutGateway | None,
    *,
    account: str,
    package: Package,
    success_url: str,
    cancel_url: str,
    client_key: str | None = None,
) -> CheckoutSession:
    """A Checkout Session selling ``package`` to ``account``. ``client_key`` makes a retried request open the
    same session. Raises ``PaymentsUnavailable`` (no gateway, or Stripe unreachable) or ``PaymentsRefused``."""
    if gateway is None:
        raise PaymentsUnavailable("payments are not configured on this server (STRIPE_API_KEY)")
    try:
        customer = ensure_stripe_customer(session_factory, gateway, account)
        session = gateway.create_checkout_session(
            account=account,
            package_id=package.id,
            package_name=package.name,
            credits=format_credits(package.credits_mc),
            unit_amount=package.unit_amount,
            currency=package.currency,
            success_url=success_url,
            cancel_url=cancel_url,
            customer=customer,
            # Scoped to the account: the same client key from two accounts must open two sessions.
            idempotency_key=f"checkout:{account}:{client_key}" if client_key else None,
        )
    except StripeUnavailable as exc:
        raise PaymentsUnavailable(f"Stripe is unavailable: {exc.message}") from None
    except GatewayError as exc:
        raise PaymentsRefused(f"Stripe refused the request: {exc.message}", stripe_code=exc.code) from None
    return CheckoutSession(id=session["id"], url=session["url"])
