"""Disputes in the ledger: a chargeback holds the disputed credits back; won gives them back, lost takes them.

The design (``docs/refunds-and-disputes.md`` has the every-order table):

- **Opened** (``HoldDisputed``, entry ``dispute_hold`` keyed ``dispute:<dp_id>``): the disputed share of the
  purchase moves from the wallet's available account to its held account, each posting naming its grant (the
  purchase's own grant first, then the spending order), exactly as a hold does. It is no longer spendable and
  not yet gone: the balance shows it as ``held``. When fewer credits are spendable than the share, what there
  is gets held and the rest is the shortfall (``disputed_mc - held_mc`` on the dispute's row). The share is
  capped by what the purchase can still give back: what it bought minus what refunds and lost disputes have
  already taken (the clawbacks carry the payment intent in their metadata, indexed).
- **Won** (``SettleDispute`` won, entry ``dispute_release`` keyed ``dispute_won:<dp_id>``): every held credit
  goes back to the grant it came from (a grant that expired meanwhile expires them instead).
- **Lost** (``SettleDispute`` lost, entry ``clawback`` keyed ``dispute_lost:<dp_id>``): the share, capped as
  above, goes to the system refunds account: held credits first, then spendable ones (the purchase's grant
  first), then debt (DESIGN rule 5: a clawback may leave the wallet negative and flagged). Held credits beyond
  the cap (a refund took part of the same money meanwhile) go back to their grants.

The ``disputes`` row is the dispute's state and its idempotency: it is read and written under the wallet's
lock, so whichever events arrive, in whatever order and however often, the first decides and the rest replay.
A dispute closed before it was seen open gets its row closed, so a late ``created`` holds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.ledger import grant_rows
from billing_core.ledger.book import Book, EntryDraft, WalletState, fingerprint
from billing_core.ledger.commands import HoldDisputed, SettleDispute
from billing_core.ledger.grants import GrantLot
from billing_core.ledger.system_accounts import system_account_ids


@dataclass(frozen=True)
class DisputeView:
    """A dispute as the ledger holds it."""

    id: str
    account: str
    payment_intent: str
    status: str  # open | won | lost
    amount: int
    disputed_mc: int
    held_mc: int
    taken_mc: int
    replayed: bool = False
    closed_at: datetime | None = None

    @property
    def shortfall_mc(self) -> int:
        """What the dispute could not hold when it opened: credits already spent."""
        return self.disputed_mc - self.held_mc


_READ = text(
    "SELECT d.id, w.account, d.payment_intent, d.status, d.amount, d.disputed_mc, d.held_mc, d.taken_mc, "
    "d.closed_at, d.hold_entry_id FROM disputes d JOIN wallets w ON w.id = d.wallet_id WHERE d.id = :id"
)
# Matches the partial index ix_ledger_entries_clawback_payment (its expression and predicate, as literals).
_TAKEN_FOR_PAYMENT = text(
    "SELECT e.idempotency_key, p.amount_mc FROM ledger_entries e "
    "JOIN postings p ON p.entry_id = e.id AND p.account_id = :refunds "
    "WHERE e.kind = 'clawback' AND (e.metadata ->> 'payment_intent') = :pi"
)
_HELD_ALLOCATIONS = text(
    "SELECT grant_id, amount_mc FROM postings WHERE entry_id = :e AND account_id = :held AND grant_id IS NOT NULL "
    "ORDER BY line"
)
_UPSERT = text(
    """
    INSERT INTO disputes (id, wallet_id, payment_intent, charge, amount, currency, status, disputed_mc, held_mc,
                          taken_mc, hold_entry_id, settled_entry_id, created_at, closed_at)
    VALUES (:id, :w, :pi, :charge, :amount, :currency, :status, :disputed, :held, :taken, :hold_entry, :settled,
            :now, :closed_at)
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, taken_mc = EXCLUDED.taken_mc,
        settled_entry_id = EXCLUDED.settled_entry_id, closed_at = EXCLUDED.closed_at
    WHERE disputes.status = 'open'
    """
)
_DISPUTED_FOR_PAYMENT = text(
    "SELECT count(*), coalesce(sum(amount) FILTER (WHERE status IN ('open', 'lost')), 0) FROM disputes "
    "WHERE payment_intent = :pi"
)


def _row(session: Session, dispute_id: str) -> Any:
    return session.execute(_READ, {"id": dispute_id}).first()


def _view(row: Any) -> DisputeView:
    return DisputeView(
        row.id,
        row.account,
        row.payment_intent,
        row.status,
        row.amount,
        row.disputed_mc,
        row.held_mc,
        row.taken_mc,
        replayed=True,
        closed_at=row.closed_at,
    )


def read_dispute(session: Session, dispute_id: str) -> DisputeView | None:
    row = _row(session, dispute_id)
    return None if row is None else _view(row)


def disputed_amount(session: Session, payment_intent: str) -> tuple[int, int]:
    """(how many disputes of a payment the ledger knows, what the open and lost ones withdrew in the payment's
    minor currency unit: money Stripe will not refund)."""
    count, amount = session.execute(_DISPUTED_FOR_PAYMENT, {"pi": payment_intent}).one()
    return int(count), int(amount)


def clawbacks_for_payment(session: Session, payment_intent: str) -> dict[str, int]:
    """What each clawback of a payment took back (refunds and lost disputes), by idempotency key."""
    refunds = system_account_ids(session)["refunds"]
    rows = session.execute(_TAKEN_FOR_PAYMENT, {"pi": payment_intent, "refunds": refunds})
    return {key: amount_mc for key, amount_mc in rows}


def taken_for_payment(book: Book, payment_intent: str) -> dict[str, int]:
    """``clawbacks_for_payment`` in a ledger transaction: read under the wallet's lock, so that nothing of the
    same purchase is being taken meanwhile."""
    return clawbacks_for_payment(book.session, payment_intent)


def _left_to_take(book: Book, cmd: HoldDisputed | SettleDispute) -> int:
    """What the purchase can still give back: what it bought minus what clawbacks already took."""
    taken = sum(taken_for_payment(book, cmd.payment_intent).values())
    return max(0, cmd.purchase_mc - taken)


def _purchase_lots(book: Book, wallet: WalletState, payment_intent: str) -> list[GrantLot]:
    ids = grant_rows.grant_ids_by_ref(book.session, wallet.id, payment_intent)
    return list(book.grant_lots(ids).values())


def _take_spendable(
    book: Book, entry: EntryDraft, wallet: WalletState, payment_intent: str, amount_mc: int
) -> list[tuple[GrantLot, int]]:
    """Take up to ``amount_mc`` of spendable credits: the purchase's own grant first, then spending order."""
    taken: list[tuple[GrantLot, int]] = []
    left = amount_mc
    for lot in _purchase_lots(book, wallet, payment_intent):
        take = book.take_from(entry, wallet, lot, left)
        if take:
            taken.append((lot, take))
            left -= take
    draws, _ = book.draw(entry, wallet, left)
    return taken + draws


