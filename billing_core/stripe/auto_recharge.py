"""Auto-recharge: when a wallet's available balance falls below its threshold, charge its saved card
off-session for one package, once per crossing (docs/auto-recharge.md has the states and the argument).

Settings live in ``auto_recharge`` (one row per wallet: enabled, threshold, package, ``state``), each charge
in ``auto_recharge_attempts``. The steps, each its own short transaction, none waiting on Stripe under a
lock (DESIGN rule 10):

1. **Detect** (``candidates``, ``check``): after the worker applies a usage batch, one query over the armed
   settings of that usage partition whose wallet is below the threshold; the beat ``sweep`` does the same
   over every partition as the safety net (holds placed over HTTP, a lost message).
2. **Trigger** (``trigger``): the settings row locked, then the balance read after the lock, then ``state =
   'pending'`` (if it was ``armed`` and the balance below the threshold) and the attempt's insert, in one
   transaction. Concurrent triggers of one wallet queue on its settings row; the first flips it, the others
   find it ``pending`` and do nothing. A partial unique index (one ``pending`` attempt per wallet) backs this
   in the database itself.
3. **Charge** (``charge``): after commit, the PaymentIntent is created with the idempotency key
   ``auto_recharge:<attempt id>``, so a task retried after a crash, or the sweep recovering a stuck attempt,
   gets the same PaymentIntent back from Stripe instead of a second charge.
4. **Record** (``apply_payment_intent``): Stripe's answer, from the gateway call and from the
   ``payment_intent.succeeded`` / ``payment_failed`` webhooks alike (``recharge_handlers``). A succeeded
   PaymentIntent is credited as a purchase under the key ``auto_recharge:<pi id>``, with the same body
   whichever path comes first, so the second is a replay; the state goes back to ``armed`` (or
   ``charged`` while the balance is still below the threshold). A failure leaves ``failed``: no more
   attempts until the settings are saved again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import UnknownPackage
from billing_core.ledger.book import Book
from billing_core.ledger.commands import PurchaseCredits
from billing_core.ledger.handlers import purchase_credits
from billing_core.notify.outbox import notify
from billing_core.partitions import partition_of
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.packages import Package, find_package
from billing_core.pricing.sales_guard import sales_state
from billing_core.stripe.gateway import StripeNotFound, StripeRejected
from billing_core.units import format_credits

log = logging.getLogger(__name__)

# Settings states.
ARMED, PENDING, CHARGED, FAILED = "armed", "pending", "charged", "failed"
STATES = (ARMED, PENDING, CHARGED, FAILED)
# Attempt statuses (PENDING as above).
SUCCEEDED, REQUIRES_ACTION = "succeeded", "requires_action"
# What a PaymentIntent of ours carries in ``metadata.kind``; the prefix of its ledger key and Stripe key.
KIND = "auto_recharge"
KEY_PREFIX = "auto_recharge:"
# Failure codes of our own (the others are Stripe's ``last_payment_error.code``).
NO_PAYMENT_METHOD = "no_payment_method"
PAYMENTS_UNAVAILABLE = "payments_unavailable"
UNKNOWN_PACKAGE = "unknown_package"
ABANDONED = "abandoned"
# A pending attempt untouched this long is charged again by the sweep (same idempotency key: same PaymentIntent).
STALE_AFTER = timedelta(minutes=2)
# Stripe keeps idempotency keys 24 hours: past this, a retry could create a second PaymentIntent, so an attempt
# that never learnt its PaymentIntent is given up (``abandoned``) rather than sent again.
IDEMPOTENCY_WINDOW = timedelta(hours=23)
PROCESSED, IGNORED = "processed", "ignored"

StripeObject = dict[str, Any]


class RechargeGateway(Protocol):
    """What auto-recharge asks Stripe (``billing_core.stripe.gateway.StripeGateway`` in production)."""

    def retrieve_customer(self, customer_id: str) -> StripeObject: ...
    def retrieve_payment_intent(self, payment_intent_id: str) -> StripeObject: ...
    def create_off_session_payment_intent(
        self,
        *,
        customer: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        payment_method: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> StripeObject: ...


@dataclass(frozen=True)
class Attempt:
    id: int
    account: str
    package: str
    credits_mc: int
    amount: int
    currency: str
    threshold_mc: int
    available_mc: int
    status: str
    payment_intent_id: str | None
    failure_code: str | None
    failure_message: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AutoRechargeView:
    account: str
    enabled: bool
    threshold_mc: int
    package: str
    state: str
    updated_at: datetime
    last_attempt: Attempt | None


@dataclass(frozen=True)
class SweepResult:
    rearmed: int
    triggered: list[int]  # attempts created: charge each
    stale: list[int]  # pending attempts to charge again (same idempotency key)


_ATTEMPT_COLUMNS = (
    "a.id, w.account, a.package, a.credits_mc, a.amount, a.currency, a.threshold_mc, a.available_mc, a.status, "
    "a.payment_intent_id, a.failure_code, a.failure_message, a.created_at, a.updated_at"
)
_ATTEMPT = text(
    f"SELECT {_ATTEMPT_COLUMNS} FROM auto_recharge_attempts a JOIN wallets w ON w.id = a.wallet_id WHERE a.id = :id"
)
_SETTINGS = text(
    "SELECT w.account, r.enabled, r.threshold_mc, r.package, r.state, r.updated_at, r.last_attempt_id "
    "FROM auto_recharge r JOIN wallets w ON w.id = r.wallet_id WHERE w.account = :account"
)
_CANDIDATES = (
    "SELECT r.wallet_id FROM auto_recharge r JOIN wallets w ON w.id = r.wallet_id "
    "JOIN ledger_accounts a ON a.id = w.available_account_id "
    "WHERE r.enabled AND r.state = 'armed' AND a.balance_mc < r.threshold_mc"
)
# The once-per-crossing step is the settings row's lock (``_LOCK_SETTINGS``), then the balance read in a statement
# of its own, then the attempt and the row's new state. Not one guarded ``UPDATE ... FROM`` the balance: a
# statement that waits for the row's lock re-checks the row's new version against the balance its snapshot read
# before the wait, so a trigger that waited out a whole recharge (flip, charge, credit, re-arm) found the row
# armed again beside the old balance, and charged a second time. A statement started after the lock reads what
# the lock's last holder committed.
_NEW_ATTEMPT = text(
    "INSERT INTO auto_recharge_attempts (wallet_id, package, credits_mc, amount, currency, threshold_mc, "
    "available_mc, status, failure_code, failure_message, created_at, updated_at) "
    "VALUES (:wallet, :package, :credits, :amount, :currency, :threshold, :available, :status, :code, :message, "
    ":now, :now) RETURNING id"
)
_SET_LAST = text(
    "UPDATE auto_recharge SET last_attempt_id = :attempt, state = :state, updated_at = :now WHERE wallet_id = :wallet"
)
_LOCK_SETTINGS = text(
    "SELECT r.enabled, r.state, r.package, r.threshold_mc, r.last_attempt_id, w.available_account_id "
    "FROM auto_recharge r JOIN wallets w ON w.id = r.wallet_id WHERE r.wallet_id = :wallet FOR UPDATE OF r"
)
_LOCK_ATTEMPT = text(
    "SELECT a.status, a.payment_intent_id, a.wallet_id, w.available_account_id FROM auto_recharge_attempts a "
    "JOIN wallets w ON w.id = a.wallet_id WHERE a.id = :id FOR UPDATE OF a"
)
_SET_STATE = text("UPDATE auto_recharge SET state = :state, updated_at = :now WHERE wallet_id = :wallet")
_FINISH_ATTEMPT = text(
    "UPDATE auto_recharge_attempts SET status = :status, failure_code = :code, failure_message = :message, "
    "payment_intent_id = coalesce(payment_intent_id, :pi), updated_at = :now WHERE id = :id"
)
_NOTE_INTENT = text(
    "UPDATE auto_recharge_attempts SET payment_intent_id = coalesce(payment_intent_id, :pi), updated_at = :now "
    "WHERE id = :id"
)
_BALANCE = text("SELECT balance_mc FROM ledger_accounts WHERE id = :id")
_REARM = text(
    "UPDATE auto_recharge r SET state = 'armed', updated_at = :now "
    "FROM wallets w JOIN ledger_accounts a ON a.id = w.available_account_id "
    "WHERE r.state = 'charged' AND w.id = r.wallet_id AND a.balance_mc >= r.threshold_mc"
)
_STALE = text(
    "SELECT id FROM auto_recharge_attempts WHERE status = 'pending' AND updated_at < :before ORDER BY id LIMIT :limit"
)
_CHARGE_INFO = text(
    "SELECT a.id, a.status, a.amount, a.currency, a.package, a.credits_mc, a.payment_intent_id, a.created_at, "
    "w.account, w.stripe_customer_id FROM auto_recharge_attempts a JOIN wallets w ON w.id = a.wallet_id "
    "WHERE a.id = :id"
)
_UPSERT = text(
    "INSERT INTO auto_recharge (wallet_id, enabled, threshold_mc, package, state, partition, created_at, updated_at) "
    "VALUES (:wallet, :enabled, :threshold, :package, 'armed', :partition, :now, :now) "
    "ON CONFLICT (wallet_id) DO UPDATE SET enabled = excluded.enabled, threshold_mc = excluded.threshold_mc, "
    "package = excluded.package, updated_at = excluded.updated_at, "
    # Saving the settings is the customer acting: a failed or charged row is armed again; an attempt in flight
    # keeps its row pending (arming it would let a second charge start beside the first).
    "state = CASE WHEN auto_recharge.state = 'pending' THEN 'pending' ELSE 'armed' END"
)


def _attempt(row: Any) -> Attempt:
    return Attempt(*row)


# -- settings --------------------------------------------------------------------------------------------
def read_settings(session: Session, account: str) -> AutoRechargeView | None:
    """The account's settings, state and last attempt; None when it never configured auto-recharge."""
    row = session.execute(_SETTINGS, {"account": account}).first()
    if row is None:
        return None
    last = None
    if row.last_attempt_id is not None:
        found = session.execute(_ATTEMPT, {"id": row.last_attempt_id}).first()
        last = None if found is None else _attempt(found)
    return AutoRechargeView(row.account, row.enabled, row.threshold_mc, row.package, row.state, row.updated_at, last)


