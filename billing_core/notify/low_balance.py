"""Balance notices: low balance (once per downward crossing of the account's threshold, re-armed by a top-up)
and balance depleted (once each time available credits reach zero from above).

The posting engine (``ledger.book``) locks each wallet together with its available balance, threshold and
armed flag, and after its flush hands ``watch`` the wallets whose available balance moved, before and after:
the decisions are taken in Python, and a statement runs only when something crossed. So every change of
available credits notices (usage, holds and captures, clawbacks, expiries, grants and refunds re-arming) at no
cost when nothing crosses. ``wallets.low_balance_notified_at`` is the flag (NULL: armed). ``rearm`` covers what
the engine does not see: a threshold lowered to or below the balance (``accounts.profile.update_account``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.notify.outbox import notify
from billing_core.units import format_credits

DEFAULT_THRESHOLD_MC = 1_000_000  # 1,000 credits

_SET_FLAGS = text(
    "UPDATE wallets w SET low_balance_notified_at = CASE WHEN v.armed THEN NULL ELSE CAST(:now AS timestamptz) END "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:armed AS boolean[])) AS v(id, armed) WHERE w.id = v.id"
)
_REARM = """
    UPDATE wallets w SET low_balance_notified_at = NULL
    FROM ledger_accounts a
    WHERE w.low_balance_notified_at IS NOT NULL AND a.id = w.available_account_id
        AND a.balance_mc >= COALESCE(w.low_balance_threshold_mc, :default)
    """
_REARM_ALL = text(_REARM)
_REARM_SOME = text(_REARM + " AND w.account = ANY(CAST(:accounts AS text[]))")


@dataclass(frozen=True)
class BalanceMove:
    """A locked wallet's available balance before and after one flush, with its notice state."""

    wallet_id: int
    account: str
    before_mc: int
    after_mc: int
    threshold_mc: int | None
    notified: bool


def watch(session: Session, moves: list[BalanceMove], now: datetime) -> dict[int, bool]:
    """Write the notices ``moves`` call for, and the flags they change: wallet id → its new flag (True: a
    low-balance notice is out). Called under the wallets' locks, in the transaction that moved them."""
    flags: dict[int, bool] = {}
    for move in moves:
        threshold = DEFAULT_THRESHOLD_MC if move.threshold_mc is None else move.threshold_mc
        if not move.notified and move.after_mc < threshold and move.after_mc < move.before_mc:
            flags[move.wallet_id] = True
            _notice(session, "low_balance", move, now, threshold=format_credits(threshold))
        elif move.notified and move.after_mc >= threshold:
            flags[move.wallet_id] = False
        if move.before_mc > 0 >= move.after_mc:
            _notice(session, "balance_depleted", move, now)
    if flags:
        session.execute(_SET_FLAGS, {"ids": list(flags), "armed": [not f for f in flags.values()], "now": now})
    return flags


def _notice(session: Session, kind: str, move: BalanceMove, now: datetime, **extra: Any) -> None:
    # One crossing per wallet and transaction: the wallet lock orders them, so the time names the occurrence.
    notify(
        session,
        kind,
        f"{kind}:{move.account}:{now.isoformat()}",
        account=move.account,
        payload={"account": move.account, "available": format_credits(move.after_mc), **extra},
        now=now,
    )


def rearm(session: Session, accounts: list[str] | None = None) -> int:
    """Re-arm the flagged wallets (of ``accounts``, or all) back at or above their threshold."""
    result: Any  # an UPDATE's result: its rowcount is what was re-armed
    if accounts is None:
        result = session.execute(_REARM_ALL, {"default": DEFAULT_THRESHOLD_MC})
    else:
        result = session.execute(_REARM_SOME, {"accounts": accounts, "default": DEFAULT_THRESHOLD_MC})
    return int(result.rowcount)
