"""Grants as the API shows them: the spendable ones of a balance, every grant of a wallet, one grant's history.

Reads only, on SQLAlchemy Core, each statement built once on the tables and run with bound parameters (as in
``wallet_rows``, whose docstring has the measurements). The order of the spendable grants is not written
here: they are loaded as ``GrantLot``s and sorted by ``grants.in_spending_order``, the one definition of the
order the ledger draws in. The ``debt`` grant is never listed (it is not credit the customer holds); its
amount is answered beside the grants.

- ``open_grants``: the balance's extra query (``GET /v1/accounts/<account>``, a hot read): the wallet's open
  lots (``remaining <> 0``, the partial index ``ix_grants_wallet_open``), in spending order, and the debt.
- ``list_grants``: every grant of the wallet, a page at a time: the spendable ones first, in spending order,
  then the others (exhausted, expired), newest first.
- ``grant_history``: one grant and the postings that moved its remaining, newest first, a page at a time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Integer,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal,
    not_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing_core.db.tables import Grant, LedgerEntry, Posting, Wallet
from billing_core.errors import UnknownAccount, UnknownGrant
from billing_core.ledger.balances import spendable_grants
from billing_core.ledger.grant_rows import DEBT, LOT_COLUMNS, ZERO, lot_from_row
from billing_core.ledger.grants import GrantLot, in_spending_order, public_source
from billing_core.ledger.history import InvalidCursor

_GRANTS: Table = Grant.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
_POSTINGS: Table = Posting.__table__  # type: ignore[assignment]
grants, wallets, entries, postings = _GRANTS.c, _WALLETS.c, _ENTRIES.c, _POSTINGS.c

MAX_PAGE = 100
Status = Literal["active", "exhausted", "expired"]
_NOW = bindparam("now", type_=DateTime(timezone=True))

# -- the balance's grants ---------------------------------------------------------------------------------
_OPEN_BY_ACCOUNT = (
    select(*LOT_COLUMNS)
    .select_from(_GRANTS.join(_WALLETS, wallets.id == grants.wallet_id))
    .where(wallets.account == bindparam("account"), grants.remaining_mc != ZERO)
)


@dataclass(frozen=True)
class OpenGrants:
    """A wallet's spendable grants in spending order, and what it owes (millicredits, 0 or more)."""

    lots: tuple[GrantLot, ...]
    debt_mc: int


def _open(lots: list[GrantLot], now: datetime) -> OpenGrants:
    debt = sum(-lot.remaining_mc for lot in lots if lot.source == "debt")
    return OpenGrants(tuple(in_spending_order(lots, now)), debt)


def open_grants(db: Session | Connection, account: str, now: datetime) -> OpenGrants:
    """The account's spendable grants at ``now``, in the order the ledger spends them (one query; an unknown
    account has none)."""
    return _open([lot_from_row(r) for r in db.execute(_OPEN_BY_ACCOUNT, {"account": account})], now)


# -- every grant ------------------------------------------------------------------------------------------
_WALLET = select(wallets.id, wallets.available_account_id).where(wallets.account == bindparam("account"))
_OPEN_BY_WALLET = select(*LOT_COLUMNS).where(grants.wallet_id == bindparam("w"), grants.remaining_mc != ZERO)

