"""The webhook receiver's write path: ``INSERT ... ON CONFLICT DO NOTHING`` of Stripe events in autocommit,
one statement and one commit per batch of the deliveries that are waiting at that moment.

This is the receiver's hottest statement, and it is the whole of its database work, so it goes through
psycopg's documented libpq layer (``psycopg.pq``) with prepared statements, rather than a Session or even a
psycopg cursor: measured in the receiver, a Session's begin/flush/commit cost several times the insert, and a
cursor's parameter adaptation and result machinery twice what the server needs for it. The process keeps
its connection between requests (as Django's persistent connections do); one the server has closed is
replaced on first use, so a database restart costs no delivery a 503.

Errors are raised as psycopg's own classes (``psycopg.errors.lookup`` of the SQLSTATE): a ``DataError`` is
about the event itself (PostgreSQL cannot hold it), anything else about the store.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.pq.abc import PGconn, PGresult  # the protocol of pq.PGconn, whose class psycopg picks at import

from billing_core.settings import libpq_url

# A batch of up to this many events is one statement and one commit (one prepared statement per size).
MAX_BATCH = 64


def insert_events_sql(count: int) -> bytes:
    rows = ", ".join(
        f"(${6 * i + 1}, ${6 * i + 2}, ${6 * i + 3}, ${6 * i + 4}, to_timestamp(CAST(${6 * i + 5} AS bigint)), "
        f"CAST(${6 * i + 6} AS json))"
        for i in range(count)
    )
    return (
        "INSERT INTO stripe_events (id, type, api_version, livemode, created, payload) "
        f"VALUES {rows} ON CONFLICT (id) DO NOTHING RETURNING id"
    ).encode()


def event_params(event: dict[str, Any], raw: bytes) -> list[bytes | None]:
    """The insert's parameters, as text, from a checked event (``stripe_events.check_event``)."""
    version, created = event.get("api_version"), event.get("created")
    return [
        event["id"].encode(),
        event["type"].encode(),
        version.encode() if isinstance(version, str) else None,
        b"t" if event.get("livemode") is True else b"f",
        str(created).encode() if isinstance(created, int) and not isinstance(created, bool) else None,
        raw,
    ]


@dataclass
class _Slot:
    """One delivery waiting for its batch's commit."""

    params: list[bytes | None]
    stored: bool = False
    error: BaseException | None = None
    done: bool = False


