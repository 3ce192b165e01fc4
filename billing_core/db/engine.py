"""Engine and session factory. One engine per process; sessions are per unit of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from billing_core.settings import sqlalchemy_url


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> Engine:
    engine = create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No pre-ping (a round trip per transaction): a connection found dead is invalidated by SQLAlchemy and
        # the unit of work retries the whole command, which the idempotency key makes safe even mid-commit.
        pool_pre_ping=False,
        # A ledger statement that waits this long on a lock is stuck, not busy: fail and let the caller retry.
        connect_args={"options": "-c lock_timeout=10s -c statement_timeout=60s", "application_name": "billing"},
    )
    event.listen(engine, "connect", _fast_json)
    return engine


def _fast_json(dbapi_connection: Any, _record: Any) -> None:
    # json/jsonb columns are read with orjson: the workers read every usage report and Stripe event back, and
    # the standard library's parser was a fifth of a worker's CPU per report.
    set_json_loads(orjson.loads, dbapi_connection)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: results handed back after commit stay readable without a new query.
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


def make_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reads of one statement, on the same pool, in autocommit: no ``BEGIN`` before the query
    and no ``ROLLBACK`` after it (psycopg sends each as a round trip of its own), so a read is one round trip
    instead of three. Only for what needs no transaction: one statement, or several that may each see a
    different moment (``POST /v1/check``'s balance and plan)."""
    return sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False, autoflush=False)


@contextmanager
def raw_read(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection of the engine's pool in autocommit, for one statement of a hot read.

    ``POST /v1/check`` reads one row per request: through a session (or a Core connection) SQLAlchemy's
    execution layer costs more than the query's own round trip (~150 us around ~100 us, measured in process),
    so the statement, still built once with SQLAlchemy Core and compiled for psycopg (``compiled_sql``), runs on
    the driver's connection. Autocommit as in ``make_read_session_factory``, put back before the connection
    returns to the pool; a connection broken meanwhile is dropped from the pool."""
    pooled = engine.raw_connection()
    conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]  # psycopg's dialect
    try:
        conn.autocommit = True
        yield conn
    except psycopg.OperationalError:
        pooled.invalidate()
        raise
    finally:
        if not conn.closed and not conn.broken:
            conn.autocommit = False
        pooled.close()


def compiled_sql(statement: Any) -> str:
    """A Core statement as psycopg's SQL (``%(name)s`` parameters), for ``raw_read``."""
    from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

    make: Any = psycopg_dialect.dialect  # untyped in SQLAlchemy
    return str(statement.compile(dialect=make()))
