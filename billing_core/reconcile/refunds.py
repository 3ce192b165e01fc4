"""Stripe's refunds against their clawbacks (``refund:<re_id>``).

- succeeded in Stripe, no clawback in the ledger → handed to the ``refund.updated`` handler (the refund's
  charge's refunds are read again and each is clawed back once); a refund that takes nothing (the purchase was
  taken back already) counts as ``skipped``, one whose payment bought no credits we know of as ``waiting``;
- a clawback recording another amount than the refund's → ``amount_differs`` (in the payment's minor unit:
  the credits a refund takes depend on the refunds before it, the amount does not);
- a clawback of the window whose refund Stripe does not know, or does not show succeeded →
  ``missing_in_stripe`` / ``state_differs``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing_core.reconcile.object_run import LedgerSide, ObjectsRun, StripeObject

KIND = "refunds"

# A clawback's account: the wallet one of its postings moves (its available or held account).
_CLAWBACK = """
    SELECT e.idempotency_key, e.external_ref, e.metadata ->> 'amount' AS amount,
           (SELECT w.account FROM postings p
              JOIN wallets w ON p.account_id IN (w.available_account_id, w.held_account_id)
             WHERE p.entry_id = e.id LIMIT 1) AS account
      FROM ledger_entries e
     WHERE e.kind = 'clawback' AND {where}
"""
_CLAWBACKS_BY_KEY = text(_CLAWBACK.format(where="e.idempotency_key = ANY(:keys)")).bindparams(
    bindparam("keys", type_=ARRAY(String))
)
_CLAWBACKS_SINCE = text(_CLAWBACK.format(where="e.idempotency_key LIKE 'refund:re\\_%' AND e.created_at >= :since"))


def _taken(session: Session, keys: list[str]) -> dict[str, Any]:
    if not keys:
        return {}
    return {row.idempotency_key: row for row in session.execute(_CLAWBACKS_BY_KEY, {"keys": keys})}


def check_refunds(run: ObjectsRun) -> None:
    seen: set[str] = set()
    run.walk(KIND, run.gateway.list_refunds_page, partial(_check_page, run, seen))
    _check_orphans(run, seen)


def _check_page(run: ObjectsRun, seen: set[str], data: list[StripeObject]) -> None:
    succeeded = [r for r in data if r.get("status") == "succeeded" and r.get("charge")]
    seen.update(r["id"] for r in succeeded)
    with run.session_factory() as session:
        taken = _taken(session, [f"refund:{r['id']}" for r in succeeded])
    for refund in succeeded:
        run.count(KIND, "checked")
        key = f"refund:{refund['id']}"
        found = taken.get(key)
        if found is None:
            run.apply(KIND, "refund.updated", refund, wrote=partial(_has, run, key))
            continue
        recorded = _minor(found.amount)
        if recorded is not None and recorded != refund.get("amount"):
            run.report(
                KIND,
                kind="amount_differs",
                dedupe_key=f"amount:refund:{refund['id']}:{refund.get('amount')}:{recorded}",
                stripe_id=refund["id"],
                account=found.account,
                expected={"amount": refund.get("amount"), "currency": refund.get("currency")},
                found={"amount": recorded},
            )


def _minor(value: str | None) -> int | None:
    """The amount a clawback recorded (its metadata's, as text), None when it recorded none."""
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _has(run: ObjectsRun, key: str) -> bool:
    with run.session_factory() as session:
        return bool(_taken(session, [key]))


def _check_orphans(run: ObjectsRun, seen: set[str]) -> None:
    """Clawbacks of the window whose refund the listing did not show succeeded."""
    with run.session_factory() as session:
        rows = session.execute(_CLAWBACKS_SINCE, {"since": run.window_start}).all()
    ledger = [
        LedgerSide(
            "refund",
            row.idempotency_key.removeprefix("refund:"),
            row.account,
            {"amount": _minor(row.amount), "status": "succeeded"},
        )
        for row in rows
    ]
    run.check_unseen(
        KIND,
        ledger,
        seen,
        run.gateway.retrieve_refund,
        lambda refund: refund.get("status") == "succeeded",
        lambda refund: {"status": refund.get("status"), "amount": refund.get("amount")},
    )
