"""Refunds of a succeeded charge, whole or partial, never past what is left nor while a dispute is open."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import StripeError, get_int, get_str, metadata
from stripe_emulator.state.store import RequestMeta, Store, new_id, template


class Refunds:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            charge_id, pi_id = get_str(params, "charge"), get_str(params, "payment_intent")
            if not charge_id and not pi_id:
                raise StripeError(
                    400,
                    "One of the following params should be provided for this request: payment_intent or charge.",
                    code="parameter_missing",
                )
            if pi_id:
                pi = self.store.get("payment_intent", pi_id, param="payment_intent")
                if pi["status"] != "succeeded" or not pi["latest_charge"]:
                    raise StripeError(
                        400,
                        f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                        param="payment_intent",
                    )
                if charge_id and charge_id != pi["latest_charge"]:
                    raise StripeError(400, "The charge does not belong to this PaymentIntent.", param="charge")
                charge_id = pi["latest_charge"]
            assert charge_id is not None
            charge = self.store.get("charge", charge_id, param="charge")
            if charge["status"] != "succeeded":
                raise StripeError(400, f"Charge {charge_id} has not succeeded; it cannot be refunded.", param="charge")
            if any(
                d["charge"] == charge_id and d["status"] not in ("won", "lost")
                for d in self.store.objects["dispute"].values()
            ):
                raise StripeError(400, f"Charge {charge_id} has been disputed.", code="charge_disputed")
            remaining = charge["amount_captured"] - charge["amount_refunded"]
            if remaining <= 0:
                raise StripeError(400, f"Charge {charge_id} has already been refunded.", code="charge_already_refunded")
            amount = get_int(params, "amount", minimum=1)
            amount = remaining if amount is None else amount
            if amount > remaining:
                raise StripeError(
                    400,
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                    code="amount_too_large",
                    param="amount",
                )
            refund = template("refund")
            refund.update(
                id=new_id("re_"),
                created=self.store.now(),
                amount=amount,
                charge=charge_id,
                payment_intent=charge["payment_intent"],
                currency=charge["currency"],
                customer=charge["customer"],
                payment_method=charge["payment_method"],
                balance_transaction=new_id("txn_"),
                metadata=metadata(params),
                reason=get_str(params, "reason"),
                status="succeeded",
            )
            self.store.add("refund", refund)
            previous = {
                "amount_refunded": charge["amount_refunded"],
                "refunded": charge["refunded"],
                "refunds": copy.deepcopy(charge["refunds"]),
            }
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
            charge["refunds"]["data"].insert(0, copy.deepcopy(refund))
            self.store.record_event("charge.refunded", charge, previous=previous, req=req)
            self.store.record_event("refund.created", refund, req=req)
            return refund
