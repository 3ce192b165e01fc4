"""Stripe events: stored on arrival (keyed by Stripe's event id), handled by one function per type.

``HANDLERS`` below is the whole map from event type to effect; read it top to bottom. Every effect goes
through a ledger command whose idempotency key comes from the Stripe object that caused it
(``checkout:cs_...``, ``refund:re_...``, ``dispute:dp_...``), so a duplicate delivery, a retry after a crash
or a replay by an operator finds the first entry and writes nothing.

Out of order is normal: a refund or dispute may arrive before the purchase it undoes. Its handler first
asks Stripe (through the gateway) for the purchase's Checkout Session and credits it if it is paid; when
even that finds nothing, the event waits and is retried with backoff.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import BillingError, IdempotencyConflict, InvalidAmount, InvalidCommand, UnknownPackage
from billing_core.ledger.book import Book
from billing_core.ledger.commands import ClawBack, PurchaseCredits, check_account
from billing_core.ledger.handlers import claw_back, purchase_credits
from billing_core.units import parse_credits, round_mc

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
PROCESSED, IGNORED, WAITING, FAILED, DEAD = "processed", "ignored", "waiting", "failed", "dead"


class StripeReader(Protocol):
    """What handlers re-fetch from Stripe (``stripe_gateway.StripeGateway`` in production)."""

    def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]: ...
    def list_checkout_sessions(self, *, payment_intent: str | None = None, limit: int = 10) -> list[dict[str, Any]]: ...
    def list_refunds(self, *, charge: str) -> list[dict[str, Any]]: ...


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


class Waiting(Exception):
    """The event depends on something not seen yet (a refund before its purchase); retry it later."""


@dataclass
class EventContext:
    book: Book
    gateway: StripeReader | None
    event: dict[str, Any]


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


# -- the purchase behind a payment ----------------------------------------------------------------------
@dataclass(frozen=True)
class Purchase:
    account: str
    amount_mc: int
    amount_total: int  # what the customer paid, in the currency's minor unit
    payment_intent: str


def _find_purchase(book: Book, payment_intent: str) -> Purchase | None:
    row = book.session.execute(
        text(
            "SELECT w.account, g.amount_mc, e.metadata FROM ledger_entries e "
            "JOIN grants g ON g.entry_id = e.id AND g.source = 'purchase' JOIN wallets w ON w.id = g.wallet_id "
            "WHERE e.external_ref = :pi AND e.kind = 'purchase' AND e.idempotency_key LIKE 'checkout:%' "
            "ORDER BY e.id LIMIT 1"
        ),
        {"pi": payment_intent},
    ).first()
    if row is None:
        return None
    return Purchase(row.account, row.amount_mc, int(row.metadata.get("amount_total") or 0), payment_intent)


def _purchase_for(ctx: EventContext, payment_intent: str | None) -> Purchase:
    """The purchase paid by ``payment_intent``; credited now from Stripe's own Checkout Session when its
    completion event has not arrived yet; ``Waiting`` when Stripe does not know it as paid either."""
    if not payment_intent:
        raise Waiting("the object names no payment intent")
    found = _find_purchase(ctx.book, payment_intent)
    if found is None and ctx.gateway is not None:
        for session in ctx.gateway.list_checkout_sessions(payment_intent=payment_intent, limit=3):
            if _is_paid(session):
                _credit_checkout(ctx, session)
        found = _find_purchase(ctx.book, payment_intent)
    if found is None:
        raise Waiting(f"no paid purchase for {payment_intent} yet")
    return found


def _proportion(purchase: Purchase, amount: int) -> int:
    """Credits matching ``amount`` of the payment, rounded half-up once."""
    if purchase.amount_total <= 0:
        return purchase.amount_mc
    return round_mc(Decimal(purchase.amount_mc) * Decimal(amount) / Decimal(purchase.amount_total))


# -- handlers --------------------------------------------------------------------------------------------
def _is_paid(session: dict[str, Any]) -> bool:
    return session.get("payment_status") in ("paid", "no_payment_required") and session.get("status") == "complete"


def _credit_checkout(ctx: EventContext, session: dict[str, Any]) -> str:
    metadata = session.get("metadata") or {}
    account = metadata.get("account") or session.get("client_reference_id")
    credits = metadata.get("credits")
    if not account or credits is None:
        return IGNORED  # not a credit package sold by us (another integration on the same Stripe account)
    cmd = PurchaseCredits(
        account=check_account(account),
        amount_mc=parse_credits(credits),
        idempotency_key=f"checkout:{session['id']}",
        external_ref=session.get("payment_intent"),
        metadata={
            "checkout_session": session["id"],
            "package": metadata.get("package"),
            "amount_total": session.get("amount_total"),
            "currency": session.get("currency"),
        },
    )
    purchase_credits(ctx.book, cmd)
    return PROCESSED


def on_checkout_completed(ctx: EventContext, obj: dict[str, Any]) -> str:
    """Paid now: credit the package. Unpaid (a delayed method such as a bank debit): nothing yet, the
    ``async_payment_succeeded`` event credits it. The session is re-read: the payload may be stale."""
    session = ctx.gateway.retrieve_checkout_session(obj["id"]) if ctx.gateway else obj
    if not _is_paid(session):
        return PROCESSED
    return _credit_checkout(ctx, session)


def on_payment_failed(ctx: EventContext, obj: dict[str, Any]) -> str:
    """Nothing was credited, so nothing moves; the stored event is the record (notifications come later)."""
    return PROCESSED


def on_charge_refunded(ctx: EventContext, charge: dict[str, Any]) -> str:
    """Claw back credits in proportion to each refund, once per refund (key ``refund:<re_id>``).

    What a new refund takes is the rounded proportion of everything refunded so far minus what the earlier
    refunds actually took, so partial refunds that add up to the whole payment take back exactly the whole
    purchase, whatever order they settle in (a pending refund may succeed after a later one).
    """
    purchase = _purchase_for(ctx, charge.get("payment_intent"))
    if ctx.gateway is not None:
        refunds = ctx.gateway.list_refunds(charge=charge["id"])
    else:
        refunds = ((charge.get("refunds") or {}).get("data")) or []
    succeeded = sorted((r for r in refunds if r.get("status") == "succeeded"), key=lambda r: (r["created"], r["id"]))
    taken = _refunds_taken(ctx.book, [f"refund:{r['id']}" for r in succeeded])
    refunded = sum(r["amount"] for r in succeeded if f"refund:{r['id']}" in taken)
    taken_mc = sum(taken.values())
    for refund in succeeded:
        key = f"refund:{refund['id']}"
        if key in taken:
            continue
        refunded += refund["amount"]
        amount_mc = _proportion(purchase, refunded) - taken_mc
        if amount_mc <= 0:
            continue
        cmd = ClawBack(
            account=purchase.account,
            amount_mc=amount_mc,
            idempotency_key=key,
            reason="refund",
            grant_ref=purchase.payment_intent,
            external_ref=refund["id"],
            metadata={"charge": charge["id"], "amount": refund["amount"]},
        )
        claw_back(Book(ctx.book.session, ctx.book.now), cmd)
        taken_mc += amount_mc
    return PROCESSED


def _refunds_taken(book: Book, keys: list[str]) -> dict[str, int]:
    """What each refund already handled took, by its key: its line on the system refunds account."""
    if not keys:
        return {}
    rows = book.session.execute(
        text(
            "SELECT e.idempotency_key, p.amount_mc FROM unnest(CAST(:keys AS text[])) AS k(key) "
            "JOIN ledger_entries e ON e.idempotency_key = k.key "
            "JOIN postings p ON p.entry_id = e.id AND p.account_id = :refunds"
        ),
        {"keys": keys, "refunds": book.system_account("refunds")},
    ).all()
    return {row.idempotency_key: row.amount_mc for row in rows}


def on_refund_updated(ctx: EventContext, refund: dict[str, Any]) -> str:
    """A refund still pending when ``charge.refunded`` arrived (bank transfers, some cards) settles later:
    once it has succeeded, its charge's refunds are clawed back as ``charge.refunded`` does (each refund once,
    by its key). Pending, failed or canceled refunds moved no money, so they take nothing."""
    if refund.get("status") != "succeeded" or not refund.get("charge"):
        return IGNORED
    charge = {"id": refund["charge"], "payment_intent": refund.get("payment_intent"), "refunds": {"data": [refund]}}
    return on_charge_refunded(ctx, charge)


def _dispute_clawback(ctx: EventContext, dispute: dict[str, Any]) -> tuple[Purchase, int]:
    purchase = _purchase_for(ctx, dispute.get("payment_intent"))
    amount_mc = _proportion(purchase, int(dispute["amount"]))
    cmd = ClawBack(
        account=purchase.account,
        amount_mc=amount_mc,
        idempotency_key=f"dispute:{dispute['id']}",
        reason="dispute",
        grant_ref=purchase.payment_intent,
        external_ref=dispute["id"],
        metadata={"charge": dispute.get("charge"), "amount": dispute["amount"]},
    )
    claw_back(Book(ctx.book.session, ctx.book.now), cmd)
    return purchase, amount_mc


def _is_inquiry(dispute: dict[str, Any]) -> bool:
    # An inquiry (statuses ``warning_*``) withdraws no money, and the payment may still be refunded: taking
    # credits back then would take them twice (once more by the refund) or for nothing (closed unescalated).
    # An inquiry that escalates to a chargeback keeps its id and moves to ``needs_response``.
    return str(dispute.get("status", "")).startswith("warning_")


def on_dispute_created(ctx: EventContext, dispute: dict[str, Any]) -> str:
    """A chargeback takes the disputed share back at once: the money is already withdrawn."""
    if not _is_inquiry(dispute):
        _dispute_clawback(ctx, dispute)
    return PROCESSED


def on_dispute_funds_withdrawn(ctx: EventContext, dispute: dict[str, Any]) -> str:
    """Money left (also when an inquiry escalates): the same clawback, once (``dispute:<dp_id>``)."""
    _dispute_clawback(ctx, dispute)
    return PROCESSED


def _reinstate(ctx: EventContext, dispute: dict[str, Any]) -> None:
    purchase, amount_mc = _dispute_clawback(ctx, dispute)
    cmd = PurchaseCredits(
        account=purchase.account,
        amount_mc=amount_mc,
        idempotency_key=f"dispute_won:{dispute['id']}",
        external_ref=purchase.payment_intent,
        metadata={"dispute": dispute["id"], "reinstated": True},
    )
    purchase_credits(Book(ctx.book.session, ctx.book.now), cmd)


def on_dispute_closed(ctx: EventContext, dispute: dict[str, Any]) -> str:
    """Won: the credits come back (key ``dispute_won:<dp_id>``). Lost: the clawback stands. Either way the
    clawback is made first (a no-op when ``created`` was handled) in case that event never came. An inquiry
    closed without escalating took nothing, so it gives nothing back."""
    if _is_inquiry(dispute):
        return PROCESSED
    if dispute.get("status") == "won":
        _reinstate(ctx, dispute)
    else:
        _dispute_clawback(ctx, dispute)
    return PROCESSED


def on_dispute_funds_reinstated(ctx: EventContext, dispute: dict[str, Any]) -> str:
    _reinstate(ctx, dispute)
    return PROCESSED


def on_customer_changed(ctx: EventContext, customer: dict[str, Any]) -> str:
    """Link the Stripe customer to the account named in its metadata (created by our gateway)."""
    account = (customer.get("metadata") or {}).get("account")
    if not account:
        return IGNORED
    wallet = ctx.book.lock_wallet(check_account(account), create=True)
    session = ctx.book.session
    if wallet.stripe_customer_id != customer["id"]:
        # One customer, one wallet: a customer re-pointed at another account leaves the old one. (When the
        # wallet already has it, no other can: the column is unique.)
        session.execute(
            text(
                "UPDATE wallets SET stripe_customer_id = NULL, updated_at = now() "
                "WHERE stripe_customer_id = :c AND id <> :w"
            ),
            {"c": customer["id"], "w": wallet.id},
        )
    session.execute(
        text(
            "UPDATE wallets SET stripe_customer_id = :c, email = coalesce(:email, email), "
            "name = coalesce(:name, name), updated_at = now() WHERE id = :w"
        ),
        {"c": customer["id"], "email": customer.get("email"), "name": customer.get("name"), "w": wallet.id},
    )
    wallet.stripe_customer_id = customer["id"]
    return PROCESSED


def on_customer_deleted(ctx: EventContext, customer: dict[str, Any]) -> str:
    ctx.book.session.execute(
        text("UPDATE wallets SET stripe_customer_id = NULL, updated_at = now() WHERE stripe_customer_id = :c"),
        {"c": customer["id"]},
    )
    return PROCESSED


HANDLERS: dict[str, Callable[[EventContext, dict[str, Any]], str]] = {
    "checkout.session.completed": on_checkout_completed,
    "checkout.session.async_payment_succeeded": on_checkout_completed,
    "checkout.session.async_payment_failed": on_payment_failed,
    "payment_intent.payment_failed": on_payment_failed,
    "charge.refunded": on_charge_refunded,
    "charge.refund.updated": on_refund_updated,
    "refund.updated": on_refund_updated,
    "charge.dispute.created": on_dispute_created,
    "charge.dispute.funds_withdrawn": on_dispute_funds_withdrawn,
    "charge.dispute.closed": on_dispute_closed,
    "charge.dispute.funds_reinstated": on_dispute_funds_reinstated,
    "customer.created": on_customer_changed,
    "customer.updated": on_customer_changed,
    "customer.deleted": on_customer_deleted,
}


def _handle(book: Book, gateway: StripeReader | None, event_type: str, event: dict[str, Any]) -> str:
    handler = HANDLERS.get(event_type)
    if handler is None:
        return IGNORED
    return handler(EventContext(book, gateway, event), event["data"]["object"])


# -- processing ------------------------------------------------------------------------------------------
def process_event(
    session_factory: sessionmaker[Session], gateway: StripeReader | None, event_id: str, *, now: datetime | None = None
) -> str:
    """Handle one stored event in one transaction; returns its status afterwards.

    The row is locked ``FOR UPDATE SKIP LOCKED``: a second worker given the same id (a duplicate message)
    skips it. A handler that waits or fails leaves the ledger untouched (the transaction rolls back) and the
    event's status, attempt count and error are written in a separate transaction, for retry or replay.
    """

    def work(uow: unit_of_work.UnitOfWork) -> str:
        row = uow.session.execute(
            text("SELECT type, payload, status FROM stripe_events WHERE id = :id FOR UPDATE SKIP LOCKED"),
            {"id": event_id},
        ).first()
        if row is None:
            return "busy"
        if row.status in (PROCESSED, IGNORED, DEAD):
            return row.status
        status = _handle(uow.book, gateway, row.type, row.payload)
        uow.session.execute(
            text(
                "UPDATE stripe_events SET status = :s, attempts = attempts + 1, last_error = NULL, "
                "processed_at = now() WHERE id = :id"
            ),
            {"s": status, "id": event_id},
        )
        return status

    try:
        return unit_of_work.run(session_factory, work, now=now)
    except Waiting as exc:
        return _record_retry(session_factory, event_id, WAITING, str(exc))
    except Exception as exc:
        if unit_of_work.database_unreachable(session_factory):
            raise
        log.exception("stripe event %s failed", event_id)
        # An event whose own data we refuse (an invalid account in its metadata, a package we do not sell)
        # fails the same way every time: it goes to the dead letters for an operator at once.
        status = DEAD if isinstance(exc, PERMANENT_ERRORS) else FAILED
        return _record_retry(session_factory, event_id, status, f"{type(exc).__name__}: {exc}")


@dataclass
class DrainResult:
    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    more: bool = False  # the batch was full: there may be more pending events


def process_pending(
    session_factory: sessionmaker[Session],
    gateway: StripeReader | None,
    *,
    limit: int = 100,
    now: datetime | None = None,
) -> DrainResult:
    """Claim up to ``limit`` pending events, oldest first, and handle them in one transaction.

    This is how stored events are normally handled: one claim, one status update and one commit for the
    batch instead of a message and a transaction per event. The rows are locked ``FOR UPDATE SKIP LOCKED``
    so that two drains share the work. If any handler waits or fails, the batch rolls back and each claimed
    event is handled on its own by ``process_event``: the others go on, and that one records its retry.
    """
    claimed: list[str] = []

    def work(uow: unit_of_work.UnitOfWork) -> DrainResult:
        rows = uow.session.execute(
            text(
                "SELECT id, type, payload FROM stripe_events WHERE status = 'pending' AND next_attempt_at <= now() "
                "ORDER BY next_attempt_at, id LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": limit},
        ).all()
        claimed[:] = [row.id for row in rows]
        statuses = []
        for row in rows:
            # A Book per event: each handler locks its own wallets before drafting, as it does alone.
            book = Book(uow.session, uow.book.now)
            statuses.append(_handle(book, gateway, row.type, row.payload))
            book.flush()
        if rows:
            uow.session.execute(
                text(
                    "UPDATE stripe_events e SET status = v.status, attempts = e.attempts + 1, last_error = NULL, "
                    "processed_at = now() "
                    "FROM unnest(CAST(:ids AS text[]), CAST(:statuses AS text[])) AS v(id, status) WHERE e.id = v.id"
                ),
                {"ids": claimed, "statuses": statuses},
            )
        return DrainResult(len(rows), dict(Counter(statuses)), more=len(rows) == limit)

    try:
        return unit_of_work.run(session_factory, work, now=now)
    except Exception:
        if not claimed or unit_of_work.database_unreachable(session_factory):
            raise
    outcomes = Counter(process_event(session_factory, gateway, event_id, now=now) for event_id in claimed)
    return DrainResult(len(claimed), dict(outcomes), more=True)


def _record_retry(session_factory: sessionmaker[Session], event_id: str, status: str, error: str) -> str:
    with session_factory() as session, session.begin():
        return session.execute(
            text(
                """
                UPDATE stripe_events SET attempts = attempts + 1, last_error = :err,
                       status = CASE WHEN attempts + 1 >= :max THEN 'dead' ELSE :status END,
                       next_attempt_at = now() + make_interval(secs => least(600, power(2, attempts + 1)))
                WHERE id = :id RETURNING status
                """
            ),
            {"id": event_id, "err": error[:2000], "max": MAX_ATTEMPTS, "status": status},
        ).scalar_one()


@dataclass(frozen=True)
class DueEvents:
    retries: list[str]  # waiting or failed events whose retry time has come: a message each
    stale_pending: int  # pending events no drain took in time (a lost message): one drain takes them all


def due_events(
    session_factory: sessionmaker[Session], *, stale_after_seconds: int = 30, limit: int = 1000
) -> DueEvents:
    """Events a message should have handled by now (lost or delayed by the broker), or whose retry is due."""
    with session_factory() as session:
        rows = session.execute(
            text(
                "SELECT id, status FROM stripe_events WHERE status IN ('pending', 'waiting', 'failed') "
                "AND next_attempt_at <= now() "
                "AND (status <> 'pending' OR received_at < now() - make_interval(secs => :stale)) "
                "ORDER BY next_attempt_at LIMIT :n"
            ),
            {"stale": stale_after_seconds, "n": limit},
        ).all()
    return DueEvents([r.id for r in rows if r.status != "pending"], sum(1 for r in rows if r.status == "pending"))


def reopen(session_factory: sessionmaker[Session], event_id: str) -> bool:
    """Make a dead, failed or waiting event due again now with a fresh attempt count."""
    with session_factory() as session, session.begin():
        return (
            session.execute(
                text(
                    "UPDATE stripe_events SET status = 'pending', attempts = 0, next_attempt_at = now() "
                    "WHERE id = :id AND status IN ('dead', 'failed', 'waiting') RETURNING id"
                ),
                {"id": event_id},
            ).first()
            is not None
        )
