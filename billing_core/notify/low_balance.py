"""Low balance: one notice per downward crossing of the account's threshold, re-armed by a top-up.

``wallets.low_balance_notified_at`` is the armed flag (NULL: armed). ``check_crossings`` runs in the usage
batch's transaction, after its debits, over the batch's accounts only (their wallets are already locked by the
batch): one UPDATE that matches nothing unless a wallet is armed and below its threshold (default 1,000
credits), which disarms it and writes the notice. ``rearm`` clears the flag of wallets back at or above their
threshold: after a purchase for its account, and for every flagged wallet on each delivery tick (grants,
released holds, refunds of usage).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.notify.outbox import notify
from billing_core.units import format_credits

DEFAULT_THRESHOLD_MC = 1_000_000  # 1,000 credits

_CROSSED = text(
    """
    UPDATE wallets w SET low_balance_notified_at = :now
    FROM ledger_accounts a
    WHERE w.account = ANY(CAST(:accounts AS text[])) AND a.id = w.available_account_id
        AND w.low_balance_notified_at IS NULL
        AND a.balance_mc < COALESCE(w.low_balance_threshold_mc, :default)
    RETURNING w.account, a.balance_mc, COALESCE(w.low_balance_threshold_mc, :default)
    """
)
_REARM = """
    UPDATE wallets w SET low_balance_notified_at = NULL
    FROM ledger_accounts a
    WHERE w.low_balance_notified_at IS NOT NULL AND a.id = w.available_account_id
        AND a.balance_mc >= COALESCE(w.low_balance_threshold_mc, :default)
    """
_REARM_ALL = text(_REARM)
_REARM_SOME = text(_REARM + " AND w.account = ANY(CAST(:accounts AS text[]))")


def check_crossings(session: Session, accounts: list[str], now: datetime) -> int:
    """Disarm and notify the armed wallets of ``accounts`` now below their threshold; how many crossed."""
    if not accounts:
        return 0
    crossed = session.execute(_CROSSED, {"accounts": accounts, "now": now, "default": DEFAULT_THRESHOLD_MC}).all()
    for account, available_mc, threshold_mc in crossed:
        notify(
            session,
            "low_balance",
            f"low_balance:{account}:{now.isoformat()}",
            account=account,
            payload={
                "account": account,
                "available": format_credits(available_mc),
                "threshold": format_credits(threshold_mc),
            },
            now=now,
        )
    return len(crossed)


def rearm(session: Session, accounts: list[str] | None = None) -> int:
    """Re-arm the flagged wallets (of ``accounts``, or all) back at or above their threshold."""
    result: Any  # an UPDATE's result: its rowcount is what was re-armed
    if accounts is None:
        result = session.execute(_REARM_ALL, {"default": DEFAULT_THRESHOLD_MC})
    else:
        result = session.execute(_REARM_SOME, {"accounts": accounts, "default": DEFAULT_THRESHOLD_MC})
    return int(result.rowcount)