def save_settings(
    session_factory: sessionmaker[Session],
    account: str,
    *,
    enabled: bool,
    threshold_mc: int,
    package: Package,
    now: datetime | None = None,
) -> AutoRechargeView:
    """Set the account's auto-recharge (creating the wallet if the account is new) and arm it: a ``failed``
    or ``charged`` state starts again from ``armed``; a ``pending`` one stays until its attempt ends."""
    if threshold_mc < 0:
        raise ValueError("threshold_mc must not be negative")

    def work(uow: unit_of_work.UnitOfWork) -> AutoRechargeView:
        # The wallet first, as every command locks it: then the settings row (the order the handlers keep).
        wallet = uow.book.lock_wallet(account, create=True)
        uow.session.execute(
            _UPSERT,
            {
                "wallet": wallet.id,
                "enabled": enabled,
                "threshold": threshold_mc,
                "package": package.id,
                "partition": partition_of(account),
                "now": uow.book.now,
            },
        )
        view = read_settings(uow.session, account)
        assert view is not None
        return view

    return unit_of_work.run(session_factory, work, now=now)


# -- detection and trigger ---------------------------------------------------------------------------------
def candidates(
    session: Session,
    *,
    partition: int | None = None,
    accounts: list[str] | None = None,
    limit: int = 1000,
) -> list[int]:
    """Wallets whose auto-recharge is enabled and armed and whose available balance is below the threshold
    (a plain read: the trigger re-checks under the row's lock)."""
    sql, params = _CANDIDATES, {"limit": limit}
    if partition is not None:
        sql += " AND r.partition = :partition"
        params["partition"] = partition
    if accounts is not None:
        sql += " AND w.account = ANY(CAST(:accounts AS text[]))"
        params["accounts"] = accounts  # type: ignore[assignment]  # a list, sent as one array
    sql += " ORDER BY r.wallet_id LIMIT :limit"
    return [row[0] for row in session.execute(text(sql), params)]


