"""Subscribing to a plan, changing it and canceling it, through the gateway (``POST /v1/subscriptions``,
``POST``/``DELETE /v1/subscriptions/<id>``, ``POST /v1/billing-portal``).

Nothing here writes a subscription or an invoice: the Stripe event handlers mirror them into the database and
grant the allowances, from the metadata ``billing stripe sync-products`` put on the plan's Price
(``catalog_sync.plan_price_metadata``). What is decided here, before Stripe is asked for anything:

- the plan and interval exist and are sold (``unknown_plan``, ``unknown_interval``);
- the account has no subscription that is active, trialing or past due (``subscription_exists``);
- the plan's Price was synced (``plan_not_synced``): a recurring Price cannot be sold inline, and its metadata is
  what the allowance is granted from;
- the trial: the plan's ``trial_days``, unless the account ever had a subscription (one trial per account).

Then the customer is ensured (the Stripe call outside any transaction, ``accounts.profile``) and the Checkout
Session created, its ``metadata`` and ``subscription_data[metadata]`` naming ``account``, ``plan`` and
``interval``, ``client_reference_id`` the account.

A plan change is an upgrade when the new plan grants a higher monthly allowance or costs more a month: Stripe
switches the price now and invoices the prorated difference at once (``always_invoice``; the handler grants the
prorated allowance when that invoice is paid). Otherwise it is a downgrade: the price switches without
proration (``none``) and the next renewal invoices the new plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from billing_core.accounts.profile import CustomerGateway, ensure_stripe_customer
from billing_core.errors import BillingError, PaymentsRefused, PaymentsUnavailable, UnknownAccount, UnknownPlan
from billing_core.ledger.balances import read_balance
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.plans import INTERVALS, PlanPrice
from billing_core.stripe.catalog_sync import plan_price_for
from billing_core.stripe.gateway import GatewayError, StripeUnavailable
from billing_core.stripe.subscription_views import (
    ENDED_STATUSES,
    StoredSubscription,
    find_subscription,
    subscription_history,
)


# -- errors -------------------------------------------------------------------------------------------------
class UnknownInterval(BillingError):
    """The plan has no price for that interval (details: plan, interval, known_intervals)."""

    code = "unknown_interval"


class SubscriptionExists(BillingError):
    """The account already has an active, trialing or past-due subscription (details: account, subscription)."""

    code = "subscription_exists"


class PlanNotSynced(BillingError):
    """The plan's Stripe Price was never created (details: plan, interval)."""

    code = "plan_not_synced"


class UnknownSubscription(BillingError):
    """No subscription of ours has this id (details: subscription)."""

    code = "unknown_subscription"


class SubscriptionEnded(BillingError):
    """The subscription is canceled: it can be neither changed nor canceled again (details: subscription)."""

    code = "subscription_canceled"


class NoStripeCustomer(BillingError):
    """The account has no Stripe customer yet (details: account)."""

    code = "no_stripe_customer"


