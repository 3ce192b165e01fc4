"""The objects pass (daily, 02:00 UTC): Stripe's objects of the last days against the ledger, by Stripe id.

One Stripe type after the other, each in its own module: paid Checkout Sessions (``sessions``), paid
subscription invoices (``invoices``), refunds (``refunds``) and disputes (``disputes``). For each:

- in Stripe, missing from the ledger (or a dispute Stripe closed that the ledger still holds) → applied
  through the normal path: the handler the object's event runs, which reads Stripe again itself;
- an amount or a state that differs, which no event would change → a discrepancy and an admin alert, each
  once (``discrepancies``, resolved with a note: ``billing discrepancies``, ``/v1/admin/discrepancies``);
- a ledger entry of the window whose Stripe object Stripe does not know (or does not show paid, succeeded)
  → a discrepancy.

Every list is walked newest first, ``created[gte]`` the window's start, pages of 100 (``starting_after``),
every request through the pacer (the handlers' reads too). The pass is idempotent (ledger entries by key,
discrepancies and alerts by dedupe key), so a run that stopped is resumed by running it again; its place per
type and its counts (``object_run``) are recorded in ``reconciliation_runs`` as it goes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import ReconciliationRun
from billing_core.reconcile.disputes import check_disputes
from billing_core.reconcile.events import RunReport, run_report
from billing_core.reconcile.invoices import check_invoices
from billing_core.reconcile.object_run import ObjectsGateway, ObjectsRun
from billing_core.reconcile.pacing import Paced, Pacer, pacer
from billing_core.reconcile.refunds import check_refunds
from billing_core.reconcile.sessions import check_sessions

KIND = "objects"
DEFAULT_DAYS = 3
# Purchases before their refunds and disputes: an object healed late is found by what comes after it.
CHECKS = (check_sessions, check_invoices, check_refunds, check_disputes)

_RUNS: Table = ReconciliationRun.__table__  # type: ignore[assignment]


def reconcile_objects(
    session_factory: sessionmaker[Session],
    gateway: ObjectsGateway,
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
    run = ObjectsRun(session_factory, gateway, Paced(gateway, pace), pace, run_id, window_start, page_size)
    requests_before, limited_before = pace.requests, pace.rate_limited
    try:
        for check in CHECKS:
            check(run)
    except Exception as exc:
        run.counts["requests"] += pace.requests - requests_before
        run.counts["rate_limited"] += pace.rate_limited - limited_before
        with session_factory.begin() as session:
            session.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(
                    status="failed",
                    error=f"{type(exc).__name__}: {exc}",
                    counts=dict(run.counts),
                    checkpoint=dict(run.place),
                    finished_at=func.now(),
                )
            )
        raise
    run.counts["requests"] += pace.requests - requests_before
    run.counts["rate_limited"] += pace.rate_limited - limited_before
    with session_factory.begin() as session:
        row = session.execute(
            update(_RUNS)
            .where(_RUNS.c.id == run_id)
            .values(status="done", finished_at=func.now(), counts=dict(run.counts), checkpoint=dict(run.place))
            .returning(*_RUNS.c)
        ).one()
    return run_report(row)
