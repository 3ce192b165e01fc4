"""Paid Checkout Sessions (packages) against ``checkout:<cs>`` purchases.

- paid in Stripe, no purchase in the ledger → credited through the normal path (the ``checkout.session.completed``
  handler, which reads the session again);
- credited, but not the credits the session sold (its metadata's ``credits``) → ``amount_differs``;
- a purchase of the window whose session Stripe does not know, or does not show paid → ``missing_in_stripe`` /
  ``state_differs``.
"""

from __future__ import annotations

from functools import partial

from sqlalchemy import Table, literal_column, select
from sqlalchemy.orm import Session

from billing_core.db.tables import Grant, LedgerEntry, Wallet
from billing_core.errors import BillingError
from billing_core.reconcile.object_run import LedgerSide, ObjectsRun, StripeObject
from billing_core.stripe.purchases import is_paid
from billing_core.units import parse_credits

KIND = "sessions"

_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
_GRANTS: Table = Grant.__table__  # type: ignore[assignment]
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
entries, grants, wallets = _ENTRIES.c, _GRANTS.c, _WALLETS.c
_PURCHASES = (
    select(entries.idempotency_key, wallets.account, grants.amount_mc)
    .select_from(_ENTRIES.join(_GRANTS, grants.entry_id == entries.id).join(_WALLETS, wallets.id == grants.wallet_id))
    .where(grants.source == literal_column("'purchase'"))
)


def _credited(session: Session, keys: list[str]) -> dict[str, tuple[str, int]]:
    """``checkout:<cs>`` key → (account, credited mc) for the keys the ledger holds."""
    if not keys:
        return {}
    rows = session.execute(_PURCHASES.where(entries.idempotency_key.in_(keys)))
    return {row.idempotency_key: (row.account, row.amount_mc) for row in rows}


def _expected_mc(stripe_session: StripeObject) -> int | None:
    credits = (stripe_session.get("metadata") or {}).get("credits")
    if credits is None:
        return None
    try:
        return parse_credits(str(credits))
    except (BillingError, ValueError, ArithmeticError):
        return None


def check_sessions(run: ObjectsRun) -> None:
    seen: set[str] = set()
    run.walk(KIND, run.gateway.list_checkout_sessions_page, partial(_check_page, run, seen))
    _check_orphans(run, seen)


def _check_page(run: ObjectsRun, seen: set[str], data: list[StripeObject]) -> None:
    paid = [s for s in data if s.get("mode", "payment") == "payment" and is_paid(s) and s.get("metadata")]
    seen.update(s["id"] for s in paid)
    with run.session_factory() as session:
        credited = _credited(session, [f"checkout:{s['id']}" for s in paid])
    for stripe_session in paid:
        run.count(KIND, "checked")
        key = f"checkout:{stripe_session['id']}"
        found = credited.get(key)
        if found is None:
            run.apply(KIND, "checkout.session.completed", stripe_session, wrote=partial(_has, run, key))
            continue
        account, amount_mc = found
        expected = _expected_mc(stripe_session)
        if expected is not None and amount_mc != expected:
            run.report(
                KIND,
                kind="amount_differs",
                dedupe_key=f"amount:checkout:{stripe_session['id']}:{expected}:{amount_mc}",
                stripe_id=stripe_session["id"],
                account=account,
                expected={"credits_mc": expected},
                found={"credits_mc": amount_mc},
            )


def _has(run: ObjectsRun, key: str) -> bool:
    with run.session_factory() as session:
        return bool(_credited(session, [key]))


def _check_orphans(run: ObjectsRun, seen: set[str]) -> None:
    """Purchases of the window whose session the listing did not show paid."""
    with run.session_factory() as session:
        rows = session.execute(
            _PURCHASES.where(
                entries.idempotency_key.like(literal_column("'checkout:cs_%'")),
                entries.created_at >= run.window_start,
            )
        ).all()
    ledger = [
        LedgerSide("checkout", key.removeprefix("checkout:"), account, {"credits_mc": amount_mc, "status": "paid"})
        for key, account, amount_mc in rows
    ]
    run.check_unseen(
        KIND,
        ledger,
        seen,
        run.gateway.retrieve_checkout_session,
        is_paid,
        lambda session: {"payment_status": session.get("payment_status")},
    )