class SubscriptionGateway(CustomerGateway, Protocol):
    def create_subscription_checkout_session(
        self,
        *,
        customer: str,
        price: str,
        success_url: str,
        cancel_url: str,
        client_reference_id: str | None = None,
        metadata: dict[str, str] | None = None,
        subscription_metadata: dict[str, str] | None = None,
        trial_period_days: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...
    def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]: ...
    def update_subscription(self, subscription_id: str, **fields: Any) -> dict[str, Any]: ...
    def cancel_subscription(self, subscription_id: str) -> dict[str, Any]: ...
    def create_billing_portal_session(self, *, customer: str, return_url: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SubscriptionCheckout:
    id: str
    url: str
    trial_days: int | None


# -- the catalog's side ---------------------------------------------------------------------------------------
def subscribable_plans(table: PriceTable) -> list[str]:
    return [plan for plan, spec in table.spec.plans.items() if spec.prices]


def find_plan_price(table: PriceTable, plan: str, interval: str) -> PlanPrice:
    """``plan`` at ``interval`` as the catalog sells it, or ``UnknownPlan`` (with the plans one can subscribe to)
    or ``UnknownInterval`` (a plan without a price for it, such as ``payg``)."""
    spec = table.spec.plans.get(plan)
    if spec is None:
        known = subscribable_plans(table)
        raise UnknownPlan(
            f"unknown plan {plan!r}; plans one can subscribe to: {', '.join(known) or 'none'}",
            plan=plan,
            known_plans=known,
            field="plan",
        )
    for candidate in INTERVALS:
        if candidate == interval and candidate in spec.prices:
            return PlanPrice.of(plan, spec, candidate)
    known_intervals = [i for i in INTERVALS if i in spec.prices]
    message = (
        f"plan {plan!r} has no {interval!r} price (it has: {', '.join(known_intervals)})"
        if known_intervals
        else f"plan {plan!r} is not sold as a subscription"
    )
    raise UnknownInterval(message, plan=plan, interval=interval, known_intervals=known_intervals, field="interval")


def is_upgrade(current: PlanPrice | None, new: PlanPrice) -> bool:
    """A higher monthly allowance, or a higher price a month (in the same currency); from a plan the catalog no
    longer sells, any change is an upgrade (billed now rather than given for nothing until the renewal)."""
    if current is None:
        return True
    if new.allowance_mc != current.allowance_mc:
        return new.allowance_mc > current.allowance_mc
    return new.currency == current.currency and new.monthly_amount > current.monthly_amount


def _metadata(account: str, price: PlanPrice) -> dict[str, str]:
    return {"account": account, "plan": price.plan, "interval": price.interval}


def _stripe_errors(exc: GatewayError) -> BillingError:
    if isinstance(exc, StripeUnavailable):
        return PaymentsUnavailable(f"Stripe is unavailable: {exc.message}")
    return PaymentsRefused(f"Stripe refused the request: {exc.message}", stripe_code=exc.code)


def _require_gateway(gateway: SubscriptionGateway | None) -> SubscriptionGateway:
    if gateway is None:
        raise PaymentsUnavailable("payments are not configured on this server (STRIPE_API_KEY)")
    return gateway


def _stored_price(session_factory: sessionmaker[Session], price: PlanPrice) -> str:
    with session_factory() as db:
        found = plan_price_for(db, price)
    if found is None:
        raise PlanNotSynced(
            f"plan {price.plan!r} ({price.interval}) has no Stripe Price yet: run `billing stripe sync-products`",
            plan=price.plan,
            interval=price.interval,
        )
    return found


# -- subscribing ------------------------------------------------------------------------------------------------
def open_subscription_checkout(
    session_factory: sessionmaker[Session],
    gateway: SubscriptionGateway | None,
    *,
    account: str,
    price: PlanPrice,
    success_url: str,
    cancel_url: str,
    client_key: str | None = None,
    guard: Callable[[], object] | None = None,
) -> SubscriptionCheckout:
    """A Checkout Session in subscription mode for ``price``'s plan and interval. Raises ``SubscriptionExists``,
    ``PlanNotSynced``, ``SalesPaused`` (from ``guard``), ``PaymentsUnavailable`` or ``PaymentsRefused``; none of
    them writes anything."""
    gateway = _require_gateway(gateway)
    if guard is not None:
        guard()
    with session_factory() as db:
        history = subscription_history(db, account)
    if history.live is not None:
        raise SubscriptionExists(
            f"account {account!r} already has a subscription ({history.live}): change its plan instead",
            account=account,
            subscription=history.live,
        )
    stripe_price = _stored_price(session_factory, price)
    # One trial per account: an account that ever had a subscription (canceled ones too) pays from day one.
    trial_days = price.trial_days if price.trial_days and history.count == 0 else None
    # Scoped to the account: the same client key from two accounts must open two sessions.
    key = f"subscription-checkout:{account}:{client_key}" if client_key else None
    metadata = _metadata(account, price)
    try:
        customer = ensure_stripe_customer(session_factory, gateway, account)
        session = gateway.create_subscription_checkout_session(
            customer=customer,
            price=stripe_price,
            success_url=success_url,
            cancel_url=cancel_url,
            client_reference_id=account,
            metadata=metadata,
            subscription_metadata=metadata,
            trial_period_days=trial_days,
            idempotency_key=key,
        )
    except GatewayError as exc:
        raise _stripe_errors(exc) from None
    return SubscriptionCheckout(id=session["id"], url=session["url"], trial_days=trial_days)


# -- changing and canceling ---------------------------------------------------------------------------------------
def _stored_subscription(session_factory: sessionmaker[Session], subscription_id: str) -> StoredSubscription:
    with session_factory() as db:
        found = find_subscription(db, subscription_id)
    if found is None:
        raise UnknownSubscription(f"no subscription {subscription_id!r}", subscription=subscription_id)
    if found.ended:
        raise SubscriptionEnded(f"subscription {subscription_id!r} is canceled", subscription=subscription_id)
    return found


def current_plan_price(table: PriceTable, stored: StoredSubscription) -> PlanPrice | None:
    """The catalog's terms of the plan the subscription is on, or None if the catalog no longer sells it."""
    try:
        return find_plan_price(table, stored.view.plan, stored.view.interval)
    except (UnknownPlan, UnknownInterval):
        return None


@dataclass(frozen=True)
class SubscriptionResult:
    """A subscription as Stripe answered a change, with the plan and interval it is now on; ``change`` is
    ``upgrade``, ``downgrade``, ``none`` (already on that plan and interval) or ``cancel``."""

    subscription: dict[str, Any]
    plan: str
    interval: str
    change: str


def change_plan(
    session_factory: sessionmaker[Session],
    gateway: SubscriptionGateway | None,
    table: PriceTable,
    *,
    subscription_id: str,
    plan: str,
    interval: str | None = None,
    client_key: str | None = None,
) -> SubscriptionResult:
    """Move the subscription to ``plan`` at ``interval`` (default: the interval it has): an upgrade now with
    ``always_invoice``, a downgrade without proration (``none``). The plan and interval it is on already
    change nothing. Raises ``UnknownSubscription``, ``SubscriptionEnded``, ``UnknownPlan``, ``UnknownInterval``,
    ``PlanNotSynced``, ``PaymentsUnavailable``, ``PaymentsRefused``."""
    gateway = _require_gateway(gateway)
    stored = _stored_subscription(session_factory, subscription_id)
    price = find_plan_price(table, plan, interval or stored.view.interval)
    stripe_price = _stored_price(session_factory, price)
    upgrade = is_upgrade(current_plan_price(table, stored), price)
    try:
        subscription = gateway.retrieve_subscription(subscription_id)
        if subscription.get("status") in ENDED_STATUSES:
            raise SubscriptionEnded(f"subscription {subscription_id!r} is canceled", subscription=subscription_id)
        item = subscription["items"]["data"][0]  # one item: the plan's Price
        if item["price"]["id"] == stripe_price:
            return SubscriptionResult(subscription, price.plan, price.interval, "none")
        fields: dict[str, Any] = {
            "items": [{"id": item["id"], "price": stripe_price}],
            "proration_behavior": "always_invoice" if upgrade else "none",
            "metadata": _metadata(stored.account, price),
        }
        if client_key:
            fields["idempotency_key"] = f"subscription-change:{subscription_id}:{client_key}"
        updated = gateway.update_subscription(subscription_id, **fields)
    except GatewayError as exc:
        raise _stripe_errors(exc) from None
    return SubscriptionResult(updated, price.plan, price.interval, "upgrade" if upgrade else "downgrade")


def cancel(
    session_factory: sessionmaker[Session],
    gateway: SubscriptionGateway | None,
    *,
    subscription_id: str,
    at_period_end: bool = True,
) -> SubscriptionResult:
    """Cancel at the period's end (``cancel_at_period_end``: nothing more is billed, the period paid for runs
    out), or now. Raises ``UnknownSubscription``, ``SubscriptionEnded``, ``PaymentsUnavailable``,
    ``PaymentsRefused``."""
    gateway = _require_gateway(gateway)
    stored = _stored_subscription(session_factory, subscription_id)
    try:
        if at_period_end:
            subscription = gateway.update_subscription(subscription_id, cancel_at_period_end=True)
        else:
            subscription = gateway.cancel_subscription(subscription_id)
    except GatewayError as exc:
        raise _stripe_errors(exc) from None
    return SubscriptionResult(subscription, stored.view.plan, stored.view.interval, "cancel")


def open_billing_portal(
    session_factory: sessionmaker[Session], gateway: SubscriptionGateway | None, *, account: str, return_url: str
) -> str:
    """The Billing Portal URL of the account's Stripe customer. Raises ``UnknownAccount``, ``NoStripeCustomer``,
    ``PaymentsUnavailable``, ``PaymentsRefused``."""
    gateway = _require_gateway(gateway)
    with session_factory() as db:
        balance = read_balance(db, account)
    if balance is None:
        raise UnknownAccount.named(account)
    if not balance.stripe_customer_id:
        raise NoStripeCustomer(
            f"account {account!r} has no Stripe customer yet: it gets one with its first checkout",
            account=account,
        )
    try:
        session = gateway.create_billing_portal_session(customer=balance.stripe_customer_id, return_url=return_url)
    except GatewayError as exc:
        raise _stripe_errors(exc) from None
    return str(session["url"])
