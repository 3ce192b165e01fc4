"""Billing Portal sessions: a link to a page where the customer sees its saved card and its invoices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import get_str
from stripe_emulator.state.store import RequestMeta, Store, new_id, template

CONFIGURATION = "bpc_emulator_default"  # the account's default portal configuration


class BillingPortal:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, params: Mapping[str, Any], base_url: str, req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            customer_id = get_str(params, "customer", required=True) or ""
            self.store.get("customer", customer_id, param="customer")
            session_id = new_id("bps_")
            session = template("billing_portal.session")
            session.update(
                id=session_id,
                created=self.store.now(),
                customer=customer_id,
                configuration=get_str(params, "configuration") or CONFIGURATION,
                flow=None,
                livemode=False,
                locale=get_str(params, "locale"),
                on_behalf_of=None,
                return_url=get_str(params, "return_url"),
                url=f"{base_url}/_emulator/billing_portal/{session_id}",
                customer_account=None,
            )
            # Stripe sends no event for a portal session; it is not listed either.
            return self.store.add("billing_portal.session", session)
