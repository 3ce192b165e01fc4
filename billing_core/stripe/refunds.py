"""Operators' refunds (``POST /v1/admin/refunds``): the Stripe refund is created here; the clawback is not.

The refund's own webhook (``charge.refunded`` / ``refund.updated``) takes the credits back through the normal
path (``event_handlers.on_charge_refunded``, once per refund id), so a refund made here and one made in
Stripe's dashboard end the same way, and nothing is clawed back for a refund Stripe did not make.

Steps, none under a row lock (DESIGN rule 10): find the purchase in the ledger (a plain read) and check it
belongs to the account; read the payment intent, its charge and the charge's refunds from Stripe; answer a
replay (a refund this request's key already made: it is found by the key in its metadata) with that refund;
work out the amount (``credits`` are converted in proportion to the purchase, rounded so the clawback equals
what was asked where the currency's unit allows); refuse what Stripe can no longer refund (``amount -
amount_refunded``, minus what open or lost disputes withdrew) before asking it; then create the refund, with
an idempotency key derived from the request's, the operator and the reason in its metadata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.errors import BillingError, IdempotencyConflict, PaymentsRefused, PaymentsUnavailable
from billing_core.ledger.disputes import clawbacks_for_payment, disputed_amount
from billing_core.stripe.gateway import GatewayError, StripeNotFound, StripeUnavailable
from billing_core.stripe.purchases import Purchase, find_purchase
from billing_core.units import format_credits


class RefundGateway(Protocol):
    def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]: ...
    def retrieve_charge(self, charge_id: str) -> dict[str, Any]: ...
    def list_refunds(self, *, charge: str) -> list[dict[str, Any]]: ...
    def create_refund(
        self,
        *,
        payment_intent: str | None = None,
        charge: str | None = None,
        amount: int | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]: ...


class UnknownPayment(BillingError):
    """No purchase in the ledger was paid by this Checkout Session or payment intent (HTTP 404)."""

    code = "unknown_payment"


class PaymentOfAnotherAccount(BillingError):
    """The payment bought credits for another account than the one named (HTTP 409)."""

    code = "payment_account_mismatch"


class RefundExceedsRefundable(BillingError):
    """More than Stripe can still refund of the payment (HTTP 409; ``refundable`` in minor units)."""

    code = "refund_exceeds_refundable"


class RefundTooSmall(BillingError):
    """The credits asked for are worth less than the currency's smallest unit (HTTP 422)."""

    code = "refund_too_small"


# For the HTTP layer: the status each of this module's refusals answers with.
STATUS_BY_ERROR: dict[type[BillingError], int] = {
    UnknownPayment: 404,
    PaymentOfAnotherAccount: 409,
    RefundExceedsRefundable: 409,
    RefundTooSmall: 422,
}


@dataclass(frozen=True)
class RefundRequest:
    account: str
    payment: str  # cs_... or pi_...
    reason: str
    idempotency_key: str
    actor: str  # who asks: the admin API key
    credits_mc: int | None = None
    amount: int | None = None

    def fingerprint(self) -> str:
        body = [self.account, self.payment, self.reason, self.credits_mc, self.amount]
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AdminRefund:
    refund_id: str
    status: str
    amount: int
    currency: str
    credits_mc: int  # what the refund's clawback takes
    payment_intent: str
    checkout_session: str | None
    replayed: bool


_CHECKOUT_OF = text(
    "SELECT external_ref, metadata FROM ledger_entries WHERE idempotency_key = :key AND kind = 'purchase'"
)
_SESSION_OF = text(
    "SELECT metadata ->> 'checkout_session' FROM ledger_entries WHERE external_ref = :pi AND kind = 'purchase' "
    "AND idempotency_key LIKE 'checkout:%' ORDER BY id LIMIT 1"
)


