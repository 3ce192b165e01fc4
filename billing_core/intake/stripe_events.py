"""Stripe events: stored on arrival (keyed by Stripe's event id), then handled in batches by workers.

What each event type does is ``billing_core.stripe.event_handlers.HANDLERS``; this module stores, claims,
hands events to their handlers and records the outcome, through the shared inbox mechanism (``inbox.py``).

No row lock is held while Stripe is asked anything (DESIGN rule 10). A drain claims a batch, applies at once
the events that need nothing from Stripe (customers, most of the traffic) and commits, exactly as cheaply as
before; the others stay pending, unlocked, while their handlers read Stripe, and are then locked again
(``SKIP LOCKED``, skipping any another worker handled meanwhile) and applied in a second transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, any_, bindparam, literal, select
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.db.tables import StripeEvent
from billing_core.errors import BillingError, IdempotencyConflict, InvalidAmount, InvalidCommand, UnknownPackage
from billing_core.intake.inbox import BatchResult, Inbox, apply_batch, array_of
from billing_core.ledger.book import Book
from billing_core.stripe.event_handlers import StripeFacts, StripeReader
from billing_core.stripe.handler_map import HANDLERS
from billing_core.stripe.purchases import IGNORED, PROCESSED, Waiting, find_purchase

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
WAITING, FAILED, DEAD = "waiting", "failed", "dead"
FINAL = (PROCESSED, IGNORED, DEAD)
BUSY = "busy"  # another worker holds the event (or there is no such event)

_TABLE: Table = StripeEvent.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
events = _TABLE.c

STRIPE_EVENTS = Inbox(
    _TABLE,
    key_column=events.id,
    retry_statuses=(WAITING, FAILED),
    error_column=events.last_error,
    done_at_column=events.processed_at,
    max_attempts=MAX_ATTEMPTS,
    cleared_when_done=(events.last_error,),
)
# The statements of this module that do not vary, built once (see inbox.py).
_EVENT = select(events.type, events.payload, events.status).where(events.id == bindparam("id"))
_LOCK_EVENT = (
    select(events.id, events.type, events.payload, events.status)
    .where(events.id == bindparam("id"))
    .with_for_update(skip_locked=True)
)
_CLAIM_COLUMNS = (events.id, events.type, events.payload)
_CLAIM_ORDER = (events.next_attempt_at, events.id)
_DUE = STRIPE_EVENTS.due_query(events.id, events.status, order_by=(events.next_attempt_at,))


class MalformedEvent(BillingError):
    code = "malformed_payload"


# Errors about the event's own content: retrying cannot help.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    MalformedEvent,
    InvalidCommand,
    InvalidAmount,
    UnknownPackage,
    IdempotencyConflict,
)


# -- storing ---------------------------------------------------------------------------------------------
def check_event(event: object) -> dict[str, Any]:
    """The minimum an event must have to be stored: an id, a type and a data object."""
    if not isinstance(event, dict):
        raise MalformedEvent("the payload is not a JSON object")
    event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255:
        raise MalformedEvent("the event has no id", field="id")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 100:
        raise MalformedEvent("the event has no type", field="type")
    # These go to PostgreSQL as text parameters, which libpq cuts at the first NUL: "evt_a\u0000b" would be
    # stored, and deduplicated, as "evt_a". Stripe never sends one; the body itself may hold them.
    for name, value in (("id", event_id), ("type", event_type), ("api_version", event.get("api_version"))):
        if isinstance(value, str) and "\x00" in value:
            raise MalformedEvent(f"the event's {name} contains a NUL character", field=name)
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise MalformedEvent("the event has no data.object", field="data.object")
    return event


# -- processing ------------------------------------------------------------------------------------------
def _needs_stripe(event_type: str, reader: StripeReader | None) -> bool:
    handler = HANDLERS.get(event_type)
    return reader is not None and handler is not None and handler.read is not None


def _read_stripe(
    session_factory: sessionmaker[Session], reader: StripeReader | None, event_type: str, event: dict[str, Any]
) -> StripeFacts:
    """What the event's handler needs from Stripe, read with no transaction open."""
    handler = HANDLERS.get(event_type)
    if reader is None or handler is None or handler.read is None:
        return StripeFacts()

    def known(payment_intent: str) -> bool:
        with session_factory() as session:
            return find_purchase(session, payment_intent) is not None

    return handler.read(reader, event["data"]["object"], known)


