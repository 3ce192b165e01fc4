"""What the database says about the pipeline's health, read at scrape time: inbox backlogs and their oldest
row, open credits by grant source, the system accounts' balances, the notification backlog, open
discrepancies and the last reconciliation runs (``read_gauges``), and ledger entries by kind
(``EntryCounts``). Plain figures: the Prometheus collector around them is the receiver's
(``webhook_receiver/metrics.py``).

Every query reads a partial index or a handful of rows, except the first ``EntryCounts`` refresh of a process,
which counts the whole ledger once; after that it counts only entries newer than its watermark (a primary key
range), so a scrape costs the same on a ledger of ten rows or ten million.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, text

from billing_core.db.tables import SYSTEM_ACCOUNTS

_SYSTEM_CODES = [f"system:{kind}" for kind in SYSTEM_ACCOUNTS]  # as the first migration names them

# One round trip: each branch reads a partial index of the open rows (stripe_events ix_stripe_events_open and
# _dead, usage_inbox ix_usage_inbox_open and _dead, grants ix_grants_wallet_open, notifications
# ix_notifications_status_id, discrepancies ix_discrepancies_open) or a few rows by unique key.
_GAUGES = text(
    """
    SELECT 'stripe_events' AS family, status AS label, count(*) AS n, min(received_at) AS oldest, NULL::bigint AS mc
      FROM stripe_events WHERE status IN ('pending', 'waiting', 'failed') GROUP BY status
    UNION ALL
    SELECT 'stripe_events', 'dead', count(*), min(received_at), NULL FROM stripe_events WHERE status = 'dead'
    UNION ALL
    SELECT 'usage_inbox', status, count(*), min(received_at), NULL
      FROM usage_inbox WHERE status IN ('pending', 'failed') GROUP BY status
    UNION ALL
    SELECT 'usage_inbox', 'dead', count(*), min(received_at), NULL FROM usage_inbox WHERE status = 'dead'
    UNION ALL
    SELECT 'grants', source, count(*), NULL, sum(remaining_mc)::bigint
      FROM grants WHERE remaining_mc <> 0 GROUP BY source
    UNION ALL
    SELECT 'system_accounts', kind, 1, NULL, balance_mc
      FROM ledger_accounts WHERE code = ANY(:system_codes)
    UNION ALL
    SELECT 'notifications', status, count(*), min(created_at), NULL
      FROM notifications WHERE status IN ('pending', 'dead') GROUP BY status
    UNION ALL
    SELECT 'discrepancies', kind, count(*), min(found_at), NULL
      FROM discrepancies WHERE resolved_at IS NULL GROUP BY kind
    UNION ALL
    SELECT * FROM (
      SELECT DISTINCT ON (kind) 'reconciliation_runs', kind || ':' || status, 1,
             coalesce(finished_at, started_at), NULL::bigint
        FROM reconciliation_runs ORDER BY kind, id DESC
    ) AS last_runs
    """
)


@dataclass(frozen=True)
class Backlog:
    """Rows of one status: how many, and when the oldest arrived."""

    count: int
    oldest: datetime | None


@dataclass(frozen=True)
class Gauges:
    read_at: datetime
    stripe_events: dict[str, Backlog]  # by status: pending, waiting, failed, dead
    usage_inbox: dict[str, Backlog]  # pending, failed, dead
    grants_open_mc: dict[str, int]  # remaining millicredits of the grants not spent, by source (debt: negative)
    system_balances_mc: dict[str, int]  # the system accounts' balances, by kind
    notifications: dict[str, Backlog]  # pending, dead
    open_discrepancies: dict[str, Backlog]  # by kind
    last_reconciliation: dict[str, tuple[str, datetime]]  # kind -> (status, finished or started at)


def read_gauges(conn: Connection) -> Gauges:
    """The figures above, in one query on ``conn``."""
    by: dict[str, dict[str, Backlog]] = {
        f: {} for f in ("stripe_events", "usage_inbox", "notifications", "discrepancies")
    }
    grants: dict[str, int] = {}
    system: dict[str, int] = {}
    runs: dict[str, tuple[str, datetime]] = {}
    now = conn.execute(text("SELECT now()")).scalar_one()
    for family, label, n, oldest, mc in conn.execute(_GAUGES, {"system_codes": _SYSTEM_CODES}):
        if family == "grants":
            grants[label] = int(mc or 0)
        elif family == "system_accounts":
            system[label] = int(mc or 0)
        elif family == "reconciliation_runs":
            kind, _, status = label.partition(":")
            runs[kind] = (status, oldest)
        elif n:  # an aggregate without GROUP BY answers one row of 0 when there is nothing
            by[family][label] = Backlog(int(n), oldest)
    return Gauges(
        read_at=now,
        stripe_events=by["stripe_events"],
        usage_inbox=by["usage_inbox"],
        grants_open_mc=grants,
        system_balances_mc=system,
        notifications=by["notifications"],
        open_discrepancies=by["discrepancies"],
        last_reconciliation=runs,
    )


# Entries created longer ago than this are settled: an entry id below them can no longer be committed later
# (ids are taken inside transactions, and none lives this long), so the watermark may pass them.
SETTLE_SECONDS = 300

_ENTRIES_SINCE = text(
    """
    WITH fresh AS (SELECT id, kind, created_at FROM ledger_entries WHERE id > :after),
         settled AS (
           SELECT coalesce(max(id), :after) AS upto FROM fresh
            WHERE created_at < now() - make_interval(secs => :settle)
         )
    SELECT fresh.kind, count(*) AS n, count(*) FILTER (WHERE fresh.id <= settled.upto) AS settled_n, settled.upto
      FROM fresh, settled GROUP BY fresh.kind, settled.upto
    """
)


@dataclass
class EntryCounts:
    """Ledger entries by kind since the beginning, counted incrementally from a watermark (one per process).

    Entries below the watermark are counted once and kept in ``_settled``; each refresh counts those above it
    (a primary key range) and moves the watermark up to the newest settled one.
    """

    _after: int = 0
    _settled: Counter[str] = field(default_factory=Counter)

    def refresh(self, conn: Connection) -> dict[str, int]:
        totals = Counter(self._settled)
        upto = self._after
        for kind, n, settled_n, settled_upto in conn.execute(
            _ENTRIES_SINCE, {"after": self._after, "settle": SETTLE_SECONDS}
        ):
            totals[kind] += int(n)
            self._settled[kind] += int(settled_n)
            upto = int(settled_upto)
        self._after = upto
        return dict(totals)
