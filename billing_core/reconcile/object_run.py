"""One objects pass in progress: its recorded run, its counts, and what each Stripe type's check needs from it
(walking a list page by page, applying an object through its event's handler, reporting a discrepancy).

Counts are kept per Stripe type, as ``<what>_<type>`` (``checked_invoices``, ``applied_refunds``, ...):
``read`` (listed), ``checked`` (compared with the ledger), ``missing`` (not in the ledger), ``applied`` (the
normal path wrote it), ``skipped`` (the normal path wrote nothing: not ours, nothing to grant), ``waiting``
(the normal path parked it: its purchase is not known yet), ``failed``, ``discrepancies``; ``discrepancies``
alone is the run's total.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from sqlalchemy import Table, update
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.db.tables import ReconciliationRun
from billing_core.errors import BillingError
from billing_core.ledger.book import Book
from billing_core.notify.alerts import record_alert
from billing_core.reconcile import discrepancies
from billing_core.reconcile.pacing import Pacer
from billing_core.stripe.event_handlers import StripeFacts, StripeReader
from billing_core.stripe.gateway import GatewayError, StripeNotFound, StripeUnavailable
from billing_core.stripe.handler_map import HANDLERS
from billing_core.stripe.purchases import PROCESSED, Waiting, find_purchase

log = logging.getLogger(__name__)

ALERT_KIND = "reconciliation_discrepancy"

_RUNS: Table = ReconciliationRun.__table__  # type: ignore[assignment]

StripeObject = dict[str, Any]
ListPage = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class LedgerSide:
    """What the ledger wrote for one Stripe object (``noun`` names its type in dedupe keys)."""

    noun: str
    stripe_id: str
    account: str
    expected: dict[str, Any]


class ObjectsGateway(StripeReader, Protocol):
    """What the objects pass needs of ``StripeGateway``: a page of each type, one object of each, and what the
    handlers read."""

    def list_checkout_sessions_page(
        self, *, created_gte: int | None = None, starting_after: str | None = None, limit: int = 100
    ) -> dict[str, Any]: ...
    def list_invoices_page(
        self,
        *,
        created_gte: int | None = None,
        status: str | None = None,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]: ...
    def list_refunds_page(
        self, *, created_gte: int | None = None, starting_after: str | None = None, limit: int = 100
    ) -> dict[str, Any]: ...
    def list_disputes_page(
        self, *, created_gte: int | None = None, starting_after: str | None = None, limit: int = 100
    ) -> dict[str, Any]: ...
    def retrieve_refund(self, refund_id: str) -> dict[str, Any]: ...
    def retrieve_dispute(self, dispute_id: str) -> dict[str, Any]: ...


@dataclass
class ObjectsRun:
    session_factory: sessionmaker[Session]
    gateway: ObjectsGateway
    reader: StripeReader  # the gateway, paced: what handlers read shares the run's budget
    pace: Pacer
    run_id: int
    window_start: datetime
    page_size: int = 100
    counts: Counter[str] = field(default_factory=Counter)
    place: dict[str, Any] = field(default_factory=dict)

    @property
    def created_gte(self) -> int:
        return int(self.window_start.timestamp())

    def count(self, kind: str, what: str, n: int = 1) -> None:
        self.counts[f"{what}_{kind}"] += n

    # -- walking Stripe's lists -------------------------------------------------------------------------------
    def walk(self, kind: str, list_page: ListPage, check_page: Callable[[list[StripeObject]], None]) -> None:
        """Every object of ``kind`` created in the window, newest first, a page at a time (``starting_after``
        the last id of the previous page), each page checked, then the run's place and counts recorded."""
        while True:
            page = self.pace.call(
                partial(
                    list_page,
                    created_gte=self.created_gte,
                    starting_after=self.place.get(kind),
                    limit=self.page_size,
                )
            )
            self.count(kind, "read", len(page["data"]))
            check_page(page["data"])
            if page["data"]:
                self.place[kind] = page["data"][-1]["id"]
            self.save()
            if not page["has_more"] or not page["data"]:
                return

    def retrieve(self, request: Callable[[], StripeObject]) -> StripeObject | None:
        """One object, paced; None when Stripe does not know it."""
        try:
            return self.pace.call(request)
        except StripeNotFound:
            return None

    def save(self) -> None:
        with self.session_factory.begin() as session:
            session.execute(
                update(_RUNS)
                .where(_RUNS.c.id == self.run_id)
                .values(checkpoint=dict(self.place), counts=dict(self.counts))
            )

    # -- healing through the normal path ---------------------------------------------------------------------
    def apply(self, kind: str, event_type: str, obj: StripeObject, *, wrote: Callable[[], bool]) -> bool:
        """Hand ``obj`` to the handler of ``event_type`` as if its event had come now (its ``read`` asks Stripe
        first, outside any transaction; its ``apply`` writes in one); count what came of it. ``wrote``: whether
        the ledger now has what was missing (read after the handler's transaction). True when it has."""
        handler = HANDLERS[event_type]
        self.count(kind, "missing")

        def known(payment_intent: str) -> bool:
            with self.session_factory() as session:
                return find_purchase(session, payment_intent) is not None

        try:
            facts = handler.read(self.reader, obj, known) if handler.read is not None else StripeFacts()

            def work(uow: unit_of_work.UnitOfWork) -> str:
                book = Book(uow.session, uow.book.now)
                status = handler.apply(book, obj, facts)
                book.flush()
                return status

            status = unit_of_work.run(self.session_factory, work)
        except Waiting as exc:
            # The normal path parks such an event until its purchase is known; tomorrow's pass looks again.
            log.info("reconciliation: %s %s waits: %s", kind, obj.get("id"), exc)
            self.count(kind, "waiting")
            return False
        except StripeUnavailable:
            raise  # Stripe is down or keeps refusing: the run stops (tomorrow's covers the window again)
        except (BillingError, GatewayError) as exc:
            log.error("reconciliation could not apply %s %s: %s", kind, obj.get("id"), exc)
            self.count(kind, "failed")
            return False
        if status == PROCESSED and wrote():
            self.count(kind, "applied")
            return True
        self.count(kind, "skipped")
        return False

    # -- what is not healed ----------------------------------------------------------------------------------
    def check_unseen(
        self,
        object_type: str,
        ledger: list[LedgerSide],
        seen: set[str],
        retrieve_one: Callable[[str], StripeObject],
        settled: Callable[[StripeObject], bool],
        found: Callable[[StripeObject], dict[str, Any]],
    ) -> None:
        """The ledger's side of the window that the listing did not show settled, asked for one by one: an
        object Stripe does not know is ``missing_in_stripe``, one it shows unsettled ``state_differs``, and a
        settled one (created before the window, written within it) is fine."""
        for side in ledger:
            if side.stripe_id in seen:
                continue
            obj = self.retrieve(partial(retrieve_one, side.stripe_id))
            if obj is not None and settled(obj):
                continue
            kind = "missing_in_stripe" if obj is None else "state_differs"
            self.report(
                object_type,
                kind=kind,
                dedupe_key=f"{kind}:{side.noun}:{side.stripe_id}",
                stripe_id=side.stripe_id,
                account=side.account,
                expected=side.expected,
                found=None if obj is None else found(obj),
            )

    def report(self, object_type: str, /, **fields: Any) -> None:
        """Record a discrepancy and alert the admins, both once per ``dedupe_key``."""
        with self.session_factory.begin() as session:
            new = discrepancies.record(session, run_id=self.run_id, **fields)
            if new is None:
                return
            record_alert(session, ALERT_KIND, f"discrepancy:{fields['dedupe_key']}", {"discrepancy": new, **fields})
        self.counts["discrepancies"] += 1
        self.count(object_type, "discrepancies")
        log.warning("reconciliation discrepancy %s: %s %s", fields["kind"], object_type, fields.get("stripe_id"))
