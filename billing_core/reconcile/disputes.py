"""Stripe's disputes against the ledger's (the ``disputes`` rows: open, won, lost; their entries ``dispute:``,
``dispute_won:``, ``dispute_lost:<dp_id>``).

What the normal path would do on the dispute's event is done through its handler:

- a chargeback Stripe shows open (``needs_response``, ``under_review``) that the ledger lacks → the
  ``charge.dispute.created`` handler holds its share;
- one Stripe shows closed (``won``, ``lost``) that the ledger lacks or still holds → the
  ``charge.dispute.closed`` handler releases or takes it (from nothing, when it was never seen open).

What no event would change is a discrepancy (``state_differs``): the ledger closed it one way and Stripe shows
the other, or open again; the ledger holds an inquiry (``warning_*``, which holds nothing). So is an amount
that differs (``amount_differs``), and a dispute of the window Stripe does not know (``missing_in_stripe``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing_core.reconcile.object_run import ObjectsRun, StripeObject

KIND = "disputes"
OPEN = frozenset({"needs_response", "under_review"})
CLOSED = frozenset({"won", "lost"})

_DISPUTE = """
    SELECT d.id, d.status, d.amount, w.account FROM disputes d JOIN wallets w ON w.id = d.wallet_id WHERE {where}
"""
_BY_ID = text(_DISPUTE.format(where="d.id = ANY(:ids)")).bindparams(bindparam("ids", type_=ARRAY(String)))
_SINCE = text(_DISPUTE.format(where="d.created_at >= :since"))


def _known(session: Session, ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {}
    return {row.id: row for row in session.execute(_BY_ID, {"ids": ids})}


def check_disputes(run: ObjectsRun) -> None:
    seen: set[str] = set()
    run.walk(KIND, run.gateway.list_disputes_page, partial(_check_page, run, seen))
    _check_orphans(run, seen)


def _check_page(run: ObjectsRun, seen: set[str], data: list[StripeObject]) -> None:
    seen.update(d["id"] for d in data)
    with run.session_factory() as session:
        known = _known(session, [d["id"] for d in data])
    for dispute in data:
        run.count(KIND, "checked")
        _check(run, dispute, known.get(dispute["id"]))


def _check(run: ObjectsRun, dispute: StripeObject, row: Any) -> None:
    status = str(dispute.get("status") or "")
    ledger = row.status if row is not None else None
    if status in OPEN and ledger is None:
        run.apply(KIND, "charge.dispute.created", dispute, wrote=partial(_now, run, dispute["id"], {"open"}))
        return
    if status in CLOSED and ledger in (None, "open"):
        run.apply(KIND, "charge.dispute.closed", dispute, wrote=partial(_now, run, dispute["id"], {status}))
        return
    if row is None:
        return  # an inquiry, or a state we do not hold anything for: the ledger rightly has nothing
    differs = (
        (status in OPEN and ledger != "open")
        or (status in CLOSED and ledger != status)
        or status.startswith("warning_")
    )
    if differs:
        run.report(
            KIND,
            kind="state_differs",
            dedupe_key=f"state_differs:dispute:{dispute['id']}:{status}:{ledger}",
            stripe_id=dispute["id"],
            account=row.account,
            expected={"status": status},
            found={"status": ledger},
        )
    if row.amount != dispute.get("amount"):
        run.report(
            KIND,
            kind="amount_differs",
            dedupe_key=f"amount:dispute:{dispute['id']}:{dispute.get('amount')}:{row.amount}",
            stripe_id=dispute["id"],
            account=row.account,
            expected={"amount": dispute.get("amount"), "currency": dispute.get("currency")},
            found={"amount": row.amount},
        )


def _now(run: ObjectsRun, dispute_id: str, statuses: set[str]) -> bool:
    with run.session_factory() as session:
        row = _known(session, [dispute_id]).get(dispute_id)
    return row is not None and row.status in statuses


def _check_orphans(run: ObjectsRun, seen: set[str]) -> None:
    """Disputes the ledger recorded in the window that the listing did not show: asked for one by one."""
    with run.session_factory() as session:
        rows = session.execute(_SINCE, {"since": run.window_start}).all()
    for row in rows:
        if row.id in seen:
            continue
        dispute = run.retrieve(partial(run.gateway.retrieve_dispute, row.id))
        if dispute is None:
            run.report(
                KIND,
                kind="missing_in_stripe",
                dedupe_key=f"missing_in_stripe:dispute:{row.id}",
                stripe_id=row.id,
                account=row.account,
                expected={"status": row.status, "amount": row.amount},
            )
        else:
            _check(run, dispute, row)  # created before the window: compared all the same
