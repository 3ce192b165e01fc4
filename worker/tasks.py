"""One thin task per message type: parse, call one ``billing_core`` function, schedule what follows."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Task
from sqlalchemy.exc import OperationalError

from billing_core.db import wakeups
from billing_core.errors import IdempotencyConflict, LimitsUnavailable, QuotaExceeded, RateLimited
from billing_core.intake import stripe_events, usage_inbox
from billing_core.intake.inbox import BatchResult
from billing_core.intake.usage_reports import InvalidUsage, accept_reports
from billing_core.ledger.commands import ExpireGrants, ExpireHolds
from billing_core.ledger.handlers import execute
from billing_core.notify import outbox
from billing_core.pricing import limits
from billing_core.stripe import auto_recharge, subscriptions
from billing_core.stripe.gateway import StripeUnavailable
from worker.celery_app import SETTINGS, STALE_SECONDS, app
from worker.runtime import runtime

log = logging.getLogger(__name__)

# A task drains its partition for at most this long, then hands the rest to a fresh message so that one
# busy partition cannot starve the others.
DRAIN_SECONDS = 5.0
# A partition found busy is looked at again this much later, in case its drain stopped just before our rows.
BUSY_RETRY_SECONDS = 0.2
# Transient trouble (the database restarting): retry the message with exponential backoff.
RETRY = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}
# A report refused because the token counters are unreachable (failing closed) is tried again this much later.
LIMITS_RETRY_SECONDS = 5


def _drain(
    claim_batch: Callable[[], BatchResult],
    *,
    on_busy: Callable[[], None] = lambda: None,
    on_full: Callable[[], None] = lambda: None,
    on_time_up: Callable[[], None] = lambda: None,
) -> dict[str, int]:
    """Claim and handle batches until one comes back short (or busy), for at most ``DRAIN_SECONDS``."""
    started, totals = time.monotonic(), Counter[str]()
    while True:
        result = claim_batch()
        if result.busy:
            on_busy()
            break
        totals["claimed"] += result.claimed
        totals.update(result.outcomes)
        if not result.more:
            break
        on_full()
        if time.monotonic() - started > DRAIN_SECONDS:
            on_time_up()
            break
    return dict(totals)


@app.task(name="billing.apply_usage", bind=True, **RETRY)
def apply_usage(self: Task, partition: int) -> dict[str, int]:
    rt = runtime()
    key = wakeups.usage_partition(partition)
    # Before claiming: rows committed from now on set the key again and wake another task.
    rt.wakeups.disarm(key)

    def look_again_shortly() -> None:
        # Another worker is draining this partition; look again shortly in case it stopped just before our
        # rows were committed (unless a wake-up is pending already).
        if rt.wakeups.arm(key):
            apply_usage.apply_async(args=[partition], countdown=BUSY_RETRY_SECONDS)

    totals = _drain(
        lambda: usage_inbox.apply_partition(rt.session_factory, partition),
        on_busy=look_again_shortly,
        on_time_up=lambda: apply_usage.delay(partition),
    )
    if totals.get("applied"):
        _recharge_crossed(partition)  # after the batches committed: one query over the partition's armed wallets
    return totals


@app.task(name="billing.record_usage", bind=True, **RETRY)
def record_usage(self: Task, report: dict[str, Any]) -> dict[str, Any]:
    """The broker path for apps that share it: the same validation, inbox and idempotency as HTTP."""
    rt = runtime()
    try:
        accepted = accept_reports(report, rt.prices.current())
    except InvalidUsage as exc:
        # Nobody waits for this answer: keep what can be looked up by its key as a rejected row.
        problems = exc.details.get("problems") or []
        kept = usage_inbox.store_refused(rt.session_factory, report, problems, source="celery")
        log.warning(
            "billing.record_usage refused a report (%d kept as rejected): %s %s", len(kept), exc.message, problems
        )
        return {"status": "invalid", "problems": problems, "rejected": kept}
    try:
        gate = rt.limits.gate(rt.prices.current())  # token limits: admitted in the store's transaction
        stored = usage_inbox.store_usage(rt.session_factory, accepted, source="celery", admit=gate)
    except IdempotencyConflict as exc:
        # The sender reused a key for another report: nothing was stored, and retrying cannot help.
        log.warning("billing.record_usage refused a report: %s %s", exc.message, exc.details)
        return {"status": "conflict", "idempotency_keys": exc.details.get("idempotency_keys")}
    except (RateLimited, QuotaExceeded) as exc:
        # Over a token limit: nothing was stored; kept as rejected with the reason, as HTTP would answer 429/402.
        problems = [{"index": -1, "field": "", "code": exc.code, "message": exc.message}]
        kept = usage_inbox.store_refused(rt.session_factory, report, problems, source="celery", code=exc.code)
        log.warning("billing.record_usage refused a report (%d kept as rejected): %s", len(kept), exc.message)
        return {"status": exc.code, "rejected": kept, **exc.details}
    except LimitsUnavailable as exc:
        # Failing closed while the counters cannot be reached: try the message again shortly.
        raise self.retry(exc=exc, countdown=LIMITS_RETRY_SECONDS) from None
    for partition in sorted(stored.partitions):
        if rt.wakeups.arm(wakeups.usage_partition(partition)):
            apply_usage.delay(partition)
    return {
        "accepted": stored.accepted,
        "duplicates": stored.duplicates,
        "duplicate_statuses": stored.duplicate_statuses,
    }


@app.task(name="billing.drain_stripe_events", bind=True, **RETRY)
def drain_stripe_events(self: Task) -> dict[str, int]:
    """Handle stored events in batches until none is pending (the receiver wakes this task, see wakeups)."""
    rt = runtime()
    rt.wakeups.disarm(wakeups.STRIPE_EVENTS)

    def share_the_backlog() -> None:
        # A full batch means a backlog: wake another drain (unless a wake-up is pending already) so that a
        # second worker process shares it (SKIP LOCKED splits the rows); this one hands over after DRAIN_SECONDS.
        if rt.wakeups.arm(wakeups.STRIPE_EVENTS):
            drain_stripe_events.delay()

    return _drain(lambda: stripe_events.process_pending(rt.session_factory, rt.gateway), on_full=share_the_backlog)


@app.task(name="billing.process_stripe_event", bind=True, **RETRY)
def process_stripe_event(self: Task, event_id: str) -> str:
    rt = runtime()
    return stripe_events.process_event(rt.session_factory, rt.gateway, event_id)


@app.task(name="billing.sweep_inbox", bind=True, **RETRY)
def sweep_inbox(self: Task) -> dict[str, int]:
    """Re-enqueue what the broker lost or delayed, and retries whose time has come."""
    rt = runtime()
    partitions = usage_inbox.due_partitions(rt.session_factory, stale_after=timedelta(seconds=STALE_SECONDS))
    for partition in partitions:
        apply_usage.delay(partition)
    events = stripe_events.due_events(rt.session_factory, stale_after_seconds=STALE_SECONDS)
    if events.stale_pending:
        drain_stripe_events.delay()
    for event_id in events.retries:
        process_stripe_event.delay(event_id)
    return {"partitions": len(partitions), "stale_events": events.stale_pending, "retries": len(events.retries)}


def _sweep_all(make: type[ExpireHolds] | type[ExpireGrants], batch: int = 500) -> int:
    """Run a sweep in batches of ``batch`` (each its own transaction) until one comes back short."""
    rt = runtime()
    total = 0
    while True:
        swept = execute(rt.session_factory, make(limit=batch)).count
        total += swept
        if swept < batch:
            return total


@app.task(name="billing.expire_holds", bind=True, **RETRY)
def expire_holds(self: Task) -> int:
    return _sweep_all(ExpireHolds)


@app.task(name="billing.expire_grants", bind=True, **RETRY)
def expire_grants(self: Task) -> int:
    return _sweep_all(ExpireGrants)


# -- limits ---------------------------------------------------------------------------------------------------
@app.task(name="billing.flush_usage_records", bind=True, **RETRY)
def flush_usage_records(self: Task) -> dict[str, int]:
    """Copy the token counters from Redis into ``usage_records`` (hourly; idempotent)."""
    rt = runtime()
    result = limits.flush_usage_records(rt.limits, rt.session_factory)
    return {"counters": result.counters, "forgotten": result.forgotten}


# -- subscriptions ---------------------------------------------------------------------------------------------
@app.task(name="billing.grant_due_allowances", bind=True, **RETRY)
def grant_due_allowances(self: Task) -> int:
    """Grant the months of yearly plans that have begun (granted monthly; idempotent)."""
    return subscriptions.grant_due_allowances(runtime().session_factory)


# -- auto-recharge (billing_core/stripe/auto_recharge.py) ----------------------------------------------------
# Stripe unreachable while charging: the attempt stays pending and is tried again this much later, with the same
# idempotency key (the beat sweep also picks it up once it is stale).
RECHARGE_RETRY_SECONDS = 30


def _recharge_crossed(partition: int | None) -> list[int]:
    """Trigger the wallets of ``partition`` (None: all) that fell below their threshold; charge each in a task
    of its own (the Stripe call must not hold up the usage drain). Never fails the caller: the sweep catches up."""
    rt = runtime()
    try:
        started = auto_recharge.check(rt.session_factory, rt.prices.current(), partition=partition)
    except Exception:
        log.exception("auto-recharge check failed; the beat sweep will look again")
        return []
    for attempt_id in started:
        auto_recharge_charge.delay(attempt_id)
    return started


@app.task(name="billing.auto_recharge_check", bind=True, **RETRY)
def auto_recharge_check(self: Task, partition: int | None = None) -> int:
    return len(_recharge_crossed(partition))


@app.task(name="billing.auto_recharge_charge", bind=True, **RETRY)
def auto_recharge_charge(self: Task, attempt_id: int) -> str:
    """Charge one pending attempt off-session and record the answer (safe to repeat: same idempotency key)."""
    rt = runtime()
    try:
        return auto_recharge.charge(rt.session_factory, rt.gateway, attempt_id)
    except StripeUnavailable as exc:
        raise self.retry(exc=exc, countdown=RECHARGE_RETRY_SECONDS, max_retries=10) from None


@app.task(name="billing.auto_recharge_sweep", bind=True, **RETRY)
def auto_recharge_sweep(self: Task) -> dict[str, int]:
    """Beat's safety net: re-arm recharged wallets back at their threshold, trigger every crossed wallet, and
    charge again attempts left pending (a lost message, a crash between trigger and charge)."""
    rt = runtime()
    result = auto_recharge.sweep(rt.session_factory, rt.prices.current())
    for attempt_id in result.triggered + result.stale:
        auto_recharge_charge.delay(attempt_id)
    return {"rearmed": result.rearmed, "triggered": len(result.triggered), "stale": len(result.stale)}


@app.task(name="billing.reconcile_events", bind=True, **RETRY)
def reconcile_events(self: Task) -> dict[str, Any]:
    """The events pass: what the webhooks missed since the checkpoint, stored and applied (a run already going
    elsewhere: nothing); an unfinished run is resumed by the next one."""
    from billing_core.reconcile.events import AnotherRunInProgress
    from billing_core.reconcile.events import reconcile_events as run_events_pass

    rt = runtime()
    if rt.gateway is None:
        return {"skipped": "no STRIPE_API_KEY"}
    try:
        run = run_events_pass(
            rt.session_factory,
            rt.gateway,
            overlap=timedelta(seconds=SETTINGS.reconcile_overlap_seconds),
            requests_per_second=SETTINGS.reconcile_requests_per_second,
        )
    except AnotherRunInProgress:
        return {"skipped": "another run in progress"}
    except StripeUnavailable as exc:
        log.warning("reconciliation stopped on Stripe (%s); the next run resumes it", exc)
        return {"stopped": str(exc)}
    return {"run": run.id, "status": run.status, **run.counts}


@app.task(name="billing.reconcile_objects", bind=True, **RETRY)
def reconcile_objects(self: Task) -> dict[str, Any]:
    """The objects pass: the last days' paid Checkout Sessions and invoices, refunds and disputes against the
    ledger (missing: applied through the normal path; different: a discrepancy and an admin alert, once)."""
    from billing_core.reconcile.objects import reconcile_objects as run_objects_pass

    rt = runtime()
    if rt.gateway is None:
        return {"skipped": "no STRIPE_API_KEY"}
    try:
        run = run_objects_pass(
            rt.session_factory,
            rt.gateway,
            days=SETTINGS.reconcile_days,
            requests_per_second=SETTINGS.reconcile_requests_per_second,
        )
    except StripeUnavailable as exc:
        log.warning("objects reconciliation stopped on Stripe (%s); tomorrow's run covers it again", exc)
        return {"stopped": str(exc)}
    return {"run": run.id, "status": run.status, **run.counts}


# -- notifications (billing_core/notify/outbox.py) -------------------------------------------------------------
@app.task(name="billing.deliver_notifications", bind=True, **RETRY)
def deliver_notifications(self: Task) -> dict[str, int]:
    """Bring new admin alerts into the outbox and send its due notifications (email, signed webhooks)."""
    return outbox.deliver_due(runtime().session_factory, runtime().notify_senders)


# -- internal checks (billing_core/reconcile/health.py) --------------------------------------------------------
@app.task(name="billing.health_checks", bind=True, **RETRY)
def health_checks(self: Task) -> dict[str, Any]:
    """The ledger's invariants, inbox lag and the outbox's backlog; each problem an admin alert, once."""
    from billing_core.reconcile.health import Thresholds, run_health_checks

    thresholds = Thresholds(
        inbox_lag=timedelta(seconds=SETTINGS.health_inbox_lag_seconds),
        outbox_backlog=SETTINGS.health_outbox_backlog,
        outbox_age=timedelta(seconds=SETTINGS.health_outbox_age_seconds),
    )
    report = run_health_checks(runtime().session_factory, thresholds=thresholds)
    for problem in report.problems:
        log.warning("health check: %s", problem)
    return {"problems": [str(p) for p in report.problems], "alerted": len(report.alerted)}
