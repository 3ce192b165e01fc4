"""One handler per command, shaped ``handle(book, cmd)``, and the table that maps commands to them.

A handler looks up its idempotency key first (a replay answers with the first entry; another body under
the same key is a conflict), locks the wallets it touches, checks, drafts postings on the ``Book``, and
flushes. The unit of work around it commits once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import (
    AccountFlagged,
    HoldNotPending,
    InsufficientCredits,
    InvalidCommand,
    UnknownAccount,
    UnknownHold,
)
from billing_core.ledger import grant_rows, hold_rows, wallet_rows
from billing_core.ledger.book import Book, EntryDraft, ExistingEntry, WalletState, fingerprint
from billing_core.ledger.commands import (
    Adjust,
    CaptureHold,
    ClawBack,
    Command,
    DebitUsage,
    ExpireGrants,
    ExpireHolds,
    GrantCredits,
    HoldDisputed,
    PlaceHold,
    PurchaseCredits,
    ReleaseHold,
    RollOver,
    SettleDispute,
    TransferCredits,
)
from billing_core.ledger.disputes import hold_disputed, settle_dispute
from billing_core.ledger.grants import GrantLot, spending_key
from billing_core.ledger.hold_rows import HoldView


@dataclass(frozen=True)
class Receipt:
    """What a command did: its entry, and whether this call was a replay of an earlier one."""

    entry_id: int
    kind: str
    idempotency_key: str
    replayed: bool
    grant_id: int | None = None
    hold: HoldView | None = None


@dataclass(frozen=True)
class SweepResult:
    count: int
    entry_ids: tuple[int, ...]


GRANTING_KINDS = frozenset({"purchase", "grant", "adjustment", "rollover"})
HOLD_KINDS = frozenset({"hold", "capture", "release"})


def _receipt(book: Book, cmd: Command, entry: EntryDraft | ExistingEntry, replayed: bool) -> Receipt:
    """The receipt of an entry already written: the grant or hold it made, found from the entry."""
    entry_id = entry.id
    assert entry_id is not None
    grant_id = grant_rows.grant_of_entry(book.session, entry_id) if cmd.kind in GRANTING_KINDS else None
    hold = hold_rows.hold_for_entry(book.session, entry_id) if cmd.kind in HOLD_KINDS else None
    return Receipt(entry_id, cmd.kind, cmd.idempotency_key, replayed, grant_id, hold)


def _replay(book: Book, cmd: Command) -> tuple[str, Receipt | None]:
    fp = fingerprint(cmd.kind, cmd.body())
    existing = book.find_entry(cmd.idempotency_key, fp)
    return fp, (_receipt(book, cmd, existing, replayed=True) if existing else None)


def _require_spendable(book: Book, wallet: WalletState, amount_mc: int) -> None:
    available = book.spendable(wallet)
    if available < amount_mc:
        raise InsufficientCredits.short(wallet.account, amount_mc, available)


def _future_expiry(book: Book, expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= book.now:
        raise InvalidCommand("expires_at must be in the future", field="expires_at")


def _finish(
    book: Book, cmd: Command, entry: EntryDraft, *, grant: GrantLot | None = None, hold: HoldView | None = None
) -> Receipt:
    """Write what the handler drafted (a no-op if it already flushed) and answer with the new entry."""
    book.flush()
    assert entry.id is not None
    return Receipt(entry.id, cmd.kind, cmd.idempotency_key, False, grant.id if grant else None, hold)


# -- credits in ---------------------------------------------------------------------------------------
def purchase_credits(book: Book, cmd: PurchaseCredits) -> Receipt:
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    _future_expiry(book, cmd.expires_at)
    wallet = book.lock_wallet(cmd.account, create=True)
    entry = book.entry("purchase", cmd.idempotency_key, fp, external_ref=cmd.external_ref, metadata=cmd.metadata)
    lot = book.new_grant(entry, wallet, "purchase", cmd.amount_mc, cmd.expires_at, external_ref=cmd.external_ref)
    book.post(entry, book.system_account("stripe_clearing"), -cmd.amount_mc)
    return _finish(book, cmd, entry, grant=lot)


def grant_credits(book: Book, cmd: GrantCredits) -> Receipt:
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    _future_expiry(book, cmd.expires_at)
    wallet = book.lock_wallet(cmd.account, create=True)
    recorded = {"reason": cmd.reason, "actor": cmd.actor}
    metadata = {**cmd.metadata, **{k: v for k, v in recorded.items() if v}}
    entry = book.entry("grant", cmd.idempotency_key, fp, external_ref=cmd.external_ref, metadata=metadata)
    lot = book.new_grant(
        entry,
        wallet,
        cmd.source,
        cmd.amount_mc,
        cmd.expires_at,
        priority=cmd.priority,
        external_ref=cmd.external_ref,
    )
    # An operator's grant is funded like an operator's adjustment; promotions and plan allowances by promotions.
    funding = "adjustments" if cmd.source == "adjustment" else "promotional"
    book.post(entry, book.system_account(funding), -cmd.amount_mc)
    return _finish(book, cmd, entry, grant=lot)


# -- credits out --------------------------------------------------------------------------------------
def debit_usage(book: Book, cmd: DebitUsage) -> Receipt:
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    wallet = book.lock_wallet(cmd.account)
    _require_spendable(book, wallet, cmd.amount_mc)
    entry = book.entry(
        "usage",
        cmd.idempotency_key,
        fp,
        external_ref=cmd.external_ref,
        metadata=cmd.metadata,
        occurred_at=cmd.occurred_at,
    )
    book.draw(entry, wallet, cmd.amount_mc)
    book.post(entry, book.system_account("usage_revenue"), cmd.amount_mc)
    return _finish(book, cmd, entry)


def claw_back(book: Book, cmd: ClawBack) -> Receipt:
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    wallet = book.lock_wallet(cmd.account)
    metadata = {**cmd.metadata, "reason": cmd.reason}
    entry = book.entry("clawback", cmd.idempotency_key, fp, external_ref=cmd.external_ref, metadata=metadata)
    left = cmd.amount_mc
    if cmd.grant_ref:
        targets = grant_rows.grant_ids_by_ref(book.session, wallet.id, cmd.grant_ref)
        for lot in book.grant_lots(targets).values():
            left -= book.take_from(entry, wallet, lot, left)
    _, shortfall = book.draw(entry, wallet, left)
    book.run_into_debt(entry, wallet, shortfall)
    book.post(entry, book.system_account("refunds"), cmd.amount_mc)
    return _finish(book, cmd, entry)


def adjust(book: Book, cmd: Adjust) -> Receipt:
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    metadata = {**cmd.metadata, "reason": cmd.reason, "actor": cmd.actor}
    adjustments = book.system_account("adjustments")
    if cmd.amount_mc > 0:
        wallet = book.lock_wallet(cmd.account, create=True)
        entry = book.entry("adjustment", cmd.idempotency_key, fp, metadata=metadata)
        lot = book.new_grant(entry, wallet, "adjustment", cmd.amount_mc, None)
        book.post(entry, adjustments, -cmd.amount_mc)
        return _finish(book, cmd, entry, grant=lot)
    wallet = book.lock_wallet(cmd.account)
    _require_spendable(book, wallet, -cmd.amount_mc)
    entry = book.entry("adjustment", cmd.idempotency_key, fp, metadata=metadata)
    book.draw(entry, wallet, -cmd.amount_mc)
    book.post(entry, adjustments, -cmd.amount_mc)
    return _finish(book, cmd, entry)


def transfer_credits(book: Book, cmd: TransferCredits) -> Receipt:
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    if not wallet_rows.wallet_exists(book.session, cmd.from_account):
        raise UnknownAccount.named(cmd.from_account)
    # Both wallets in one locking statement, sorted by id: opposite transfers cannot deadlock.
    wallets = book.lock_wallets([cmd.from_account, cmd.to_account], create=True)
    source, target = wallets[cmd.from_account], wallets[cmd.to_account]
    _require_spendable(book, source, cmd.amount_mc)
    entry = book.entry("transfer", cmd.idempotency_key, fp, metadata=cmd.metadata)
    draws, _ = book.draw(entry, source, cmd.amount_mc)
    for lot, take in draws:
        book.credit_lot(entry, target, "transfer", take, lot.expires_at, priority=lot.priority)
    return _finish(book, cmd, entry)


# -- holds --------------------------------------------------------------------------------------------
def place_hold(book: Book, cmd: PlaceHold) -> Receipt:
    fp = fingerprint(cmd.kind, cmd.body())
    # The lock and the replay check in one round trip (the API's hottest write).
    wallet, existing = book.lock_wallet_finding(cmd.account, cmd.idempotency_key, fp)
    if existing is not None:
        return _receipt(book, cmd, existing, replayed=True)
    if wallet is None:
        raise UnknownAccount.named(cmd.account)
    if wallet.negative_since is not None:
        raise AccountFlagged(
            f"account {cmd.account!r} has a negative balance; new holds wait until it is settled",
            account=cmd.account,
        )
    _require_spendable(book, wallet, cmd.amount_mc)
    entry = book.entry("hold", cmd.idempotency_key, fp, metadata={**cmd.metadata, **cmd.pricing})
    draws, _ = book.draw(entry, wallet, cmd.amount_mc)
    for lot, take in draws:  # the held side keeps each grant's provenance, for capture and release
        book.post(entry, wallet.held_account_id, take, lot)
    hold = HoldView(
        id="hold_" + secrets.token_hex(12),
        account=cmd.account,
        amount_mc=cmd.amount_mc,
        status="pending",
        expires_at=book.now + timedelta(seconds=cmd.ttl_seconds),
    )
    book.open_hold(entry, hold.id, wallet.id, hold.amount_mc, hold.expires_at)
    return _finish(book, cmd, entry, hold=hold)


@dataclass(frozen=True)
class _LockedHold:
    id: str
    wallet: WalletState
    amount_mc: int
    status: str
    expires_at: datetime
    allocations: list[tuple[int, int]]  # (grant id, amount held from it), in the order drawn


def _lock_hold(book: Book, hold_id: str) -> _LockedHold:
    hold, _ = _lock_hold_finding(book, hold_id, None, "")
    assert hold is not None  # an unknown hold raised
    return hold


def _lock_hold_finding(
    book: Book, hold_id: str, key: str | None, fp: str
) -> tuple[_LockedHold | None, ExistingEntry | None]:
    """Lock the hold's wallet, and with ``key`` find its entry in the same statement: a replay answers with
    the entry (and no hold read); otherwise the hold, read under the lock."""
    # The hold is read after the wallet's lock: a concurrent capture or release has committed or not, never half.
    wallet, existing, rows = book.lock_wallet_of_hold(hold_id, key, fp, also=hold_rows.read_with_allocations(hold_id))
    if existing is not None:
        return None, existing
    if wallet is None:
        raise UnknownHold(f"no hold {hold_id!r}", hold_id=hold_id)
    row, allocations = hold_rows.hold_with_allocations(rows)
    return _LockedHold(hold_id, wallet, row.amount_mc, row.status, row.expires_at, allocations), None


def _settle_hold(book: Book, entry: EntryDraft, hold: _LockedHold, capture_mc: int) -> None:
    """Empty the hold; the first ``capture_mc`` of it (in drawing order) is consumed, the rest goes back."""
    lots = book.grant_lots([gid for gid, _ in hold.allocations])
    left = capture_mc
    for gid, held in hold.allocations:
        lot = lots[gid]
        book.post(entry, hold.wallet.held_account_id, -held, lot)
        used = min(held, left)
        left -= used
        if held - used:
            book.return_to_grant(entry, hold.wallet, lot, held - used)
    if left:  # captured above the hold: the excess comes from available, and may leave debt
        _, shortfall = book.draw(entry, hold.wallet, left)
        book.run_into_debt(entry, hold.wallet, shortfall)
    book.post(entry, book.system_account("usage_revenue"), capture_mc)


def _close_hold(book: Book, hold: _LockedHold, entry: EntryDraft, status: str, captured: int | None) -> HoldView:
    book.close_hold(entry, hold.id, status, captured)
    return HoldView(hold.id, hold.wallet.account, hold.amount_mc, status, hold.expires_at, captured)


def _pending(hold: _LockedHold) -> None:
    if hold.status != "pending":
        raise HoldNotPending(f"hold {hold.id} is {hold.status}", hold_id=hold.id, status=hold.status)


def _capturable(book: Book, hold: _LockedHold) -> None:
    # The TTL is a promise to the wallet: past it the reservation is gone, whether or not the sweeper has
    # released it yet. Usage that ran past its hold is reported as a plain debit instead.
    _pending(hold)
    if hold.expires_at <= book.now:
        raise HoldNotPending(
            f"hold {hold.id} expired at {hold.expires_at.isoformat()}", hold_id=hold.id, status="expired"
        )


def capture_hold(book: Book, cmd: CaptureHold) -> Receipt:
    fp = fingerprint(cmd.kind, cmd.body())
    hold, existing = _lock_hold_finding(book, cmd.hold_id, cmd.idempotency_key, fp)
    if existing is not None:
        return _receipt(book, cmd, existing, replayed=True)
    assert hold is not None  # an unknown hold raised
    _capturable(book, hold)
    entry = book.entry("capture", cmd.idempotency_key, fp, metadata={**cmd.metadata, **cmd.pricing, "hold_id": hold.id})
    _settle_hold(book, entry, hold, cmd.amount_mc)
    return _finish(book, cmd, entry, hold=_close_hold(book, hold, entry, "captured", cmd.amount_mc))


def release_hold(book: Book, cmd: ReleaseHold) -> Receipt:
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    hold = _lock_hold(book, cmd.hold_id)
    _pending(hold)
    entry = book.entry("release", cmd.idempotency_key, fp, metadata={"hold_id": hold.id})
    _settle_hold(book, entry, hold, 0)
    return _finish(book, cmd, entry, hold=_close_hold(book, hold, entry, "released", None))


# -- sweeps -------------------------------------------------------------------------------------------
def _lock_wallet_ids(book: Book, wallet_ids: list[int]) -> dict[int, WalletState]:
    names = wallet_rows.account_names(book.session, wallet_ids)
    return {w.id: w for w in book.lock_wallets(names).values()}


def expire_holds(book: Book, cmd: ExpireHolds) -> SweepResult:
    now = cmd.now or book.now
    due = hold_rows.due_holds(book.session, now, cmd.limit)
    if not due:
        return SweepResult(0, ())
    _lock_wallet_ids(book, sorted({wallet_id for _, wallet_id in due}))
    closing: list[tuple[_LockedHold, EntryDraft]] = []
    for hold_id, _ in due:
        hold = _lock_hold(book, hold_id)
        if hold.status != "pending":  # captured or released while we were waiting for the lock
            continue
        key = f"hold-expiry:{hold.id}"
        entry = book.entry(
            "hold_expiry", key, fingerprint("hold_expiry", {"hold_id": hold.id}), metadata={"hold_id": hold.id}
        )
        _settle_hold(book, entry, hold, 0)
        _close_hold(book, hold, entry, "expired", None)
        closing.append((hold, entry))
    book.flush()
    return SweepResult(len(closing), tuple(e.id for _, e in closing if e.id is not None))


def expire_grants(book: Book, cmd: ExpireGrants) -> SweepResult:
    now = cmd.now or book.now
    due = grant_rows.due_grants(book.session, now, cmd.limit)
    if not due:
        return SweepResult(0, ())
    wallets = _lock_wallet_ids(book, sorted({wallet_id for _, wallet_id in due}))
    lots = book.grant_lots([grant_id for grant_id, _ in due])
    entries = []
    for grant_id, wallet_id in due:
        lot = lots[grant_id]
        if lot.remaining_mc <= 0:
            continue
        entries.append(_expire_lot(book, wallets[wallet_id], lot))
    book.flush()
    return SweepResult(len(entries), tuple(e.id for e in entries if e.id is not None))


def _expire_lot(book: Book, wallet: WalletState, lot: GrantLot) -> EntryDraft:
    """What is left of an ended grant goes to the expiry account: one entry per grant, whoever expires it
    (the sweeper, a rollover), so its key is the grant's."""
    assert lot.id is not None  # an existing grant
    entry = book.entry(
        "grant_expiry",
        f"grant-expiry:{lot.id}",
        fingerprint("grant_expiry", {"grant_id": lot.id}),
        metadata={"grant_id": lot.id},
        occurred_at=lot.expires_at,
    )
    amount = lot.remaining_mc
    book.post_to_wallet(entry, wallet, lot, -amount)
    book.post(entry, book.system_account("expiry"), amount)
    return entry


