"""Disputes: the cardholder's bank opens one on a succeeded charge; it closes won or lost."""

from __future__ import annotations

from typing import Any

from stripe_emulator.params import StripeError
from stripe_emulator.state.store import RequestMeta, Store, new_id, template


class Disputes:
    def __init__(self, store: Store) -> None:
        self.store = store

    def open(self, charge_id: str, *, amount: int | None = None, reason: str | None = None) -> dict[str, Any]:
        """The cardholder's bank disputes a charge: funds are withdrawn and the dispute needs a response."""
        with self.store.lock:
            charge = self.store.get("charge", charge_id)
            if charge["status"] != "succeeded":
                raise StripeError(400, f"Charge {charge_id} has not succeeded; it cannot be disputed.")
            if any(d["charge"] == charge_id for d in self.store.objects["dispute"].values()):
                raise StripeError(400, f"Charge {charge_id} is already disputed.")
            amount = charge["amount"] if amount is None else amount
            if not 1 <= amount <= charge["amount"]:
                raise StripeError(400, f"Dispute amount must be between 1 and {charge['amount']}.", param="amount")
            now = self.store.now()
            dispute = template("dispute")
            dispute["evidence_details"].update(due_by=now + 7 * 24 * 3600, enhanced_eligibility={})
            dispute["payment_method_details"]["card"]["case_type"] = "chargeback"
            dispute.update(
                id=new_id("dp_"),
                created=now,
                amount=amount,
                charge=charge_id,
                payment_intent=charge["payment_intent"],
                currency=charge["currency"],
                is_charge_refundable=False,
                reason=reason or "fraudulent",
                status="needs_response",
                enhanced_eligibility_types=[],
            )
            self.store.add("dispute", dispute)
            charge["disputed"] = True
            self.store.record_event("charge.dispute.created", dispute)
            return dispute

    def close(self, dispute_id: str, status: str, req: RequestMeta | None = None) -> dict[str, Any]:
        """The dispute ends: ``won`` (funds come back) or ``lost`` (they stay with the cardholder)."""
        with self.store.lock:
            if status not in ("won", "lost"):
                raise StripeError(400, "status must be 'won' or 'lost'.", param="status")
            dispute = self.store.get("dispute", dispute_id)
            if dispute["status"] in ("won", "lost"):
                raise StripeError(400, f"Dispute {dispute_id} is already closed ({dispute['status']}).")
            previous = {"status": dispute["status"]}
            dispute["status"] = status
            self.store.record_event("charge.dispute.closed", dispute, previous=previous, req=req)
            return dispute
