"""The objects pass (daily): Stripe's paid Checkout Sessions of the last days against the ledger, by Stripe id.

- paid in Stripe, no ``checkout:<cs>`` purchase in the ledger → credited through the normal path
  (``purchases.credit_checkout``, the handler a ``checkout.session.completed`` event runs);
- credited, but not the credits the session sold (its metadata's ``credits``) → a discrepancy (kind
  ``amount_differs``) and an admin alert, each once for that pair of amounts;
- a ``checkout:<cs>`` purchase of the window whose session Stripe does not know, or does not show paid → a
  discrepancy (``missing_in_stripe`` / ``state_differs``).

The pass is idempotent (purchases by key, discrepancies and alerts by dedupe key), so a run that stopped is
resumed by running it again; its place (``starting_after``) is recorded for the record. Invoices, refunds and
disputes are not compared yet.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from sqlalchemy import Table, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.db.tables import Grant, LedgerEntry, ReconciliationRun, Wallet
from billing_core.errors import BillingError
from billing_core.ledger.book import Book
from billing_core.notify.alerts import record_alert
from billing_core.reconcile import discrepancies
from billing_core.reconcile.events import RunReport, run_report
from billing_core.reconcile.pacing import Pacer, pacer
from billing_core.stripe.gateway import StripeNotFound
from billing_core.stripe.purchases import PROCESSED, credit_checkout, is_paid
from billing_core.units import parse_credits

log = logging.getLogger(__name__)

KIND = "objects"
DEFAULT_DAYS = 3
ALERT_KIND = "reconciliation_discrepancy"

_RUNS: Table = ReconciliationRun.__table__  # type: ignore[assignment]
_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
_GRANTS: Table = Grant.__table__  # type: ignore[assignment]
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
entries, grants, wallets = _ENTRIES.c, _GRANTS.c, _WALLETS.c


class SessionLister(Protocol):
    def list_checkout_sessions_page(
        self, *, created_gte: int | None = None, starting_after: str | None = None, limit: int = 100
    ) -> dict[str, Any]: ...

    def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]: ...


def _credited(session: Session, keys: list[str]) -> dict[str, tuple[str, int]]:
    """``checkout:<cs>`` key → (account, credited mc) for the keys the ledger holds."""
    if not keys:
        return {}
    rows = session.execute(
        select(entries.idempotency_key, wallets.account, grants.amount_mc)
        .select_from(
            _ENTRIES.join(_GRANTS, grants.entry_id == entries.id).join(_WALLETS, wallets.id == grants.wallet_id)
        )
        .where(entries.idempotency_key.in_(keys), grants.source == literal_column("'purchase'"))
    )
    return {row.idempotency_key: (row.account, row.amount_mc) for row in rows}


def _expected_mc(stripe_session: dict[str, Any]) -> int | None:
    credits = (stripe_session.get("metadata") or {}).get("credits")
    if credits is None:
        return None
    try:
        return parse_credits(str(credits))
    except (BillingError, ValueError, ArithmeticError):
        return None


def _report_discrepancy(session: Session, run_id: int, counts: Counter[str], **fields: Any) -> None:
    new = discrepancies.record(session, run_id=run_id, **fields)
    if new is not None:
        counts["discrepancies"] += 1
        record_alert(session, ALERT_KIND, f"discrepancy:{fields['dedupe_key']}", {"discrepancy": new, **fields})
        log.warning("reconciliation discrepancy %s: %s", fields["kind"], fields.get("stripe_id"))


def _apply(session_factory: sessionmaker[Session], stripe_session: dict[str, Any]) -> str:
    def work(uow: unit_of_work.UnitOfWork) -> str:
        book = Book(uow.session, uow.book.now)
        status = credit_checkout(book, stripe_session)
        book.flush()
        return status

    return unit_of_work.run(session_factory, work)


def reconcile_objects(
    session_factory: sessionmaker[Session],
    gateway: SessionLister,
    *,
    days: int = DEFAULT_DAYS,
    requests_per_second: float = 80.0,
    page_size: int = 100,
    pace: Pacer | None = None,
    now: datetime | None = None,
) -> RunReport:
    """One objects pass over the last ``days`` days; its recorded run."""
    pace = pace or pacer(requests_per_second)
    now = now or datetime.now(UTC)
    window_start = now - timedelta(days=days)
    with session_factory.begin() as session:
        run_id = session.execute(
            pg_insert(_RUNS)
            .values(kind=KIND, window_start=window_start, window_end=now, checkpoint={}, counts={})
            .returning(_RUNS.c.id)
        ).scalar_one()
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    place: dict[str, Any] = {}
    requests_before, limited_before = pace.requests, pace.rate_limited
    try:
        while True:
            page = pace.call(
                partial(
                    gateway.list_checkout_sessions_page,
                    created_gte=int(window_start.timestamp()),
                    starting_after=place.get("starting_after"),
                    limit=page_size,
                )
            )
            _check_page(session_factory, run_id, page["data"], counts, seen)
            if page["data"]:
                place["starting_after"] = page["data"][-1]["id"]
            with session_factory.begin() as session:
                session.execute(
                    update(_RUNS).where(_RUNS.c.id == run_id).values(checkpoint=dict(place), counts=dict(counts))
                )
            if not page["has_more"] or not page["data"]:
                break
        _check_orphans(session_factory, gateway, pace, run_id, window_start, seen, counts)
    except Exception as exc:
        counts["requests"] += pace.requests - requests_before
        counts["rate_limited"] += pace.rate_limited - limited_before
        with session_factory.begin() as session:
            session.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(
                    status="failed", error=f"{type(exc).__name__}: {exc}", counts=dict(counts), finished_at=func.now()
                )
            )
        raise
    counts["requests"] += pace.requests - requests_before
    counts["rate_limited"] += pace.rate_limited - limited_before
    with session_factory.begin() as session:
        row = session.execute(
            update(_RUNS)
            .where(_RUNS.c.id == run_id)
            .values(status="done", finished_at=func.now(), counts=dict(counts), checkpoint=place)
            .returning(*_RUNS.c)
        ).one()
    return run_report(row)


def _check_page(
    session_factory: sessionmaker[Session],
    run_id: int,
    data: list[dict[str, Any]],
    counts: Counter[str],
    seen: set[str],
) -> None:
    counts["read"] += len(data)
    paid = [s for s in data if s.get("mode", "payment") == "payment" and is_paid(s) and s.get("metadata")]
    seen.update(s["id"] for s in paid)
    with session_factory() as session:
        credited = _credited(session, [f"checkout:{s['id']}" for s in paid])
    for stripe_session in paid:
        counts["checked"] += 1
        expected = _expected_mc(stripe_session)
        found = credited.get(f"checkout:{stripe_session['id']}")
        if found is None:
            counts["missing"] += 1
            try:
                status = _apply(session_factory, stripe_session)
            except BillingError as exc:
                log.error("reconciliation could not credit %s: %s", stripe_session["id"], exc)
                counts["failed"] += 1
                continue
            if status == PROCESSED:
                counts["applied"] += 1
            continue
        account, amount_mc = found
        if expected is not None and amount_mc != expected:
            with session_factory.begin() as session:
                _report_discrepancy(
                    session,
                    run_id,
                    counts,
                    kind="amount_differs",
                    dedupe_key=f"amount:checkout:{stripe_session['id']}:{expected}:{amount_mc}",
                    stripe_id=stripe_session["id"],
                    account=account,
                    expected={"credits_mc": expected},
                    found={"credits_mc": amount_mc},
                )


def _check_orphans(
    session_factory: sessionmaker[Session],
    gateway: SessionLister,
    pace: Pacer,
    run_id: int,
    window_start: datetime,
    seen: set[str],
    counts: Counter[str],
) -> None:
    """Purchases of the window whose session the listing did not show paid: asked for one by one."""
    with session_factory() as session:
        rows = session.execute(
            select(entries.idempotency_key, wallets.account, grants.amount_mc)
            .select_from(
                _ENTRIES.join(_GRANTS, grants.entry_id == entries.id).join(_WALLETS, wallets.id == grants.wallet_id)
            )
            .where(
                entries.idempotency_key.like(literal_column("'checkout:cs_%'")),
                grants.source == literal_column("'purchase'"),
                entries.created_at >= window_start,
            )
        ).all()
    for key, account, amount_mc in rows:
        session_id = key.removeprefix("checkout:")
        if session_id in seen:
            continue
        try:
            stripe_session = pace.call(partial(gateway.retrieve_checkout_session, session_id))
        except StripeNotFound:
            stripe_session = None
        if stripe_session is not None and is_paid(stripe_session):
            continue  # created before the window, paid within it
        kind = "missing_in_stripe" if stripe_session is None else "state_differs"
        with session_factory.begin() as session:
            _report_discrepancy(
                session,
                run_id,
                counts,
                kind=kind,
                dedupe_key=f"{kind}:checkout:{session_id}",
                stripe_id=session_id,
                account=account,
                expected={"credits_mc": amount_mc, "status": "paid"},
                found=None if stripe_session is None else {"payment_status": stripe_session.get("payment_status")},
            )
