"""``/v1/products`` and ``/v1/prices``: create, retrieve, update, list (Stripe's filters)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from stripe_emulator.api.plumbing import list_query, state, stripe_endpoint
from stripe_emulator.state.store import RequestMeta

catalog = Blueprint("catalog", __name__)


@stripe_endpoint(catalog, "POST", rule="/v1/products")
def create_product(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().products.create(params, req)


@stripe_endpoint(catalog, "GET", rule="/v1/products")
def list_products(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().products.list(params, list_query(params))


@stripe_endpoint(catalog, "GET", rule="/v1/products/<product_id>")
def retrieve_product(params: dict[str, Any], req: RequestMeta, product_id: str) -> dict[str, Any]:
    return state().products.retrieve(product_id)


@stripe_endpoint(catalog, "POST", rule="/v1/products/<product_id>")
def update_product(params: dict[str, Any], req: RequestMeta, product_id: str) -> dict[str, Any]:
    return state().products.update(product_id, params, req)


@stripe_endpoint(catalog, "POST", rule="/v1/prices")
def create_price(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().prices.create(params, req)


@stripe_endpoint(catalog, "GET", rule="/v1/prices")
def list_prices(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    return state().prices.list(params, list_query(params))


@stripe_endpoint(catalog, "GET", rule="/v1/prices/<price_id>")
def retrieve_price(params: dict[str, Any], req: RequestMeta, price_id: str) -> dict[str, Any]:
    return state().prices.retrieve(price_id)


@stripe_endpoint(catalog, "POST", rule="/v1/prices/<price_id>")
def update_price(params: dict[str, Any], req: RequestMeta, price_id: str) -> dict[str, Any]:
    return state().prices.update(price_id, params, req)
