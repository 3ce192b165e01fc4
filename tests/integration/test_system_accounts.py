"""The system accounts' ids: read once per engine (not per transaction), and never shared between engines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from billing_core.db.engine import make_engine, make_session_factory
from billing_core.db.tables import SYSTEM_ACCOUNTS
from billing_core.ledger.commands import DebitUsage, GrantCredits, PurchaseCredits
from billing_core.ledger.handlers import execute

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_engines(database_url: str) -> Iterator[list[Engine]]:
    """Engines made by the test itself, as a new process would make them; disposed at the end."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def statements_on(engine: Engine) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return seen


def test_the_ids_are_read_once_per_engine_not_per_transaction(session_factory, database_url, fresh_engines, probe):
    # given a process's engine, new
    engine = make_engine(database_url, pool_size=2, max_overflow=0)
    fresh_engines.append(engine)
    seen = statements_on(engine)
    factory = make_session_factory(engine)
    # when three commands post to three system accounts, each in its own transaction
    execute(factory, PurchaseCredits("acme", 10_000, "buy-1"))
    execute(factory, GrantCredits("acme", 1_000, "promo-1"))
    execute(factory, DebitUsage("acme", 2_000, "use-1"))
    # then the system accounts were looked up once, by the first
    lookups = [s for s in seen if "FROM ledger_accounts" in s and "LIKE" in s]
    assert len(lookups) == 1, lookups
    assert probe.system("usage_revenue") == 2_000
    probe.assert_consistent()


def test_an_engine_on_a_rebuilt_database_reads_the_new_ids(session_factory, database_url, fresh_engines, probe):
    # given an engine that has read the system accounts' ids
    first = make_engine(database_url, pool_size=2, max_overflow=0)
    fresh_engines.append(first)
    execute(make_session_factory(first), PurchaseCredits("acme", 10_000, "buy-1"))
    # and the database rebuilt under the same URL, its system accounts now at other ids
    with probe.engine.begin() as conn:
        conn.execute(text("TRUNCATE holds, postings, grants, ledger_entries, wallets, ledger_accounts CASCADE"))
        conn.execute(text("INSERT INTO ledger_accounts (code, kind) VALUES ('available:placeholder', 'available')"))
        conn.execute(
            text("INSERT INTO ledger_accounts (code, kind) SELECT 'system:' || k, k FROM unnest(CAST(:k AS text[])) k"),
            {"k": list(reversed(SYSTEM_ACCOUNTS))},
        )
    # when a new engine (a restarted process) posts a purchase and a debit
    second = make_engine(database_url, pool_size=2, max_overflow=0)
    fresh_engines.append(second)
    factory = make_session_factory(second)
    execute(factory, PurchaseCredits("acme", 10_000, "buy-2"))
    execute(factory, DebitUsage("acme", 3_000, "use-2"))
    # then each posting landed on the account of its kind, with nothing to reset by hand
    assert probe.system("stripe_clearing") == -10_000
    assert probe.system("usage_revenue") == 3_000
    assert probe.available("acme") == 7_000
    probe.assert_consistent()