def roll_over(book: Book, cmd: RollOver) -> Receipt | None:
    """Carry up to ``cap_mc`` of the subscription's ended plan grants into one new grant (a ``rollover`` entry,
    drawing from them in spending order); what is left of them expires, an expiry entry per grant as the
    sweeper writes it. None when nothing was carried. Credits on hold stay with their grants: only
    ``remaining`` moves."""
    fp, replay = _replay(book, cmd)
    if replay:
        return replay
    wallet = book.lock_wallet(cmd.account)
    ended = [
        lot
        for lot in book.lots(wallet)
        if lot.source == "plan"
        and lot.external_ref == cmd.subscription
        and lot.remaining_mc > 0
        and lot.expires_at is not None
        and lot.expires_at <= cmd.ended_by
    ]
    left = sum(lot.remaining_mc for lot in ended)
    carried = min(left, cmd.cap_mc) if cmd.expires_at > book.now else 0
    entry, carried_lot = None, None
    if carried:
        metadata = {**cmd.metadata, "carried_mc": carried, "expired_mc": left - carried}
        entry = book.entry("rollover", cmd.idempotency_key, fp, external_ref=cmd.subscription, metadata=metadata)
        wanted = carried
        for lot in sorted(ended, key=spending_key):
            take = min(lot.remaining_mc, wanted)
            book.post_to_wallet(entry, wallet, lot, -take)
            wanted -= take
        carried_lot = book.new_grant(entry, wallet, "plan", carried, cmd.expires_at, external_ref=cmd.subscription)
    for lot in ended:
        if lot.remaining_mc > 0:
            _expire_lot(book, wallet, lot)
    book.flush()
    return None if entry is None else _finish(book, cmd, entry, grant=carried_lot)


HANDLERS: dict[type, Callable[[Book, Any], Any]] = {
    PurchaseCredits: purchase_credits,
    GrantCredits: grant_credits,
    DebitUsage: debit_usage,
    PlaceHold: place_hold,
    CaptureHold: capture_hold,
    ReleaseHold: release_hold,
    ExpireHolds: expire_holds,
    ExpireGrants: expire_grants,
    ClawBack: claw_back,
    Adjust: adjust,
    TransferCredits: transfer_credits,
    RollOver: roll_over,
    HoldDisputed: hold_disputed,
    SettleDispute: settle_dispute,
}


def execute(session_factory: sessionmaker[Session], cmd: object, *, now: datetime | None = None) -> Any:
    """Run one command in its own transaction (retrying transient conflicts) and return its result."""
    handler = HANDLERS[type(cmd)]
    return unit_of_work.run(session_factory, lambda uow: handler(uow.book, cmd), now=now)
