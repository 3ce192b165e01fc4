"""One inbox mechanism for both tables of stored work: usage reports (``usage_inbox``) and Stripe events
(``stripe_events``).

A row is stored ``pending`` before it is acknowledged. A worker claims due rows ``FOR UPDATE SKIP LOCKED``
(two workers share the work, never a row), handles them, and marks each one done (applied, rejected,
processed, ignored) in the transaction of its effect, so a crash repeats the claim but never the effect. A
row whose handling fails is marked in a transaction of its own (the failed one rolled back): retried with
exponential backoff at ``next_attempt_at``, ``dead`` after ``max_attempts`` for an operator to reopen. A
batch that fails is retried row by row (``apply_batch``), so one poisoned row cannot hold up the others.

The statements are SQLAlchemy Core on the inbox's table. Those that do not vary (marking, reopening) are
built once, when the ``Inbox`` is, and run with bound parameters: a statement built per call costs 2.5 times
the CPU of its SQL text, a prebuilt one no more (``ledger/wallet_rows.py``). A claim is built per call, its
filter and limit being the caller's: it runs once per batch of up to 1,000 rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    Interval,
    Row,
    Select,
    String,
    Table,
    Text,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeEngine

from billing_core.db import unit_of_work
from billing_core.notify.alerts import record_alert

K = TypeVar("K")
B = TypeVar("B")
S = TypeVar("S")

PENDING, DEAD = "pending", "dead"
# Backoff after the n-th failed attempt: 2**n seconds (2 s, 4 s, 8 s ...), at most 10 minutes.
MAX_BACKOFF_SECONDS = 600
_SECOND = literal_column("interval '1 second'", Interval)


def sql_constant(value: str) -> ColumnElement[str]:
    """A constant (a status) written into the SQL as a literal, not bound: open and dead rows are found through
    partial indexes (``WHERE status IN (...)``), which the planner uses only when it sees the values, and
    psycopg prepares a statement run five times, whose generic plan does not see them (checked with EXPLAIN:
    the claim's generic plan falls back to the primary key)."""
    if not value.isidentifier():  # our own constants only: nothing here is quoted
        raise ValueError(f"not a constant: {value!r}")
    return literal_column(f"'{value}'", String)


def array_of(column: Column[Any]) -> ARRAY[Any]:
    """The array type a column's values are sent in: ``text[]`` for strings, as a cast to ``varchar(n)[]``
    would cut a longer value silently where the column refuses it."""
    item: TypeEngine[Any] = Text() if isinstance(column.type, String) else column.type
    return ARRAY(item)


def array_param(name: str, column: Column[Any]) -> ColumnElement[Any]:
    """A list bound as one array of the column's values, ``CAST(:name AS bigint[])``: an untyped parameter
    cast in SQL, as a typed one has SQLAlchemy copy every list in Python (5% more client CPU to mark a batch
    of 1,000 rows)."""
    return cast(bindparam(name), array_of(column))


@dataclass
class BatchResult:
    """What one claim did: rows claimed, their outcomes by status, and what the drain should do next."""

    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    more: bool = False  # the claim was full: there may be more rows waiting
    busy: bool = False  # another worker holds the queue (a usage partition)

    def add(self, other: BatchResult) -> None:
        self.claimed += other.claimed
        self.outcomes.update(other.outcomes)


class Inbox:
    """An inbox table: ``id``, ``status``, ``attempts``, ``received_at`` and ``next_attempt_at`` columns, plus
    the columns named here."""

    def __init__(
        self,
        table: Table,
        *,
        key_column: Column[Any],  # what callers (operators) name a row by: the event id, the idempotency key
        retry_statuses: tuple[str, ...],  # open statuses besides pending, due again at ``next_attempt_at``
        error_column: Column[Any],  # where a failure's message goes
        done_at_column: Column[Any],  # stamped when a row is marked done
        max_attempts: int,
        done_columns: tuple[Column[Any], ...] = (),  # set per row by ``mark_done`` (its ``details``)
        cleared_when_done: tuple[Column[Any], ...] = (),  # columns a successful attempt resets to NULL
        failure_code: tuple[Column[Any], str] | None = None,  # (column, value) set when an attempt fails
    ) -> None:
        self.table = table
        self.key_column = key_column
        self.retry_statuses = retry_statuses
        self.max_attempts = max_attempts
        self._done_names = tuple(col.name for col in done_columns)
        c = table.c
        self._open = self._status_in(self.open_statuses)

        # One final status per row, from arrays in the order of the ids: one statement for the whole batch.
        values = (
            func.unnest(
                array_param("ids", c.id),
                array_param("statuses", c.status),
                *(array_param(f"v_{col.name}", col) for col in done_columns),
            )
            .table_valued("id", "status", *self._done_names)
            .render_derived(name="v")
        )
        done: dict[Column[Any], Any] = {
            c.status: values.c.status,
            c.attempts: c.attempts + 1,
            done_at_column: func.now(),
        }
        done.update({col: values.c[col.name] for col in done_columns})
        done.update({col: null() for col in cleared_when_done})
        self._mark_done = update(table).where(c.id == values.c.id).values(done)

        attempts = c.attempts + 1  # SET expressions read the row as it was
        failed: dict[Column[Any], Any] = {
            c.attempts: attempts,
            error_column: bindparam("err"),
            c.status: case((attempts >= bindparam("max", type_=Integer), DEAD), else_=bindparam("to")),
            c.next_attempt_at: func.now() + _SECOND * func.least(MAX_BACKOFF_SECONDS, func.power(2, attempts)),
        }
        if failure_code is not None:
            failed[failure_code[0]] = failure_code[1]
        self._mark_failed = (
            update(table)
            .where(c.id == any_(array_param("ids", c.id)), self._open)
            .values(failed)
            .returning(c.id, c.status)
        )

        self._reopen = (
            update(table)
            .where(key_column == bindparam("k"), self._status_in((DEAD, *retry_statuses)))
            .values({c.status: PENDING, c.attempts: 0, c.next_attempt_at: func.now()})
            .returning(c.id)
        )

    @property
    def open_statuses(self) -> tuple[str, ...]:
        return (PENDING, *self.retry_statuses)

    def _status_in(self, statuses: Sequence[str]) -> ColumnElement[bool]:
        return self.table.c.status.in_([sql_constant(s) for s in statuses])

    # -- claiming ----------------------------------------------------------------------------------------
    def claim(
        self,
        session: Session,
        columns: Sequence[ColumnElement[Any]],
        *,
        where: ColumnElement[bool] | None = None,
        statuses: Sequence[str] | None = None,
        due_only: bool = True,
        order_by: Sequence[ColumnElement[Any]] = (),
        limit: int | None = None,
    ) -> list[Row[Any]]:
        """Lock open rows matching ``where`` (``FOR UPDATE SKIP LOCKED``: rows another worker holds are
        skipped, not waited for), in ``order_by`` (by default ``id``); ``due_only`` leaves out rows whose retry
        time has not come."""
        c = self.table.c
        query = select(*columns).where(self._open if statuses is None else self._status_in(statuses))
        if where is not None:
            query = query.where(where)
        if due_only:
            query = query.where(c.next_attempt_at <= func.now())
        query = query.order_by(*(order_by or (c.id,))).limit(limit).with_for_update(skip_locked=True)
        return list(session.execute(query).all())

    # -- marking -----------------------------------------------------------------------------------------
    def mark_done(
        self,
        session: Session,
        ids: Sequence[Any],
        statuses: Sequence[str],
        details: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        """Record one final status per claimed row in one statement, in the transaction of the effects;
        ``details`` gives the ``done_columns``: name → one value per row."""
        if not ids:
            return
        details = details or {}
        if set(details) != set(self._done_names):
            raise ValueError(f"mark_done takes {sorted(self._done_names)}, not {sorted(details)}")
        params: dict[str, Any] = {"ids": list(ids), "statuses": list(statuses)}
        params.update({f"v_{name}": list(values) for name, values in details.items()})
        session.execute(self._mark_done, params)

    def mark_failed(
        self, session_factory: sessionmaker[Session], ids: Sequence[Any], status: str, error: str
    ) -> dict[Any, str]:
        """Record a failed attempt on open rows, in its own transaction (the attempt's rolled back): ``status``
        (``failed``, or ``dead`` for errors retrying cannot cure) and a retry time with exponential backoff,
        ``dead`` once ``max_attempts`` are spent. Returns each row's status afterwards."""
        with session_factory() as session, session.begin():
            rows = session.execute(
                self._mark_failed,
                {"ids": list(ids), "err": error[:2000], "max": self.max_attempts, "to": status},
            ).all()
            now = unit_of_work.utcnow()
            for row in rows:
                if row.status == "dead":
                    # The operators hear of each dead letter (the notifications outbox delivers admin alerts),
                    # in the transaction that makes it dead; a replayed row that dies again is a new alert.
                    record_alert(
                        session,
                        "dead_lettered_event",
                        f"dead_letter:{self.table.name}:{row.id}:{now.isoformat()}",
                        {"inbox": self.table.name, "id": str(row.id), "error": error[:500]},
                        now=now,
                    )
        return {row.id: row.status for row in rows}

    def reopen(self, session_factory: sessionmaker[Session], key: str) -> Any | None:
        """Make a dead (or failed, or waiting) row due again now with a fresh attempt count; its id, or None
        when there is no such row to reopen."""
        with session_factory() as session, session.begin():
            return session.execute(self._reopen, {"k": key}).scalar()

    # -- the sweep ---------------------------------------------------------------------------------------
    def due_query(
        self, *columns: ColumnElement[Any], order_by: Sequence[ColumnElement[Any]], distinct: bool = False
    ) -> Select[Any]:
        """The sweep's query, for ``due``: open rows a message should have handled by now, pending ones older
        than a while (the broker lost or delayed their message) and retries whose time has come. Built once,
        by the caller."""
        c = self.table.c
        query = select(*columns).where(
            self._open,
            c.next_attempt_at <= func.now(),
            or_(c.status != sql_constant(PENDING), c.received_at < func.now() - bindparam("stale", type_=Interval)),
        )
        # LIMIT NULL is no limit, in PostgreSQL: one statement with or without one.
        query = query.order_by(*order_by).limit(bindparam("limit", type_=Integer))
        return query.distinct() if distinct else query

    def due(
        self,
        session_factory: sessionmaker[Session],
        query: Select[Any],
        *,
        stale_after_seconds: float,
        limit: int | None = None,
    ) -> list[Row[Any]]:
        """Run a ``due_query``: pending rows older than ``stale_after_seconds``, and due retries."""
        with session_factory() as session:
            params = {"stale": timedelta(seconds=stale_after_seconds), "limit": limit}
            return list(session.execute(query, params).all())


def apply_batch(
    session_factory: sessionmaker[Session],
    batch: Callable[[unit_of_work.UnitOfWork, list[K]], B],
    one: Callable[[K], S],
    combine: Callable[[list[S]], B],
    *,
    now: datetime | None = None,
) -> B:
    """Run ``batch`` in one unit of work; should it raise, run ``one`` on each row it had claimed (each in its
    own transaction, so a bad row fails alone) and ``combine`` their results.

    ``batch`` appends the ids it claims to the list it is given. Errors that are not about a row (the
    database is unreachable), or that came before any row was claimed, propagate to the caller.
    """
    claimed: list[K] = []

    def work(uow: unit_of_work.UnitOfWork) -> B:
        claimed.clear()  # a retried transaction claims afresh
        return batch(uow, claimed)

    try:
        return unit_of_work.run(session_factory, work, now=now)
    except Exception:
        if not claimed or unit_of_work.database_unreachable(session_factory):
            raise
    return combine([one(key) for key in claimed])