def _apply(book: Book, event_type: str, event: dict[str, Any], facts: StripeFacts) -> str:
    handler = HANDLERS.get(event_type)
    if handler is None:
        return IGNORED
    return handler.apply(book, event["data"]["object"], facts)


def _apply_rows(uow: unit_of_work.UnitOfWork, rows: list[Row[Any]], facts: dict[str, StripeFacts]) -> list[str]:
    statuses = []
    for row in rows:
        # A Book per event: each handler locks its own wallets before drafting, as it does alone.
        book = Book(uow.session, uow.book.now)
        statuses.append(_apply(book, row.type, row.payload, facts.get(row.id, StripeFacts())))
        book.flush()
    STRIPE_EVENTS.mark_done(uow.session, [row.id for row in rows], statuses)
    return statuses


def _record_failure(session_factory: sessionmaker[Session], event_id: str, exc: Exception) -> str:
    """The event's status after a failed attempt (the attempt's transaction rolled back)."""
    if isinstance(exc, Waiting):
        status, error = WAITING, str(exc)
    else:
        if unit_of_work.database_unreachable(session_factory):
            raise exc
        log.error("stripe event %s failed", event_id, exc_info=exc)
        # An event whose own data we refuse (an invalid account in its metadata, a package we do not sell)
        # fails the same way every time: it goes to the dead letters for an operator at once.
        status, error = (DEAD if isinstance(exc, PERMANENT_ERRORS) else FAILED), f"{type(exc).__name__}: {exc}"
    recorded = STRIPE_EVENTS.mark_failed(session_factory, [event_id], status, error)
    return recorded.get(event_id, BUSY)  # not open any more: another worker handled it meanwhile


def process_event(
    session_factory: sessionmaker[Session], reader: StripeReader | None, event_id: str, *, now: datetime | None = None
) -> str:
    """Handle one stored event; returns its status afterwards.

    What the handler needs from Stripe is read first, with no lock held; then the row is locked ``FOR UPDATE
    SKIP LOCKED`` (a second worker given the same id skips it) and the effect applied. A handler that waits
    or fails leaves the ledger untouched and the event's status, attempt count and error are written in a
    separate transaction, for retry or replay.
    """
    with session_factory() as session:
        row = session.execute(_EVENT, {"id": event_id}).first()
    if row is None:
        return BUSY
    if row.status in FINAL:
        return str(row.status)
    try:
        facts = _read_stripe(session_factory, reader, row.type, row.payload)
    except Exception as exc:
        return _record_failure(session_factory, event_id, exc)
    return _apply_with(session_factory, event_id, facts, now)


def _apply_with(session_factory: sessionmaker[Session], event_id: str, facts: StripeFacts, now: datetime | None) -> str:
    def work(uow: unit_of_work.UnitOfWork) -> str:
        row = uow.session.execute(_LOCK_EVENT, {"id": event_id}).first()
        if row is None:
            return BUSY
        if row.status in FINAL:
            return str(row.status)
        return _apply_rows(uow, [row], {event_id: facts})[0]

    try:
        return unit_of_work.run(session_factory, work, now=now)
    except Exception as exc:
        return _record_failure(session_factory, event_id, exc)


def _tally(claimed: int, statuses: list[str]) -> BatchResult:
    return BatchResult(claimed=claimed, outcomes=Counter(statuses))