def trigger(
    session_factory: sessionmaker[Session], wallet_id: int, table: PriceTable, *, now: datetime | None = None
) -> int | None:
    """Start one attempt if the wallet is armed and below its threshold: flip the state to ``pending`` and
    insert the attempt in one transaction. Returns the attempt to charge, or None (not armed any more, not
    below the threshold, another trigger won, or sales are paused by the sales guard)."""

    def work(uow: unit_of_work.UnitOfWork) -> int | None:
        session, now_ = uow.session, uow.book.now
        if sales_state(session, now_).paused:
            return None  # stays armed: the next check tries again once sales resume
        settings = session.execute(_LOCK_SETTINGS, {"wallet": wallet_id}).first()
        if settings is None or not settings.enabled or settings.state != ARMED:
            return None  # another trigger won, or auto-recharge was turned off or has failed
        balance = int(session.execute(_BALANCE, {"id": settings.available_account_id}).scalar_one())
        if balance >= settings.threshold_mc:
            return None  # topped up since it was found below
        try:
            package: Package | None = find_package(table, settings.package)
        except UnknownPackage:
            package = None  # dropped from the price file since it was chosen: the customer must choose again
        values = {
            "wallet": wallet_id,
            "package": settings.package,
            "credits": package.total_mc if package else 0,
            "amount": package.unit_amount if package else 0,
            "currency": package.currency if package else "",
            "threshold": settings.threshold_mc,
            "available": balance,
            "status": PENDING if package else FAILED,
            "code": None if package else UNKNOWN_PACKAGE,
            "message": None if package else f"package {settings.package!r} is no longer sold",
            "now": now_,
        }
        attempt_id = int(session.execute(_NEW_ATTEMPT, values).scalar_one())
        state = PENDING if package else FAILED
        session.execute(_SET_LAST, {"attempt": attempt_id, "state": state, "wallet": wallet_id, "now": now_})
        return attempt_id if package else None

    return unit_of_work.run(session_factory, work, now=now)


