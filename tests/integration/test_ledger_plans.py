"""The ledger's one-statement flush finds the rows it changes by their keys, whatever the planner guesses.

psycopg prepares a statement after its fifth run, and PostgreSQL then keeps a generic plan when it looks no
worse than the custom ones: a plan made without the arrays' values, which guesses 10 elements for every
``unnest``. Joined on that guess alone, a table of a few thousand rows looked cheaper to read whole than to
probe ten times by key. In ``bench.check`` every hold and capture read all 2,006 ledger accounts and all 1,000
grants to change two balances and a grant: about 0.3 ms of the flush's 0.7 ms on the server. Each updated
table is now also named by ``id = ANY(ids)``, which makes its primary key the cheaper way at any size.

The test forces the generic plan (``plan_cache_mode``) and reads the plans PostgreSQL chose from
``auto_explain``, sent back to the client as notices.

A usage batch's flush keeps the join alone: there, a parameter's ``ANY`` (matched element by element: PostgreSQL
hashes constant arrays only) could compare hundreds of ids with every row of a small table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.engine import make_engine, make_session_factory
from billing_core.ledger.batch_debit import APPLIED, apply_usage_batch
from billing_core.ledger.book import KEYED_ROWS
from billing_core.ledger.commands import CaptureHold, DebitUsage, GrantCredits, PlaceHold, ReleaseHold
from billing_core.ledger.handlers import execute

pytestmark = pytest.mark.integration

WALLETS = 1200  # 2,400 customer ledger accounts and 1,200 grants: the old plan read both tables whole
PENDING = 600  # holds in flight, one per wallet of the first half
UPDATED = ("ledger_accounts", "grants", "holds")


@pytest.fixture
def explained(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[tuple[Any, list[str]]]:
    """A session factory whose statements run on generic plans, and the plans of those statements."""
    plans: list[str] = []
    explaining = make_engine(engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)

    @event.listens_for(explaining, "connect")
    def _explain(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        with dbapi_connection.cursor() as cur:
            cur.execute("LOAD 'auto_explain'")
            for setting, value in (
                ("auto_explain.log_min_duration", "0"),
                ("auto_explain.log_level", "notice"),
                ("plan_cache_mode", "force_generic_plan"),
            ):
                cur.execute("SELECT set_config(%s, %s, false)", (setting, value))
        dbapi_connection.commit()

    try:
        yield make_session_factory(explaining), plans
    finally:
        explaining.dispose()


def _flush_plans(plans: list[str]) -> list[str]:
    return [p for p in plans if "INSERT INTO postings" in p]


def test_the_flush_changes_balances_grants_and_holds_through_their_keys_on_a_generic_plan(
    session_factory: sessionmaker[Session], engine: Engine, explained: tuple[Any, list[str]]
) -> None:
    for n in range(WALLETS):
        execute(session_factory, GrantCredits(f"acct-{n:04d}", 50_000, f"grant-{n}", source="promotional"))
        if n < PENDING:
            execute(session_factory, PlaceHold(f"acct-{n:04d}", 1_000, f"in-flight-{n}"))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        assert conn.execute(text("SELECT count(*) FROM ledger_accounts")).scalar_one() > 2 * WALLETS

    factory, plans = explained
    hold = execute(factory, PlaceHold("acct-0007", 3_000, "hold-1")).hold
    execute(factory, CaptureHold(hold.id, 2_500, "capture-1"))
    other = execute(factory, PlaceHold("acct-0008", 1_000, "hold-2")).hold
    execute(factory, ReleaseHold(other.id, "release-2"))
    execute(factory, DebitUsage("acct-0009", 700, "debit-1"))

    flushes = _flush_plans(plans)
    assert len(flushes) == 5, plans  # each command's flush was explained, on its generic plan
    for plan in flushes:
        for table in UPDATED:
            assert f"Seq Scan on {table}" not in plan, plan
        assert "Index Scan on ledger_accounts_pkey" in plan or "using ledger_accounts_pkey" in plan, plan
    # The commands drew from their wallets' grants: those updates, too, went by key.
    assert all("grants_pkey" in p for p in flushes), flushes


def test_a_batch_flush_joins_its_rows_without_naming_them_one_by_one(
    session_factory: sessionmaker[Session], explained: tuple[Any, list[str]]
) -> None:
    wallets = KEYED_ROWS + 8
    for n in range(wallets):
        execute(session_factory, GrantCredits(f"acct-{n:04d}", 50_000, f"grant-{n}", source="promotional"))
    factory, plans = explained
    reports = [DebitUsage(f"acct-{n:04d}", 100, f"usage-{n}") for n in range(wallets)]
    assert {o.status for o in apply_usage_batch(factory, reports)} == {APPLIED}
    execute(factory, DebitUsage("acct-0000", 100, "one-more"))

    batch, single = _flush_plans(plans)
    assert "ANY" not in batch, batch  # neither in the statement nor in its plan
    assert "la.id = ANY" in single, single  # a command's flush, after it, names its rows