# Credits the expiry sweep took from a grant: the wallet-side posting of its ``grant-expiry:<id>`` entry (one
# unique-index lookup per grant shown).
_expiry = _ENTRIES.alias("expiry_entry")
_expiry_posting = _POSTINGS.alias("expiry_posting")
_EXPIRED_MC = (
    select(func.coalesce(func.sum(-_expiry_posting.c.amount_mc), 0))
    .select_from(_expiry.join(_expiry_posting, _expiry_posting.c.entry_id == _expiry.c.id))
    .where(
        _expiry.c.idempotency_key == literal("grant-expiry:") + cast(grants.id, Text),
        _expiry_posting.c.grant_id == grants.id,
    )
    .scalar_subquery()
)
_DETAIL = select(
    grants.id,
    grants.wallet_id,
    grants.source,
    grants.amount_mc,
    grants.remaining_mc,
    grants.expires_at,
    grants.priority,
    grants.external_ref,
    grants.created_at,
    grants.entry_id,
    entries.kind.label("entry_kind"),
    entries.idempotency_key.label("entry_key"),
    entries["metadata"]["reason"].astext.label("reason"),
    entries["metadata"]["actor"].astext.label("actor"),
    _EXPIRED_MC.label("expired_mc"),
).select_from(_GRANTS.join(_ENTRIES, entries.id == grants.entry_id))
_DETAIL_BY_ID = _DETAIL.where(grants.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
# Not spendable at ``now``: exhausted, or past its expiry (swept or not yet). Newest first, after a cursor.
_CLOSED = (
    _DETAIL.where(
        grants.wallet_id == bindparam("w"),
        grants.source != DEBT,
        not_(spendable_grants(_NOW)),
        grants.id < bindparam("before", type_=BigInteger),
    )
    .order_by(grants.id.desc())
    .limit(bindparam("n", type_=Integer))
)
_ONE = _DETAIL.where(grants.id == bindparam("g", type_=BigInteger), grants.source != DEBT)


@dataclass(frozen=True)
class GrantMove:
    """One posting that moved a grant's remaining: ``amount_mc`` is signed (a grant, a hold released back:
    positive; a debit, a hold, an expiry, a clawback: negative)."""

    entry_id: int
    line: int
    kind: str
    idempotency_key: str
    amount_mc: int
    external_ref: str | None
    occurred_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class GrantRecord:
    """A grant with its cause (the entry that created it) and its status at the time of reading."""

    id: int
    source: str  # the public name (``grants.PUBLIC_SOURCE``)
    status: Status
    remaining_mc: int
    amount_mc: int
    expired_mc: int
    expires_at: datetime | None
    priority: int
    external_ref: str | None
    created_at: datetime
    entry_id: int
    entry_kind: str
    entry_key: str
    reason: str | None
    actor: str | None


@dataclass(frozen=True)
class GrantPage:
    grants: tuple[GrantRecord, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class GrantHistory:
    grant: GrantRecord
    moves: tuple[GrantMove, ...]
    next_cursor: str | None


def status_of(source: str, remaining_mc: int, expires_at: datetime | None, expired_mc: int, now: datetime) -> Status:
    """``active`` while spendable; ``expired`` once past its expiry with credits left or taken by the expiry
    sweep; otherwise ``exhausted`` (remaining 0: spent, held by pending holds, clawed back or transferred)."""
    lot = GrantLot(0, source, remaining_mc, expires_at, 0)
    if lot.spendable_at(now):
        return "active"
    if lot.expired_at(now) and (remaining_mc > 0 or expired_mc > 0):
        return "expired"
    return "exhausted"


def _record(row: Any, now: datetime) -> GrantRecord:
    return GrantRecord(
        id=row.id,
        source=public_source(row.source),
        status=status_of(row.source, row.remaining_mc, row.expires_at, int(row.expired_mc), now),
        remaining_mc=row.remaining_mc,
        amount_mc=row.amount_mc,
        expired_mc=int(row.expired_mc),
        expires_at=row.expires_at,
        priority=row.priority,
        external_ref=row.external_ref,
        created_at=row.created_at,
        entry_id=row.entry_id,
        entry_kind=row.entry_kind,
        entry_key=row.entry_key,
        reason=row.reason,
        actor=row.actor,
    )


# Cursors: opaque to clients, checked on the way back in (a cursor this module did not make is refused).
def _encode(*parts: object) -> str:
    return base64.urlsafe_b64encode(":".join(str(p) for p in parts).encode()).decode().rstrip("=")


def _decode(cursor: str, prefix: str, size: int) -> list[str]:
    text = ""
    if len(cursor) <= 60:
        with contextlib.suppress(binascii.Error, ValueError):
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    parts = text.split(":")
    if len(parts) != size or parts[0] != prefix or _encode(*parts) != cursor:
        raise InvalidCursor("cursor is not one this API handed out", cursor=cursor[:100])
    return parts[1:]


def _number(text: str, cursor: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InvalidCursor("cursor is not one this API handed out", cursor=cursor[:100])
    return int(text)


def _wallet(session: Session, account: str) -> tuple[int, int]:
    """(wallet id, available ledger account id), or ``UnknownAccount``."""
    row = session.execute(_WALLET, {"account": account}).first()
    if row is None:
        raise UnknownAccount.named(account)
    return row[0], row[1]


def list_grants(session: Session, account: str, now: datetime, *, cursor: str | None, limit: int) -> GrantPage:
    """Every grant of the account but its debt, ``limit`` at a time: the spendable ones in spending order, then
    the others newest first. A cursor is a position in that order: a grant that stops being spendable between
    two pages moves to the second part, and a reader already past it sees it on the next walk from the top."""
    part, position = ("open", 0)
    if cursor is not None:
        kind, number = _decode(cursor, "g1", 3)
        if kind not in ("o", "c"):
            raise InvalidCursor("cursor is not one this API handed out", cursor=cursor[:100])
        part, position = ("open" if kind == "o" else "closed"), _number(number, cursor)
    wallet_id, _ = _wallet(session, account)
    shown: list[GrantRecord] = []
    before = 2**63 - 1
    if part == "open":
        lots = [lot_from_row(r) for r in session.execute(_OPEN_BY_WALLET, {"w": wallet_id})]
        order = [lot.id for lot in _open(lots, now).lots]
        page_ids = order[position : position + limit]
        if page_ids:
            by_id = {r.id: _record(r, now) for r in session.execute(_DETAIL_BY_ID, {"ids": page_ids})}
            shown = [by_id[i] for i in page_ids if i in by_id]
        if position + limit < len(order):
            return GrantPage(tuple(shown), _encode("g1", "o", position + limit))
    else:
        before = position
    room = limit - len(shown)
    rows = session.execute(_CLOSED, {"w": wallet_id, "now": now, "before": before, "n": room + 1}).all()
    closed = [_record(r, now) for r in rows[:room]]
    if len(rows) <= room:
        return GrantPage(tuple(shown + closed), None)
    if not closed:  # the page is full of spendable grants, and others follow
        return GrantPage(tuple(shown), _encode("g1", "o", position + limit))
    return GrantPage(tuple(shown + closed), _encode("g1", "c", closed[-1].id))


def find_grant(session: Session, grant_id: int, now: datetime) -> GrantRecord:
    """One grant by id (not a debt grant), or ``UnknownGrant``: what a grant command's receipt names."""
    row = session.execute(_ONE, {"g": grant_id}).first()
    if row is None:
        raise UnknownGrant(f"no grant {grant_id}", grant=grant_id)
    return _record(row, now)


# -- one grant's history ------------------------------------------------------------------------------------
# The postings on the wallet's available account that name the grant: the moves of its remaining (postings on
# the held account keep a hold's provenance; they do not change what the grant has left). Bounded by the
# grant's own entry, the first that can name it, so the scan of ix_postings_account_entry covers the grant's
# lifetime only.
_MOVES = (
    select(
        postings.entry_id,
        postings.line,
        postings.amount_mc,
        entries.kind,
        entries.idempotency_key,
        entries.external_ref,
        entries.occurred_at,
        entries.created_at,
    )
    .select_from(_POSTINGS.join(_ENTRIES, entries.id == postings.entry_id))
    .where(
        postings.account_id == bindparam("available"),
        postings.grant_id == bindparam("g"),
        postings.entry_id >= bindparam("first"),
        tuple_(postings.entry_id, postings.line) < tuple_(bindparam("before_entry"), bindparam("before_line")),
    )
    .order_by(postings.entry_id.desc(), postings.line.desc())
    .limit(bindparam("n", type_=Integer))
)


def grant_history(
    session: Session, account: str, grant_id: int, now: datetime, *, cursor: str | None, limit: int
) -> GrantHistory:
    """The account's grant ``grant_id`` and the postings that moved it, newest first, ``limit`` at a time.
    ``UnknownGrant`` when the account has no such grant (its debt grant included)."""
    before = (2**63 - 1, 2**15 - 1)
    if cursor is not None:
        entry_part, line_part = _decode(cursor, "h1", 3)
        before = (_number(entry_part, cursor), _number(line_part, cursor))
    wallet_id, available = _wallet(session, account)
    row = session.execute(_ONE, {"g": grant_id}).first() if 0 < grant_id < 2**63 else None
    if row is None or row.wallet_id != wallet_id:
        raise UnknownGrant(f"account {account!r} has no grant {grant_id}", account=account, grant=grant_id)
    found = session.execute(
        _MOVES,
        {
            "available": available,
            "g": grant_id,
            "first": row.entry_id,
            "before_entry": before[0],
            "before_line": before[1],
            "n": limit + 1,
        },
    ).all()
    moves = tuple(
        GrantMove(
            entry_id=m.entry_id,
            line=m.line,
            kind=m.kind,
            idempotency_key=m.idempotency_key,
            amount_mc=m.amount_mc,
            external_ref=m.external_ref,
            occurred_at=m.occurred_at,
            created_at=m.created_at,
        )
        for m in found[:limit]
    )
    next_cursor = _encode("h1", moves[-1].entry_id, moves[-1].line) if len(found) > limit else None
    return GrantHistory(_record(row, now), moves, next_cursor)


__all__ = [
    "MAX_PAGE",
    "GrantHistory",
    "GrantMove",
    "GrantPage",
    "GrantRecord",
    "OpenGrants",
    "find_grant",
    "grant_history",
    "list_grants",
    "open_grants",
    "status_of",
]
