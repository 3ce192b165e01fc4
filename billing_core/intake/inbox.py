"""One inbox mechanism for both tables of stored work: usage reports (``usage_inbox``) and Stripe events
(``stripe_events``).

A row is stored ``pending`` before it is acknowledged. A worker claims due rows ``FOR UPDATE SKIP LOCKED``
(two workers share the work, never a row), handles them, and marks each one done (applied, rejected,
processed, ignored) in the transaction of its effect, so a crash repeats the claim but never the effect. A
row whose handling fails is marked in a transaction of its own (the failed one rolled back): retried with
exponential backoff at ``next_attempt_at``, ``dead`` after ``max_attempts`` for an operator to reopen. A
batch that fails is retried row by row (``apply_batch``), so one poisoned row cannot hold up the others.

The table and column names below are this module's own constants, never input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Row, text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work

K = TypeVar("K")
B = TypeVar("B")
S = TypeVar("S")

PENDING, DEAD = "pending", "dead"
# Backoff after the n-th failed attempt: 2**n seconds (2 s, 4 s, 8 s ...), at most 10 minutes.
MAX_BACKOFF_SECONDS = 600


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


@dataclass(frozen=True)
class Inbox:
    table: str
    id_type: str  # the SQL type of the ``id`` column, for the arrays of bulk updates
    key_column: str  # what callers (operators) name a row by: the event id, the report's idempotency key
    retry_statuses: tuple[str, ...]  # open statuses besides pending, due again at ``next_attempt_at``
    error_column: str  # where a failure's message goes
    done_at_column: str  # stamped when a row is marked done
    max_attempts: int
    cleared_when_done: tuple[str, ...] = ()  # columns a successful attempt resets to NULL
    failure_code: tuple[str, str] | None = None  # (column, value) set when an attempt fails

    @property
    def open_statuses(self) -> tuple[str, ...]:
        return (PENDING, *self.retry_statuses)

    def _in(self, statuses: Sequence[str]) -> str:
        return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"

    # -- claiming ----------------------------------------------------------------------------------------
    def claim(
        self,
        session: Session,
        columns: str,
        *,
        where: str = "TRUE",
        params: dict[str, Any] | None = None,
        statuses: Sequence[str] | None = None,
        due_only: bool = True,
        order_by: str = "id",
        limit: int | None = None,
    ) -> list[Row[Any]]:
        """Lock open rows matching ``where`` (``FOR UPDATE SKIP LOCKED``: rows another worker holds are
        skipped, not waited for); ``due_only`` leaves out rows whose retry time has not come."""
        sql = f"SELECT {columns} FROM {self.table} WHERE {self._in(statuses or self.open_statuses)} AND {where}"
        if due_only:
            sql += " AND next_attempt_at <= now()"
        sql += f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return list(session.execute(text(sql + " FOR UPDATE SKIP LOCKED"), params or {}).all())

    # -- marking -----------------------------------------------------------------------------------------
    def mark_done(
        self,
        session: Session,
        ids: Sequence[Any],
        statuses: Sequence[str],
        details: dict[str, tuple[str, Sequence[Any]]] | None = None,
    ) -> None:
        """Record one final status per claimed row in one statement, in the transaction of the effects;
        ``details`` adds columns: name → (SQL type, one value per row)."""
        if not ids:
            return
        details = details or {}
        names = ["id", "status", *details]
        arrays = [f"CAST(:id AS {self.id_type}[])", "CAST(:status AS text[])"]
        arrays += [f"CAST(:{name} AS {sql_type}[])" for name, (sql_type, _) in details.items()]
        sets = [f"status = v.status, attempts = t.attempts + 1, {self.done_at_column} = now()"]
        sets += [f"{name} = v.{name}" for name in details]
        sets += [f"{name} = NULL" for name in self.cleared_when_done]
        params: dict[str, Any] = {"id": list(ids), "status": list(statuses)}
        params.update({name: list(values) for name, (_, values) in details.items()})
        session.execute(
            text(
                f"UPDATE {self.table} t SET {', '.join(sets)} "
                f"FROM unnest({', '.join(arrays)}) AS v({', '.join(names)}) WHERE t.id = v.id"
            ),
            params,
        )

    def mark_failed(
        self, session_factory: sessionmaker[Session], ids: Sequence[Any], status: str, error: str
    ) -> dict[Any, str]:
        """Record a failed attempt on open rows, in its own transaction (the attempt's rolled back): ``status``
        (``failed``, or ``dead`` for errors retrying cannot cure) and a retry time with exponential backoff,
        ``dead`` once ``max_attempts`` are spent. Returns each row's status afterwards."""
        code = f", {self.failure_code[0]} = '{self.failure_code[1]}'" if self.failure_code else ""
        with session_factory() as session, session.begin():
            rows = session.execute(
                text(
                    f"UPDATE {self.table} SET attempts = attempts + 1, {self.error_column} = :err{code}, "
                    "status = CASE WHEN attempts + 1 >= :max THEN 'dead' ELSE :status END, "
                    f"next_attempt_at = now() + make_interval(secs => least({MAX_BACKOFF_SECONDS}, "
                    "power(2, attempts + 1))) "
                    f"WHERE id = ANY(:ids) AND {self._in(self.open_statuses)} RETURNING id, status"
                ),
                {"ids": list(ids), "err": error[:2000], "max": self.max_attempts, "status": status},
            ).all()
        return {row.id: row.status for row in rows}

    def reopen(self, session_factory: sessionmaker[Session], key: str) -> Any | None:
        """Make a dead (or failed, or waiting) row due again now with a fresh attempt count; its id, or None
        when there is no such row to reopen."""
        with session_factory() as session, session.begin():
            return session.execute(
                text(
                    f"UPDATE {self.table} SET status = 'pending', attempts = 0, next_attempt_at = now() "
                    f"WHERE {self.key_column} = :k AND {self._in((DEAD, *self.retry_statuses))} RETURNING id"
                ),
                {"k": key},
            ).scalar()

    # -- the sweep ---------------------------------------------------------------------------------------
    def due(
        self,
        session_factory: sessionmaker[Session],
        columns: str,
        *,
        stale_after_seconds: float,
        order_by: str,
        limit: int | None = None,
    ) -> list[Row[Any]]:
        """Open rows a message should have handled by now: pending ones older than ``stale_after_seconds``
        (the broker lost or delayed their message) and retries whose time has come."""
        sql = (
            f"SELECT {columns} FROM {self.table} WHERE {self._in(self.open_statuses)} AND next_attempt_at <= now() "
            "AND (status <> 'pending' OR received_at < now() - make_interval(secs => :stale)) "
            f"ORDER BY {order_by}"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with session_factory() as session:
            return list(session.execute(text(sql), {"stale": stale_after_seconds}).all())


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
