"""Unit of work: one transaction per command or batch; nothing inside a handler commits.

``run`` retries the whole transaction when PostgreSQL reports a deadlock or a serialization failure, or
when another transaction committed one of our idempotency keys first: the retry then finds the committed
entry and answers with it, so a race between duplicates ends as a replay, never as a second posting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from billing_core.clock import utcnow as utcnow  # re-exported: callers have long found it here
from billing_core.ledger.book import Book, ConcurrentDuplicate

T = TypeVar("T")
RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


class UnitOfWork:
    def __init__(self, session_factory: sessionmaker[Session], now: datetime | None = None) -> None:
        self.session_factory = session_factory
        self.now = now

    def __enter__(self) -> UnitOfWork:
        self.session = self.session_factory()
        self.book = Book(self.session, self.now or utcnow())
        self._committed = False
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._committed:
                self.session.rollback()
        finally:
            self.session.close()

    def commit(self) -> None:
        self.book.flush()
        self.session.commit()
        self._committed = True


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ConcurrentDuplicate):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True  # the server went away (restart, failover): a fresh connection may work
    # Statements sent on the raw driver connection (Book's bulk writes) raise psycopg's own errors.
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    sqlstate = getattr(orig, "sqlstate", None) or ""
    # 08: connection exceptions; 57P0x: the server shut the session down (admin, crash, restarting).
    if sqlstate in RETRYABLE_SQLSTATES or sqlstate.startswith(("08", "57P")):
        return True
    # A raw psycopg error without a SQLSTATE is the connection itself failing (closed, refused).
    return isinstance(exc, psycopg.OperationalError) and not sqlstate


def run(
    session_factory: sessionmaker[Session],
    work: Callable[[UnitOfWork], T],
    *,
    now: datetime | None = None,
    attempts: int = 8,
) -> T:
    """Run ``work`` in a unit of work and commit; retry transient conflicts with jittered backoff."""

    def once() -> T:
        with UnitOfWork(session_factory, now) as uow:
            result = work(uow)
            uow.commit()
            return result

    return retry_transient(once, attempts=attempts)


def database_unreachable(session_factory: sessionmaker[Session]) -> bool:
    """After a failure: was it the database itself (retry the whole message later) or this piece of work
    (record the failure against it, so that the other work goes on)?"""
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
        return False
    except Exception:
        return True


def retry_transient(work: Callable[[], T], *, attempts: int = 3) -> T:
    """Run ``work`` (which opens and commits its own transaction) again when it failed transiently, after a
    jittered exponential pause: a deadlock, a serialization failure, a duplicate committed by a concurrent
    transaction (see ``run``), or a pooled connection the server closed (a restart, an administrator), found
    dead on first use because the pool does not ping. A stale connection must not cost a caller a 503."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except Exception as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            time.sleep(random.uniform(0, 0.002 * 2**attempt))
    raise AssertionError("unreachable")
