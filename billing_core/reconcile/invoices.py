"""Paid subscription invoices against their allowance grants (``invoice:<in_id>``).

- paid in Stripe, no grant in the ledger → handed to the ``invoice.paid`` handler, which reads the invoice and
  its subscription again and grants what it grants (nothing, for an invoice that is not one of our plans', or
  whose period is already over: those count as ``skipped``);
- a first or renewal invoice's grant that is not the allowance its Price's metadata says → ``amount_differs``
  (a yearly plan's either way ``plan_yearly_grants`` says: the setting may have changed since). A mid-cycle
  upgrade's grant is not compared: its prorated amount depends on the ledger's own grant window, not on Stripe;
- an ``invoice:`` grant of the window whose invoice Stripe does not know, or does not show paid →
  ``missing_in_stripe`` / ``state_differs``.
"""

from __future__ import annotations

from functools import partial

from sqlalchemy import Table, literal_column, select
from sqlalchemy.orm import Session

from billing_core.db.tables import Grant, LedgerEntry, Wallet
from billing_core.reconcile.object_run import LedgerSide, ObjectsRun, StripeObject
from billing_core.stripe.subscriptions import FIRST_OR_RENEWAL, invoice_subscription, period_grant

KIND = "invoices"
_YEARLY_MODES = ("monthly", "upfront")

_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
_GRANTS: Table = Grant.__table__  # type: ignore[assignment]
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
entries, grants, wallets = _ENTRIES.c, _GRANTS.c, _WALLETS.c
_PLAN_GRANTS = (
    select(entries.idempotency_key, wallets.account, grants.amount_mc)
    .select_from(_ENTRIES.join(_GRANTS, grants.entry_id == entries.id).join(_WALLETS, wallets.id == grants.wallet_id))
    .where(grants.source == literal_column("'plan'"))
)


def _granted(session: Session, keys: list[str]) -> dict[str, tuple[str, int]]:
    """``invoice:<in>`` key → (account, granted mc) for the keys the ledger holds."""
    if not keys:
        return {}
    rows = session.execute(_PLAN_GRANTS.where(entries.idempotency_key.in_(keys)))
    return {row.idempotency_key: (row.account, row.amount_mc) for row in rows}


def check_invoices(run: ObjectsRun) -> None:
    seen: set[str] = set()
    run.walk(KIND, partial(run.gateway.list_invoices_page, status="paid"), partial(_check_page, run, seen))
    _check_orphans(run, seen)


def _check_page(run: ObjectsRun, seen: set[str], data: list[StripeObject]) -> None:
    paid = [i for i in data if i.get("status") == "paid" and invoice_subscription(i)]
    seen.update(i["id"] for i in paid)
    with run.session_factory() as session:
        granted = _granted(session, [f"invoice:{i['id']}" for i in paid])
    for invoice in paid:
        run.count(KIND, "checked")
        key = f"invoice:{invoice['id']}"
        found = granted.get(key)
        if found is None:
            run.apply(KIND, "invoice.paid", invoice, wrote=partial(_has, run, key))
            continue
        account, amount_mc = found
        expected = _expected_mc(run, invoice)
        if expected and amount_mc not in expected:
            run.report(
                KIND,
                kind="amount_differs",
                dedupe_key=f"amount:invoice:{invoice['id']}:{expected[0]}:{amount_mc}",
                stripe_id=invoice["id"],
                account=account,
                expected={"credits_mc": expected[0]},
                found={"credits_mc": amount_mc},
            )


def _expected_mc(run: ObjectsRun, invoice: StripeObject) -> list[int]:
    """The allowances the invoice may have granted (the first: as the settings say now); empty when it is not
    compared."""
    if invoice.get("billing_reason") not in FIRST_OR_RENEWAL:
        return []
    sub = None
    sub_id = invoice_subscription(invoice)
    if int(invoice.get("total") or 0) == 0 and sub_id:
        # Only a $0 invoice may be a trial's, and only the subscription says when its trial ends.
        sub = run.retrieve(partial(run.gateway.retrieve_subscription, sub_id))
    amounts = []
    for mode in _YEARLY_MODES:
        planned = period_grant(invoice, sub, mode)
        if planned is not None and planned.amount_mc not in amounts:
            amounts.append(planned.amount_mc)
    return amounts


def _has(run: ObjectsRun, key: str) -> bool:
    with run.session_factory() as session:
        return bool(_granted(session, [key]))


def _check_orphans(run: ObjectsRun, seen: set[str]) -> None:
    """Invoice grants of the window whose invoice the listing did not show paid."""
    with run.session_factory() as session:
        rows = session.execute(
            _PLAN_GRANTS.where(
                entries.idempotency_key.like(literal_column("'invoice:in_%'")),
                entries.created_at >= run.window_start,
            )
        ).all()
    ledger = [
        LedgerSide("invoice", key.removeprefix("invoice:"), account, {"credits_mc": amount_mc, "status": "paid"})
        for key, account, amount_mc in rows
    ]
    run.check_unseen(
        KIND,
        ledger,
        seen,
        run.gateway.retrieve_invoice,
        lambda invoice: invoice.get("status") == "paid",
        lambda invoice: {"status": invoice.get("status")},
    )
