"""The buyer and the bank: paying a Checkout Session (by card at once, or by bank debit that settles later),
a declined card, and the PaymentIntents and Charges those create."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stripe_emulator.params import StripeError
from stripe_emulator.state.customers import Customers
from stripe_emulator.state.store import Store, new_id, template

# Payment methods whose money arrives after the session completes (``checkout.session.async_payment_*``).
ASYNC_METHODS = ("pix", "boleto", "sepa_debit", "us_bank_account")


def _method_details(method: str) -> dict[str, Any]:
    """What a charge's ``payment_method_details`` says of a delayed method (Stripe's fields, test values)."""
    if method == "pix":
        return {"bank_transaction_id": new_id("E", 31)}
    if method == "boleto":
        return {"tax_id": "000.000.000-00"}
    return {}


class Payments:
    def __init__(self, store: Store, customers: Customers) -> None:
        self.store = store
        self.customers = customers
        # Paying a subscription-mode session starts a subscription (``Subscriptions.checkout_paid``).
        self.subscription_checkout: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def _open_session(self, session_id: str) -> dict[str, Any]:
        session = self.store.get("checkout.session", session_id)
        if session["status"] != "open":
            raise StripeError(400, f"Checkout Session {session_id} is {session['status']}, not open.")
        return session

    def _payment_intent_for(self, session: dict[str, Any]) -> dict[str, Any]:
        """The session's PaymentIntent: the one an earlier failed attempt created, or a new one."""
        if session["payment_intent"]:
            return self.store.objects["payment_intent"][session["payment_intent"]]
        pi_data = self.store.payment_intent_data[session["id"]]
        pi_id = new_id("pi_")
        pi = template("payment_intent")
        pi.update(
            id=pi_id,
            created=self.store.now(),
            amount=session["amount_total"],
            amount_capturable=0,
            amount_received=0,
            currency=session["currency"],
            customer=session["customer"],
            description=pi_data["description"],
            metadata=dict(pi_data["metadata"]),
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
            payment_method_types=list(session["payment_method_types"]),
            managed_payments=None,
            status="requires_payment_method",
        )
        session["payment_intent"] = pi_id
        return self.store.add("payment_intent", pi)

    def new_charge(self, pi: dict[str, Any], *, status: str, prefix: str = "ch_") -> dict[str, Any]:
        """A charge of the PaymentIntent (succeeded, pending or failed), now its ``latest_charge``."""
        return self._new_charge(pi, status=status, prefix=prefix)

    def _new_charge(self, pi: dict[str, Any], *, status: str, prefix: str = "ch_") -> dict[str, Any]:
        charge_id = new_id(prefix)
        succeeded = status == "succeeded"
        charge = template("charge")
        charge.update(
            id=charge_id,
            created=self.store.now(),
            amount=pi["amount"],
            amount_captured=pi["amount"] if succeeded else 0,
            amount_refunded=0,
            captured=succeeded,
            paid=succeeded,
            status=status,
            currency=pi["currency"],
            customer=pi["customer"],
            description=pi["description"],
            metadata=dict(pi["metadata"]),  # Stripe copies the PaymentIntent's metadata onto its charges
            payment_intent=pi["id"],
            payment_method=pi["payment_method"],
            balance_transaction=new_id("txn_") if succeeded else None,
            billing_details={**template("charge")["billing_details"], "name": None},
            outcome={
                **template("charge")["outcome"],
                "network_status": "approved_by_network",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            receipt_url=None,
            refunded=False,
            refunds={"object": "list", "data": [], "has_more": False, "url": f"/v1/charges/{charge_id}/refunds"},
            shipping=None,
            source=None,
            transfer_data=None,
        )
        card = charge["payment_method_details"]["card"]
        card["amount_authorized"] = pi["amount"]
        card["overcapture"]["maximum_amount_capturable"] = pi["amount"]
        card["wallet"] = None  # a plain card, not Link or a phone wallet
        pi["latest_charge"] = charge_id
        return self.store.add("charge", charge)

    def _complete_session(self, session: dict[str, Any], *, paid: bool) -> None:
        customer = self.store.objects["customer"].get(session["customer"] or "")
        email = session["customer_email"] or (customer or {}).get("email") or "buyer@example.com"
        if session["customer"] is None and session["customer_creation"] == "always":
            customer = self.customers.create({"email": email})
            session["customer"] = customer["id"]
        details = template("checkout.session")["customer_details"]
        details.update(email=email, name=(customer or {}).get("name"))
        session.update(status="complete", payment_status="paid" if paid else "unpaid", customer_details=details)

    def pay(self, session_id: str, *, asynchronous: bool = False) -> dict[str, Any]:
        """The buyer pays. Card: paid at once. ``asynchronous``: complete now, money settles later."""
        with self.store.lock:
            session = self._open_session(session_id)
            if session["mode"] == "subscription":
                if asynchronous:
                    raise StripeError(400, "The emulator pays subscription-mode sessions by card only.")
                assert self.subscription_checkout is not None
                return self.subscription_checkout(session)
            pi = self._payment_intent_for(session)
            pi.update(payment_method=new_id("pm_"), last_payment_error=None, customer=session["customer"])
            if asynchronous:
                # The session's own delayed method when it offers one (PIX for a BRL session), else a US bank
                # debit: the money arrives later either way.
                method = next((m for m in session["payment_method_types"] if m in ASYNC_METHODS), "us_bank_account")
                pi["status"] = "processing"
                pi["payment_method_types"] = [method]
                charge = self._new_charge(pi, status="pending", prefix="py_")
                charge["payment_method_details"] = {"type": method, method: _method_details(method)}
                self._complete_session(session, paid=False)
                self._sync_customer(pi, charge, session)
                self.store.record_event("payment_intent.processing", pi)
                self.store.record_event("charge.pending", charge)
                self.store.record_event("checkout.session.completed", session)
                return session
            pi.update(status="succeeded", amount_received=pi["amount"])
            self._complete_session(session, paid=True)
            charge = self._new_charge(pi, status="succeeded")
            self._sync_customer(pi, charge, session)
            self.store.record_event("payment_intent.succeeded", pi)
            self.store.record_event("charge.succeeded", charge)
            self.store.record_event("checkout.session.completed", session)
            return session

    @staticmethod
    def _sync_customer(pi: dict[str, Any], charge: dict[str, Any], session: dict[str, Any]) -> None:
        pi["customer"] = charge["customer"] = session["customer"]
        charge["billing_details"]["email"] = session["customer_details"]["email"]

    def settle_async(self, session_id: str, *, succeeded: bool) -> dict[str, Any]:
        """The delayed payment of a session paid with ``async`` clears or bounces."""
        with self.store.lock:
            session = self.store.get("checkout.session", session_id)
            pi = self.store.objects["payment_intent"].get(session["payment_intent"] or "")
            if session["status"] != "complete" or pi is None or pi["status"] != "processing":
                raise StripeError(400, f"Checkout Session {session_id} has no payment processing.")
            charge = self.store.objects["charge"][pi["latest_charge"]]
            if succeeded:
                pi.update(status="succeeded", amount_received=pi["amount"])
                charge.update(
                    status="succeeded",
                    paid=True,
                    captured=True,
                    amount_captured=charge["amount"],
                    balance_transaction=new_id("txn_"),
                )
                session["payment_status"] = "paid"
                self.store.record_event("payment_intent.succeeded", pi)
                self.store.record_event("charge.succeeded", charge)
                self.store.record_event("checkout.session.async_payment_succeeded", session)
            else:
                error = self._payment_error("payment_method_not_available", "The bank declined the debit.")
                pi.update(status="requires_payment_method", last_payment_error=error)
                charge.update(status="failed", failure_code=error["code"], failure_message=error["message"])
                self.store.record_event("charge.failed", charge)
                self.store.record_event("payment_intent.payment_failed", pi)
                self.store.record_event("checkout.session.async_payment_failed", session)
            return session

    @staticmethod
    def _payment_error(code: str, message: str) -> dict[str, Any]:
        return {"type": "card_error", "code": code, "decline_code": "generic_decline", "message": message}

    def fail(self, session_id: str) -> dict[str, Any]:
        """The buyer's card is declined: the PaymentIntent waits for another method, the session stays open."""
        with self.store.lock:
            session = self._open_session(session_id)
            if session["mode"] == "subscription":
                return session  # no PaymentIntent exists before the subscription does
            pi = self._payment_intent_for(session)
            pi.update(
                status="requires_payment_method",
                payment_method=None,
                last_payment_error=self._payment_error("card_declined", "Your card was declined."),
            )
            self.store.record_event("payment_intent.payment_failed", pi)
            return session
