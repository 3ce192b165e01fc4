"""``POST /v1/admin/adjustments``: an operator corrects a balance up or down (seed 003's admin grant shape).

Thin: the body is validated here, the work (the ledger handler and the audit row, one transaction) is
``billing_core.admin.adjustments.adjust``.
"""

from __future__ import annotations

from flask import Blueprint

from billing_core.admin.adjustments import adjust
from webhook_receiver.admin_schemas import AdjustmentAnswer, AdjustmentBody
from webhook_receiver.auth import key_actor, require
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_adjustments", __name__)


@bp.post("/v1/admin/adjustments")
@require("admin")
@endpoint(
    body=AdjustmentBody,
    answers={201: AdjustmentAnswer},
    errors={
        402: "insufficient_credits (taking more than is spendable)",
        404: "unknown_account (taking from an account that has no wallet)",
        409: "idempotency_conflict",
        422: "invalid_request · invalid_amount (zero, or not a credit amount)",
    },
    tags=("admin",),
)
def create_adjustment(body: AdjustmentBody):
    """Add (positive ``credits``: an admin grant; the account is created if new) or take (negative) credits,
    with a reason; audited. A replay answers the first adjustment (``replayed: true``) and writes nothing."""
    result = adjust(
        runtime().session_factory,
        account=body.account,
        credits_mc=body.credits,
        reason=body.reason,
        actor=key_actor(),
        idempotency_key=body.idempotency_key,
    )
    answer = AdjustmentAnswer(
        account=body.account,
        credits=body.credits,
        new_balance=result.new_balance_mc,
        entry_id=result.entry_id,
        grant_id=result.grant_id,
        replayed=result.replayed,
    )
    return render(answer, status=201)
