"""A wallet's ledger history, newest first, in pages a client walks with an opaque cursor.

The page query stays SQL text: its two backward index scans merged by ``UNION ALL`` are the plan that keeps a
page's cost flat on a wallet with ten entries or ten million, and written in Core it reads worse, not better.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.errors import BillingError, UnknownAccount
from billing_core.ledger.wallet_rows import ledger_account_ids

MAX_PAGE = 100
_CURSOR_PREFIX = "e1:"


class InvalidCursor(BillingError):
    """A ``cursor`` query parameter this module did not hand out."""

    code = "invalid_cursor"


def encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The entry id a cursor points after; ``InvalidCursor`` for anything ``encode_cursor`` did not make."""
    digits = ""
    if len(cursor) <= 40:
        with contextlib.suppress(binascii.Error, ValueError):
            digits = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    digits = digits.removeprefix(_CURSOR_PREFIX)
    # Re-encoding must give the cursor back: b64decode skips stray characters, and we want none accepted.
    if not (digits.isascii() and digits.isdigit()) or encode_cursor(int(digits)) != cursor or int(digits) <= 0:
        raise InvalidCursor("cursor is not one this API handed out", cursor=cursor[:100])
    return int(digits)


# Entry ids first, then the entries. Each branch of the UNION ALL is a backward scan of
# ix_postings_account_entry for one account, merged in entry order and cut at the page size, so a page
# costs the same on a wallet with ten entries or ten million. GROUP BY because an entry has one posting
# per grant it touches, often several on the same account.
_PAGE_SQL = text(
    """
    WITH page AS (
        SELECT entry_id FROM (
            (SELECT entry_id FROM postings WHERE account_id = :available AND entry_id < :before
             ORDER BY entry_id DESC)
            UNION ALL
            (SELECT entry_id FROM postings WHERE account_id = :held AND entry_id < :before
             ORDER BY entry_id DESC)
        ) p
        GROUP BY entry_id ORDER BY entry_id DESC LIMIT :n
    )
    SELECT e.id, e.kind, e.idempotency_key, e.external_ref, e.metadata, e.occurred_at, e.created_at,
           COALESCE(sum(p.amount_mc) FILTER (WHERE p.account_id = :available), 0) AS available_mc,
           COALESCE(sum(p.amount_mc) FILTER (WHERE p.account_id = :held), 0) AS held_mc
    FROM page JOIN ledger_entries e ON e.id = page.entry_id
    JOIN postings p ON p.entry_id = page.entry_id AND p.account_id IN (:available, :held)
    GROUP BY e.id ORDER BY e.id DESC
    """
)


@dataclass(frozen=True)
class EntryLine:
    """One ledger entry as the wallet saw it: what it moved on the available and held balances."""

    id: int
    kind: str
    idempotency_key: str
    external_ref: str | None
    available_mc: int
    held_mc: int
    metadata: dict[str, Any]
    occurred_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class TransactionPage:
    """A page of the history, newest first; ``next_cursor`` is None on the last page."""

    entries: tuple[EntryLine, ...]
    next_cursor: str | None


def list_transactions(session: Session, account: str, *, cursor: str | None, limit: int) -> TransactionPage:
    """The wallet's ledger entries, newest first, ``limit`` (1 to ``MAX_PAGE``) of them.

    A cursor names the last entry of the previous page, so pages stay put while new entries arrive (they
    land on page one). Entry ids follow allocation, not commit order: an entry committed late behind a
    page already read is not shown to that reader, but is there on the next walk from the top.
    """
    before = decode_cursor(cursor) if cursor is not None else 2**63 - 1
    accounts = ledger_account_ids(session, account)
    if accounts is None:
        raise UnknownAccount.named(account)
    available, held = accounts
    rows = session.execute(_PAGE_SQL, {"available": available, "held": held, "before": before, "n": limit + 1}).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    entries = tuple(
        EntryLine(
            id=r.id,
            kind=r.kind,
            idempotency_key=r.idempotency_key,
            external_ref=r.external_ref,
            available_mc=int(r.available_mc),
            held_mc=int(r.held_mc),
            metadata=r.metadata,
            occurred_at=r.occurred_at,
            created_at=r.created_at,
        )
        for r in rows
    )
    return TransactionPage(entries=entries, next_cursor=encode_cursor(rows[-1].id) if has_more else None)
