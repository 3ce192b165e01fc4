"""Plan subscriptions: Stripe's subscriptions and invoices mirrored per wallet, and the allowance a paid invoice
grants (the events' handlers are ``subscription_handlers``).

Stripe is the truth about a subscription and its invoices: every event re-reads its object through the gateway
before the ledger transaction (the payload may be stale, or older than one already handled: Stripe sends events
in no particular order), and the row is overwritten with what Stripe shows now. An invoice's event also reads
its subscription, so an invoice paid before its subscription's own events are handled still finds its account.

What a paid invoice grants comes from its line's Price (metadata written by ``billing stripe sync-products``:
``billing_plan``, ``interval``, ``allowance_mc`` per month of the plan, ``trial_allowance_mc``,
``rollover_cap_mc``), never from the payload's amounts, and only once per invoice (key ``invoice:<in_id>``):

- a first or a renewal invoice (``subscription_create``, ``subscription_cycle``): the period's allowance, a
  ``plan`` grant expiring at the period's end (the trial allowance for a trial's $0 invoice); a yearly plan
  grants a month at a time (the beat's ``grant_due_allowances``) or twelve months at once
  (``plan_yearly_grants``). Before it, what is left of the subscription's ended plan grants rolls over, up to
  the plan's cap, into the new period (``RollOver``, key ``rollover:<in_id>``); the rest expires.
- a mid-cycle upgrade's proration invoice (``subscription_update``): the prorated difference of the monthly
  allowances for the rest of the current grant's window. A downgrade is not invoiced (its price applies from
  the next renewal, whose invoice grants the new allowance).

The wallet's plan (its token limits) follows the plan of the last paid invoice, so a downgrade takes effect at
renewal; a subscription that ends puts the wallet back on the catalog's default plan.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.db.config import read_config
from billing_core.db.tables import InvoiceRow, SubscriptionRow, Wallet
from billing_core.ledger.book import Book
from billing_core.ledger.commands import GrantCredits, RollOver
from billing_core.ledger.handlers import grant_credits, roll_over
from billing_core.stripe.purchases import Waiting
from billing_core.units import round_mc

StripeObject = dict[str, Any]

_SUBSCRIPTIONS: Table = SubscriptionRow.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_INVOICES: Table = InvoiceRow.__table__  # type: ignore[assignment]
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
subscriptions, invoices, wallets = _SUBSCRIPTIONS.c, _INVOICES.c, _WALLETS.c

# A subscription that is over: its wallet goes back to the default plan.
ENDED = frozenset({"canceled", "incomplete_expired", "unpaid"})
FIRST_OR_RENEWAL = frozenset({"subscription_create", "subscription_cycle"})

_ACCOUNT_OF_CUSTOMER = select(wallets.account).where(wallets.stripe_customer_id == bindparam("customer"))
_ACCOUNT_OF_SUBSCRIPTION = (
    select(wallets.account)
    .select_from(_SUBSCRIPTIONS.join(_WALLETS, wallets.id == subscriptions.wallet_id))
    .where(subscriptions.id == bindparam("id"))
)
_SUBSCRIPTION = select(_SUBSCRIPTIONS).where(subscriptions.id == bindparam("id"))
_DUE_ALLOWANCES = (
    select(subscriptions.id)
    .where(subscriptions.next_allowance_at <= bindparam("now"))
    .order_by(subscriptions.next_allowance_at)
    .limit(bindparam("n"))
)


# -- what a Price says about its plan ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanTerms:
    """A plan Price's terms, from its metadata; amounts in millicredits, the allowance per month."""

    plan: str
    interval: str
    allowance_mc: int
    trial_allowance_mc: int
    rollover_cap_mc: int

    @classmethod
    def of_price(cls, price: StripeObject | None) -> PlanTerms | None:
        """None for a Price that is not one of our plans' (another integration on the same Stripe account)."""
        meta = (price or {}).get("metadata") or {}
        plan = meta.get("billing_plan")
        if not plan:
            return None
        interval = meta.get("interval") or ((price or {}).get("recurring") or {}).get("interval") or "month"

        def amount(key: str) -> int:
            value = int(str(meta.get(key) or 0))
            if value < 0:
                raise ValueError(f"price metadata {key} must not be negative")
            return value

        return cls(
            plan,
            interval,
            amount("allowance_mc"),
            amount("trial_allowance_mc"),
            amount("rollover_cap_mc"),
        )

    @property
    def months(self) -> int:
        return 12 if self.interval == "year" else 1


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` plus whole months, its day kept and clamped to the month's end (Jan 31 + 1 = Feb 28), as
    Stripe bills monthly periods."""
    month = anchor.month - 1 + months
    year, month = anchor.year + month // 12, month % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def _at(value: Any) -> datetime | None:
    return None if value in (None, 0) else datetime.fromtimestamp(int(value), UTC)


def _item(sub: StripeObject) -> StripeObject:
    data = (sub.get("items") or {}).get("data") or []
    return data[0] if data else {}


def _period(sub: StripeObject) -> tuple[datetime | None, datetime | None]:
    item = _item(sub)
    start = item.get("current_period_start") or sub.get("current_period_start")
    end = item.get("current_period_end") or sub.get("current_period_end")
    return _at(start), _at(end)


def invoice_subscription(invoice: StripeObject) -> str | None:
    found = invoice.get("subscription")
    if isinstance(found, dict):
        found = found.get("id")
    if not found:
        details = ((invoice.get("parent") or {}).get("subscription_details")) or {}
        found = details.get("subscription")
    return str(found) if found else None


def _lines(invoice: StripeObject) -> list[StripeObject]:
    return list((invoice.get("lines") or {}).get("data") or [])


def _is_proration(line: StripeObject) -> bool:
    if line.get("proration") is not None:
        return bool(line.get("proration"))
    details = ((line.get("parent") or {}).get("subscription_item_details")) or {}
    return bool(details.get("proration"))


def _line_price(line: StripeObject) -> StripeObject | None:
    price = line.get("price")
    if isinstance(price, dict):
        return price
    pricing = (line.get("pricing") or {}).get("price_details") or {}
    return pricing.get("price") if isinstance(pricing.get("price"), dict) else None


def _line_period(line: StripeObject) -> tuple[datetime | None, datetime | None]:
    period = line.get("period") or {}
    return _at(period.get("start")), _at(period.get("end"))


# -- the account a Stripe object belongs to ---------------------------------------------------------------------
def account_of(session: Session, sub: StripeObject | None, customer: str | None) -> str | None:
    meta = (sub or {}).get("metadata") or {}
    if meta.get("account"):
        return str(meta["account"])
    if sub is not None and sub.get("id"):
        found = session.execute(_ACCOUNT_OF_SUBSCRIPTION, {"id": sub["id"]}).scalar()
        if found:
            return str(found)
    if customer:
        found = session.execute(_ACCOUNT_OF_CUSTOMER, {"customer": customer}).scalar()
        if found:
            return str(found)
    return None


def customer_of(obj: StripeObject) -> str | None:
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return str(customer) if customer else None


# -- the mirror ---------------------------------------------------------------------------------------------
def store_subscription(book: Book, sub: StripeObject) -> tuple[str, PlanTerms] | None:
    """Write the subscription as Stripe shows it; (its account, its plan's terms), or None when it is not one
    of ours (no plan Price, or no account to tie it to)."""
    terms = PlanTerms.of_price(
        _item(sub).get("price") or (sub.get("plan") if isinstance(sub.get("plan"), dict) else None)
    )
    if terms is None:
        return None
    account = account_of(book.session, sub, customer_of(sub))
    if account is None:
        return None
    wallet = book.lock_wallet(account, create=True)
    start, end = _period(sub)
    status = str(sub.get("status") or "incomplete")
    values = {
        "wallet_id": wallet.id,
        "stripe_customer_id": customer_of(sub),
        "plan": terms.plan,
        "interval": terms.interval if terms.interval in ("month", "year") else "month",
        "stripe_price_id": (_item(sub).get("price") or {}).get("id"),
        "status": status,
        "current_period_start": start,
        "current_period_end": end,
        "trial_end": _at(sub.get("trial_end")),
        "cancel_at_period_end": bool(sub.get("cancel_at_period_end")),
        "canceled_at": _at(sub.get("canceled_at") or sub.get("ended_at")),
        "latest_invoice": sub.get("latest_invoice") if isinstance(sub.get("latest_invoice"), str) else None,
        "allowance_mc": terms.allowance_mc,
        "rollover_cap_mc": terms.rollover_cap_mc,
        "updated_at": book.now,
    }
    insert = pg_insert(_SUBSCRIPTIONS).values(id=sub["id"], **values)
    book.session.execute(insert.on_conflict_do_update(index_elements=[subscriptions.id], set_=values))
    if status in ENDED:
        # The plan's limits end with it (a later subscription's paid invoice sets its own); a yearly plan's
        # months still to come are not granted.
        book.session.execute(update(_SUBSCRIPTIONS).where(subscriptions.id == sub["id"]).values(next_allowance_at=None))
        _set_wallet_plan(book, wallet.id, None, only_if=terms.plan)
    return account, terms


def _set_wallet_plan(book: Book, wallet_id: int, plan: str | None, *, only_if: str | None = None) -> None:
    statement = update(_WALLETS).where(wallets.id == wallet_id)
    if only_if is not None:
        statement = statement.where(wallets.plan == only_if)
    book.session.execute(statement.values(plan=plan, updated_at=book.now))


def store_invoice(book: Book, invoice: StripeObject, account: str, payment_error: str | None = None) -> None:
    """Write the invoice as Stripe shows it; ``payment_error``: the decline code of its last failed attempt
    (its PaymentIntent's ``last_payment_error``, read by the handler), kept until a later one replaces it."""
    wallet = book.lock_wallet(account, create=True)
    lines = [line for line in _lines(invoice) if not _is_proration(line)] or _lines(invoice)
    start, end = _line_period(lines[0]) if lines else (None, None)
    transitions = invoice.get("status_transitions") or {}
    values = {
        "wallet_id": wallet.id,
        "subscription_id": invoice_subscription(invoice),
        "status": str(invoice.get("status") or "draft"),
        "billing_reason": invoice.get("billing_reason"),
        "number": invoice.get("number"),
        "currency": str(invoice.get("currency") or "usd"),
        "amount_due": int(invoice.get("amount_due") or 0),
        "amount_paid": int(invoice.get("amount_paid") or 0),
        "total": int(invoice.get("total") or 0),
        "hosted_invoice_url": invoice.get("hosted_invoice_url"),
        "period_start": start,
        "period_end": end,
        "attempt_count": int(invoice.get("attempt_count") or 0),
        "next_payment_attempt": _at(invoice.get("next_payment_attempt")),
        "stripe_created": _at(invoice.get("created")) or book.now,
        "paid_at": _at(transitions.get("paid_at")),
        "updated_at": book.now,
    }
    if payment_error:
        values["last_payment_error"] = payment_error
    insert = pg_insert(_INVOICES).values(id=invoice["id"], **values)
    book.session.execute(insert.on_conflict_do_update(index_elements=[invoices.id], set_=values))


# -- what a paid invoice grants -------------------------------------------------------------------------------
def grant_for_invoice(book: Book, account: str, invoice: StripeObject, sub: StripeObject | None) -> None:
    reason = invoice.get("billing_reason")
    sub_id = invoice_subscription(invoice)
    if sub_id is None:
        return
    if reason in FIRST_OR_RENEWAL:
        _grant_period(book, account, invoice, sub_id, sub)
    elif reason == "subscription_update":
        _grant_upgrade(book, account, invoice, sub_id)


@dataclass(frozen=True)
class PeriodGrant:
    """What a first or renewal invoice grants: its plan's terms, the period its line bills, the amount and
    the grant's expiry."""

    terms: PlanTerms
    start: datetime
    end: datetime
    trial: bool
    amount_mc: int
    expires: datetime


def period_grant(invoice: StripeObject, sub: StripeObject | None, yearly_mode: str) -> PeriodGrant | None:
    """The allowance a paid first or renewal invoice grants (None when its line is not one of our plans');
    ``yearly_mode`` is the ``plan_yearly_grants`` setting. Reconciliation compares the ledger with it."""
    lines = [line for line in _lines(invoice) if not _is_proration(line)]
    if not lines:
        return None
    terms = PlanTerms.of_price(_line_price(lines[0]))
    start, end = _line_period(lines[0])
    if terms is None or start is None or end is None:
        return None
    trial_end = _at((sub or {}).get("trial_end"))
    trial = int(invoice.get("total") or 0) == 0 and trial_end is not None and end <= trial_end
    if trial:
        amount, expires = terms.trial_allowance_mc, end
    elif terms.interval == "year" and yearly_mode == "monthly":
        amount, expires = terms.allowance_mc, min(add_months(start, 1), end)
    else:
        amount, expires = terms.allowance_mc * terms.months, end
    return PeriodGrant(terms, start, end, trial, amount, expires)


def _grant_period(book: Book, account: str, invoice: StripeObject, sub_id: str, sub: StripeObject | None) -> None:
    mode = _yearly_mode(book)
    planned = period_grant(invoice, sub, mode)
    if planned is None:
        return
    terms, start, end, trial = planned.terms, planned.start, planned.end, planned.trial
    amount, expires = planned.amount_mc, planned.expires
    yearly_monthly = terms.interval == "year" and not trial and mode == "monthly"
    meta = {"invoice": invoice["id"], "plan": terms.plan, "interval": terms.interval, "trial": trial}
    _roll_over(book, account, f"rollover:{invoice['id']}", sub_id, start, terms.rollover_cap_mc, expires, meta)
    _grant(
        book, account, f"invoice:{invoice['id']}", sub_id, amount, expires, {**meta, "period_start": start.isoformat()}
    )
    if yearly_monthly and expires < end:
        book.session.execute(update(_SUBSCRIPTIONS).where(subscriptions.id == sub_id).values(next_allowance_at=expires))
    wallet = book.lock_wallet(account)
    _set_wallet_plan(book, wallet.id, terms.plan)


def _grant_upgrade(book: Book, account: str, invoice: StripeObject, sub_id: str) -> None:
    """The prorated difference of the monthly allowances over what is left of the current grant's window."""
    prorations = [line for line in _lines(invoice) if _is_proration(line)]
    new = next((line for line in prorations if int(line.get("amount") or 0) > 0), None)
    old = next((line for line in prorations if int(line.get("amount") or 0) < 0), None)
    if new is None:
        return
    new_terms = PlanTerms.of_price(_line_price(new))
    old_terms = PlanTerms.of_price(_line_price(old)) if old is not None else None
    if new_terms is None:
        return
    row = book.session.execute(_SUBSCRIPTION, {"id": sub_id}).first()
    from_, _ = _line_period(new)
    if row is None or from_ is None or row.current_period_start is None or row.current_period_end is None:
        raise Waiting(f"subscription {sub_id} not mirrored yet")
    window_start, window_end = row.current_period_start, row.current_period_end
    months = new_terms.months
    if row.next_allowance_at is not None:  # a yearly plan granted monthly: this month's window
        window_end, months = row.next_allowance_at, 1
        window_start = _month_start_before(row.current_period_start, window_end)
    difference = (new_terms.allowance_mc - (old_terms.allowance_mc if old_terms else 0)) * months
    span = (window_end - window_start).total_seconds()
    left = (window_end - max(from_, window_start)).total_seconds()
    if difference > 0 and span > 0 and left > 0:
        amount = round_mc(Decimal(difference) * Decimal(int(left)) / Decimal(int(span)))
        meta = {"invoice": invoice["id"], "plan": new_terms.plan, "upgrade_from": old_terms.plan if old_terms else None}
        _grant(book, account, f"invoice:{invoice['id']}", sub_id, amount, window_end, meta)
    book.session.execute(
        update(_SUBSCRIPTIONS)
        .where(subscriptions.id == sub_id)
        .values(plan=new_terms.plan, allowance_mc=new_terms.allowance_mc, rollover_cap_mc=new_terms.rollover_cap_mc)
    )
    _set_wallet_plan(book, book.lock_wallet(account).id, new_terms.plan)


def _next_month(anchor: datetime, after: datetime) -> datetime:
    """The first month start of the period anchored at ``anchor`` that comes after ``after``: months are
    counted from the anchor, so a period begun on the 31st goes Feb 28, Mar 31, Apr 30, ..."""
    months = 1
    while add_months(anchor, months) <= after:
        months += 1
    return add_months(anchor, months)


def _month_start_before(anchor: datetime, moment: datetime) -> datetime:
    """The start of the anchored month that ends at ``moment`` (``_next_month``'s counting)."""
    months = 0
    while add_months(anchor, months + 1) < moment:
        months += 1
    return add_months(anchor, months)


def _grant(
    book: Book, account: str, key: str, sub_id: str, amount_mc: int, expires: datetime, meta: dict[str, Any]
) -> None:
    if amount_mc <= 0 or expires <= book.now:
        return  # nothing to grant, or a period already over (an invoice handled late): it would expire at once
    cmd = GrantCredits.validated(
        account=account,
        amount_mc=amount_mc,
        idempotency_key=key,
        source="plan",
        expires_at=expires,
        external_ref=sub_id,
        reason="plan allowance",
        metadata=meta,
    )
    grant_credits(Book(book.session, book.now), cmd)


def _roll_over(
    book: Book,
    account: str,
    key: str,
    sub_id: str,
    ended_by: datetime,
    cap_mc: int,
    expires: datetime,
    meta: dict[str, Any],
) -> None:
    cmd = RollOver.validated(
        account=account,
        idempotency_key=key,
        subscription=sub_id,
        ended_by=ended_by,
        cap_mc=cap_mc,
        expires_at=expires,
        metadata=meta,
    )
    roll_over(Book(book.session, book.now), cmd)


def _yearly_mode(book: Book) -> str:
    return read_config(book.session).plan_yearly_grants


# -- the beat: a yearly plan's months -------------------------------------------------------------------------
def grant_due_allowances(session_factory: sessionmaker[Session], now: datetime | None = None, limit: int = 500) -> int:
    """Grant each yearly subscription's month that has begun (granted monthly), each in its own transaction;
    returns how many were granted. Keys ``allowance:<sub>:<month start>``: a re-run grants nothing twice."""
    moment = now or unit_of_work.utcnow()
    with session_factory() as session:
        due = [row.id for row in session.execute(_DUE_ALLOWANCES, {"now": moment, "n": limit})]
    granted = 0
    for sub_id in due:

        def work(uow: unit_of_work.UnitOfWork, sub_id: str = sub_id) -> int:
            return _grant_month(uow.book, sub_id)

        granted += unit_of_work.run(session_factory, work, now=now)
    return granted


def _grant_month(book: Book, sub_id: str) -> int:
    row = book.session.execute(_SUBSCRIPTION.with_for_update(), {"id": sub_id}).first()
    if row is None or row.next_allowance_at is None or row.next_allowance_at > book.now:
        return 0
    start = row.next_allowance_at
    end = row.current_period_end or add_months(start, 1)
    following = _next_month(row.current_period_start or start, start)
    expires = min(following, end) if end > start else following
    account = book.session.execute(_ACCOUNT_OF_SUBSCRIPTION, {"id": sub_id}).scalar_one()
    meta = {"plan": row.plan, "interval": row.interval, "month_start": start.isoformat()}
    stamp = start.strftime("%Y%m%dT%H%M%S")
    _roll_over(book, account, f"rollover:{sub_id}:{stamp}", sub_id, start, row.rollover_cap_mc, expires, meta)
    _grant(book, account, f"allowance:{sub_id}:{stamp}", sub_id, row.allowance_mc, expires, meta)
    book.session.execute(
        update(_SUBSCRIPTIONS)
        .where(subscriptions.id == sub_id)
        .values(next_allowance_at=following if following < end else None, updated_at=book.now)
    )
    return 1
