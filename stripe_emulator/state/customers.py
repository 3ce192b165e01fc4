"""Customers: create (optionally on a test clock, ``test_clock``), update (metadata merges, an empty value unsets
a key; ``invoice_settings[default_payment_method]``), delete (a tombstone), retrieve."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import StripeError, get_dict, get_list, get_str, metadata
from stripe_emulator.state.store import RequestMeta, Store, new_id, template


class Customers:
    FIELDS = ("email", "name", "description", "phone")

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            clock_id = get_str(params, "test_clock")
            clock = self.store.get("test_helpers.test_clock", clock_id, param="test_clock") if clock_id else None
            customer = template("customer")
            customer.update(
                id=new_id("cus_", 14),
                created=clock["frozen_time"] if clock else self.store.now(),
                test_clock=clock_id,
                currency=None,
                discount=None,
                shipping=None,
                invoice_prefix=secrets.token_hex(4).upper(),
                metadata=metadata(params),
                preferred_locales=[str(x) for x in get_list(params, "preferred_locales")],
                **{name: get_str(params, name) for name in self.FIELDS},
            )
            self.store.add("customer", customer)
            with self.store.at(clock["frozen_time"] if clock else None):
                self.store.record_event("customer.created", customer, req=req)
            return customer

    def update(self, customer_id: str, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            customer = self.store.get("customer", customer_id)
            previous: dict[str, Any] = {}
            for name in self.FIELDS:
                if name in params:
                    value = get_str(params, name)
                    if customer[name] != value:
                        previous[name] = customer[name]
                        customer[name] = value
            if "metadata" in params:
                merged = dict(customer["metadata"])
                for key, value in metadata(params).items():
                    if value == "":  # Stripe: an empty value unsets the key
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                if merged != customer["metadata"]:
                    previous["metadata"] = customer["metadata"]
                    customer["metadata"] = merged
            settings = get_dict(params, "invoice_settings")
            if "default_payment_method" in settings:
                method = get_str(settings, "default_payment_method")
                if method is not None:
                    pm = self.store.get("payment_method", method, param="invoice_settings[default_payment_method]")
                    if pm["customer"] != customer_id:
                        raise StripeError(
                            400,
                            f"The provided PaymentMethod ({method}) is not attached to this customer.",
                            param="invoice_settings[default_payment_method]",
                        )
                if customer["invoice_settings"]["default_payment_method"] != method:
                    previous["invoice_settings"] = dict(customer["invoice_settings"])
                    customer["invoice_settings"] = {**customer["invoice_settings"], "default_payment_method": method}
            if previous:
                self.store.record_event("customer.updated", customer, previous=previous, req=req)
            return customer

    def delete(self, customer_id: str, req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            customer = self.store.get("customer", customer_id)
            self.store.deleted_customers.add(customer_id)
            self.store.record_event("customer.deleted", customer, req=req)
            return {"id": customer_id, "object": "customer", "deleted": True}

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        with self.store.lock:
            if customer_id in self.store.deleted_customers:  # Stripe still answers, with a tombstone
                return {"id": customer_id, "object": "customer", "deleted": True}
            return self.store.get("customer", customer_id)
