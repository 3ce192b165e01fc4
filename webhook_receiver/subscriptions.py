"""Plans bought as Stripe subscriptions: ``POST /v1/subscriptions`` (a Checkout Session in subscription mode),
``POST``/``DELETE /v1/subscriptions/<id>`` (change the plan, cancel), ``POST /v1/billing-portal`` and
``GET /v1/accounts/<account>/invoices``. The domain is ``billing_core.stripe.subscription_checkout``; the
subscriptions and invoices these read are mirrored from Stripe by the event handlers."""

from __future__ import annotations

from flask import Blueprint

from billing_core.stripe.subscription_checkout import (
    cancel,
    change_plan,
    find_plan_price,
    open_billing_portal,
    open_subscription_checkout,
)
from billing_core.stripe.subscription_views import list_invoices
from webhook_receiver.auth import require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.sales import sales_guard
from webhook_receiver.schemas import (
    BillingPortalAnswer,
    BillingPortalBody,
    CancelQuery,
    InvoicesAnswer,
    InvoicesQuery,
    SubscriptionAnswer,
    SubscriptionBody,
    SubscriptionChangeAnswer,
    SubscriptionChangeBody,
    SubscriptionCheckoutAnswer,
)
from webhook_receiver.spec import endpoint

bp = Blueprint("subscriptions", __name__)

STRIPE_ERRORS = {502: "stripe_error", 503: "stripe_unavailable · store_unavailable"}
UNKNOWN_SUBSCRIPTION = {404: "unknown_subscription", 409: "subscription_canceled"}


@bp.post("/v1/subscriptions")
@require("checkout:write")
@endpoint(
    body=SubscriptionBody,
    answers={201: SubscriptionCheckoutAnswer},
    errors={
        409: "subscription_exists · plan_not_synced · sales_paused",
        422: "unknown_plan (known_plans) · unknown_interval (known_intervals) · invalid_request",
        **STRIPE_ERRORS,
    },
)
def subscribe(body: SubscriptionBody):
    """A Stripe Checkout Session subscribing the account to a plan (with the plan's trial, unless the account
    had a subscription before); the paid session's webhooks start the subscription and grant its allowance."""
    rt = runtime()
    session = open_subscription_checkout(
        rt.session_factory,
        rt.gateway,
        account=body.account,
        price=find_plan_price(rt.prices.current(), body.plan, body.interval),
        success_url=body.success_url,
        cancel_url=body.cancel_url,
        client_key=body.idempotency_key,
        guard=sales_guard().check,
    )
    return render(SubscriptionCheckoutAnswer(id=session.id, url=session.url, trial_days=session.trial_days), status=201)


@bp.post("/v1/subscriptions/<subscription_id>")
@require("checkout:write")
@endpoint(
    body=SubscriptionChangeBody,
    answers={200: SubscriptionChangeAnswer},
    errors={
        **UNKNOWN_SUBSCRIPTION,
        409: "subscription_canceled · plan_not_synced",
        422: "unknown_plan (known_plans) · unknown_interval (known_intervals) · invalid_request",
        **STRIPE_ERRORS,
    },
)
def change(subscription_id: str, body: SubscriptionChangeBody):
    """Change the plan (and interval; default: the one it has): an upgrade (a higher monthly allowance or price)
    applies now and Stripe invoices the prorated difference at once; a downgrade takes effect at the next
    renewal's invoice."""
    rt = runtime()
    result = change_plan(
        rt.session_factory,
        rt.gateway,
        rt.prices.current(),
        subscription_id=subscription_id,
        plan=body.plan,
        interval=body.interval,
        client_key=body.idempotency_key,
    )
    shown = SubscriptionAnswer.of_stripe(result.subscription, plan=result.plan, interval=result.interval)
    return render(SubscriptionChangeAnswer(**shown.model_dump(), change=result.change))


@bp.delete("/v1/subscriptions/<subscription_id>")
@require("checkout:write")
@endpoint(query=CancelQuery, answers={200: SubscriptionAnswer}, errors={**UNKNOWN_SUBSCRIPTION, **STRIPE_ERRORS})
def cancel_subscription(subscription_id: str, query: CancelQuery):
    """Cancel: at the end of the period paid for (``?at_period_end=true``, the default) or now (``false``)."""
    rt = runtime()
    result = cancel(rt.session_factory, rt.gateway, subscription_id=subscription_id, at_period_end=query.at_period_end)
    return render(SubscriptionAnswer.of_stripe(result.subscription, plan=result.plan, interval=result.interval))


@bp.post("/v1/billing-portal")
@require("checkout:write")
@endpoint(
    body=BillingPortalBody,
    answers={200: BillingPortalAnswer},
    errors={404: "unknown_account", 409: "no_stripe_customer", **STRIPE_ERRORS},
)
def billing_portal(body: BillingPortalBody):
    """A Stripe Billing Portal session for the account's customer: cards, invoices, the subscription."""
    rt = runtime()
    url = open_billing_portal(rt.session_factory, rt.gateway, account=body.account, return_url=body.return_url)
    return render(BillingPortalAnswer(url=url))


@bp.get("/v1/accounts/<account>/invoices")
@require("accounts:read")
@endpoint(
    query=InvoicesQuery,
    answers={200: InvoicesAnswer},
    errors={404: "unknown_account", 400: "invalid_cursor"},
)
def invoices(account: str, query: InvoicesQuery):
    """The account's Stripe invoices as mirrored by the webhooks, newest first, a page at a time."""
    with runtime().read_session_factory() as session:
        page = list_invoices(session, account, cursor=query.cursor, limit=query.limit)
    return render(InvoicesAnswer.of(page))
