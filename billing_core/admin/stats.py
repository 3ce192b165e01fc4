"""The operators' figures (seed 000's monitoring queries, seed 001's capacity check), read from the ledger.

Integers only: amounts in millicredits, Stripe amounts in the currency's minor unit, rates in basis points
(``9950`` is 99.50 %). Days are UTC days; a window of ``days`` is today and the ``days - 1`` before it.
Usage and purchases are counted on the day they occurred (``ledger_entries.occurred_at``), read through the
indexes of migration 0012: a BRIN on occurred_at for usage, a partial btree for purchases.

A usage entry's credits by provider and model come from its metadata: ``breakdown[i]`` prices ``items[i]``
(``intake.usage_reports``) and carries the line's credits as a decimal string; a capture's breakdown names
provider and model itself. Credit strings become millicredits in SQL ``numeric``, never a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.clock import utcnow
from billing_core.pricing.sales_guard import sales_state

MAX_DAYS = 366
BASIS_POINTS = 10_000


def _default_threshold() -> int:
    # Imported here: notify's module pulls in the outbox; the stats need only its constant.
    from billing_core.notify.low_balance import DEFAULT_THRESHOLD_MC

    return DEFAULT_THRESHOLD_MC


def window_start(days: int, now: datetime | None = None) -> datetime:
    """Midnight UTC of the first day of a window of ``days`` ending today (1 to ``MAX_DAYS``)."""
    days = max(1, min(days, MAX_DAYS))
    today = (now or utcnow()).date()
    return datetime.combine(today - timedelta(days=days - 1), time(0), tzinfo=(now or utcnow()).tzinfo)


def _ratio_bp(part: int, whole: int) -> int | None:
    return None if whole == 0 else part * BASIS_POINTS // whole


@dataclass(frozen=True)
class Circulation:
    """Credits customers hold (available and held; debts count negative) and what they stand for upstream,
    against the sales guard's capacity (None when no capacity is configured: no guard)."""

    outstanding_mc: int
    outstanding_tokens: int
    tokens_per_credit: int
    capacity_tokens: int | None
    threshold_percent: int
    threshold_tokens: int | None
    capacity_used_bp: int | None
    sales_paused: bool
    wallets: int
    checked_at: datetime


def circulation(session: Session, now: datetime | None = None) -> Circulation:
    state = sales_state(session, now)
    wallets = int(session.execute(text("SELECT count(*) FROM wallets")).scalar_one())
    return Circulation(
        outstanding_mc=state.outstanding_mc,
        outstanding_tokens=state.outstanding_tokens,
        tokens_per_credit=state.tokens_per_credit,
        capacity_tokens=state.capacity_tokens,
        threshold_percent=state.threshold_percent,
        threshold_tokens=state.threshold_tokens,
        capacity_used_bp=None
        if state.capacity_tokens is None
        else _ratio_bp(state.outstanding_tokens, state.capacity_tokens),
        sales_paused=state.paused,
        wallets=wallets,
        checked_at=state.checked_at,
    )


@dataclass(frozen=True)
class DaySales:
    """Purchases of one UTC day in one currency: how many, the credits they bought, what was paid."""

    day: date
    currency: str | None
    purchases: int
    credits_mc: int
    amount: int  # in the currency's minor unit (cents), as Stripe charged it


# A purchase's credits are its positive postings (the wallet's side; the clearing account's is the negative),
# read through the postings' primary key (entry_id, line).
_SALES = text(
    """
    SELECT (e.occurred_at AT TIME ZONE 'UTC')::date AS day,
           e.metadata ->> 'currency' AS currency,
           count(*) AS purchases,
           sum((SELECT sum(p.amount_mc) FROM postings p WHERE p.entry_id = e.id AND p.amount_mc > 0))::bigint,
           sum(COALESCE((e.metadata ->> 'amount_total')::bigint, 0))::bigint AS amount
    FROM ledger_entries e
    WHERE e.kind = 'purchase' AND e.occurred_at >= :since
    GROUP BY 1, 2
    ORDER BY 1, 2 NULLS LAST
    """
)


def credits_sold_by_day(session: Session, days: int = 30, now: datetime | None = None) -> list[DaySales]:
    rows = session.execute(_SALES, {"since": window_start(days, now)})
    return [DaySales(r[0], r[1], int(r[2]), int(r[3] or 0), int(r[4])) for r in rows]


@dataclass(frozen=True)
class DayUsage:
    """Credits spent on one UTC day on one provider and model (both None for fees and agents' flat prices)."""

    day: date
    provider: str | None
    model: str | None
    credits_mc: int
    lines: int


_USAGE = text(
    """
    SELECT (e.occurred_at AT TIME ZONE 'UTC')::date AS day,
           COALESCE(b.line ->> 'provider', e.metadata -> 'items' -> (b.n::int - 1) ->> 'provider') AS provider,
           COALESCE(b.line ->> 'model', e.metadata -> 'items' -> (b.n::int - 1) ->> 'model') AS model,
           sum(round((b.line ->> 'credits')::numeric * 1000))::bigint AS credits_mc,
           count(*) AS lines
    FROM ledger_entries e
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(e.metadata -> 'breakdown') = 'array' THEN e.metadata -> 'breakdown' END
    ) WITH ORDINALITY AS b(line, n)
    WHERE e.kind IN ('usage', 'capture') AND e.occurred_at >= :since
    GROUP BY 1, 2, 3
    ORDER BY 1, 2 NULLS LAST, 3 NULLS LAST
    """
)


