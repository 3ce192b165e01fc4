"""Subscriptions: created by a subscription-mode Checkout Session (or ``POST /v1/subscriptions``), changed,
canceled, and billed as time passes: renewals, trial ends, failed payments and their retries.

Time passes when a test clock advances (``test_clocks``: the subscriptions of that clock's customers) or when
``/_emulator/clock`` moves the emulator's own clock (subscriptions of customers without a test clock).
``run_until`` walks the due moments in order and runs each at its own time, so every object and event it
makes carries the time at which it happened.

Events, in the order recorded (see ``docs/stripe-emulator-subscriptions.md``):

* checkout paid: ``payment_method.attached``, ``customer.updated``, ``customer.subscription.created``,
  ``invoice.created``, ``invoice.finalized``, ``payment_intent.created``, ``payment_intent.succeeded``,
  ``charge.succeeded``, ``invoice.paid``, ``invoice.payment_succeeded``, ``checkout.session.completed``
  (a trial: a $0 invoice, no PaymentIntent);
* renewal: ``invoice.created``, ``invoice.finalized``, ``payment_intent.created``, then the payment's events
  and ``invoice.paid`` + ``invoice.payment_succeeded`` or ``invoice.payment_failed`` (+
  ``invoice.payment_action_required``), then ``customer.subscription.updated`` (new period, status);
* a failed renewal is retried ``RETRY_DAYS`` after its first failure; after the last failed retry the
  subscription is canceled (``customer.subscription.deleted``) and the invoice stays ``open``.
"""

from __future__ import annotations

import calendar
import copy
import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from stripe_emulator.params import StripeError, get_bool, get_dict, get_int, get_list, get_str, metadata, missing
from stripe_emulator.state.cards import Cards
from stripe_emulator.state.customers import Customers
from stripe_emulator.state.invoices import DAY, RETRY_DAYS, Invoices, money
from stripe_emulator.state.store import ListQuery, RequestMeta, Store, new_id, template

TRIAL_WILL_END = 3 * DAY  # ``customer.subscription.trial_will_end`` comes this long before the trial ends
PRORATION_BEHAVIORS = ("create_prorations", "always_invoice", "none")
LIVE = ("active", "trialing", "past_due")
Lines = list[dict[str, Any]]


def add_intervals(anchor: int, interval: str, count: int, n: int) -> int:
    """``anchor`` plus ``n`` times ``count`` intervals; months keep the anchor's day of month, clamped to the
    month's last day (Jan 31 -> Feb 28 -> Mar 31), as Stripe's billing cycle does."""
    if interval == "day":
        return anchor + n * count * DAY
    if interval == "week":
        return anchor + n * count * 7 * DAY
    months = n * count * (12 if interval == "year" else 1)
    start = datetime.fromtimestamp(anchor, UTC)
    year, month = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month + 1)[1])
    return int(start.replace(year=year, month=month + 1, day=day).timestamp())


def _round(value: Fraction) -> int:
    """To the nearest cent, halves away from zero."""
    whole = int(abs(value) + Fraction(1, 2))
    return whole if value >= 0 else -whole