def stripe_key(req: RefundRequest) -> str:
    """The Stripe idempotency key of a request: scoped to the account, hashed when it would be too long."""
    key = f"admin-refund:{req.account}:{req.idempotency_key}"
    return key if len(key) <= 200 else "admin-refund:" + hashlib.sha256(key.encode()).hexdigest()


def find_payment(session: Session, payment: str) -> tuple[Purchase, str | None]:
    """The purchase a Checkout Session (``cs_...``) or payment intent (``pi_...``) paid for, and its session."""
    if payment.startswith("cs_"):
        row = session.execute(_CHECKOUT_OF, {"key": f"checkout:{payment}"}).first()
        found = find_purchase(session, row.external_ref) if row is not None and row.external_ref else None
        checkout: str | None = payment
    else:
        found = find_purchase(session, payment)
        checkout = session.execute(_SESSION_OF, {"pi": payment}).scalar() if found else None
    if found is None:
        raise UnknownPayment(f"no purchase paid by {payment!r}", payment=payment)
    return found, checkout


def _clawback(purchase: Purchase, refunded: int, amount: int) -> int:
    """The credits a refund of ``amount`` after ``refunded`` takes back (``on_charge_refunded``'s rule)."""
    return purchase.share(refunded + amount) - purchase.share(refunded)


def amount_for_credits(purchase: Purchase, refunded: int, credits_mc: int) -> int:
    """The amount, in minor units, whose refund takes back ``credits_mc``: exactly when the currency's unit
    allows, else the nearest (the smaller amount on a tie)."""
    exact = Decimal(credits_mc) * Decimal(purchase.amount_total) / Decimal(purchase.amount_mc)
    low = int(exact.to_integral_value(ROUND_FLOOR))
    high = int(exact.to_integral_value(ROUND_CEILING))
    candidates = {a for a in (low - 1, low, high, high + 1) if a >= 0}
    # 0 when the nearest amount is nothing at all: the caller refuses it as too small.
    return min(candidates, key=lambda a: (abs(_clawback(purchase, refunded, a) - credits_mc), a))


def _plain_id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _answer(
    refund: dict[str, Any], purchase: Purchase, checkout: str | None, credits_mc: int, replayed: bool
) -> AdminRefund:
    return AdminRefund(
        refund_id=refund["id"],
        status=str(refund.get("status")),
        amount=int(refund["amount"]),
        currency=str(refund.get("currency")),
        credits_mc=credits_mc,
        payment_intent=purchase.payment_intent,
        checkout_session=checkout,
        replayed=replayed,
    )


def _replay(
    req: RefundRequest, key: str, refunds: list[dict[str, Any]], purchase: Purchase, checkout: str | None
) -> AdminRefund | None:
    """The refund this request's key already made, if any; another request under the same key is a conflict."""
    made = next((r for r in refunds if (r.get("metadata") or {}).get("admin_request") == key), None)
    if made is None:
        return None
    if made["metadata"].get("admin_fingerprint") != req.fingerprint():
        raise IdempotencyConflict(
            "idempotency key already used with a different request", idempotency_key=req.idempotency_key
        )
    before = sum(
        r["amount"]
        for r in refunds
        if r.get("status") in ("succeeded", "pending") and (r["created"], r["id"]) < (made["created"], made["id"])
    )
    return _answer(made, purchase, checkout, _clawback(purchase, before, int(made["amount"])), replayed=True)


