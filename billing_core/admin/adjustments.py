"""Operators' corrections of a balance (seed 003's ``{user_id, credits, reason}`` → ``{success, new_balance}``),
and admin grants, each with its audit row in the ledger's own transaction.

Through the ledger's handlers only: a positive adjustment is a ``GrantCredits`` of source ``adjustment`` (a
visible grant, spent in the admin grant's order), a negative one the ``Adjust`` command (it takes spendable
credits, refused when short). The client's key is namespaced (``admin-adjust:``) so it can never claim a
Stripe purchase's or a usage report's ledger key. A replay answers the first entry and writes nothing, not
even an audit row: the action happened once and was audited once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from billing_core.admin.audit import record_audit
from billing_core.db import unit_of_work
from billing_core.ledger.balances import AccountBalance, read_balance
from billing_core.ledger.commands import Adjust, GrantCredits, ledger_key
from billing_core.ledger.handlers import Receipt, grant_credits
from billing_core.ledger.handlers import adjust as adjust_handler

ADJUST_KEY_PREFIX = "admin-adjust:"
ADJUST_ACTION = "adjustment.create"
GRANT_ACTION = "grant.create"


@dataclass(frozen=True)
class AdjustResult:
    new_balance_mc: int  # available, after the adjustment (now, on a replay)
    entry_id: int
    replayed: bool
    grant_id: int | None = None  # the adjustment grant a positive adjustment made


def balance_state(balance: AccountBalance | None) -> dict[str, Any] | None:
    """A wallet's balances as an audit row records them."""
    if balance is None:
        return None
    return {
        "available_mc": balance.available_mc,
        "held_mc": balance.held_mc,
        "negative": balance.negative,
    }


def _before(after: AccountBalance, moved_mc: int) -> dict[str, Any]:
    # Read after the handler, under its wallet lock: the before is the after less what this entry moved, so a
    # concurrent spend between a separate read and the lock cannot make the audit row lie.
    state = balance_state(after)
    assert state is not None
    return {**state, "available_mc": after.available_mc - moved_mc}


def _current(session_factory: sessionmaker[Session], account: str) -> int:
    with session_factory() as session:
        balance = read_balance(session, account)
    return 0 if balance is None else balance.available_mc


def adjust(
    session_factory: sessionmaker[Session],
    *,
    account: str,
    credits_mc: int,
    reason: str,
    actor: str,
    idempotency_key: str,
    now: datetime | None = None,
) -> AdjustResult:
    """Add (positive) or take (negative) ``credits_mc``; idempotent by ``idempotency_key``. Raises what the
    handlers raise: ``InvalidCommand`` / ``InvalidAmount`` (a bad field, zero), ``UnknownAccount`` and
    ``InsufficientCredits`` (taking), ``IdempotencyConflict`` (the key with another body)."""
    key = ledger_key(ADJUST_KEY_PREFIX, idempotency_key)
    cmd: GrantCredits | Adjust
    if credits_mc > 0:
        cmd = GrantCredits.validated(
            account=account,
            amount_mc=credits_mc,
            idempotency_key=key,
            source="adjustment",
            reason=reason,
            actor=actor,
        )
    else:
        cmd = Adjust.validated(account=account, amount_mc=credits_mc, idempotency_key=key, reason=reason, actor=actor)

    def work(uow: unit_of_work.UnitOfWork) -> tuple[Receipt, int | None]:
        receipt = grant_credits(uow.book, cmd) if isinstance(cmd, GrantCredits) else adjust_handler(uow.book, cmd)
        if receipt.replayed:
            return receipt, None
        after = read_balance(uow.session, account)
        assert after is not None, "the adjustment locked the wallet"
        record_audit(
            uow.session,
            actor=actor,
            action=ADJUST_ACTION,
            target=f"account:{account}",
            before=_before(after, credits_mc),
            after={**(balance_state(after) or {}), "entry_id": receipt.entry_id, "credits_mc": credits_mc},
            now=uow.book.now,
            request_id=idempotency_key,
            note=reason,
        )
        return receipt, after.available_mc

    receipt, new_balance = unit_of_work.run(session_factory, work, now=now)
    if new_balance is None:
        new_balance = _current(session_factory, account)
    return AdjustResult(new_balance, receipt.entry_id, receipt.replayed, receipt.grant_id)


def grant(
    session_factory: sessionmaker[Session], cmd: GrantCredits, *, actor: str, request_id: str | None = None
) -> Receipt:
    """An admin grant (``POST /v1/admin/grants``) and its audit row in one transaction; a replay records nothing."""

    def work(uow: unit_of_work.UnitOfWork) -> Receipt:
        receipt = grant_credits(uow.book, cmd)
        if receipt.replayed:
            return receipt
        after = read_balance(uow.session, cmd.account)
        assert after is not None, "the grant created the wallet"
        record_audit(
            uow.session,
            actor=actor,
            action=GRANT_ACTION,
            target=f"account:{cmd.account}",
            before=_before(after, cmd.amount_mc),
            after={
                **(balance_state(after) or {}),
                "entry_id": receipt.entry_id,
                "grant_id": receipt.grant_id,
                "credits_mc": cmd.amount_mc,
                "source": cmd.source,
                "expires_at": cmd.expires_at.isoformat() if cmd.expires_at else None,
            },
            now=uow.book.now,
            request_id=request_id,
            note=cmd.reason,
        )
        return receipt

    return unit_of_work.run(session_factory, work)
