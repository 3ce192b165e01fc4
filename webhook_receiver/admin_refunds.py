"""``POST /v1/admin/refunds``: an operator refunds (part of) a purchase through Stripe.

Thin: the body is validated here, the work is ``billing_core.stripe.refunds.refund_payment`` (the Stripe refund
only; its webhook claws the credits back through the normal path).
"""

from __future__ import annotations

from flask import Blueprint, g

from billing_core.admin.operations import audit_refund
from billing_core.errors import BillingError, InvalidCommand
from billing_core.stripe.refunds import STATUS_BY_ERROR, AdminRefund, RefundRequest, refund_payment
from webhook_receiver.auth import require
from webhook_receiver.errors import ApiError
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import AdminRefundAnswer, AdminRefundBody, RefundObject
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_refunds", __name__)


def _actor() -> str:
    key = g.api_key
    return f"api_key {key.prefix} ({key.name})"


@bp.post("/v1/admin/refunds")
@require("admin")
@endpoint(
    body=AdminRefundBody,
    answers={201: AdminRefundAnswer, 200: AdminRefundAnswer},
    errors={
        404: "unknown_payment",
        409: "payment_account_mismatch · refund_exceeds_refundable (refundable, refundable_credits, currency) · "
        "idempotency_conflict",
        422: "invalid_request · invalid_amount · refund_too_small",
        502: "stripe_error",
        503: "stripe_unavailable · store_unavailable",
    },
    tags=("admin",),
)
def create_refund(body: AdminRefundBody):
    """Refund a purchase (its Checkout Session or payment intent) by ``credits`` or ``amount``: the Stripe
    refund is created now (201; 200 when the idempotency key made it before), the credits are clawed back when
    its webhook arrives. More than Stripe can still refund is refused before Stripe is asked (409)."""
    if (body.credits is None) == (body.amount is None):
        raise InvalidCommand("send exactly one of credits or amount", field="credits")
    request = RefundRequest(
        account=body.account,
        payment=body.payment,
        reason=body.reason,
        idempotency_key=body.idempotency_key,
        actor=_actor(),
        credits_mc=body.credits,
        amount=body.amount,
    )
    rt = runtime()
    try:
        refund: AdminRefund = refund_payment(rt.session_factory, rt.gateway, request)
    except BillingError as exc:
        status = STATUS_BY_ERROR.get(type(exc))
        if status is None:
            raise  # the app's own mapping (idempotency_conflict, stripe_error, stripe_unavailable)
        raise ApiError(status, exc.code, exc.message, **exc.details) from None
    if not refund.replayed:
        # After Stripe answered: a network call cannot share the audit row's transaction (DESIGN rule 10).
        audit_refund(
            rt.session_factory,
            actor=request.actor,
            account=body.account,
            request_id=body.idempotency_key,
            reason=body.reason,
            after={
                "refund": refund.refund_id,
                "status": refund.status,
                "amount": refund.amount,
                "currency": refund.currency,
                "credits_mc": refund.credits_mc,
                "payment_intent": refund.payment_intent,
            },
        )
    answer = AdminRefundAnswer(
        refund=RefundObject(id=refund.refund_id, status=refund.status, amount=refund.amount, currency=refund.currency),
        credits=refund.credits_mc,
        payment=refund.payment_intent,
        checkout_session=refund.checkout_session,
        replayed=refund.replayed,
    )
    return render(answer, status=200 if refund.replayed else 201)
