"""Checkout Sessions in payment mode: created with line items selling a stored Price (``price``) or an inline
one (``price_data``), with the ``payment_method_types`` the currency allows; listed, expired. In subscription
mode: one recurring Price, ``subscription_data[metadata]`` and ``[trial_period_days]``.

Paying one is the buyer's business (``payments``); the PaymentIntent only exists from the first attempt on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import StripeError, get_dict, get_int, get_list, get_str, metadata, missing
from stripe_emulator.state.store import ListQuery, RequestMeta, Store, new_id, template
from stripe_emulator.state.subscriptions import subscription_data


class CheckoutSessions:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, params: Mapping[str, Any], base_url: str, req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            mode = get_str(params, "mode", required=True)
            if mode not in ("payment", "subscription"):
                raise StripeError(400, "The emulator supports mode=payment and mode=subscription.", param="mode")
            customer_id = get_str(params, "customer")
            if customer_id:
                self.store.get("customer", customer_id, param="customer")
            raw_items = get_list(params, "line_items")
            if not raw_items:
                raise missing("line_items")
            now = self.store.now()
            session_id = "cs_test_" + new_id("a1", 56)
            items = [self._line_item(raw, i, now, mode) for i, raw in enumerate(raw_items)]
            if mode == "subscription" and len(items) > 1:
                raise StripeError(400, "The emulator sells one recurring price per subscription.", param="line_items")
            methods = [str(t) for t in get_list(params, "payment_method_types")] or ["card"]
            currencies = {item["currency"] for item in items}
            if len(currencies) > 1:
                raise StripeError(400, "All line items must use the same currency.", param="line_items")
            total = sum(item["amount_total"] for item in items)
            _check_methods(methods, next(iter(currencies)))
            pi_data = get_dict(params, "payment_intent_data")
            session = template("checkout.session")
            # The fixture's example values describe a session with tax, shipping and promotions; ours has none.
            session["custom_text"] = dict.fromkeys(session["custom_text"])
            session["invoice_creation"]["enabled"] = False
            sub_data = subscription_data(params) if mode == "subscription" else None
            if sub_data and sub_data["trial_period_days"]:
                total = 0  # Stripe: nothing is due today during a trial
            session.update(
                id=session_id,
                amount_subtotal=total,
                amount_total=total,
                subscription=None,
                invoice=None,
                payment_method_collection="always" if mode == "subscription" else None,
                created=now,
                expires_at=get_int(params, "expires_at") or now + 24 * 3600,
                mode=mode,
                status="open",
                payment_status="unpaid",
                payment_intent=None,  # Stripe creates the PaymentIntent when the buyer pays
                currency=currencies.pop(),
                customer=customer_id,
                customer_email=get_str(params, "customer_email"),
                customer_creation=(
                    None
                    if customer_id or mode == "subscription"
                    else get_str(params, "customer_creation") or "if_required"
                ),
                customer_details=None,
                client_reference_id=get_str(params, "client_reference_id"),
                metadata=metadata(params),
                success_url=get_str(params, "success_url"),
                cancel_url=get_str(params, "cancel_url"),
                locale=get_str(params, "locale"),
                payment_method_types=methods,
                url=f"{base_url}/_emulator/checkout/{session_id}",
                after_expiration=None,
                automatic_tax={"enabled": False, "liability": None, "status": None, "provider": None},
                consent=None,
                consent_collection=None,
                payment_method_configuration_details=None,
                shipping_address_collection=None,
                shipping_cost=None,
                total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                currency_conversion=None,
                collected_information=None,
                adaptive_pricing={"enabled": False},
                managed_payments={"enabled": False},
            )
            self.store.line_items[session_id] = items
            if sub_data is not None:
                self.store.subscription_data[session_id] = sub_data
            self.store.payment_intent_data[session_id] = {
                "metadata": metadata(pi_data),
                "description": get_str(pi_data, "description"),
            }
            return self.store.add("checkout.session", session)

    def _line_item(self, raw: Any, index: int, now: int, mode: str = "payment") -> dict[str, Any]:
        label = f"line_items[{index}]"
        if not isinstance(raw, dict):
            raise StripeError(400, f"Invalid object: {label}", param=label)
        if "price" in raw:
            return self._stored_price_item(raw, label, mode)
        if mode == "subscription":
            raise missing(f"{label}[price]")
        price_data = raw.get("price_data")
        if not isinstance(price_data, dict):
            raise missing(f"{label}[price_data]")
        quantity = get_int(raw, "quantity", required=True, minimum=1, label=f"{label}[quantity]")
        unit_amount = get_int(
            price_data, "unit_amount", required=True, minimum=0, label=f"{label}[price_data][unit_amount]"
        )
        currency = (get_str(price_data, "currency") or "").lower()
        if not currency:
            raise missing(f"{label}[price_data][currency]")
        product = get_dict(price_data, "product_data")
        name = get_str(product, "name", required=False)
        if not name:
            raise missing(f"{label}[price_data][product_data][name]")
        assert quantity is not None and unit_amount is not None
        item = template("item")
        price = item["price"]
        price.update(
            id=new_id("price_"),
            created=now,
            currency=currency,
            product=new_id("prod_", 14),
            recurring=None,
            transform_quantity=None,
            custom_unit_amount=None,
            type="one_time",
            unit_amount=unit_amount,
            unit_amount_decimal=str(unit_amount),
            active=False,  # an inline price_data price is archived right away, as Stripe does
        )
        item.update(
            id=new_id("li_"),
            amount_discount=0,
            amount_tax=0,
            amount_subtotal=unit_amount * quantity,
            amount_total=unit_amount * quantity,
            currency=currency,
            description=name,
            quantity=quantity,
            adjustable_quantity=None,
        )
        return item

    def _stored_price_item(self, raw: dict[str, Any], label: str, mode: str = "payment") -> dict[str, Any]:
        """A line item selling a stored Price: amount and currency are the Price's; it must be active and,
        in payment mode, one-time (in subscription mode, recurring)."""
        price_id = get_str(raw, "price", required=False) or ""
        price = self.store.get("price", price_id, param=f"{label}[price]")
        if not price["active"]:
            raise StripeError(
                400, "The price specified is inactive. This field only accepts active prices.", param=f"{label}[price]"
            )
        if mode == "subscription" and price["type"] != "recurring":
            raise StripeError(
                400,
                "You must provide at least one recurring price in `subscription` mode when using prices.",
                param=f"{label}[price]",
            )
        if mode == "payment" and price["type"] != "one_time":
            raise StripeError(
                400,
                "You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode "
                "or use only one-time prices.",
                param=f"{label}[price]",
            )
        quantity = get_int(raw, "quantity", required=mode == "payment", minimum=1, label=f"{label}[quantity]") or 1
        product = self.store.objects["product"].get(price["product"]) or {}
        item = template("item")
        item.update(
            id=new_id("li_"),
            price=copy.deepcopy(price),
            amount_discount=0,
            amount_tax=0,
            amount_subtotal=price["unit_amount"] * quantity,
            amount_total=price["unit_amount"] * quantity,
            currency=price["currency"],
            description=product.get("name") or price["nickname"] or price["id"],
            quantity=quantity,
            adjustable_quantity=None,
        )
        return item

    def line_items(self, session_id: str, query: ListQuery) -> dict[str, Any]:
        with self.store.lock:
            self.store.get("checkout.session", session_id, param="session")
            return self.store.list_objects(
                "item", query, f"/v1/checkout/sessions/{session_id}/line_items", self.store.line_items[session_id]
            )

    def expire(self, session_id: str, req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            session = self.store.get("checkout.session", session_id, param="session")
            if session["status"] != "open":
                raise StripeError(
                    400,
                    f"Only Checkout Sessions with a status of 'open' can be expired; this one is {session['status']}.",
                )
            session["status"] = "expired"
            session["url"] = None
            self.store.record_event("checkout.session.expired", session, req=req)
            return session


# The payment method types the emulator knows, and the currencies Stripe lets each of them charge in.
METHOD_CURRENCIES: dict[str, set[str] | None] = {
    "card": None,  # any currency
    "link": None,
    "pix": {"brl"},
    "boleto": {"brl"},
    "us_bank_account": {"usd"},
    "sepa_debit": {"eur"},
}


def _check_methods(methods: list[str], currency: str) -> None:
    for i, method in enumerate(methods):
        if method not in METHOD_CURRENCIES:
            raise StripeError(
                400,
                f"The payment method type provided: {method} is invalid.",
                param=f"payment_method_types[{i}]",
            )
        allowed = METHOD_CURRENCIES[method]
        if allowed is not None and currency not in allowed:
            raise StripeError(
                400,
                f"The currency provided ({currency}) is invalid for one or more payment method types. "
                f"Allowed currencies for {method} are: {', '.join(sorted(allowed))}.",
                param="payment_method_types",
            )
