"""Products and Prices: create (a Product may bring its own id), retrieve, update, list with Stripe's filters.

Stripe's rules the project relies on: a Price's amount and currency never change (a new amount is a new
Price; the old one is deactivated); a ``lookup_key`` belongs to one Price at a time, and creating a Price
with ``transfer_lookup_key=true`` takes it from the Price that had it; a Checkout Session sells only active
Prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import StripeError, get_bool, get_dict, get_int, get_list, get_str, metadata, missing
from stripe_emulator.state.store import ListQuery, RequestMeta, Store, new_id, template

_INTERVALS = ("day", "week", "month", "year")


def _merge_metadata(current: dict[str, str], params: Mapping[str, Any]) -> dict[str, str]:
    merged = dict(current)
    for key, value in metadata(params).items():
        if value == "":  # Stripe: an empty value unsets the key
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


class Products:
    FIELDS = ("name", "description", "statement_descriptor", "unit_label", "url")

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            name = get_str(params, "name", required=True)
            product_id = get_str(params, "id") or new_id("prod_", 14)
            if product_id in self.store.objects["product"]:
                raise StripeError(
                    400, f"Product already exists: '{product_id}'", code="resource_already_exists", param="id"
                )
            now = self.store.now()
            product = template("product")
            product.update(
                id=product_id,
                created=now,
                updated=now,
                name=name,
                active=get_bool(params, "active", default=True),
                description=get_str(params, "description"),
                default_price=None,
                images=[str(i) for i in get_list(params, "images")],
                marketing_features=[],
                metadata=metadata(params),
                package_dimensions=None,
                shippable=None,
                statement_descriptor=get_str(params, "statement_descriptor"),
                tax_code=None,
                unit_label=get_str(params, "unit_label"),
                url=get_str(params, "url"),
                type="service",
            )
            self.store.add("product", product)
            self.store.record_event("product.created", product, req=req)
            return product

    def retrieve(self, product_id: str) -> dict[str, Any]:
        with self.store.lock:
            return self.store.get("product", product_id)

    def update(self, product_id: str, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            product = self.store.get("product", product_id)
            previous: dict[str, Any] = {}
            for name in self.FIELDS:
                if name in params:
                    value = get_str(params, name, required=name == "name")
                    if product[name] != value:
                        previous[name] = product[name]
                        product[name] = value
            if "active" in params:
                active = get_bool(params, "active")
                if product["active"] != active:
                    previous["active"] = product["active"]
                    product["active"] = active
            if "default_price" in params:
                price_id = get_str(params, "default_price")
                if price_id is not None:
                    price = self.store.get("price", price_id, param="default_price")
                    if price["product"] != product_id:
                        raise StripeError(
                            400, f"The price {price_id} does not belong to this product.", param="default_price"
                        )
                if product["default_price"] != price_id:
                    previous["default_price"] = product["default_price"]
                    product["default_price"] = price_id
            if "metadata" in params:
                merged = _merge_metadata(product["metadata"], params)
                if merged != product["metadata"]:
                    previous["metadata"] = product["metadata"]
                    product["metadata"] = merged
            if previous:
                product["updated"] = self.store.now()
                self.store.record_event("product.updated", product, previous=previous, req=req)
            return product

    def list(self, params: Mapping[str, Any], query: ListQuery) -> dict[str, Any]:
        active = None if params.get("active") in (None, "") else get_bool(params, "active")
        ids = {str(i) for i in get_list(params, "ids")}
        query.where = lambda p: (active is None or p["active"] == active) and (not ids or p["id"] in ids)
        return self.store.list_objects("product", query, "/v1/products")


class Prices:
    def __init__(self, store: Store, products: Products) -> None:
        self.store = store
        self.products = products

    def _holder_of(self, lookup_key: str) -> dict[str, Any] | None:
        return next((p for p in self.store.objects["price"].values() if p["lookup_key"] == lookup_key), None)

    def _take_lookup_key(
        self, lookup_key: str, transfer: bool, req: RequestMeta | None, exclude: str | None = None
    ) -> None:
        holder = self._holder_of(lookup_key)
        if holder is None or holder["id"] == exclude:
            return
        if not transfer:
            raise StripeError(
                400,
                f"A price (`{holder['id']}`) already uses that lookup key.",
                param="lookup_key",
            )
        holder["lookup_key"] = None
        self.store.record_event("price.updated", holder, previous={"lookup_key": lookup_key}, req=req)

    def create(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            currency = (get_str(params, "currency", required=True) or "").lower()
            product_id = get_str(params, "product")
            product_data = get_dict(params, "product_data")
            if product_id:
                self.store.get("product", product_id, param="product")
            elif product_data:
                product_id = self.products.create(product_data, req)["id"]
            else:
                raise missing("product")
            unit_amount = get_int(params, "unit_amount", minimum=0)
            if unit_amount is None:
                decimal = get_str(params, "unit_amount_decimal")
                if decimal is None:
                    raise missing("unit_amount")
                unit_amount = get_int({"unit_amount_decimal": decimal}, "unit_amount_decimal", minimum=0)
            recurring_params = get_dict(params, "recurring")
            recurring = None
            if recurring_params:
                interval = get_str(recurring_params, "interval", required=True)
                if interval not in _INTERVALS:
                    raise StripeError(400, f"Invalid recurring[interval]: {interval}", param="recurring[interval]")
                recurring = {
                    "interval": interval,
                    "interval_count": get_int(recurring_params, "interval_count", minimum=1) or 1,
                    "meter": None,
                    "usage_type": "licensed",
                    "trial_period_days": None,
                }
            lookup_key = get_str(params, "lookup_key")
            if lookup_key:
                self._take_lookup_key(lookup_key, get_bool(params, "transfer_lookup_key"), req)
            price = template("price")
            price.update(
                id=new_id("price_"),
                created=self.store.now(),
                active=get_bool(params, "active", default=True),
                currency=currency,
                custom_unit_amount=None,
                lookup_key=lookup_key,
                metadata=metadata(params),
                nickname=get_str(params, "nickname"),
                product=product_id,
                recurring=recurring,
                tax_behavior=get_str(params, "tax_behavior") or "unspecified",
                transform_quantity=None,
                type="recurring" if recurring else "one_time",
                unit_amount=unit_amount,
                unit_amount_decimal=str(unit_amount),
            )
            self.store.add("price", price)
            self.store.record_event("price.created", price, req=req)
            return price

    def retrieve(self, price_id: str) -> dict[str, Any]:
        with self.store.lock:
            return self.store.get("price", price_id)

    def update(self, price_id: str, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        """Only what Stripe lets change: ``active``, ``nickname``, ``metadata``, ``lookup_key``; an amount or a
        currency is refused (a Price is immutable: create another)."""
        with self.store.lock:
            price = self.store.get("price", price_id)
            for fixed in ("unit_amount", "currency", "product", "recurring"):
                if fixed in params:
                    raise StripeError(
                        400, f"Received unknown parameter: {fixed}", code="parameter_unknown", param=fixed
                    )
            previous: dict[str, Any] = {}
            if "active" in params:
                active = get_bool(params, "active")
                if price["active"] != active:
                    previous["active"] = price["active"]
                    price["active"] = active
            if "nickname" in params:
                nickname = get_str(params, "nickname")
                if price["nickname"] != nickname:
                    previous["nickname"] = price["nickname"]
                    price["nickname"] = nickname
            if "lookup_key" in params:
                lookup_key = get_str(params, "lookup_key")
                if lookup_key:
                    self._take_lookup_key(lookup_key, get_bool(params, "transfer_lookup_key"), req, exclude=price_id)
                if price["lookup_key"] != lookup_key:
                    previous["lookup_key"] = price["lookup_key"]
                    price["lookup_key"] = lookup_key
            if "metadata" in params:
                merged = _merge_metadata(price["metadata"], params)
                if merged != price["metadata"]:
                    previous["metadata"] = price["metadata"]
                    price["metadata"] = merged
            if previous:
                self.store.record_event("price.updated", price, previous=previous, req=req)
            return price

    def list(self, params: Mapping[str, Any], query: ListQuery) -> dict[str, Any]:
        """Stripe's filters: ``active``, ``product``, ``currency``, ``type``, ``lookup_keys`` (up to 10)."""
        lookup_keys = {str(k) for k in get_list(params, "lookup_keys")}
        if len(lookup_keys) > 10:
            raise StripeError(400, "You may pass at most 10 lookup_keys.", param="lookup_keys")
        active = None if params.get("active") in (None, "") else get_bool(params, "active")
        equals = {name: get_str(params, name) for name in ("product", "currency", "type") if get_str(params, name)}

        def matches(price: dict[str, Any]) -> bool:
            if active is not None and price["active"] != active:
                return False
            if lookup_keys and price["lookup_key"] not in lookup_keys:
                return False
            return all(price[name] == value for name, value in equals.items())

        query.where = matches
        return self.store.list_objects("price", query, "/v1/prices")
