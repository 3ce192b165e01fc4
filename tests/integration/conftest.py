"""Fixtures on the real PostgreSQL started by ``scripts/test``.

Each pytest worker gets its own database cloned from the migrated template, so workers never see each
other; each test starts from an empty ledger (TRUNCATE, then the system accounts as the migration seeds
them). Truncation rather than savepoint rollback because the concurrency tests need committed rows seen
by many connections.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.engine import make_engine, make_session_factory
from billing_core.db.tables import SYSTEM_ACCOUNTS
from billing_core.ledger.balances import read_balance
from billing_core.ledger.handlers import execute
from billing_core.settings import sqlalchemy_url

TABLES = (
    "holds",
    "postings",
    "grants",
    "ledger_entries",
    "wallets",
    "ledger_accounts",
    "usage_inbox",
    "stripe_events",
    "api_keys",
    # packages, Stripe catalog sync and the sales guard
    "stripe_catalog",
    "billing_config",
    "admin_alerts",
    "usage_records",
    "price_versions",
    # reconciliation against Stripe
    "discrepancies",
    "reconciliation_runs",
    "reconciliation_checkpoints",
    "notifications",
    # the admin API's audit log
    "admin_audit",
)


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the integration tests through scripts/test", returncode=2)
    return value


def event_inbox_for(session_factory: sessionmaker[Session]) -> Any:
    """The receiver's own event inbox on the test database (one per database, kept for the run)."""
    from billing_core.db.event_writer import EventInbox

    url = session_factory.kw["bind"].url.render_as_string(hide_password=False)
    if url not in _INBOXES:
        _INBOXES[url] = EventInbox(url)
    return _INBOXES[url]


_INBOXES: dict[str, Any] = {}


@pytest.fixture(scope="session")
def redis_db_url() -> str:
    """A Redis database of this pytest worker's own (the run's Redis, another db index), for tests that read
    what was queued: the shared receiver's messages and other workers' never land in it."""
    base = _require("REDIS_URL").rsplit("/", 1)[0]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw-1")
    return f"{base}/{10 + int(worker.removeprefix('gw'))}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    admin_url = _require("BILLING_TEST_PG_ADMIN_URL")
    template = _require("BILLING_TEST_TEMPLATE_DB")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"billing_test_{worker}"
    libpq_admin = sqlalchemy_url(admin_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    # Big enough for the 64-thread test: every thread holds a connection while it waits on the wallet lock.
    eng = make_engine(database_url, pool_size=10, max_overflow=80)
    yield eng
    eng.dispose()


def reset_database(engine: Engine) -> None:
    """An empty ledger with its system accounts, as the migration leaves it: same ids, same order, so the
    ids the ledger keeps per engine (``ledger/system_accounts.py``) stay true from one test to the next."""
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(
            text("INSERT INTO ledger_accounts (code, kind) SELECT 'system:' || k, k FROM unnest(CAST(:k AS text[])) k"),
            {"k": list(SYSTEM_ACCOUNTS)},
        )


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    reset_database(engine)
    reset_limits()
    yield make_session_factory(engine)


# -- limits: this pytest worker's own token counters and per-key request counters in the run's Redis ----------
def limits_prefix() -> str:
    return f"test:{os.environ.get('PYTEST_XDIST_WORKER', 'main')}:tokens"


def reset_limits() -> None:
    """Every counter of this worker's prefix gone: each test starts with no tokens counted."""
    import redis

    client = redis.Redis.from_url(_require("REDIS_URL"))
    try:
        keys = list(client.scan_iter(match=f"{limits_prefix()}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class WalletView:
    available_mc: int
    held_mc: int
    flagged: bool


class LedgerProbe:
    """Reads the ledger's rows directly, for assertions: balances, grants, counts, snapshots."""

    def __init__(self, engine: Engine, session_factory: sessionmaker[Session]) -> None:
        self.engine = engine
        self.session_factory = session_factory

    def run(self, cmd: object, now: datetime | None = None) -> Any:
        return execute(self.session_factory, cmd, now=now)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def wallet(self, account: str) -> WalletView | None:
        with self.engine.connect() as conn:
            found = read_balance(conn, account)
        return None if found is None else WalletView(found.available_mc, found.held_mc, found.negative)

    def available(self, account: str) -> int:
        view = self.wallet(account)
        assert view is not None, f"no wallet {account}"
        return view.available_mc

    def system(self, kind: str) -> int:
        return self.scalar("SELECT balance_mc FROM ledger_accounts WHERE code = :c", c=f"system:{kind}")

    def grants(self, account: str) -> list[Any]:
        return self.rows(
            "SELECT g.id, g.source, g.amount_mc, g.remaining_mc, g.expires_at, g.external_ref FROM grants g "
            "JOIN wallets w ON w.id = g.wallet_id WHERE w.account = :acc ORDER BY g.id",
            acc=account,
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything that could change: row counts of every table and every balance."""
        counts = {t: self.scalar(f"SELECT count(*) FROM {t}") for t in TABLES}
        balances = self.rows("SELECT code, balance_mc FROM ledger_accounts ORDER BY code")
        grants = self.rows("SELECT id, remaining_mc FROM grants ORDER BY id")
        holds = self.rows("SELECT id, status FROM holds ORDER BY id")
        flags = self.rows("SELECT account, negative_since FROM wallets ORDER BY account")
        return {"counts": counts, "balances": balances, "grants": grants, "holds": holds, "flags": flags}

    def assert_consistent(self) -> None:
        from billing_core.ledger.checks import check_ledger

        report = check_ledger(self.engine)
        assert report.ok, "\n".join(str(f) for f in report.findings)


@pytest.fixture
def probe(engine: Engine, session_factory: sessionmaker[Session]) -> LedgerProbe:
    return LedgerProbe(engine, session_factory)


@pytest.fixture(scope="session")
def receiver_app(database_url: str):
    """The real Flask app on the test database, enqueueing to the test run's real Redis."""
    from billing_core.settings import Settings
    from webhook_receiver import create_app

    settings = Settings(
        database_url=database_url,
        redis_url=_require("REDIS_URL"),
        stripe_webhook_secret="whsec_test_current,whsec_test_previous",
        BILLING_DB_POOL_SIZE=4,
        BILLING_LIMITS_PREFIX=limits_prefix(),
        BILLING_LIMITS_POLICY_CACHE_SECONDS=0,  # tables are emptied between tests; a cached plan would outlive them
    )
    return create_app(settings)


@dataclass
class ApiClient:
    """The Flask test client with a key of the given scopes: ``api.post(path, json=..., key=...)``."""

    client: Any
    session_factory: sessionmaker[Session]

    def key(self, *scopes: str) -> str:
        from billing_core.accounts.api_keys import create_api_key

        return create_api_key(self.session_factory, "test", list(scopes) or ["admin"])[1]

    def _call(self, method: str, path: str, key: str | None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def get(self, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        return self._call("GET", path, key, **kwargs)

    def post(self, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        return self._call("POST", path, key, **kwargs)

    def put(self, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        return self._call("PUT", path, key, **kwargs)


@pytest.fixture
def api(receiver_app: Any, session_factory: sessionmaker[Session]) -> ApiClient:
    # The app's key cache needs no reset: every test creates fresh random keys.
    return ApiClient(receiver_app.test_client(), session_factory)