def refund_payment(
    session_factory: sessionmaker[Session], gateway: RefundGateway | None, req: RefundRequest
) -> AdminRefund:
    """Create the Stripe refund an operator asked for (see the module docstring). Raises ``UnknownPayment``,
    ``PaymentOfAnotherAccount``, ``RefundExceedsRefundable``, ``RefundTooSmall``, ``IdempotencyConflict``,
    ``PaymentsUnavailable`` or ``PaymentsRefused``."""
    if gateway is None:
        raise PaymentsUnavailable("payments are not configured on this server (STRIPE_API_KEY)")
    with session_factory() as session:  # reads only; closed before Stripe is asked anything
        purchase, checkout = find_payment(session, req.payment)
        if purchase.account != req.account:
            raise PaymentOfAnotherAccount(
                f"payment {req.payment!r} bought credits for another account", payment=req.payment, account=req.account
            )
        disputes_known, disputed = disputed_amount(session, purchase.payment_intent)
        taken_mc = sum(clawbacks_for_payment(session, purchase.payment_intent).values())
    key = stripe_key(req)
    try:
        intent = gateway.retrieve_payment_intent(purchase.payment_intent)
        charge_id = _plain_id(intent.get("latest_charge"))
        if charge_id is None:
            raise RefundExceedsRefundable(
                "the payment has no charge to refund", refundable=0, currency=intent.get("currency")
            )
        charge = gateway.retrieve_charge(charge_id)
        refunds = gateway.list_refunds(charge=charge_id)
    except StripeUnavailable as exc:
        raise PaymentsUnavailable(f"Stripe is unavailable: {exc.message}") from None
    except StripeNotFound:
        raise UnknownPayment(f"Stripe knows no payment {purchase.payment_intent!r}", payment=req.payment) from None
    except GatewayError as exc:
        raise PaymentsRefused(f"Stripe refused the request: {exc.message}", stripe_code=exc.code) from None

    replay = _replay(req, key, refunds, purchase, checkout)
    if replay is not None:
        return replay

    currency = str(charge.get("currency"))
    refunded = int(charge.get("amount_refunded") or 0)
    if charge.get("disputed") and not disputes_known:
        disputed = int(charge.get("amount") or 0)  # a dispute whose webhook has not come yet: nothing is refundable
    refundable = max(0, int(charge.get("amount_captured") or 0) - refunded - disputed)
    if req.amount is not None:
        amount = req.amount
    else:
        assert req.credits_mc is not None  # the request carries exactly one of them
        amount = amount_for_credits(purchase, refunded, req.credits_mc) if purchase.amount_total > 0 else 0
        if amount < 1:
            raise RefundTooSmall(
                "the credits asked for are worth less than the smallest unit of the payment's currency",
                credits=format_credits(req.credits_mc),
                currency=currency,
            )
    if amount > refundable:
        raise RefundExceedsRefundable(
            f"{amount} is more than the {refundable} Stripe can still refund of this payment",
            refundable=refundable,
            refundable_credits=format_credits(min(_clawback(purchase, refunded, refundable), purchase.amount_mc)),
            requested=amount,
            currency=currency,
        )
    credits_mc = max(0, min(_clawback(purchase, refunded, amount), purchase.amount_mc - taken_mc))
    metadata = {
        "account": req.account,
        "admin_actor": req.actor[:500],
        "admin_reason": req.reason[:500],
        "admin_request": key,
        "admin_fingerprint": req.fingerprint(),
    }
    try:
        refund = gateway.create_refund(
            payment_intent=purchase.payment_intent, amount=amount, idempotency_key=key, metadata=metadata
        )
    except StripeUnavailable as exc:
        raise PaymentsUnavailable(f"Stripe is unavailable: {exc.message}") from None
    except GatewayError as exc:
        if exc.code in ("amount_too_large", "charge_already_refunded", "charge_disputed"):
            # Refunded or disputed meanwhile, between our read and this call.
            raise RefundExceedsRefundable(
                f"Stripe refused: {exc.message}",
                refundable=0,
                requested=amount,
                currency=currency,
                stripe_code=exc.code,
            ) from None
        if exc.code == "idempotency_error" or "idempotent" in exc.message.lower():
            raise IdempotencyConflict(
                "idempotency key already used with a different request", idempotency_key=req.idempotency_key
            ) from None
        raise PaymentsRefused(f"Stripe refused the request: {exc.message}", stripe_code=exc.code) from None
    return _answer(refund, purchase, checkout, credits_mc, replayed=False)
