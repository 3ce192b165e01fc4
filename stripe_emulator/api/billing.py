"""Subscriptions and what they bring: ``/v1/subscriptions``, ``/v1/invoices``, ``/v1/test_helpers/test_clocks``,
``/v1/billing_portal/sessions``, ``/v1/payment_methods`` (read), and ``POST /v1/payment_intents`` (off-session)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from stripe_emulator.api.plumbing import list_query, readable, state, stripe_endpoint
from stripe_emulator.params import get_int
from stripe_emulator.state.store import RequestMeta

billing = Blueprint("billing", __name__)

readable(billing, "payment_method", "/v1/payment_methods", "customer", "type")


# -- subscriptions ---------------------------------------------------------------------------------------------


@stripe_endpoint(billing, "POST", rule="/v1/subscriptions")
def create_subscription(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().subscriptions.create(params, req)


@stripe_endpoint(billing, "GET", rule="/v1/subscriptions")
def list_subscriptions(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().subscriptions.list(params, list_query(params))


@stripe_endpoint(billing, "GET", rule="/v1/subscriptions/<sub_id>")
def retrieve_subscription(params: dict[str, Any], req: RequestMeta, sub_id: str) -> dict[str, Any]:
    return state().subscriptions.retrieve(sub_id)


@stripe_endpoint(billing, "POST", rule="/v1/subscriptions/<sub_id>")
def update_subscription(params: dict[str, Any], req: RequestMeta, sub_id: str) -> dict[str, Any]:
    return state().subscriptions.update(sub_id, params, req)


@stripe_endpoint(billing, "DELETE", rule="/v1/subscriptions/<sub_id>")
def cancel_subscription(params: dict[str, Any], req: RequestMeta, sub_id: str) -> dict[str, Any]:
    return state().subscriptions.cancel(sub_id, req)


# -- invoices ----------------------------------------------------------------------------------------------------


@stripe_endpoint(billing, "GET", rule="/v1/invoices")
def list_invoices(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().invoices.list(params, list_query(params))


@stripe_endpoint(billing, "GET", rule="/v1/invoices/<invoice_id>")
def retrieve_invoice(params: dict[str, Any], req: RequestMeta, invoice_id: str) -> dict[str, Any]:
    return state().invoices.retrieve(invoice_id)


@stripe_endpoint(billing, "GET", rule="/v1/invoices/<invoice_id>/lines")
def list_invoice_lines(params: dict[str, Any], req: RequestMeta, invoice_id: str) -> dict[str, Any]:
    return state().invoices.lines(invoice_id, list_query(params))


@stripe_endpoint(billing, "POST", rule="/v1/invoices/<invoice_id>/pay")
def pay_invoice(params: dict[str, Any], req: RequestMeta, invoice_id: str) -> dict[str, Any]:
    return state().subscriptions.pay_invoice(invoice_id, req)


# -- test clocks ---------------------------------------------------------------------------------------------------


@stripe_endpoint(billing, "POST", rule="/v1/test_helpers/test_clocks")
def create_test_clock(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().test_clocks.create(params, req)


@stripe_endpoint(billing, "GET", rule="/v1/test_helpers/test_clocks")
def list_test_clocks(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().test_clocks.list(list_query(params))


@stripe_endpoint(billing, "GET", rule="/v1/test_helpers/test_clocks/<clock_id>")
def retrieve_test_clock(params: dict[str, Any], req: RequestMeta, clock_id: str) -> dict[str, Any]:
    return state().test_clocks.retrieve(clock_id)


@stripe_endpoint(billing, "DELETE", rule="/v1/test_helpers/test_clocks/<clock_id>")
def delete_test_clock(params: dict[str, Any], req: RequestMeta, clock_id: str) -> dict[str, Any]:
    return state().test_clocks.delete(clock_id, req)


@stripe_endpoint(billing, "POST", rule="/v1/test_helpers/test_clocks/<clock_id>/advance")
def advance_test_clock(params: dict[str, Any], req: RequestMeta, clock_id: str) -> dict[str, Any]:
    return state().test_clocks.advance(clock_id, get_int(params, "frozen_time", required=True), req)


# -- billing portal, off-session payments ------------------------------------------------------------------------


@stripe_endpoint(billing, "POST", rule="/v1/billing_portal/sessions")
def create_billing_portal_session(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().billing_portal.create(params, request.host_url.rstrip("/"), req)


@stripe_endpoint(billing, "POST", rule="/v1/payment_intents")
def create_payment_intent(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().cards.create_payment_intent(params, req)


@stripe_endpoint(billing, "GET", rule="/v1/customers/<customer_id>/payment_methods")
def list_customer_payment_methods(params: dict[str, Any], req: RequestMeta, customer_id: str) -> dict[str, Any]:
    state().get("customer", customer_id, param="customer")
    query = list_query(params, "type")
    query.equals["customer"] = customer_id
    return state().list_objects("payment_method", query, f"/v1/customers/{customer_id}/payment_methods")