class EventInbox:
    """Group commit: deliveries that arrive while a commit is in flight (other threads of a threaded server)
    wait for it and are then inserted together, one statement and one commit for the lot, by whichever of
    them finds the writer free (as PostgreSQL's own WAL flush serves every committer that waits on it). Alone,
    a delivery is a batch of one. Every delivery still returns only after its own row is committed."""

    def __init__(self, database_url: str, *, connect_timeout: int = 2) -> None:
        self.conninfo = make_conninfo(
            libpq_url(database_url),
            application_name="billing-inbox",
            connect_timeout=connect_timeout,
            # Nothing else writes these rows for long; a delivery must not wait longer than Stripe does.
            options="-c lock_timeout=5s -c statement_timeout=10s",
        ).encode()
        self.connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._writing = False
        self._conn: PGconn | None = None  # used by the writer only
        self._prepared: set[int] = set()  # batch sizes prepared on self._conn

    def store(self, event: dict[str, Any], raw: bytes) -> bool:
        """Insert the event unless its id is known; True when this delivery stored it (committed)."""
        slot = _Slot(event_params(event, raw))
        with self._cond:
            self._pending.append(slot)
            while not slot.done:
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._cond.release()
                try:
                    self._write(batch)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.stored

    def close(self) -> None:
        with self._cond:
            self._drop()

    def _write(self, batch: list[_Slot]) -> None:
        """Settle every slot of the batch: stored or not, or the error that kept it out."""
        try:
            inserted = self._execute(batch)
            for slot in batch:
                # The same id twice in one batch: the first delivery stored it, the second is a duplicate.
                slot.stored = slot.params[0] in inserted
                inserted.discard(slot.params[0])
        except psycopg.DataError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for slot in batch:  # one event PostgreSQL cannot hold: find it, store the others
                    self._write([slot])
        except BaseException as exc:  # the store is down: every delivery of the batch gets its 503
            for slot in batch:
                slot.error = exc
        finally:
            for slot in batch:
                slot.done = True

    def _execute(self, batch: list[_Slot]) -> set[bytes | None]:
        params = [p for slot in batch for p in slot.params]
        name = f"billing_store_events_{len(batch)}".encode()
        for attempt in (1, 2):
            conn = self._connection()
            try:
                if len(batch) not in self._prepared:
                    conn.send_prepare(name, insert_events_sql(len(batch)))
                    prepared = _result(conn)
                    if prepared.status != pq.ExecStatus.COMMAND_OK:
                        raise _error(prepared, conn)
                    self._prepared.add(len(batch))
                conn.send_query_prepared(name, params)
                result = _result(conn)
                if result.status != pq.ExecStatus.TUPLES_OK:
                    raise _error(result, conn)
                return {result.get_value(row, 0) for row in range(result.ntuples)}
            except psycopg.Error:
                if conn.status == pq.ConnStatus.OK or attempt == 2:
                    raise
                # The server closed this connection (a restart, an administrator): once more on a fresh one.
                self._drop()
        raise AssertionError("unreachable")

    def _connection(self) -> PGconn:
        if self._conn is not None and self._conn.status == pq.ConnStatus.OK:
            return self._conn
        self._drop()
        self._conn = _connect(self.conninfo, self.connect_timeout)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._prepared.clear()
        if conn is not None:
            conn.finish()


# -- waiting on libpq without blocking the process ------------------------------------------------------
# libpq's blocking calls (PQexec*, PQconnectdb) wait inside C, where nothing else of the process can run. Here
# the waits are Python's select.poll, which gevent makes cooperative: under the receiver's gevent workers the
# other requests of the process go on while this one waits for its commit (and join its group commit). In a
# plain process it is the same wait libpq would do.


def _wait(conn: PGconn, events: int, timeout: float | None = None) -> bool:
    poller = select.poll()
    poller.register(conn.socket, events)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


def _result(conn: PGconn) -> PGresult:
    """The result of the one command sent: flush it, wait for the answer, collect it."""
    while conn.flush():
        _wait(conn, select.POLLOUT)
    while True:
        conn.consume_input()
        if not conn.is_busy():
            break
        _wait(conn, select.POLLIN)
    result = conn.get_result()
    while conn.get_result() is not None:  # the end of this command's results
        pass
    if result is None:
        raise psycopg.OperationalError(conn.get_error_message() or "the event store sent no result")
    return result


def _connect(conninfo: bytes, timeout: float) -> PGconn:
    """PQconnectStart/PQconnectPoll with our own deadline (libpq's connect_timeout is PQconnectdb's alone)."""
    conn = pq.PGconn.connect_start(conninfo)
    deadline = time.monotonic() + timeout
    status: int = pq.PollingStatus.WRITING
    try:
        while status not in (pq.PollingStatus.OK, pq.PollingStatus.FAILED):
            if conn.status == pq.ConnStatus.BAD:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait(
                conn, select.POLLIN if status == pq.PollingStatus.READING else select.POLLOUT, remaining
            ):
                raise psycopg.OperationalError(f"connection to the event store timed out after {timeout:g} s")
            status = conn.connect_poll()
        if conn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError(f"connection to the event store failed: {conn.get_error_message()}")
    except BaseException:
        conn.finish()
        raise
    return conn


def _error(result: PGresult, conn: PGconn) -> psycopg.Error:
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    message = (result.error_message or conn.error_message or b"").decode(errors="replace").strip()
    if not sqlstate:
        return psycopg.OperationalError(message or "the event store connection failed")
    try:
        cls = psycopg.errors.lookup(sqlstate.decode())
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(message)
