"""What a payment leaves behind, read-only to the API: PaymentIntents and Charges; and refunds of a charge."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from stripe_emulator.api.plumbing import list_query, readable, state, stripe_endpoint
from stripe_emulator.state.store import RequestMeta

payments = Blueprint("payments", __name__)

readable(payments, "payment_intent", "/v1/payment_intents", "customer", "status")
readable(payments, "charge", "/v1/charges", "payment_intent", "customer")
readable(payments, "refund", "/v1/refunds", "charge", "payment_intent")


@stripe_endpoint(payments, "POST", rule="/v1/refunds")
def create_refund(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().refunds.create(params, req)


@stripe_endpoint(payments, "GET", rule="/v1/charges/<charge_id>/refunds")
def list_charge_refunds(params: dict[str, Any], req: RequestMeta, charge_id: str) -> dict[str, Any]:
    state().get("charge", charge_id, param="charge")
    query = list_query(params)
    query.equals["charge"] = charge_id
    return state().list_objects("refund", query, f"/v1/charges/{charge_id}/refunds")
