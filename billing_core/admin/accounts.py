"""Account search for operators: by account name prefix, email or Stripe customer id.

Each way is one indexed lookup (migration 0012 adds the two the wallets lacked): the name prefix through a
``text_pattern_ops`` index (LIKE 'abc%' under any collation), the email case-insensitively through an index
on ``lower(email)``, the Stripe customer id through its unique index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

MAX_RESULTS = 100


@dataclass(frozen=True)
class AccountMatch:
    account: str
    email: str | None
    name: str | None
    stripe_customer_id: str | None
    available_mc: int
    held_mc: int
    negative_since: datetime | None
    created_at: datetime
    matched_by: str  # account | email | stripe_customer_id


# Exact matches first (a customer id or an email names one account), then the name prefix in name order.
_SEARCH = text(
    """
    WITH found AS (
        SELECT id, 'stripe_customer_id' AS matched_by, 0 AS rank FROM wallets WHERE stripe_customer_id = :q
        UNION ALL
        SELECT id, 'email', 1 FROM wallets WHERE lower(email) = lower(:q)
        UNION ALL
        (SELECT id, 'account', 2 FROM wallets WHERE account LIKE :prefix ESCAPE '\\' ORDER BY account LIMIT :limit)
    ), best AS (
        SELECT DISTINCT ON (id) id, matched_by, rank FROM found ORDER BY id, rank
    )
    SELECT w.account, w.email, w.name, w.stripe_customer_id, a.balance_mc, h.balance_mc, w.negative_since,
           w.created_at, best.matched_by
    FROM best
    JOIN wallets w ON w.id = best.id
    JOIN ledger_accounts a ON a.id = w.available_account_id
    JOIN ledger_accounts h ON h.id = w.held_account_id
    ORDER BY best.rank, w.account
    LIMIT :limit
    """
)


def _like_prefix(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def search_accounts(session: Session, q: str, limit: int = 20) -> list[AccountMatch]:
    """Accounts whose name starts with ``q``, whose email is ``q`` (any case), or whose Stripe customer is
    ``q``; at most ``limit`` (1 to ``MAX_RESULTS``). A blank query finds nothing."""
    q = q.strip()
    if not q:
        return []
    limit = max(1, min(limit, MAX_RESULTS))
    rows = session.execute(_SEARCH, {"q": q, "prefix": _like_prefix(q), "limit": limit})
    return [AccountMatch(*r) for r in rows]