def process_pending(
    session_factory: sessionmaker[Session],
    reader: StripeReader | None,
    *,
    limit: int = 100,
    now: datetime | None = None,
) -> BatchResult:
    """Claim up to ``limit`` pending events, oldest first, and handle them in batches.

    This is how stored events are normally handled: one claim, one status update and one commit for the
    batch instead of a message and a transaction per event. The events whose handlers read Stripe are left
    pending in that transaction and handled after it (see the module's docstring). If any handler waits or
    fails, its batch rolls back and each of its events is handled on its own: the others go on, and that one
    records its retry.
    """
    deferred: list[Row[Any]] = []

    def claim_and_apply(uow: unit_of_work.UnitOfWork, claimed: list[str]) -> BatchResult:
        rows = STRIPE_EVENTS.claim(
            uow.session, _CLAIM_COLUMNS, statuses=("pending",), order_by=_CLAIM_ORDER, limit=limit
        )
        claimed.extend(row.id for row in rows)
        deferred[:] = [row for row in rows if _needs_stripe(row.type, reader)]
        now_rows = [row for row in rows if not _needs_stripe(row.type, reader)]
        result = _tally(len(rows), _apply_rows(uow, now_rows, {}))
        result.more = len(rows) == limit
        return result

    def each_alone(statuses: list[str]) -> BatchResult:
        deferred.clear()  # process_event handled them all, reading Stripe first where needed
        return BatchResult(len(statuses), Counter(statuses), more=True)

    result = apply_batch(
        session_factory,
        claim_and_apply,
        lambda event_id: process_event(session_factory, reader, event_id, now=now),
        each_alone,
        now=now,
    )
    if deferred:
        result.outcomes.update(_process_with_stripe(session_factory, reader, deferred, now))
    return result


def _process_with_stripe(
    session_factory: sessionmaker[Session], reader: StripeReader | None, rows: list[Row[Any]], now: datetime | None
) -> list[str]:
    """Read Stripe for each event (no lock held), then apply those read in one transaction."""
    statuses: list[str] = []
    facts: dict[str, StripeFacts] = {}
    for row in rows:
        try:
            facts[row.id] = _read_stripe(session_factory, reader, row.type, row.payload)
        except Exception as exc:
            statuses.append(_record_failure(session_factory, row.id, exc))

    def apply_read(uow: unit_of_work.UnitOfWork, claimed: list[str]) -> list[str]:
        # Still pending? Another worker may have handled some meanwhile: those are skipped.
        locked = STRIPE_EVENTS.claim(
            uow.session,
            _CLAIM_COLUMNS,
            where=events.id == any_(literal(list(facts), array_of(events.id))),
            statuses=("pending",),
            order_by=_CLAIM_ORDER,
        )
        claimed.extend(row.id for row in locked)
        return _apply_rows(uow, locked, facts)

    if facts:
        statuses += apply_batch(
            session_factory,
            apply_read,
            lambda event_id: _apply_with(session_factory, event_id, facts[event_id], now),
            list,
            now=now,
        )
    return [s for s in statuses if s != BUSY]


# -- the sweep and operators -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DueEvents:
    retries: list[str]  # waiting or failed events whose retry time has come: a message each
    stale_pending: int  # pending events no drain took in time (a lost message): one drain takes them all


def due_events(
    session_factory: sessionmaker[Session], *, stale_after_seconds: int = 30, limit: int = 1000
) -> DueEvents:
    """Events a message should have handled by now (lost or delayed by the broker), or whose retry is due."""
    rows = STRIPE_EVENTS.due(session_factory, _DUE, stale_after_seconds=stale_after_seconds, limit=limit)
    return DueEvents([r.id for r in rows if r.status != "pending"], sum(1 for r in rows if r.status == "pending"))


def reopen(session_factory: sessionmaker[Session], event_id: str) -> bool:
    """Make a dead, failed or waiting event due again now with a fresh attempt count."""
    return STRIPE_EVENTS.reopen(session_factory, event_id) is not None
