"""The webhook receiver's write path: one prepared ``INSERT ... ON CONFLICT DO NOTHING`` per Stripe event, on a
connection of the calling thread's own, in autocommit (one statement, one round trip, one commit).

This is the receiver's hottest statement, and it is the whole of its database work, so it goes through
psycopg's documented libpq layer (``psycopg.pq``) rather than a Session or even a psycopg cursor: measured
in the receiver, a Session's begin/flush/commit cost several times the insert, and a cursor's parameter
adaptation and result machinery twice what the server needs for it. A thread keeps its connection between
requests (as Django's persistent connections do); one the server has closed is replaced on first use, so a
database restart costs no delivery a 503.

Errors are raised as psycopg's own classes (``psycopg.errors.lookup`` of the SQLSTATE): a ``DataError`` is
about the event itself (PostgreSQL cannot hold it), anything else about the store.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from billing_core.settings import libpq_url

STATEMENT = b"billing_store_event"
INSERT_EVENT = (
    b"INSERT INTO stripe_events (id, type, api_version, livemode, created, payload) "
    b"VALUES ($1, $2, $3, $4, to_timestamp(CAST($5 AS bigint)), CAST($6 AS jsonb)) "
    b"ON CONFLICT (id) DO NOTHING RETURNING 1"
)


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


class EventInbox:
    def __init__(self, database_url: str, *, connect_timeout: int = 2) -> None:
        self.conninfo = make_conninfo(
            libpq_url(database_url),
            application_name="billing-inbox",
            connect_timeout=connect_timeout,
            # Nothing else writes these rows for long; a delivery must not wait longer than Stripe does.
            options="-c lock_timeout=5s -c statement_timeout=10s",
        ).encode()
        self._local = threading.local()

    def store(self, event: dict[str, Any], raw: bytes) -> bool:
        """Insert the event unless its id is known; True when this delivery stored it (committed)."""
        params = event_params(event, raw)
        for attempt in (1, 2):
            conn = self._connection()
            result = conn.exec_prepared(STATEMENT, params)
            if result.status == pq.ExecStatus.TUPLES_OK:
                return result.ntuples == 1
            if conn.status == pq.ConnStatus.OK or attempt == 2:
                raise _error(result, conn)
            # The server closed this connection (a restart, an administrator): once more on a fresh one.
            self._drop()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop()

    def _connection(self) -> pq.PGconn:
        conn: pq.PGconn | None = getattr(self._local, "conn", None)
        if conn is not None and conn.status == pq.ConnStatus.OK:
            return conn
        self._drop()
        conn = pq.PGconn.connect(self.conninfo)
        if conn.status != pq.ConnStatus.OK:
            message = conn.get_error_message()
            conn.finish()
            raise psycopg.OperationalError(f"connection to the event store failed: {message}")
        prepared = conn.prepare(STATEMENT, INSERT_EVENT)
        if prepared.status != pq.ExecStatus.COMMAND_OK:
            error = _error(prepared, conn)
            conn.finish()
            raise error
        self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.finish()


def _error(result: pq.PGresult, conn: pq.PGconn) -> psycopg.Error:
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    message = (result.error_message or conn.error_message or b"").decode(errors="replace").strip()
    if not sqlstate:
        return psycopg.OperationalError(message or "the event store connection failed")
    try:
        cls = psycopg.errors.lookup(sqlstate.decode())
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(message)
