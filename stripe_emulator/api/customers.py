"""``/v1/customers``: create, list (by email), retrieve, update, delete."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from stripe_emulator.api.plumbing import list_query, state, stripe_endpoint
from stripe_emulator.state.store import RequestMeta

customers = Blueprint("customers", __name__)


@stripe_endpoint(customers, "POST", rule="/v1/customers")
def create_customer(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().customers.create(params, req)


@stripe_endpoint(customers, "GET", rule="/v1/customers")
def list_customers(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().list_objects("customer", list_query(params, "email"), "/v1/customers")


@stripe_endpoint(customers, "GET", rule="/v1/customers/<customer_id>")
def retrieve_customer(params: dict[str, Any], req: RequestMeta, customer_id: str) -> dict[str, Any]:
    return state().customers.retrieve(customer_id)


@stripe_endpoint(customers, "POST", rule="/v1/customers/<customer_id>")
def update_customer(params: dict[str, Any], req: RequestMeta, customer_id: str) -> dict[str, Any]:
    return state().customers.update(customer_id, params, req)


@stripe_endpoint(customers, "DELETE", rule="/v1/customers/<customer_id>")
def delete_customer(params: dict[str, Any], req: RequestMeta, customer_id: str) -> dict[str, Any]:
    return state().customers.delete(customer_id, req)
