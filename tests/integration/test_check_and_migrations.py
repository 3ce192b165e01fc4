"""`billing db upgrade` builds a database from nothing; `billing check` proves the invariants and can fail."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from billing_core.db.tables import Base
from billing_core.ledger.commands import CaptureHold, ClawBack, DebitUsage, GrantCredits, PlaceHold, PurchaseCredits
from billing_core.settings import sqlalchemy_url

pytestmark = pytest.mark.integration


def billing(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billing_cli.main", *args],
        env={**os.environ, "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def empty_database() -> Iterator[str]:
    admin = sqlalchemy_url(os.environ["BILLING_TEST_PG_ADMIN_URL"])
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    libpq = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def populate(probe) -> None:
    probe.run(PurchaseCredits("acme", 10_000, "buy", external_ref="cs_1"))
    probe.run(GrantCredits("acme", 1_000, "promo"))
    probe.run(DebitUsage("acme", 2_000, "use"))
    hold = probe.run(PlaceHold("acme", 3_000, "hold")).hold
    probe.run(CaptureHold(hold.id, 3_500, "cap"))
    probe.run(ClawBack("acme", 10_000, "refund", grant_ref="cs_1"))  # leaves flagged debt


def test_upgrade_builds_an_empty_database_and_check_passes_on_it(empty_database):
    upgraded = billing("db", "upgrade", database_url=empty_database)
    assert upgraded.returncode == 0, upgraded.stderr
    checked = billing("check", database_url=empty_database)
    assert checked.returncode == 0, checked.stdout
    assert "ledger check ok: 0 entries, 6 accounts" in checked.stdout
    # and upgrading again is a no-op
    assert billing("db", "upgrade", database_url=empty_database).returncode == 0


def test_check_passes_on_a_populated_ledger(probe, database_url):
    populate(probe)
    checked = billing("check", database_url=database_url)
    assert checked.returncode == 0, checked.stdout
    assert "ledger check ok: 6 entries, 8 accounts" in checked.stdout


@pytest.mark.parametrize(
    ("corruption", "finding"),
    [
        ("UPDATE ledger_accounts SET balance_mc = balance_mc + 1 WHERE code = 'available:acme'", "balance_mismatch"),
        (
            "INSERT INTO postings (entry_id, line, account_id, amount_mc) "
            "SELECT 1, 99, id, 5 FROM ledger_accounts WHERE code = 'system:refunds'",
            "entry_unbalanced",
        ),
        ("UPDATE wallets SET negative_since = NULL", "negative_without_flag"),
        ("UPDATE grants SET remaining_mc = remaining_mc + 1 WHERE source = 'promotional'", "grant_mismatch"),
    ],
    ids=["cached-balance", "unbalanced-entry", "unflagged-negative", "grant-remaining"],
)
def test_check_fails_and_names_what_is_wrong(probe, database_url, corruption, finding):
    populate(probe)
    with probe.engine.begin() as conn:
        conn.execute(text(corruption))
    checked = billing("check", database_url=database_url)
    assert checked.returncode == 1
    assert any(line.startswith(f"{finding}:") for line in checked.stdout.splitlines()), checked.stdout
    assert "ledger check FAILED" in checked.stdout


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE postings SET amount_mc = amount_mc * 2",
        "DELETE FROM postings",
        "UPDATE ledger_entries SET kind = 'grant'",
    ],
)
def test_entries_and_postings_are_immutable(probe, statement):
    populate(probe)
    with pytest.raises(Exception, match="ledger rows are immutable"), probe.engine.begin() as conn:
        conn.execute(text(statement))


def test_models_and_migrations_describe_the_same_schema(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_to_nothing_and_upgrade_again(empty_database):
    assert billing("db", "upgrade", database_url=empty_database).returncode == 0
    down = billing("db", "downgrade", "base", database_url=empty_database)
    assert down.returncode == 0, down.stderr
    assert billing("db", "upgrade", database_url=empty_database).returncode == 0
    assert billing("check", database_url=empty_database).returncode == 0


def test_migrations_give_up_on_a_held_lock_instead_of_queueing(empty_database):
    # given a long transaction holding a lock the migration needs
    assert billing("db", "upgrade", database_url=empty_database).returncode == 0
    blocker = create_engine(empty_database)
    with blocker.connect() as conn:
        conn.execute(text("LOCK TABLE holds IN ACCESS SHARE MODE"))
        # when a migration has to drop that table
        down = billing("db", "downgrade", "base", database_url=empty_database, BILLING_MIGRATION_LOCK_TIMEOUT="200ms")
        conn.rollback()
    blocker.dispose()
    # then it fails fast on lock_timeout rather than waiting (and making every query queue behind it)
    assert down.returncode != 0
    assert "lock timeout" in down.stderr
