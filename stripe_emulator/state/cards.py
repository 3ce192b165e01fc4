"""Saved cards and off-session payments: the card a subscription checkout saves, how the bank answers when it is
charged later (``/_emulator/customers/<id>/card``), and ``POST /v1/payment_intents`` with ``confirm=true``.

A customer's saved card answers every later charge the way its outcome says: ``succeed`` (the default),
``card_declined`` (a failed charge, ``card_declined`` / ``insufficient_funds``), ``authentication_required``
(the bank wants 3-D Secure, which nobody can do off-session: no charge).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import StripeError, get_bool, get_int, get_str, metadata, missing
from stripe_emulator.state.customers import Customers
from stripe_emulator.state.payments import Payments
from stripe_emulator.state.store import RequestMeta, Store, new_id, template

OUTCOMES = ("succeed", "card_declined", "authentication_required")

_ERRORS = {
    "card_declined": {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds.",
    },
    "authentication_required": {
        "type": "card_error",
        "code": "authentication_required",
        "decline_code": "authentication_required",
        "message": "Your card was declined. This transaction requires authentication.",
    },
}


class Cards:
    def __init__(self, store: Store, customers: Customers, payments: Payments) -> None:
        self.store = store
        self.customers = customers
        self.payments = payments

    # -- saved cards --------------------------------------------------------------------------------------

    def save_card(self, customer_id: str, email: str | None = None) -> dict[str, Any]:
        """A Visa ending 4242 attached to the customer and made its ``invoice_settings.default_payment_method``."""
        with self.store.lock:
            customer = self.store.get("customer", customer_id, param="customer")
            pm = template("payment_method")
            pm["billing_details"].update(
                address=dict.fromkeys(pm["billing_details"]["address"]),
                email=email or customer.get("email"),
                name=customer.get("name"),
                phone=None,
            )
            pm["card"].update(wallet=None, fingerprint=new_id("", 16))
            pm["card"]["generated_from"] = None
            pm.update(
                id=new_id("pm_"), created=self.store.now(), customer=customer_id, metadata={}, allow_redisplay="always"
            )
            self.store.add("payment_method", pm)
            self.store.record_event("payment_method.attached", pm)
            previous = {"invoice_settings": dict(customer["invoice_settings"])}
            customer["invoice_settings"] = {**customer["invoice_settings"], "default_payment_method": pm["id"]}
            self.store.record_event("customer.updated", customer, previous=previous)
            return pm

    def default_method(self, customer_id: str | None) -> str | None:
        customer = self.store.objects["customer"].get(customer_id or "")
        if customer is None:
            return None
        method: str | None = (customer.get("invoice_settings") or {}).get("default_payment_method")
        return method

    def set_outcome(self, customer_id: str, outcome: str) -> dict[str, Any]:
        with self.store.lock:
            self.store.get("customer", customer_id)
            if outcome not in OUTCOMES:
                raise StripeError(400, f"outcome must be one of {', '.join(OUTCOMES)}.", param="outcome")
            self.store.card_outcomes[customer_id] = outcome
            return {"customer": customer_id, "outcome": outcome, "payment_method": self.default_method(customer_id)}

    # -- PaymentIntents charged off-session ---------------------------------------------------------------

    def new_payment_intent(
        self,
        *,
        customer: str | None,
        amount: int,
        currency: str,
        payment_method: str | None,
        metadata: dict[str, str] | None = None,
        description: str | None = None,
        req: RequestMeta | None = None,
    ) -> dict[str, Any]:
        """A PaymentIntent waiting for confirmation (``payment_intent.created``)."""
        pi_id = new_id("pi_")
        pi = template("payment_intent")
        pi.update(
            id=pi_id,
            created=self.store.now(),
            amount=amount,
            amount_capturable=0,
            amount_received=0,
            currency=currency,
            customer=customer,
            description=description,
            metadata=dict(metadata or {}),
            client_secret=f"{pi_id}_secret_{new_id('', 25)}",
            canceled_at=None,
            last_payment_error=None,
            latest_charge=None,
            next_action=None,
            processing=None,
            shipping=None,
            transfer_data=None,
            automatic_payment_methods=None,
            payment_method_configuration_details=None,
            payment_method=payment_method,
            payment_method_types=["card"],
            managed_payments=None,
            setup_future_usage=None,
            status="requires_confirmation" if payment_method else "requires_payment_method",
        )
        self.store.add("payment_intent", pi)
        self.store.record_event("payment_intent.created", pi, req=req)
        return pi

    def confirm(
        self, pi: dict[str, Any], *, for_invoice: bool = False, req: RequestMeta | None = None
    ) -> dict[str, Any] | None:
        """Charge the PaymentIntent's saved card; None when it succeeded, else the ``last_payment_error``.

        Events: ``payment_intent.succeeded`` + ``charge.succeeded``; a decline: ``charge.failed`` +
        ``payment_intent.payment_failed``; authentication required: ``payment_intent.payment_failed`` only (an
        invoice's PaymentIntent waits in ``requires_action``, a bare one in ``requires_payment_method``).
        """
        outcome = self.store.card_outcomes.get(pi["customer"] or "", "succeed")
        if outcome == "succeed":
            pi.update(status="succeeded", amount_received=pi["amount"], last_payment_error=None, next_action=None)
            charge = self.payments.new_charge(pi, status="succeeded")
            self.store.record_event("payment_intent.succeeded", pi, req=req)
            self.store.record_event("charge.succeeded", charge, req=req)
            return None
        error: dict[str, Any] = {**_ERRORS[outcome], "payment_method": {"id": pi["payment_method"]}}
        if outcome == "card_declined":
            charge = self.payments.new_charge(pi, status="failed")
            charge["outcome"] = {
                **charge["outcome"],
                "network_status": "declined_by_network",
                "reason": error["decline_code"],
                "seller_message": "The bank returned the decline code `insufficient_funds`.",
                "type": "issuer_declined",
            }
            charge.update(failure_code=error["code"], failure_message=error["message"])
            error["charge"] = charge["id"]
            pi.update(status="requires_payment_method", last_payment_error=error, next_action=None)
            self.store.record_event("charge.failed", charge, req=req)
        else:
            action = {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}
            status = "requires_action" if for_invoice else "requires_payment_method"
            pi.update(status=status, last_payment_error=error, next_action=action if for_invoice else None)
        self.store.record_event("payment_intent.payment_failed", pi, req=req)
        return error

    def create_payment_intent(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        """``POST /v1/payment_intents``. With ``confirm=true`` the saved card is charged at once; a card error
        answers 402 with the failed PaymentIntent in ``error.payment_intent``, as Stripe does."""
        with self.store.lock:
            amount = get_int(params, "amount", required=True, minimum=1)
            currency = (get_str(params, "currency", required=True) or "").lower()
            customer_id = get_str(params, "customer")
            if customer_id:
                self.store.get("customer", customer_id, param="customer")
            method = get_str(params, "payment_method")
            if method:
                pm = self.store.get("payment_method", method, param="payment_method")
                if customer_id and pm["customer"] != customer_id:
                    raise StripeError(
                        400,
                        f"The provided PaymentMethod ({method}) does not belong to the customer.",
                        param="payment_method",
                    )
            confirm = get_bool(params, "confirm")
            off_session = get_bool(params, "off_session")
            if off_session and not confirm:
                raise StripeError(400, "off_session can only be used with confirm=true.", param="off_session")
            if confirm and not method:
                method = self.default_method(customer_id)
                if method is None:
                    raise missing("payment_method")
            assert amount is not None
            with self.store.at(self.store.time_for(customer_id)):
                pi = self.new_payment_intent(
                    customer=customer_id,
                    amount=amount,
                    currency=currency,
                    payment_method=method,
                    metadata=metadata(params),
                    description=get_str(params, "description"),
                    req=req,
                )
                if not confirm:
                    return pi
                error = self.confirm(pi, req=req)
            if error is not None:
                raise StripeError(
                    402,
                    error["message"],
                    code=error["code"],
                    type="card_error",
                    extra={
                        "decline_code": error["decline_code"],
                        "payment_intent": pi,
                        "payment_method": self.store.objects["payment_method"].get(pi["payment_method"]),
                        **({"charge": error["charge"]} if "charge" in error else {}),
                    },
                )
            return pi
