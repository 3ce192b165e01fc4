"""A customer account's profile (email, name, low-balance threshold) and its Stripe customer, created on
first use. Its balance is ``ledger.balances``'s, its history ``ledger.history``'s."""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol

from pydantic import TypeAdapter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import BillingError
from billing_core.ledger.balances import AccountBalance, read_balance
from billing_core.ledger.wallet_rows import keep_first_stripe_customer, update_profile
from billing_core.notify import low_balance
from billing_core.pricing.limits import store_account_limits
from billing_core.types import StripeCustomerId

# Stripe's answer is checked like any input before it is stored.
_STRIPE_CUSTOMER: TypeAdapter[str] = TypeAdapter(StripeCustomerId)


class StripeCustomerTaken(BillingError):
    """The Stripe customer id is already attached to another account (details: account, stripe_customer_id)."""

    code = "stripe_customer_taken"


class _Unset(Enum):
    UNSET = 0


# "Not given" as distinct from None, which clears a field.
UNSET = _Unset.UNSET


class CustomerGateway(Protocol):
    def create_customer(
        self, *, account: str, email: str | None = None, name: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]: ...


# -- profile ------------------------------------------------------------------------------------------
def update_account(
    session_factory: sessionmaker[Session],
    account: str,
    *,
    email: str | _Unset | None = UNSET,
    name: str | _Unset | None = UNSET,
    low_balance_threshold_mc: int | _Unset | None = UNSET,
    stripe_customer_id: str | _Unset | None = UNSET,
    plan: str | _Unset | None = UNSET,
    limit_overrides: dict[str, int | None] | _Unset | None = UNSET,
) -> AccountBalance:
    """Change the fields given (None clears one), creating the wallet if the account is new; returns the
    account. A Stripe customer id already on another account raises ``StripeCustomerTaken``. The values are
    validated already (``AccountUpdateBody`` of the API, on the shared types)."""
    given = {
        "email": email,
        "name": name,
        "low_balance_threshold_mc": low_balance_threshold_mc,
        "stripe_customer_id": stripe_customer_id,
    }
    changes = {column: value for column, value in given.items() if value is not UNSET}

    def work(uow: unit_of_work.UnitOfWork) -> AccountBalance:
        # The wallet lock orders this change against holds and debits on the same account, like any command.
        wallet = uow.book.lock_wallet(account, create=True)
        if changes:
            update_profile(uow.session, wallet.id, changes)
        if "low_balance_threshold_mc" in changes:
            # A threshold lowered to or below the balance re-arms a notice sent under the old one; the posting
            # engine watches every balance change, and this is the one change of a threshold.
            low_balance.rearm(uow.session, [account])
        # Token limits (pricing/limits.py): the plan (checked against the catalog by the caller), overrides.
        limits = {k: v for k, v in (("plan", plan), ("overrides", limit_overrides)) if v is not UNSET}
        if limits:
            store_account_limits(uow.session, wallet.id, **limits)
        balance = read_balance(uow.session, account)
        assert balance is not None, "the wallet was locked (created) above"
        return balance

    try:
        return unit_of_work.run(session_factory, work)
    except IntegrityError as exc:
        # The only unique column written here is stripe_customer_id: the constraint is the check, so two
        # accounts claiming one customer at the same moment cannot both win.
        if getattr(exc.orig, "sqlstate", None) != "23505":
            raise
        raise StripeCustomerTaken(
            "this Stripe customer is attached to another account",
            account=account,
            stripe_customer_id=changes.get("stripe_customer_id"),
        ) from None


def ensure_stripe_customer(session_factory: sessionmaker[Session], gateway: CustomerGateway, account: str) -> str:
    """The account's Stripe customer id, creating the customer through ``gateway`` on first use.

    The Stripe call happens outside any transaction (no wallet lock held across the network). Its
    idempotency key ``customer:<account>`` makes two concurrent first checkouts get one customer, and the
    id is stored only if the wallet still has none, so both end up using the same one.
    """
    with session_factory() as session:
        balance = read_balance(session, account)
    if balance is not None and balance.stripe_customer_id:
        return balance.stripe_customer_id
    customer = gateway.create_customer(
        account=account,
        email=balance.email if balance else None,
        name=balance.name if balance else None,
        idempotency_key=f"customer:{account}",
    )
    customer_id = _STRIPE_CUSTOMER.validate_python(customer.get("id"))

    def work(uow: unit_of_work.UnitOfWork) -> str:
        wallet = uow.book.lock_wallet(account, create=True)
        return keep_first_stripe_customer(uow.session, wallet.id, customer_id)

    return unit_of_work.run(session_factory, work)
