"""What credits cost and how to buy them: ``POST /v1/estimate``, ``GET /v1/agent-costs``, ``GET /v1/packages``,
``POST /v1/checkout``."""

from __future__ import annotations

from flask import Blueprint

from billing_core.db.engine import raw_read
from billing_core.db.unit_of_work import utcnow
from billing_core.ledger.balances import spendable_mc
from billing_core.pricing.packages import find_package, sellable_packages
from billing_core.pricing.quotes import price_items
from billing_core.stripe.catalog_sync import stored_prices, synced_price
from billing_core.stripe.checkout import open_checkout
from webhook_receiver.auth import require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.sales import sales_guard
from webhook_receiver.schemas import (
    AgentCostAnswer,
    AgentCostsAnswer,
    CheckoutAnswer,
    CheckoutBody,
    EstimateAnswer,
    EstimateBody,
    PackageAnswer,
    PackagesAnswer,
    PackagesQuery,
)
from webhook_receiver.spec import endpoint

bp = Blueprint("catalog", __name__)
PRICING_ERRORS = {
    403: "key_mode_not_allowed",
    422: "invalid_request · invalid_amount · unknown_model (known_models) · unknown_price_code",
}


@bp.post("/v1/estimate")
@require()
@endpoint(body=EstimateBody, body_limit=1024 * 1024, answers={200: EstimateAnswer}, errors=PRICING_ERRORS)
def estimate(body: EstimateBody):
    """Price items without charging (with ``account``: what it could spend now, and whether that is enough);
    each line says how it was priced, as the charge for the same items will record it."""
    quote = price_items(runtime().prices.current(), body.items, mode=body.mode)
    if body.account is None:
        return render(EstimateAnswer.of(quote), exclude_none=True)
    with raw_read(runtime().engine) as conn:
        # What a hold placed now could reserve, not the ledger balance: an expired grant the sweeper has not
        # closed yet still counts in the balance but cannot be spent.
        available = spendable_mc(conn, body.account, utcnow())
    return render(EstimateAnswer.of(quote, available_mc=available))


@bp.get("/v1/agent-costs")
@require()
@endpoint(answers={200: AgentCostsAnswer})
def agent_costs():
    """The flat cost of each agent (credits per run), as the catalog version in effect prices them."""
    table = runtime().prices.current()
    data = [
        AgentCostAnswer(code=a.code, name=a.name, credits=a.credits_mc, description=a.description) for a in table.agents
    ]
    return render(AgentCostsAnswer(data=data, version=table.version))


@bp.get("/v1/packages")
@require()
@endpoint(query=PackagesQuery, answers={200: PackagesAnswer})
def packages(query: PackagesQuery):
    """The credit packages for sale (``?currency=brl``: those sold in one currency), with the Stripe Price
    checkout sells for each once ``billing stripe sync-products`` ran (or the file pins one)."""
    rt = runtime()
    for_sale = sellable_packages(rt.prices.current(), currency=query.currency)
    with rt.read_session_factory() as session:
        stored = stored_prices(session)
    return render(
        PackagesAnswer(
            data=[PackageAnswer.of(p, p.stripe_price or synced_price(stored, p)) for p in for_sale],
        )
    )


@bp.post("/v1/checkout")
@require("checkout:write")
@endpoint(
    body=CheckoutBody,
    answers={201: CheckoutAnswer},
    errors={
        404: "unknown_package",
        409: "sales_paused",
        502: "stripe_error",
        503: "stripe_unavailable · store_unavailable",
    },
)
def checkout(body: CheckoutBody):
    """A Stripe Checkout Session selling one package; the paid session's webhook credits the account (409
    ``sales_paused`` while the sales guard holds sales)."""
    rt = runtime()
    session = open_checkout(
        rt.session_factory,
        rt.gateway,
        account=body.account,
        package=find_package(rt.prices.current(), body.package),
        success_url=body.success_url,
        cancel_url=body.cancel_url,
        client_key=body.idempotency_key,
        guard=sales_guard().check,
    )
    return render(CheckoutAnswer(id=session.id, url=session.url), status=201)
