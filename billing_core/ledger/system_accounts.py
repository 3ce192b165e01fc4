"""The system's ledger accounts (Stripe clearing, promotional grants, usage revenue, refunds, expiry,
adjustments): their ids, read once per engine.

The first migration creates them and nothing ever changes or removes them, so their ids are fixed for the
life of a database. Every command posts to one of them; reading them per transaction would cost each command
a round trip. They are kept against the engine, not in a global keyed by URL: a new engine (a restarted process,
a test's own) reads them afresh and goes when its engine goes, so nothing has to be reset by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, Table, select
from sqlalchemy.orm import Session

from billing_core.db.tables import SYSTEM_ACCOUNTS, LedgerAccount

_TABLE: Table = LedgerAccount.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
accounts = _TABLE.c
# Prebuilt on the table though it runs once per engine: one idiom for every row query (``wallet_rows`` says why).
_SYSTEM_IDS = select(accounts.kind, accounts.id).where(accounts.code.startswith("system:"))
_BY_ENGINE: WeakKeyDictionary[Engine, Mapping[str, int]] = WeakKeyDictionary()


def system_account_ids(session: Session) -> Mapping[str, int]:
    """Each system account's id by kind, for the database this session's engine points at."""
    engine = session.get_bind().engine
    ids = _BY_ENGINE.get(engine)
    # Read again while incomplete: a database not migrated yet when first asked must not stay that way here.
    if ids is None or len(ids) < len(SYSTEM_ACCOUNTS):
        ids = MappingProxyType({kind: account_id for kind, account_id in session.execute(_SYSTEM_IDS)})
        _BY_ENGINE[engine] = ids
    return ids
