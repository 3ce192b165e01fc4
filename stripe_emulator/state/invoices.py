"""Invoices of subscriptions: built from lines (a Price for a period, or a proration), finalized (numbered, given a
PaymentIntent), then collected from the customer's saved card by ``subscriptions``; listed, read, their lines.

Shapes follow the pinned API version (``parent.subscription_details``, ``lines.data[].pricing``) and keep the
older top-level fields the project reads too: ``subscription``, ``payment_intent``, ``charge`` on the invoice,
``price``, ``subscription`` and ``proration`` on each line.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import get_str
from stripe_emulator.state.store import ListQuery, Store, new_id, template

DAY = 24 * 3600
RETRY_DAYS = (3, 5, 7)  # retries of a failed renewal: this many days after its first failed attempt


def money(amount: int, currency: str) -> str:
    return f"{'$' if currency == 'usd' else currency.upper() + ' '}{amount / 100:.2f}"


class Invoices:
    def __init__(self, store: Store) -> None:
        self.store = store

    def line(
        self,
        sub: dict[str, Any],
        price: dict[str, Any],
        *,
        amount: int,
        quantity: int,
        start: int,
        end: int,
        description: str,
        proration: bool = False,
    ) -> dict[str, Any]:
        """One invoice line billing ``price`` for ``[start, end)`` (the invoice id is filled in by ``create``)."""
        item_id = sub["items"]["data"][0]["id"]
        line = template("line_item")
        line.update(
            id=new_id("il_"),
            amount=amount,
            subtotal=amount,
            currency=price["currency"],
            description=description,
            discount_amounts=[],
            discounts=[],
            metadata={},
            period={"start": start, "end": end},
            quantity=quantity,
            quantity_decimal=str(quantity),
            subscription=sub["id"],
            price=copy.deepcopy(price),
            proration=proration,
            taxes=[],
            pretax_credit_amounts=[],
            pricing={
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]},
                "unit_amount_decimal": price["unit_amount_decimal"],
            },
            parent={
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": proration,
                    "proration_details": {"credited_items": None},
                    "subscription": sub["id"],
                    "subscription_item": item_id,
                },
            },
        )
        return line

    def create(
        self,
        sub: dict[str, Any],
        lines: list[dict[str, Any]],
        *,
        billing_reason: str,
        period_start: int,
        period_end: int,
    ) -> dict[str, Any]:
        """A draft invoice of the subscription (no event: the caller records ``invoice.created`` in its order)."""
        now = self.store.now()
        customer = self.store.objects["customer"].get(sub["customer"]) or {}
        invoice_id = new_id("in_")
        total = max(sum(line["amount"] for line in lines), 0)  # a net credit is not carried to a balance here
        for line in lines:
            line["invoice"] = invoice_id
        invoice = template("invoice")
        invoice["automatic_tax"]["liability"] = None
        invoice["payment_settings"] = {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        }
        invoice.update(
            id=invoice_id,
            created=now,
            effective_at=None,
            customer=sub["customer"],
            customer_email=customer.get("email"),
            customer_name=customer.get("name"),
            customer_address=None,
            customer_phone=None,
            customer_shipping=None,
            shipping_details=None,
            shipping_cost=None,
            currency=sub["currency"],
            billing_reason=billing_reason,
            collection_method="charge_automatically",
            status="draft",
            auto_advance=True,
            amount_due=total,
            amount_paid=0,
            amount_remaining=total,
            amount_overpaid=0,
            subtotal=total,
            subtotal_excluding_tax=total,
            total=total,
            total_excluding_tax=total,
            total_taxes=[],
            total_pretax_credit_amounts=[],
            starting_balance=0,
            ending_balance=None,
            attempt_count=0,
            attempted=False,
            next_payment_attempt=None,
            due_date=None,
            webhooks_delivered_at=None,
            automatically_finalizes_at=None,
            last_finalization_error=None,
            from_invoice=None,
            hosted_invoice_url=None,
            invoice_pdf=None,
            number=None,
            receipt_number=None,
            default_payment_method=None,
            metadata={},
            period_start=period_start,
            period_end=period_end,
            test_clock=sub["test_clock"],
            subscription=sub["id"],
            payment_intent=None,
            charge=None,
            status_transitions={
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            lines={"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{invoice_id}/lines"},
            parent={
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
            },
        )
        return self.store.add("invoice", invoice)

    def finalize(self, invoice: dict[str, Any]) -> None:
        """Draft -> open: numbered (``PREFIX-0001``), a hosted page (``invoice.finalized`` follows)."""
        customer = self.store.objects["customer"].get(invoice["customer"]) or {}
        count = self.store.invoice_counts.get(invoice["customer"], 0) + 1
        self.store.invoice_counts[invoice["customer"]] = count
        if customer:
            customer["next_invoice_sequence"] = count + 1
        now = self.store.now()
        invoice.update(
            status="open",
            number=f"{customer.get('invoice_prefix') or 'EMU'}-{count:04d}",
            effective_at=now,
            hosted_invoice_url=f"{self.store.base_url}/_emulator/invoices/{invoice['id']}",
        )
        invoice["status_transitions"]["finalized_at"] = now

    def mark_paid(self, invoice: dict[str, Any]) -> None:
        now = self.store.now()
        invoice.update(
            status="paid",
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            next_payment_attempt=None,
        )
        invoice["status_transitions"]["paid_at"] = now

    def retrieve(self, invoice_id: str) -> dict[str, Any]:
        with self.store.lock:
            return self.store.get("invoice", invoice_id, param="invoice")

    def list(self, params: Mapping[str, Any], query: ListQuery) -> dict[str, Any]:
        """Stripe's filters: ``customer``, ``subscription``, ``status``; newest first."""
        for name in ("customer", "subscription", "status"):
            value = get_str(params, name)
            if value:
                query.equals[name] = value
        return self.store.list_objects("invoice", query, "/v1/invoices")

    def lines(self, invoice_id: str, query: ListQuery) -> dict[str, Any]:
        with self.store.lock:
            invoice = self.store.get("invoice", invoice_id, param="invoice")
            return self.store.list_objects(
                "line_item", query, f"/v1/invoices/{invoice_id}/lines", invoice["lines"]["data"]
            )