def usage_by_day(session: Session, days: int = 30, now: datetime | None = None) -> list[DayUsage]:
    rows = session.execute(_USAGE, {"since": window_start(days, now)})
    return [DayUsage(r[0], r[1], r[2], int(r[3] or 0), int(r[4])) for r in rows]


@dataclass(frozen=True)
class Spender:
    account: str
    email: str | None
    spent_mc: int
    entries: int


# What each wallet spent: the sum of its own postings on usage and captures, with the sign turned (a capture
# takes the hold from the held account and returns the unused rest to the available one). Each side is found
# through the wallets' unique index on that account.
_TOP_SPENDERS = text(
    """
    SELECT COALESCE(wa.account, wh.account) AS account, COALESCE(wa.email, wh.email) AS email,
           -sum(p.amount_mc)::bigint AS spent, count(DISTINCT e.id) AS entries
    FROM ledger_entries e
    JOIN postings p ON p.entry_id = e.id
    LEFT JOIN wallets wa ON wa.available_account_id = p.account_id
    LEFT JOIN wallets wh ON wh.held_account_id = p.account_id
    WHERE e.kind IN ('usage', 'capture') AND e.occurred_at >= :since
        AND (wa.id IS NOT NULL OR wh.id IS NOT NULL)
    GROUP BY 1, 2
    HAVING sum(p.amount_mc) < 0
    ORDER BY spent DESC, account
    LIMIT :limit
    """
)


def top_spenders(session: Session, days: int = 30, limit: int = 10, now: datetime | None = None) -> list[Spender]:
    rows = session.execute(_TOP_SPENDERS, {"since": window_start(days, now), "limit": max(1, min(limit, 100))})
    return [Spender(r[0], r[1], int(r[2]), int(r[3])) for r in rows]


@dataclass(frozen=True)
class LowBalance:
    account: str
    email: str | None
    available_mc: int
    threshold_mc: int
    notified: bool  # a low-balance notice of this crossing is out


# Compares two columns of each wallet: no index serves it; one pass over wallets and their available rows.
_LOW_BALANCES = text(
    """
    SELECT w.account, w.email, a.balance_mc, COALESCE(w.low_balance_threshold_mc, :default) AS threshold,
           w.low_balance_notified_at IS NOT NULL
    FROM wallets w JOIN ledger_accounts a ON a.id = w.available_account_id
    WHERE a.balance_mc < COALESCE(w.low_balance_threshold_mc, :default)
    ORDER BY a.balance_mc, w.account
    LIMIT :limit
    """
)


def low_balances(session: Session, limit: int = 100) -> list[LowBalance]:
    rows = session.execute(_LOW_BALANCES, {"default": _default_threshold(), "limit": max(1, min(limit, 1000))})
    return [LowBalance(r[0], r[1], int(r[2]), int(r[3]), bool(r[4])) for r in rows]


@dataclass(frozen=True)
class FailedPayment:
    id: str
    object: str
    account: str | None
    payment_intent: str | None
    amount: int | None
    currency: str | None
    payment_method: str | None
    code: str | None
    message: str | None
    failed_at: datetime


_FAILED = text(
    """
    SELECT id, object, account, payment_intent, amount, currency, payment_method, code, message, failed_at
    FROM payment_failures WHERE failed_at >= :since ORDER BY failed_at DESC, id LIMIT :limit
    """
)


def failed_payments(
    session: Session, days: int = 30, limit: int = 100, now: datetime | None = None
) -> list[FailedPayment]:
    rows = session.execute(_FAILED, {"since": window_start(days, now), "limit": max(1, min(limit, 1000))})
    return [FailedPayment(*r) for r in rows]


@dataclass(frozen=True)
class WebhookRate:
    """Stripe events received in the window by status; succeeded are ``processed`` and ``ignored`` (a type we
    do not handle, answered and done), failed are ``failed`` and ``dead``, pending the rest."""

    since: datetime
    received: int
    succeeded: int
    failed: int
    pending: int
    by_status: dict[str, int]
    success_rate_bp: int | None  # of those settled (succeeded + failed); None when none settled


_WEBHOOKS = text("SELECT status, count(*) FROM stripe_events WHERE received_at >= :since GROUP BY status")


def webhook_success_rate(session: Session, days: int = 1, now: datetime | None = None) -> WebhookRate:
    # A rolling window of whole days back from now (not calendar days): "the last 24 hours" by default.
    since = (now or utcnow()) - timedelta(days=max(1, min(days, MAX_DAYS)))
    by_status: dict[str, Any] = {str(s): int(n) for s, n in session.execute(_WEBHOOKS, {"since": since})}
    succeeded = by_status.get("processed", 0) + by_status.get("ignored", 0)
    failed = by_status.get("failed", 0) + by_status.get("dead", 0)
    received = sum(by_status.values())
    return WebhookRate(
        since=since,
        received=received,
        succeeded=succeeded,
        failed=failed,
        pending=received - succeeded - failed,
        by_status=by_status,
        success_rate_bp=_ratio_bp(succeeded, succeeded + failed),
    )