def _entry_metadata(cmd: HoldDisputed | SettleDispute, **figures: Any) -> dict[str, Any]:
    return {
        **cmd.metadata,
        "reason": "dispute",
        "dispute": cmd.dispute_id,
        "payment_intent": cmd.payment_intent,
        "charge": cmd.charge,
        "amount": cmd.amount,
        **figures,
    }


def _record(book: Book, wallet: WalletState, cmd: HoldDisputed | SettleDispute, **row: Any) -> None:
    book.session.execute(
        _UPSERT,
        {
            "id": cmd.dispute_id,
            "w": wallet.id,
            "pi": cmd.payment_intent,
            "charge": cmd.charge,
            "amount": cmd.amount,
            "currency": cmd.currency,
            "now": book.now,
            "closed_at": None if row["status"] == "open" else book.now,
            "hold_entry": None,
            "settled": None,
            **row,
        },
    )


def hold_disputed(book: Book, cmd: HoldDisputed) -> DisputeView:
    wallet = book.lock_wallet(cmd.account)
    existing = _row(book.session, cmd.dispute_id)
    if existing is not None:  # opened already, or closed before this event came
        return _view(existing)
    disputed = min(cmd.amount_mc, _left_to_take(book, cmd))
    held = min(disputed, book.spendable(wallet))
    entry_id = None
    if held > 0:
        figures = {"disputed_mc": disputed, "held_mc": held, "shortfall_mc": disputed - held}
        entry = book.entry(
            "dispute_hold",
            cmd.idempotency_key,
            fingerprint("dispute_hold", {"dispute": cmd.dispute_id}),
            external_ref=cmd.dispute_id,
            metadata=_entry_metadata(cmd, **figures),
        )
        for lot, take in _take_spendable(book, entry, wallet, cmd.payment_intent, held):
            book.post(entry, wallet.held_account_id, take, lot)
        book.flush()
        entry_id = entry.id
    _record(book, wallet, cmd, status="open", disputed=disputed, held=held, taken=0, hold_entry=entry_id)
    return DisputeView(cmd.dispute_id, cmd.account, cmd.payment_intent, "open", cmd.amount, disputed, held, 0)