def check(
    session_factory: sessionmaker[Session],
    table: PriceTable,
    *,
    partition: int | None = None,
    accounts: list[str] | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Detect and trigger: the attempts started now (charge each, after this returns)."""
    with session_factory() as session:
        wallets = candidates(session, partition=partition, accounts=accounts)
    started = []
    for wallet_id in wallets:
        attempt_id = trigger(session_factory, wallet_id, table, now=now)
        if attempt_id is not None:
            started.append(attempt_id)
    return started


# -- the charge ------------------------------------------------------------------------------------------
def charge(
    session_factory: sessionmaker[Session],
    gateway: RechargeGateway | None,
    attempt_id: int,
    *,
    now: datetime | None = None,
) -> str:
    """Charge a pending attempt off-session and record Stripe's answer; returns the attempt's status.

    Safe to repeat: an attempt no longer pending is left alone; one whose PaymentIntent is known is read back;
    otherwise the PaymentIntent is created with the key ``auto_recharge:<attempt id>``, which Stripe answers
    with the first PaymentIntent if this is a retry. ``StripeUnavailable`` propagates (the task retries)."""
    with session_factory() as session:
        row = session.execute(_CHARGE_INFO, {"id": attempt_id}).first()
    if row is None:
        return "unknown"
    if row.status != PENDING:
        return str(row.status)
    if gateway is None:
        return fail(session_factory, attempt_id, PAYMENTS_UNAVAILABLE, "payments are not configured", now=now)
    if row.payment_intent_id is not None:
        return record(session_factory, gateway.retrieve_payment_intent(row.payment_intent_id), now=now)
    current = now or unit_of_work.utcnow()
    if current - row.created_at > IDEMPOTENCY_WINDOW:
        message = "the attempt never reached Stripe within the idempotency window; not sent again"
        return fail(session_factory, attempt_id, ABANDONED, message, now=now)
    if not row.stripe_customer_id:
        return fail(session_factory, attempt_id, NO_PAYMENT_METHOD, "the account has no Stripe customer", now=now)
    try:
        customer = gateway.retrieve_customer(row.stripe_customer_id)
    except StripeNotFound:
        customer = {"deleted": True}
    if customer.get("deleted") or not (customer.get("invoice_settings") or {}).get("default_payment_method"):
        message = "the Stripe customer has no saved card (invoice_settings.default_payment_method)"
        return fail(session_factory, attempt_id, NO_PAYMENT_METHOD, message, now=now)
    try:
        intent = gateway.create_off_session_payment_intent(
            customer=row.stripe_customer_id,
            amount=row.amount,
            currency=row.currency,
            idempotency_key=f"{KEY_PREFIX}{attempt_id}",
            metadata={
                "kind": KIND,
                "account": row.account,
                "package": row.package,
                "attempt": str(attempt_id),
                "credits": format_credits(row.credits_mc),
            },
        )
    except StripeRejected as exc:
        return fail(session_factory, attempt_id, exc.code or "stripe_error", exc.message, now=now)
    return record(session_factory, intent, now=now)


def _notify_failed(session: Session, attempt: Attempt, status: str, code: str, message: str, now: datetime) -> None:
    """The customer hears once per attempt that it failed (in the transaction that records the failure)."""
    notify(
        session,
        "auto_recharge_failed",
        f"auto_recharge_failed:{attempt.id}",
        account=attempt.account,
        payload={
            "account": attempt.account,
            "package": attempt.package,
            "credits": format_credits(attempt.credits_mc),
            "amount": attempt.amount,
            "currency": attempt.currency,
            "status": status,  # failed, or requires_action (the bank wants the customer: 3-D Secure)
            "code": code,
            "message": message,
        },
        now=now,
    )


def fail(
    session_factory: sessionmaker[Session], attempt_id: int, code: str, message: str, *, now: datetime | None = None
) -> str:
    """A pending attempt failed before Stripe charged anything: the attempt ``failed``, its wallet ``failed``."""

    def work(uow: unit_of_work.UnitOfWork) -> str:
        session, now_ = uow.session, uow.book.now
        wallet_id = session.execute(
            text("SELECT wallet_id FROM auto_recharge_attempts WHERE id = :id"), {"id": attempt_id}
        ).scalar_one()
        settings = session.execute(_LOCK_SETTINGS, {"wallet": wallet_id}).first()
        attempt = session.execute(_LOCK_ATTEMPT, {"id": attempt_id}).first()
        assert attempt is not None
        if attempt.status != PENDING:
            return str(attempt.status)
        params = {"status": FAILED, "code": code, "message": message[:1000], "pi": None, "now": now_, "id": attempt_id}
        session.execute(_FINISH_ATTEMPT, params)
        found = session.execute(_ATTEMPT, {"id": attempt_id}).first()
        if found is not None:
            _notify_failed(session, _attempt(found), FAILED, code, message[:1000], now_)
        if settings is not None and settings.last_attempt_id == attempt_id and settings.state == PENDING:
            session.execute(_SET_STATE, {"state": FAILED, "wallet": wallet_id, "now": now_})
        return FAILED

    return unit_of_work.run(session_factory, work, now=now)


def record(session_factory: sessionmaker[Session], intent: StripeObject, *, now: datetime | None = None) -> str:
    """Stripe's answer to the gateway call, recorded as the webhook would (``apply_payment_intent``)."""

    def work(uow: unit_of_work.UnitOfWork) -> str:
        apply_payment_intent(uow.book, intent)
        attempt_id = _attempt_id(intent)
        status = uow.session.execute(
            text("SELECT status FROM auto_recharge_attempts WHERE id = :id"), {"id": attempt_id}
        ).scalar()
        return str(status)

    return unit_of_work.run(session_factory, work, now=now)


def is_auto_recharge(intent: StripeObject) -> bool:
    return (intent.get("metadata") or {}).get("kind") == KIND


def _attempt_id(intent: StripeObject) -> int | None:
    raw = (intent.get("metadata") or {}).get("attempt")
    try:
        return int(str(raw))
    except ValueError:
        return None


def credit_command(attempt: Attempt | Any, account: str, payment_intent: str) -> PurchaseCredits:
    """The purchase a succeeded PaymentIntent of ``attempt`` credits: built from the attempt row alone, so the
    gateway's answer and the webhook write the same body under the same key (the second is a replay)."""
    return PurchaseCredits(
        account=account,
        amount_mc=attempt.credits_mc,
        idempotency_key=f"{KEY_PREFIX}{payment_intent}",
        external_ref=payment_intent,
        metadata={
            "auto_recharge_attempt": attempt.id,
            "package": attempt.package,
            "payment_intent": payment_intent,
            # What ``purchases.Purchase.share`` divides refunds by: the payment, in the currency's minor unit.
            "amount_total": attempt.amount,
            "currency": attempt.currency,
        },
    )


def apply_payment_intent(book: Book, intent: StripeObject) -> str:
    """Record what a PaymentIntent of ours says, in the caller's transaction: ``succeeded`` credits the
    package (once, key ``auto_recharge:<pi id>``) and re-arms; a payment error fails the attempt and stops
    auto-recharge; anything else (``processing``) only notes the PaymentIntent. Not ours: ``ignored``."""
    if not is_auto_recharge(intent):
        return IGNORED
    attempt_id = _attempt_id(intent)
    found = None if attempt_id is None else book.session.execute(_ATTEMPT, {"id": attempt_id}).first()
    if found is None:
        # Not an attempt of this database (another deployment on the same Stripe account, a test stack).
        log.warning("payment intent %s names unknown auto-recharge attempt %r", intent.get("id"), attempt_id)
        return IGNORED
    attempt = _attempt(found)
    if (intent.get("metadata") or {}).get("account") != attempt.account:
        log.warning("payment intent %s names another account than attempt %s", intent.get("id"), attempt.id)
        return IGNORED
    session, now = book.session, book.now
    status = intent.get("status")
    pi_id = str(intent["id"])
    if status == SUCCEEDED:
        # The lock order of every path: wallet, settings row, attempt row.
        wallet = book.lock_wallet(attempt.account)
        settings = session.execute(_LOCK_SETTINGS, {"wallet": wallet.id}).first()
        locked = session.execute(_LOCK_ATTEMPT, {"id": attempt.id}).first()
        assert locked is not None
        purchase_credits(book, credit_command(attempt, attempt.account, pi_id))
        session.execute(
            _FINISH_ATTEMPT,
            {"status": SUCCEEDED, "code": None, "message": None, "pi": pi_id, "now": now, "id": attempt.id},
        )
        if settings is not None and settings.last_attempt_id == attempt.id and settings.state in (PENDING, FAILED):
            balance = int(session.execute(_BALANCE, {"id": wallet.available_account_id}).scalar_one())
            state = ARMED if balance >= settings.threshold_mc else CHARGED
            session.execute(_SET_STATE, {"state": state, "wallet": wallet.id, "now": now})
        return PROCESSED
    error = intent.get("last_payment_error") or {}
    if error or status in (REQUIRES_ACTION, "canceled"):
        settings = session.execute(_LOCK_SETTINGS, {"wallet": _wallet_of(session, attempt.id)}).first()
        locked = session.execute(_LOCK_ATTEMPT, {"id": attempt.id}).first()
        assert locked is not None
        if locked.status == SUCCEEDED:
            return PROCESSED  # never undone by a late failure event
        code = str(error.get("code") or status)
        outcome = REQUIRES_ACTION if code == "authentication_required" or status == REQUIRES_ACTION else FAILED
        message = str(error.get("message") or f"the payment ended {status}")[:1000]
        session.execute(
            _FINISH_ATTEMPT,
            {"status": outcome, "code": code, "message": message, "pi": pi_id, "now": now, "id": attempt.id},
        )
        if settings is not None and settings.last_attempt_id == attempt.id and settings.state == PENDING:
            session.execute(_SET_STATE, {"state": FAILED, "wallet": locked.wallet_id, "now": now})
        _notify_failed(session, attempt, outcome, code, message, now)
        return PROCESSED
    session.execute(_NOTE_INTENT, {"pi": pi_id, "now": now, "id": attempt.id})
    return PROCESSED


def _wallet_of(session: Session, attempt_id: int) -> int:
    return int(
        session.execute(
            text("SELECT wallet_id FROM auto_recharge_attempts WHERE id = :id"), {"id": attempt_id}
        ).scalar_one()
    )


# -- the sweep -----------------------------------------------------------------------------------------------
def sweep(
    session_factory: sessionmaker[Session], table: PriceTable, *, now: datetime | None = None, limit: int = 1000
) -> SweepResult:
    """The beat's safety net: re-arm ``charged`` wallets back at their threshold, trigger every armed wallet
    below it (whatever moved its balance), and list pending attempts left untouched (a lost message, a crash
    between the trigger and the charge) to charge again."""
    current = now or unit_of_work.utcnow()

    def rearm(uow: unit_of_work.UnitOfWork) -> int:
        return int(uow.session.execute(_REARM, {"now": uow.book.now}).rowcount)  # type: ignore[attr-defined]

    rearmed = unit_of_work.run(session_factory, rearm, now=now)
    triggered = check(session_factory, table, now=now)
    with session_factory() as session:
        stale = [int(r[0]) for r in session.execute(_STALE, {"before": current - STALE_AFTER, "limit": limit})]
    return SweepResult(rearmed, triggered, [a for a in stale if a not in triggered])