class Subscriptions:
    def __init__(self, store: Store, customers: Customers, cards: Cards, invoices: Invoices) -> None:
        self.store = store
        self.customers = customers
        self.cards = cards
        self.invoices = invoices

    # -- helpers -----------------------------------------------------------------------------------------

    def _price_name(self, price: dict[str, Any]) -> str:
        product = self.store.objects["product"].get(price["product"]) or {}
        return str(product.get("name") or price.get("nickname") or price["id"])

    def _recurring_price(self, price_id: str, param: str) -> dict[str, Any]:
        price = self.store.get("price", price_id, param=param)
        if not price["active"]:
            raise StripeError(
                400, "The price specified is inactive. This field only accepts active prices.", param=param
            )
        if price["type"] != "recurring":
            raise StripeError(
                400,
                f"The price specified ({price_id}) is not recurring; subscriptions need a recurring price.",
                param=param,
            )
        return price

    def _period_end(self, sub: dict[str, Any], n: int) -> int:
        recurring = sub["items"]["data"][0]["price"]["recurring"]
        return add_intervals(sub["billing_cycle_anchor"], recurring["interval"], recurring["interval_count"], n)

    @staticmethod
    def _set_period(sub: dict[str, Any], start: int, end: int) -> None:
        """The period lives on the item (current API) and on the subscription (older API versions)."""
        sub["current_period_start"], sub["current_period_end"] = start, end
        for item in sub["items"]["data"]:
            item["current_period_start"], item["current_period_end"] = start, end

    @staticmethod
    def _plan(price: dict[str, Any]) -> dict[str, Any]:
        """The legacy ``plan`` view of a recurring Price, still served on subscription items."""
        recurring = price["recurring"]
        return {
            "id": price["id"],
            "object": "plan",
            "active": price["active"],
            "amount": price["unit_amount"],
            "amount_decimal": price["unit_amount_decimal"],
            "billing_scheme": "per_unit",
            "created": price["created"],
            "currency": price["currency"],
            "interval": recurring["interval"],
            "interval_count": recurring["interval_count"],
            "livemode": False,
            "metadata": dict(price["metadata"]),
            "meter": None,
            "nickname": price["nickname"],
            "product": price["product"],
            "tiers_mode": None,
            "transform_usage": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        }

    def _item(self, sub_id: str, price: dict[str, Any], quantity: int, now: int) -> dict[str, Any]:
        item = template("subscription_item")
        item.update(
            id=new_id("si_", 14),
            created=now,
            discounts=[],
            metadata={},
            price=copy.deepcopy(price),
            plan=self._plan(price),
            quantity=quantity,
            subscription=sub_id,
            tax_rates=[],
            billing_thresholds=None,
        )
        return item

    def _subscription(self, sub_id: str) -> dict[str, Any]:
        return self.store.get("subscription", sub_id, param="subscription")

    # -- creating ------------------------------------------------------------------------------------------

    def start(
        self,
        *,
        customer_id: str,
        price: dict[str, Any],
        quantity: int = 1,
        metadata: dict[str, str] | None = None,
        trial_days: int | None = None,
        default_payment_method: str | None = None,
        outcome: str | None = None,
        req: RequestMeta | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """A subscription, its first invoice and the first payment: ``(subscription, invoice, error)``.

        ``outcome`` overrides the saved card's behaviour (a card just entered at Checkout goes through).
        """
        now = self.store.now()
        sub_id = new_id("sub_")
        clock = self.store.clock_of(customer_id)
        sub = template("subscription")
        sub["automatic_tax"]["liability"] = None
        sub["items"] = {
            "object": "list",
            "data": [self._item(sub_id, price, quantity, now)],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        }
        trial_end = now + trial_days * DAY if trial_days else None
        sub.update(
            id=sub_id,
            created=now,
            start_date=now,
            customer=customer_id,
            currency=price["currency"],
            status="trialing" if trial_end else "active",
            billing_cycle_anchor=trial_end or now,
            billing_cycle_anchor_config=None,
            cancel_at=None,
            canceled_at=None,
            cancel_at_period_end=False,
            cancellation_details={"comment": None, "feedback": None, "reason": None},
            ended_at=None,
            trial_start=now if trial_end else None,
            trial_end=trial_end,
            default_payment_method=default_payment_method,
            description=None,
            discounts=[],
            latest_invoice=None,
            metadata=dict(metadata or {}),
            next_pending_invoice_item_invoice=None,
            pause_collection=None,
            pending_invoice_item_interval=None,
            pending_setup_intent=None,
            pending_update=None,
            schedule=None,
            test_clock=clock["id"] if clock else None,
            transfer_data=None,
            billing_thresholds=None,
            billing_schedules=[],
            managed_payments=None,
            plan=self._plan(price),
            quantity=quantity,
        )
        sub["payment_settings"] = {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        }
        sub["billing_mode"] = {"type": "classic"}
        end = trial_end or add_intervals(now, price["recurring"]["interval"], price["recurring"]["interval_count"], 1)
        self._set_period(sub, now, end)
        self.store.add("subscription", sub)
        self.store.billing[sub_id] = {"period": -1 if trial_end else 0, "trial_will_end_sent": False, "pending": []}
        name = self._price_name(price)
        if trial_end:
            line = self.invoices.line(
                sub, price, amount=0, quantity=quantity, start=now, end=end, description=f"Trial period for {name}"
            )
        else:
            line = self._period_line(sub, price, quantity, now, end)
        invoice = self.invoices.create(
            sub, [line], billing_reason="subscription_create", period_start=now, period_end=now
        )
        sub["latest_invoice"] = invoice["id"]
        self.store.record_event("customer.subscription.created", sub, req=req)
        error = self._bill(invoice, sub, outcome=outcome, req=req)
        if error is not None:
            previous = {"status": sub["status"]}
            sub["status"] = "incomplete"
            self.store.record_event("customer.subscription.updated", sub, previous=previous, req=req)
        return sub, invoice, error

    def _period_line(
        self, sub: dict[str, Any], price: dict[str, Any], quantity: int, start: int, end: int
    ) -> dict[str, Any]:
        interval = price["recurring"]["interval"]
        every = price["recurring"]["interval_count"]
        unit = f"{every} {interval}s" if every > 1 else interval
        at = money(price["unit_amount"], price["currency"])
        return self.invoices.line(
            sub,
            price,
            amount=price["unit_amount"] * quantity,
            quantity=quantity,
            start=start,
            end=end,
            description=f"{quantity} x {self._price_name(price)} (at {at} / {unit})",
        )

    def create(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        """``POST /v1/subscriptions``: customer, ``items[0][price]``, optional ``default_payment_method``,
        ``trial_period_days``, ``metadata``. The first invoice is charged at once; when that fails the
        subscription is ``incomplete`` (Stripe's default ``payment_behavior=allow_incomplete``)."""
        with self.store.lock:
            customer_id = get_str(params, "customer", required=True) or ""
            self.store.get("customer", customer_id, param="customer")
            items = get_list(params, "items")
            if not items or not isinstance(items[0], dict):
                raise missing("items")
            if len(items) > 1:
                raise StripeError(400, "The emulator supports one item per subscription.", param="items")
            price = self._recurring_price(get_str(items[0], "price", required=True) or "", "items[0][price]")
            quantity = get_int(items[0], "quantity", minimum=1, label="items[0][quantity]") or 1
            trial_days = get_int(params, "trial_period_days", minimum=0, maximum=730)
            method = get_str(params, "default_payment_method")
            if method:
                pm = self.store.get("payment_method", method, param="default_payment_method")
                if pm["customer"] != customer_id:
                    raise StripeError(
                        400, "The PaymentMethod is not attached to this customer.", param="default_payment_method"
                    )
            elif not trial_days and self.cards.default_method(customer_id) is None:
                raise StripeError(
                    400,
                    "This customer has no attached payment source or default payment method.",
                    code="resource_missing",
                )
            with self.store.at(self.store.time_for(customer_id)):
                sub, _, _ = self.start(
                    customer_id=customer_id,
                    price=price,
                    quantity=quantity,
                    metadata=metadata(params),
                    trial_days=trial_days or None,
                    default_payment_method=method,
                    req=req,
                )
            return sub

    def checkout_paid(self, session: dict[str, Any]) -> dict[str, Any]:
        """A subscription-mode Checkout Session is paid: save the card, start the subscription, complete it."""
        customer_id = session["customer"]
        email = session["customer_email"]
        if customer_id is None:
            customer_id = self.customers.create({"email": email or "buyer@example.com"})["id"]
            session["customer"] = customer_id
        customer = self.store.get("customer", customer_id)
        email = email or customer.get("email") or "buyer@example.com"
        data = self.store.subscription_data.get(session["id"], {})
        items = self.store.line_items[session["id"]]
        price = self.store.get("price", items[0]["price"]["id"])
        with self.store.at(self.store.time_for(customer_id)):
            self.cards.save_card(customer_id, email)
            sub, invoice, _ = self.start(
                customer_id=customer_id,
                price=price,
                quantity=items[0]["quantity"],
                metadata=data.get("metadata"),
                trial_days=data.get("trial_period_days"),
                outcome="succeed",
            )
            details = template("checkout.session")["customer_details"]
            details.update(email=email, name=customer.get("name"))
            session.update(
                status="complete",
                payment_status="paid" if invoice["amount_due"] > 0 else "no_payment_required",
                subscription=sub["id"],
                invoice=invoice["id"],
                customer_details=details,
                amount_subtotal=invoice["subtotal"],
                amount_total=invoice["total"],
            )
            self.store.record_event("checkout.session.completed", session)
        return session

    # -- collecting ----------------------------------------------------------------------------------------

    def _bill(
        self,
        invoice: dict[str, Any],
        sub: dict[str, Any],
        *,
        outcome: str | None = None,
        req: RequestMeta | None = None,
    ) -> dict[str, Any] | None:
        """``invoice.created``, finalize (``invoice.finalized``), then the first payment attempt."""
        self.store.record_event("invoice.created", invoice, req=req)
        self.invoices.finalize(invoice)
        self.store.record_event("invoice.finalized", invoice, req=req)
        return self.collect(invoice, sub, outcome=outcome, req=req)

    def collect(
        self,
        invoice: dict[str, Any],
        sub: dict[str, Any],
        *,
        outcome: str | None = None,
        req: RequestMeta | None = None,
    ) -> dict[str, Any] | None:
        """One payment attempt of an open invoice; None when paid, else the card's error. A failed attempt
        of a renewal schedules the next retry (``next_payment_attempt``) while ``RETRY_DAYS`` allow."""
        if invoice["amount_due"] == 0:
            self.invoices.mark_paid(invoice)
            self.store.record_event("invoice.paid", invoice, req=req)
            self.store.record_event("invoice.payment_succeeded", invoice, req=req)
            return None
        pi = self.store.objects["payment_intent"].get(invoice["payment_intent"] or "")
        method = sub["default_payment_method"] or self.cards.default_method(sub["customer"])
        if pi is None:
            pi = self.cards.new_payment_intent(
                customer=sub["customer"],
                amount=invoice["amount_due"],
                currency=invoice["currency"],
                payment_method=method,
                description="Subscription creation"
                if invoice["billing_reason"] == "subscription_create"
                else "Subscription update",
                req=req,
            )
            invoice["payment_intent"] = pi["id"]
        else:
            pi["payment_method"] = method
        invoice["attempt_count"] += 1
        invoice["attempted"] = True
        saved = self.store.card_outcomes.get(sub["customer"])
        if outcome is not None:
            self.store.card_outcomes[sub["customer"]] = outcome
        try:
            error = self.cards.confirm(pi, for_invoice=True, req=req)
        finally:
            if outcome is not None:
                if saved is None:
                    self.store.card_outcomes.pop(sub["customer"], None)
                else:
                    self.store.card_outcomes[sub["customer"]] = saved
        invoice["charge"] = pi["latest_charge"]
        if error is None:
            self.invoices.mark_paid(invoice)
            self.store.record_event("invoice.paid", invoice, req=req)
            self.store.record_event("invoice.payment_succeeded", invoice, req=req)
            return None
        bookkeeping = self.store.billing.setdefault(invoice["id"], {"first_failure": self.store.now()})
        retries_done = invoice["attempt_count"] - 1
        if invoice["billing_reason"] != "subscription_create" and retries_done < len(RETRY_DAYS):
            invoice["next_payment_attempt"] = bookkeeping["first_failure"] + RETRY_DAYS[retries_done] * DAY
        else:
            invoice["next_payment_attempt"] = None
        self.store.record_event("invoice.payment_failed", invoice, req=req)
        if error["code"] == "authentication_required":
            self.store.record_event("invoice.payment_action_required", invoice, req=req)
        return error

    def pay_invoice(self, invoice_id: str, req: RequestMeta | None = None) -> dict[str, Any]:
        """``POST /v1/invoices/<id>/pay``: try the saved card now; a decline answers 402 like Stripe."""
        with self.store.lock:
            invoice = self.store.get("invoice", invoice_id, param="invoice")
            if invoice["status"] == "paid":
                raise StripeError(400, "Invoice is already paid", code="invoice_already_paid")
            if invoice["status"] != "open":
                raise StripeError(400, f"Invoice {invoice_id} is {invoice['status']}; only open invoices can be paid.")
            sub = self._subscription(invoice["subscription"])
            with self.store.at(self.store.time_for(sub["customer"])):
                error = self.collect(invoice, sub, req=req)
                if error is None:
                    self._recovered(sub, req)
            if error is not None:
                raise StripeError(
                    402,
                    error["message"],
                    code=error["code"],
                    type="card_error",
                    extra={
                        "decline_code": error["decline_code"],
                        "payment_intent": self.store.objects["payment_intent"][invoice["payment_intent"]],
                    },
                )
            return invoice

    def _recovered(self, sub: dict[str, Any], req: RequestMeta | None = None) -> None:
        """A past-due or incomplete subscription whose invoices are all paid is active again."""
        if sub["status"] not in ("past_due", "incomplete"):
            return
        unpaid = any(
            i["subscription"] == sub["id"] and i["status"] == "open" for i in self.store.objects["invoice"].values()
        )
        if not unpaid:
            previous = {"status": sub["status"]}
            sub["status"] = "active"
            self.store.record_event("customer.subscription.updated", sub, previous=previous, req=req)

    # -- changing ------------------------------------------------------------------------------------------

    def retrieve(self, sub_id: str) -> dict[str, Any]:
        with self.store.lock:
            return self._subscription(sub_id)

    def list(self, params: Mapping[str, Any], query: ListQuery) -> dict[str, Any]:
        """Filters ``customer``, ``price``, ``status`` (default: every status but canceled; ``all``)."""
        status = get_str(params, "status")
        price = get_str(params, "price")
        customer = get_str(params, "customer")

        def matches(sub: dict[str, Any]) -> bool:
            if customer and sub["customer"] != customer:
                return False
            if price and all(item["price"]["id"] != price for item in sub["items"]["data"]):
                return False
            if status in (None, ""):
                return bool(sub["status"] not in ("canceled", "incomplete_expired"))
            return status == "all" or sub["status"] == status

        query.where = matches
        return self.store.list_objects("subscription", query, "/v1/subscriptions")

    def update(self, sub_id: str, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        """Change the price (``items[0][price]`` with ``proration_behavior``), ``cancel_at_period_end``,
        ``metadata``, ``default_payment_method``; ``customer.subscription.updated`` with what changed."""
        with self.store.lock:
            sub = self._subscription(sub_id)
            if sub["status"] in ("canceled", "incomplete_expired"):
                raise StripeError(
                    400, "A canceled subscription can only update its cancellation_details and metadata.", param="items"
                )
            with self.store.at(self.store.time_for(sub["customer"])):
                return self._update(sub, params, req)

    def _update(self, sub: dict[str, Any], params: Mapping[str, Any], req: RequestMeta | None) -> dict[str, Any]:
        previous: dict[str, Any] = {}
        behavior = get_str(params, "proration_behavior") or "create_prorations"
        if behavior not in PRORATION_BEHAVIORS:
            raise StripeError(400, f"Invalid proration_behavior: {behavior}", param="proration_behavior")
        items = get_list(params, "items")
        invoice: dict[str, Any] | None = None
        if items:
            raw = items[0] if isinstance(items[0], dict) else {}
            item = sub["items"]["data"][0]
            if get_str(raw, "id") not in (None, item["id"]):
                raise StripeError(
                    400, f"No such subscription item: '{raw['id']}'", code="resource_missing", param="items[0][id]"
                )
            price_id = get_str(raw, "price")
            quantity = get_int(raw, "quantity", minimum=1, label="items[0][quantity]") or item["quantity"]
            price = self._recurring_price(price_id, "items[0][price]") if price_id else item["price"]
            old = item["price"]
            if price["recurring"]["interval"] != old["recurring"]["interval"] or (
                price["recurring"]["interval_count"] != old["recurring"]["interval_count"]
            ):
                raise StripeError(
                    400,
                    "The emulator changes prices only between prices of the same interval.",
                    param="items[0][price]",
                )
            if price["currency"] != old["currency"]:
                raise StripeError(400, "The new price must use the subscription's currency.", param="items[0][price]")
            if price["id"] != old["id"] or quantity != item["quantity"]:
                previous["items"] = copy.deepcopy(sub["items"])
                previous["plan"] = copy.deepcopy(sub["plan"])
                lines = self._prorations(sub, old, item["quantity"], price, quantity) if behavior != "none" else []
                item.update(price=copy.deepcopy(price), plan=self._plan(price), quantity=quantity)
                sub.update(plan=self._plan(price), quantity=quantity)
                if lines and behavior == "always_invoice":
                    now = self.store.now()
                    invoice = self.invoices.create(
                        sub, lines, billing_reason="subscription_update", period_start=now, period_end=now
                    )
                    previous["latest_invoice"] = sub["latest_invoice"]
                    sub["latest_invoice"] = invoice["id"]
                elif lines:
                    self.store.billing[sub["id"]]["pending"].extend(lines)
        if "cancel_at_period_end" in params:
            cancel = get_bool(params, "cancel_at_period_end")
            if cancel != sub["cancel_at_period_end"]:
                previous.update(
                    cancel_at_period_end=sub["cancel_at_period_end"],
                    cancel_at=sub["cancel_at"],
                    canceled_at=sub["canceled_at"],
                    cancellation_details=copy.deepcopy(sub["cancellation_details"]),
                )
                sub["cancel_at_period_end"] = cancel
                sub["cancel_at"] = sub["current_period_end"] if cancel else None
                sub["canceled_at"] = self.store.now() if cancel else None
                sub["cancellation_details"] = {
                    "comment": None,
                    "feedback": None,
                    "reason": "cancellation_requested" if cancel else None,
                }
        if "metadata" in params:
            merged = dict(sub["metadata"])
            for key, value in metadata(params).items():
                if value == "":
                    merged.pop(key, None)
                else:
                    merged[key] = value
            if merged != sub["metadata"]:
                previous["metadata"] = sub["metadata"]
                sub["metadata"] = merged
        if "default_payment_method" in params:
            method = get_str(params, "default_payment_method")
            if method:
                self.store.get("payment_method", method, param="default_payment_method")
            if method != sub["default_payment_method"]:
                previous["default_payment_method"] = sub["default_payment_method"]
                sub["default_payment_method"] = method
        if invoice is not None:
            error = self._bill(invoice, sub, req=req)
            if error is not None and sub["status"] == "active":
                previous["status"] = sub["status"]
                sub["status"] = "past_due"
        if previous:
            self.store.record_event("customer.subscription.updated", sub, previous=previous, req=req)
        return sub

    def _prorations(
        self, sub: dict[str, Any], old: dict[str, Any], old_qty: int, new: dict[str, Any], new_qty: int
    ) -> Lines:
        """Credit for the unused time on the old price, charge for the remaining time on the new one, each
        ``amount * remaining / period`` rounded to the cent; nothing during a trial or outside a period."""
        now = self.store.now()
        start, end = sub["current_period_start"], sub["current_period_end"]
        if sub["status"] == "trialing" or not start <= now < end:
            return []
        fraction = Fraction(end - now, end - start)
        when = datetime.fromtimestamp(now, UTC).strftime("%d %b %Y")
        return [
            self.invoices.line(
                sub,
                old,
                amount=-_round(old["unit_amount"] * old_qty * fraction),
                quantity=old_qty,
                start=now,
                end=end,
                description=f"Unused time on {old_qty} x {self._price_name(old)} after {when}",
                proration=True,
            ),
            self.invoices.line(
                sub,
                new,
                amount=_round(new["unit_amount"] * new_qty * fraction),
                quantity=new_qty,
                start=now,
                end=end,
                description=f"Remaining time on {new_qty} x {self._price_name(new)} after {when}",
                proration=True,
            ),
        ]

    def cancel(
        self, sub_id: str, req: RequestMeta | None = None, *, reason: str = "cancellation_requested"
    ) -> dict[str, Any]:
        """``DELETE /v1/subscriptions/<id>``: canceled now, ``customer.subscription.deleted``."""
        with self.store.lock:
            sub = self._subscription(sub_id)
            if sub["status"] == "canceled":
                raise StripeError(
                    404, f"No such subscription: '{sub_id}' (it is canceled)", code="resource_missing", param="id"
                )
            with self.store.at(self.store.time_for(sub["customer"])):
                self._end(sub, reason, req)
            return sub

    def _end(self, sub: dict[str, Any], reason: str, req: RequestMeta | None = None) -> None:
        now = self.store.now()
        sub.update(status="canceled", ended_at=now, canceled_at=sub["canceled_at"] or now)
        sub["cancellation_details"] = {**sub["cancellation_details"], "reason": reason}
        for invoice in self.store.objects["invoice"].values():
            if invoice["subscription"] == sub["id"] and invoice["status"] == "open":
                invoice["next_payment_attempt"] = None  # no more retries; the invoice itself stays open
        self.store.record_event("customer.subscription.deleted", sub, req=req)

    # -- time passing --------------------------------------------------------------------------------------

    def _due(self, clock_id: str | None, target: int) -> tuple[int, int, int, Callable[[], None]] | None:
        """The earliest thing due at or before ``target`` for subscriptions on ``clock_id`` (None: no clock)."""
        best: tuple[int, int, int, Callable[[], None]] | None = None

        def offer(at: int, rank: int, seq: int, action: Callable[[], None]) -> None:
            nonlocal best
            if at <= target and (best is None or (at, rank, seq) < best[:3]):
                best = (at, rank, seq, action)

        for seq, sub in enumerate(self.store.objects["subscription"].values()):
            if sub["test_clock"] != clock_id or sub["status"] not in LIVE:
                continue
            book = self.store.billing[sub["id"]]
            if sub["status"] == "trialing" and not book["trial_will_end_sent"] and sub["trial_end"]:
                offer(
                    max(sub["trial_end"] - TRIAL_WILL_END, sub["created"]),
                    0,
                    seq,
                    functools.partial(self._trial_will_end, sub),
                )
            offer(sub["current_period_end"], 1, seq, functools.partial(self._renew, sub))
        for seq, invoice in enumerate(self.store.objects["invoice"].values()):
            if invoice["status"] != "open" or invoice["next_payment_attempt"] is None:
                continue
            owner = self.store.objects["subscription"].get(invoice["subscription"] or "")
            if owner is None or owner["test_clock"] != clock_id or owner["status"] not in LIVE:
                continue
            offer(invoice["next_payment_attempt"], 2, seq, functools.partial(self._retry, invoice, owner))
        return best

    def run_until(self, clock_id: str | None, target: int, on_step: Callable[[int], None] | None = None) -> int:
        """Run everything due up to ``target``, in time order, each at its own time; returns the steps run."""
        steps = 0
        while (due := self._due(clock_id, target)) is not None:
            at, _, _, action = due
            if on_step is not None:
                on_step(at)
            with self.store.at(at):
                action()
            steps += 1
            if steps > 100_000:
                raise StripeError(400, "Too much to bill in one advance; advance the clock in smaller steps.")
        return steps

    def _trial_will_end(self, sub: dict[str, Any]) -> None:
        self.store.billing[sub["id"]]["trial_will_end_sent"] = True
        self.store.record_event("customer.subscription.trial_will_end", sub)

    def _renew(self, sub: dict[str, Any]) -> None:
        """The period ends: cancel (``cancel_at_period_end``), or start the next period and bill it."""
        if sub["cancel_at_period_end"]:
            self._end(sub, "cancellation_requested")
            return
        book = self.store.billing[sub["id"]]
        item = sub["items"]["data"][0]
        previous: dict[str, Any] = {
            "current_period_start": sub["current_period_start"],
            "current_period_end": sub["current_period_end"],
            "items": copy.deepcopy(sub["items"]),
            "latest_invoice": sub["latest_invoice"],
        }
        old_start, old_end = sub["current_period_start"], sub["current_period_end"]
        book["period"] += 1
        start, end = self._period_end(sub, book["period"]), self._period_end(sub, book["period"] + 1)
        self._set_period(sub, start, end)
        if sub["status"] == "trialing":
            previous["status"] = "trialing"
            sub["status"] = "active"
        lines = [*book["pending"], self._period_line(sub, item["price"], item["quantity"], start, end)]
        book["pending"] = []
        invoice = self.invoices.create(
            sub, lines, billing_reason="subscription_cycle", period_start=old_start, period_end=old_end
        )
        sub["latest_invoice"] = invoice["id"]
        error = self._bill(invoice, sub)
        if error is not None and sub["status"] != "past_due":
            previous.setdefault("status", sub["status"])
            sub["status"] = "past_due"
        self.store.record_event("customer.subscription.updated", sub, previous=previous)

    def _retry(self, invoice: dict[str, Any], sub: dict[str, Any]) -> None:
        """A scheduled retry: paid -> the subscription recovers; the last one failing cancels it."""
        error = self.collect(invoice, sub)
        if error is None:
            self._recovered(sub)
        elif invoice["next_payment_attempt"] is None:
            self._end(sub, "payment_failed")


def subscription_data(params: Mapping[str, Any]) -> dict[str, Any]:
    """A Checkout Session's ``subscription_data``: ``metadata`` and ``trial_period_days``."""
    data = get_dict(params, "subscription_data")
    trial = get_int(data, "trial_period_days", minimum=1, maximum=730, label="subscription_data[trial_period_days]")
    return {"metadata": metadata(data), "trial_period_days": trial}