def _held_allocations(book: Book, wallet: WalletState, hold_entry_id: int | None) -> list[tuple[GrantLot, int]]:
    if hold_entry_id is None:
        return []
    rows = book.session.execute(_HELD_ALLOCATIONS, {"e": hold_entry_id, "held": wallet.held_account_id}).all()
    lots = book.grant_lots([grant_id for grant_id, _ in rows])
    return [(lots[grant_id], amount_mc) for grant_id, amount_mc in rows]


def settle_dispute(book: Book, cmd: SettleDispute) -> DisputeView:
    wallet = book.lock_wallet(cmd.account)
    existing = _row(book.session, cmd.dispute_id)
    if existing is not None and existing.status != "open":
        return _view(existing)  # closed once; a duplicate, or the other outcome's late event
    held = existing.held_mc if existing else 0
    hold_entry_id = existing.hold_entry_id if existing else None
    allocations = _held_allocations(book, wallet, hold_entry_id)
    assert sum(a for _, a in allocations) == held, "a dispute's held credits are its hold entry's"
    left_to_take = _left_to_take(book, cmd)
    take = min(cmd.amount_mc, left_to_take) if cmd.outcome == "lost" else 0
    disputed = existing.disputed_mc if existing else min(cmd.amount_mc, left_to_take)
    entry_id = None
    if held or take:
        entry = book.entry(
            "clawback" if take else "dispute_release",
            cmd.idempotency_key,
            fingerprint("dispute_settle", {"dispute": cmd.dispute_id, "outcome": cmd.outcome}),
            external_ref=cmd.dispute_id,
            metadata=_entry_metadata(cmd, outcome=cmd.outcome, held_mc=held, taken_mc=take),
        )
        left = take
        for lot, amount_mc in allocations:  # held credits: consumed up to the take, the rest goes back
            book.post(entry, wallet.held_account_id, -amount_mc, lot)
            used = min(amount_mc, left)
            left -= used
            if amount_mc - used:
                book.return_to_grant(entry, wallet, lot, amount_mc - used)
        if left:  # the shortfall: spent credits are taken from what is spendable now, then as debt
            drawn = sum(t for _, t in _take_spendable(book, entry, wallet, cmd.payment_intent, left))
            book.run_into_debt(entry, wallet, left - drawn)
        book.post(entry, book.system_account("refunds"), take)
        book.flush()
        entry_id = entry.id
    _record(
        book,
        wallet,
        cmd,
        status=cmd.outcome,
        disputed=max(disputed, take),
        held=held,
        taken=take,
        hold_entry=hold_entry_id,
        settled=entry_id,
    )
    return DisputeView(
        cmd.dispute_id, cmd.account, cmd.payment_intent, cmd.outcome, cmd.amount, max(disputed, take), held, take
    )
