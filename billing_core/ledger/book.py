"""The posting engine: one ``Book`` per transaction collects entries, postings and grant changes on
locked wallets, then writes them in one fixed order.

Lock order, everywhere (it is what keeps concurrent commands free of deadlocks):
1. wallet rows, ``SELECT ... ORDER BY id FOR UPDATE``, all of them before anything else is written;
2. ledger entries, inserted in idempotency-key order (the unique index is a lock too);
3. grants, postings and the customers' ledger accounts: they belong to wallets locked in step 1;
4. system accounts, one ``UPDATE`` each in id order, last, so the hot rows are held the shortest time.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sized
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.errors import IdempotencyConflict, UnknownAccount
from billing_core.ledger import grant_rows, wallet_rows
from billing_core.ledger.grants import PRIORITY_BY_SOURCE, GrantLot, in_spending_order, plan_draws
from billing_core.ledger.system_accounts import system_account_ids
from billing_core.notify import low_balance


class ConcurrentDuplicate(Exception):
    """Another transaction committed the same idempotency key after we looked: retry the whole command."""


NON_STR_KEYS = orjson.OPT_NON_STR_KEYS  # as json.dumps, which writes {1: x} as {"1": x}

# A wallet locked together with the entry of an idempotency key, if any (one round trip where a replay check
# and a lock were two). The entry is read from the statement's snapshot: one committed by a concurrent first
# attempt while this statement waited for the lock is not seen, and the flush's insert then finds the key taken
# (``ConcurrentDuplicate``): the command is retried and replays.
# The wallet's columns, with its low-balance threshold and flag for the balance watch. Not its balance: a lock
# that waited reads joined rows from the snapshot taken before the wait, which may predate the last holder's
# commit; the flush's balance UPDATE returns what each balance came to instead (``_watch_balances``).
_WALLET_COLUMNS = (
    "w.id, w.account, w.available_account_id, w.held_account_id, w.negative_since, w.stripe_customer_id, "
    "w.low_balance_threshold_mc, w.low_balance_notified_at IS NOT NULL AS low_notified"
)
_LOCK_WALLETS = text(
    f"SELECT {_WALLET_COLUMNS} FROM wallets w "
    "WHERE w.account = ANY(CAST(:accounts AS text[])) ORDER BY w.id FOR UPDATE OF w"
)
# The two hot commands (a hold's create and its capture) lock in a psycopg pipeline: the lock, then in the same
# round trip the reads that need it (``pipelined``). Each statement of a pipeline runs after the one before it
# with a snapshot of its own, so what follows the lock reads what the last holder of the lock committed.
_LOCK_WALLET_FINDING_RAW: LiteralString = (
    f"SELECT {_WALLET_COLUMNS}, e.id AS entry_id, e.kind AS entry_kind, e.fingerprint AS entry_fp, "
    "e.created_at AS entry_created_at FROM wallets w "
    "LEFT JOIN ledger_entries e ON e.idempotency_key = %(key)s WHERE w.account = %(account)s FOR UPDATE OF w"
)
_LOCK_HOLD_WALLET_FINDING_RAW: LiteralString = (
    f"SELECT {_WALLET_COLUMNS}, e.id AS entry_id, e.kind AS entry_kind, e.fingerprint AS entry_fp, "
    "e.created_at AS entry_created_at FROM holds h JOIN wallets w ON w.id = h.wallet_id "
    "LEFT JOIN ledger_entries e ON e.idempotency_key = %(key)s WHERE h.id = %(h)s FOR UPDATE OF w"
)
# ``grant_rows.LOT_COLUMNS`` as plain SQL, for the reads on every debit's and hold's path.
_LOT_COLUMNS_SQL = "g.id, g.wallet_id, g.source, g.amount_mc, g.remaining_mc, g.expires_at, g.priority, g.external_ref"
_LOTS_OF_WALLETS = text(
    f"SELECT {_LOT_COLUMNS_SQL} FROM grants g "
    "WHERE g.wallet_id = ANY(CAST(:ids AS bigint[])) AND g.remaining_mc <> 0 ORDER BY g.id"
)
# The open grants of the account's wallet (a wallet's id never changes: no lock needed to find it).
_LOTS_OF_ACCOUNT: LiteralString = (
    f"SELECT {_LOT_COLUMNS_SQL} FROM grants g "
    "WHERE g.wallet_id = (SELECT id FROM wallets WHERE account = %(account)s) AND g.remaining_mc <> 0 ORDER BY g.id"
)
# The open grants of a hold's wallet, and those the hold drew from even if they are empty now: a capture or a
# release posts to every one of them (``Book.grant_lots`` would otherwise read those in a round trip more).
# Two branches, not an OR: each keeps its index (the open grants' partial index, the placing entry's postings).
# UNION ALL: a grant both open and drawn comes twice, and ``Book._locked`` keeps it once (cheaper than a sort).
_LOTS_OF_HOLD: LiteralString = (
    f"SELECT {_LOT_COLUMNS_SQL} FROM holds h JOIN grants g ON g.wallet_id = h.wallet_id AND g.remaining_mc <> 0 "
    "WHERE h.id = %(h)s "
    f"UNION ALL SELECT {_LOT_COLUMNS_SQL} FROM holds h JOIN postings p ON p.entry_id = h.placed_entry_id "
    "JOIN grants g ON g.id = p.grant_id WHERE h.id = %(h)s"
)
# The entries of a flush, in idempotency-key order (the unique index is a lock: one order for everyone).
_ENTRY_ROWS = """
    INSERT INTO ledger_entries (kind, idempotency_key, fingerprint, external_ref, metadata, occurred_at)
    SELECT k, key, fp, ref, CAST(meta AS jsonb), occ
    FROM unnest(CAST(%(kinds)b AS text[]), CAST(%(keys)b AS text[]), CAST(%(fps)b AS text[]),
                CAST(%(refs)b AS text[]), CAST(%(metas)b AS text[]), CAST(%(occs)b AS timestamptz[]))
         WITH ORDINALITY AS t(k, key, fp, ref, meta, occ, n)
    ORDER BY n
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key, id
"""
_INSERT_ENTRIES: LiteralString = _ENTRY_ROWS


def _by_key(keyed: bool, column: LiteralString, ids: LiteralString, sql_type: LiteralString) -> LiteralString:
    """The keyed form's extra condition (``KEYED_ROWS``): ``column`` among the array parameter ``ids``."""
    return " AND " + column + " = ANY(CAST(%(" + ids + ")b AS " + sql_type + "[]))" if keyed else ""


# Holds opened and closed by the flush's entries (``e``: idempotency key -> entry id). A close only takes a
# hold still pending: one settled meanwhile is left as it is (the wallet lock makes that a double check).
def _hold_rows(keyed: bool) -> LiteralString:
    return (
        """
ho AS (
    INSERT INTO holds (id, wallet_id, amount_mc, status, expires_at, placed_entry_id)
    SELECT v.id, v.w, v.amt, 'pending', v.exp, e.id
    FROM unnest(CAST(%(hoi)b AS text[]), CAST(%(hok)b AS text[]), CAST(%(how)b AS bigint[]),
                CAST(%(hoa)b AS bigint[]), CAST(%(hox)b AS timestamptz[])) AS v(id, key, w, amt, exp)
    JOIN e ON e.idempotency_key = v.key
), hc AS (
    UPDATE holds h SET status = v.s, captured_mc = v.c, settled_entry_id = e.id, settled_at = %(now)s
    FROM unnest(CAST(%(hci)b AS text[]), CAST(%(hck)b AS text[]), CAST(%(hcs)b AS text[]),
                CAST(%(hcc)b AS bigint[])) AS v(id, key, s, c)
    JOIN e ON e.idempotency_key = v.key
    WHERE h.id = v.id AND h.status = 'pending'"""
        + _by_key(keyed, "h.id", "hci", "text")
        + """
)"""
    )


# Which updated balances the balance watch must see: a wallet's available account (``t``, its low-balance
# threshold, is NULL for every other account) below its threshold while armed, back at or above it while
# notified, or brought from above zero to zero or below. A superset of what ``notify.low_balance.watch``
# decides on, so that a flush of well-funded wallets (nearly every one) reads no row back.
_MAY_CROSS: LiteralString = (
    "t IS NOT NULL AND ((NOT n AND balance_mc < t) OR (n AND balance_mc >= t) "
    "OR (balance_mc <= 0 AND balance_mc - d > 0))"
)
# Every row the sub-statements touch belongs to a wallet this transaction has locked, or is a new entry: their
# order inside the statement cannot deadlock. Empty arrays make a sub-statement a no-op.
#
# Keyed (a flush of at most KEYED_ROWS rows per table: a command's, not a usage batch's), each UPDATE also names
# its rows by ``id = ANY(ids)``, which the join already implies. psycopg prepares the statement, and
# PostgreSQL's generic plan guesses 10 elements per ``unnest``: joined on that guess alone, a table of a few
# thousand rows looked cheaper to read whole than to probe ten times (bench.check: every hold read all 2,006
# ledger accounts and 1,000 grants, ~0.3 ms of the statement's ~0.7). Named by key, the primary key wins at
# any size (tests/integration/test_ledger_plans.py). Not for batches: on a small table the plan may still
# read it whole, and a parameter's ANY is matched element by element (PostgreSQL hashes constant arrays
# only), hundreds of ids against every row; joined, a batch's rows are hashed once.
KEYED_ROWS = 32


def _flush_at_once(keyed: bool) -> LiteralString:
    return (
        "WITH e AS ("
        + _ENTRY_ROWS
        + """
), p AS (
    INSERT INTO postings (entry_id, line, account_id, grant_id, amount_mc)
    SELECT e.id, v.n, v.a, v.g, v.m
    FROM unnest(CAST(%(pk)b AS text[]), CAST(%(pn)b AS smallint[]), CAST(%(pa)b AS bigint[]),
                CAST(%(pg)b AS bigint[]), CAST(%(pm)b AS bigint[])) AS v(key, n, a, g, m)
    JOIN e ON e.idempotency_key = v.key
), g AS ("""
        + _update_grants(keyed, "gi", "gr", "ga")
        + """), b AS ("""
        + _add_to_balances(keyed)
        + "), "
        + _hold_rows(keyed)
        + """
SELECT idempotency_key, id, NULL::bigint AS balance_mc FROM e
UNION ALL SELECT NULL, id, balance_mc FROM b WHERE """
        + _MAY_CROSS
    )


def _add_to_balances(keyed: bool) -> LiteralString:
    return (
        "UPDATE ledger_accounts la SET balance_mc = la.balance_mc + v.d FROM unnest("
        "CAST(%(bi)b AS bigint[]), CAST(%(bd)b AS bigint[]), CAST(%(bt)b AS bigint[]), CAST(%(bn)b AS boolean[])) "
        "AS v(id, d, t, n) WHERE la.id = v.id"
        + _by_key(keyed, "la.id", "bi", "bigint")
        + " RETURNING la.id, la.balance_mc, v.d, v.t, v.n"
    )


def _update_grants(keyed: bool, ids: LiteralString, rems: LiteralString, amts: LiteralString) -> LiteralString:
    # A grant's remaining and amount, set (not added): the book computed them under the wallet lock.
    return (
        "UPDATE grants g SET remaining_mc = v.rem, amount_mc = v.amt FROM unnest(CAST(%(" + ids + ")b AS bigint[]), "
        "CAST(%("
        + rems
        + ")b AS bigint[]), CAST(%("
        + amts
        + ")b AS bigint[])) AS v(id, rem, amt) WHERE g.id = v.id"
        + _by_key(keyed, "g.id", ids, "bigint")
    )


def _keyed(*rows: Sized) -> bool:
    """Whether a flush changing these rows (per table) names them by key as well (``KEYED_ROWS``)."""
    return all(len(r) <= KEYED_ROWS for r in rows)


# Each statement in its two forms, by ``_keyed``.
_FLUSH_AT_ONCE = {keyed: _flush_at_once(keyed) for keyed in (False, True)}
# The customers' balances, answering those the balance watch must look at (``_MAY_CROSS``).
_ADD_TO_BALANCES = {
    keyed: "WITH b AS (" + _add_to_balances(keyed) + ") SELECT id, balance_mc FROM b WHERE " + _MAY_CROSS
    for keyed in (False, True)
}
_UPDATE_GRANTS = {keyed: _update_grants(keyed, "ids", "rems", "amts") for keyed in (False, True)}
# After the entries were written on their own (``_flush_in_steps``): ``e`` is read back from the table.
_WRITE_HOLDS = {
    keyed: "WITH e AS (SELECT idempotency_key, id FROM ledger_entries "
    "WHERE idempotency_key = ANY(CAST(%(hok)b AS text[]) || CAST(%(hck)b AS text[]))), "
    + _hold_rows(keyed)
    + " SELECT 1"
    for keyed in (False, True)
}


def fingerprint(kind: str, body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request: what makes a replay a replay and not a conflict."""
    canonical = json.dumps({"kind": kind, **body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class WalletState:
    id: int
    account: str
    available_account_id: int
    held_account_id: int
    negative_since: datetime | None
    stripe_customer_id: str | None = None
    low_balance_threshold_mc: int | None = None  # None: the default (notify.low_balance.DEFAULT_THRESHOLD_MC)
    low_notified: bool = False  # a low-balance notice went out and no top-up has re-armed it since
    lots: list[GrantLot] | None = None  # loaded on first use: open grants (remaining <> 0)
    touched: bool = False

    @classmethod
    def of_row(cls, row: Any) -> WalletState:
        """From a row of ``_WALLET_COLUMNS``."""
        return cls(
            row.id,
            row.account,
            row.available_account_id,
            row.held_account_id,
            row.negative_since,
            row.stripe_customer_id,
            row.low_balance_threshold_mc,
            row.low_notified,
        )

    def debt_lot(self) -> GrantLot | None:
        assert self.lots is not None
        return next((lot for lot in self.lots if lot.source == "debt"), None)


@dataclass
class EntryDraft:
    kind: str
    idempotency_key: str
    fingerprint: str
    occurred_at: datetime
    external_ref: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    postings: list[tuple[int, GrantLot | None, int]] = field(default_factory=list)
    id: int | None = None


@dataclass(frozen=True)
class HoldChange:
    """A hold opened (``status`` pending) or closed by an entry of this transaction, written with the entry."""

    hold_id: str
    entry: EntryDraft
    status: str
    wallet_id: int | None = None
    amount_mc: int | None = None
    expires_at: datetime | None = None
    captured_mc: int | None = None


@dataclass(frozen=True)
class ExistingEntry:
    id: int
    kind: str
    fingerprint: str
    created_at: datetime


def _driver_connection(session: Session) -> psycopg.Connection[Any]:
    raw = session.connection().connection.driver_connection
    if not isinstance(raw, psycopg.Connection):  # make_engine always builds on psycopg 3
        raise TypeError(f"ledger writes need a psycopg connection, not {type(raw).__name__}")
    return raw


def bulk_execute(session: Session, sql: LiteralString, params: dict[str, Any]) -> list[Any]:
    """Run a multi-row statement with its arrays sent in PostgreSQL's binary format (``%(name)b``), on the
    session's own connection, inside its transaction. In text format psycopg escapes every element of every
    string array, which cost the client more than the server spent on the whole insert."""
    with _driver_connection(session).cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def pipelined(session: Session, statements: list[tuple[LiteralString, dict[str, Any]]]) -> list[list[Any]]:
    """Run statements one after the other on the server but in one round trip (psycopg's pipeline mode),
    inside the session's transaction; rows by column name. A transaction not begun yet costs a round trip
    before it: psycopg sends its ``BEGIN`` with a sync of its own even in a pipeline.

    The hot commands read three or four times before they write (lock, grants, hold): one round trip instead
    of four, and the driver's cursor instead of the session's execution layer, which cost more CPU than the
    statements themselves. An error in one statement aborts those after it and surfaces here."""
    raw = _driver_connection(session)
    cursors = [raw.cursor(row_factory=namedtuple_row) for _ in statements]
    try:
        with raw.pipeline() as pipeline:
            for cur, (sql, params) in zip(cursors, statements, strict=True):
                cur.execute(sql, params)
            pipeline.sync()
            return [cur.fetchall() for cur in cursors]
    finally:
        for cur in cursors:
            cur.close()


class Book:
    """The effects of one transaction, held in memory until ``flush``; see the module docstring."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self.wallets: dict[str, WalletState] = {}
        self.entries: list[EntryDraft] = []
        self.new_lots: list[GrantLot] = []
        self.holds: list[HoldChange] = []
        self.deltas: dict[int, int] = defaultdict(int)
        self.balances_after: dict[int, int] = {}  # ledger account id -> its balance after this flush's update
        self._last_entry_for_wallet: dict[int, EntryDraft] = {}

    # -- reading -------------------------------------------------------------------------------------
    def system_account(self, kind: str) -> int:
        return system_account_ids(self.session)[kind]

    def find_entries(self, keys: list[str]) -> dict[str, ExistingEntry]:
        if not keys:
            return {}
        rows = self.session.execute(
            text(
                # A join rather than "= ANY(array)": a generic plan made while the table was small (psycopg
                # prepares after 5 runs) would otherwise scan the table, comparing every row with every key.
                "SELECT e.id, e.kind, e.idempotency_key, e.fingerprint, e.created_at "
                "FROM unnest(CAST(:keys AS text[])) AS k(key) JOIN ledger_entries e ON e.idempotency_key = k.key"
            ),
            {"keys": keys},
        ).all()
        return {r.idempotency_key: ExistingEntry(r.id, r.kind, r.fingerprint, r.created_at) for r in rows}

    def find_entry(self, key: str, fp: str) -> ExistingEntry | None:
        """The first entry of this key when the request is a replay; a conflict when the body differs."""
        existing = self.find_entries([key]).get(key)
        if existing is not None and existing.fingerprint != fp:
            raise IdempotencyConflict("idempotency key already used with a different request", idempotency_key=key)
        return existing

    # -- locking -------------------------------------------------------------------------------------
    def lock_wallets(
        self, accounts: list[str], *, create: bool = False, missing_ok: bool = False
    ) -> dict[str, WalletState]:
        """Lock the named wallets (sorted by id, in one statement). Unknown names raise ``UnknownAccount``,
        unless ``create`` (they are created empty) or ``missing_ok`` (they are left out of the answer)."""
        wanted = sorted(set(accounts) - set(self.wallets))
        if not wanted:
            return {a: self.wallets[a] for a in accounts}
        if self.entries:
            raise RuntimeError("wallets must all be locked before the first entry is drafted")
        self._lock_existing(wanted)
        missing = [a for a in wanted if a not in self.wallets]
        if missing and create:
            # Created only when the lock found them missing: an account's first use pays a second round
            # trip, every later one does not. A concurrent creator's wallet is found by the second lock.
            self._create_missing(missing)
            self._lock_existing(missing)
            missing = [a for a in missing if a not in self.wallets]
        if missing and not (create or missing_ok):
            raise UnknownAccount.named(missing[0])
        return {a: self.wallets[a] for a in accounts if a in self.wallets}

    def _lock_existing(self, accounts: list[str]) -> None:
        for r in self.session.execute(_LOCK_WALLETS, {"accounts": accounts}).all():
            self.wallets[r.account] = WalletState.of_row(r)

    def lock_wallet(self, account: str, *, create: bool = False) -> WalletState:
        return self.lock_wallets([account], create=create)[account]

    def lock_wallet_finding(self, account: str, key: str, fp: str) -> tuple[WalletState | None, ExistingEntry | None]:
        """Lock ``account``'s wallet, find the entry of ``key`` and load the wallet's open grants, in one round
        trip: (the wallet or None when the account has none, the entry when the command is a replay). A replay
        with another body raises ``IdempotencyConflict``, as ``find_entry`` does."""
        params = {"account": account, "key": key}
        locked, lots = pipelined(self.session, [(_LOCK_WALLET_FINDING_RAW, params), (_LOTS_OF_ACCOUNT, params)])
        if not locked:  # no wallet: the key may still be another account's (a conflict, not a 404)
            return None, self.find_entry(key, fp)
        return self._locked(locked[0], lots), self._existing(locked[0], key, fp)

    def lock_wallet_of_hold(
        self, hold_id: str, key: str | None = None, fp: str = "", *, also: tuple[LiteralString, dict[str, Any]]
    ) -> tuple[WalletState | None, ExistingEntry | None, list[Any]]:
        """Lock the wallet a hold belongs to, found through the hold (a hold never changes wallets), find the
        entry of ``key`` if given, load the wallet's grants the hold may post to, and run ``also`` (the hold's
        own read) after the lock, all in one round trip: (None, ..., ...) for an unknown hold."""
        lock = (_LOCK_HOLD_WALLET_FINDING_RAW, {"h": hold_id, "key": key or ""})
        locked, lots, rows = pipelined(self.session, [lock, (_LOTS_OF_HOLD, {"h": hold_id}), also])
        if not locked:
            return None, (self.find_entry(key, fp) if key else None), []
        return self._locked(locked[0], lots), (self._existing(locked[0], key, fp) if key else None), rows

    @staticmethod
    def _existing(row: Any, key: str, fp: str) -> ExistingEntry | None:
        if row.entry_id is None:
            return None
        if row.entry_fp != fp:
            raise IdempotencyConflict("idempotency key already used with a different request", idempotency_key=key)
        return ExistingEntry(row.entry_id, row.entry_kind, row.entry_fp, row.entry_created_at)

    def _locked(self, row: Any, lots: list[Any]) -> WalletState:
        """The wallet of a lock's row, with its grants as read after the lock; a wallet this transaction had
        locked already keeps its own (drafted entries may have moved them since)."""
        known = self.wallets.get(row.account)
        if known is None:
            if self.entries:
                raise RuntimeError("wallets must all be locked before the first entry is drafted")
            known = self.wallets[row.account] = WalletState.of_row(row)
        if known.lots is None:  # by id, once each (``_LOTS_OF_HOLD`` may answer a grant twice)
            known.lots = [grant_rows.lot_from_row(r) for _, r in sorted({r.id: r for r in lots}.items())]
        return known

    def _create_missing(self, accounts: list[str]) -> None:
        # A wallet is created, empty, the first time an account is named. ON CONFLICT makes two
        # transactions naming the same new account at once both succeed with one wallet.
        self.session.execute(
            text(
                """
                WITH new AS (
                    SELECT a FROM unnest(CAST(:accounts AS text[])) AS a
                    WHERE NOT EXISTS (SELECT 1 FROM wallets w WHERE w.account = a)
                ), avail AS (
                    INSERT INTO ledger_accounts (code, kind)
                    SELECT 'available:' || a, 'available' FROM new ORDER BY a
                    ON CONFLICT (code) DO NOTHING RETURNING id, substr(code, 11) AS account
                ), held AS (
                    INSERT INTO ledger_accounts (code, kind)
                    SELECT 'held:' || a, 'held' FROM new ORDER BY a
                    ON CONFLICT (code) DO NOTHING RETURNING id, substr(code, 6) AS account
                )
                INSERT INTO wallets (account, available_account_id, held_account_id)
                SELECT avail.account, avail.id, held.id FROM avail JOIN held USING (account)
                ORDER BY avail.account
                ON CONFLICT (account) DO NOTHING
                """
            ),
            {"accounts": accounts},
        )

    def lots(self, wallet: WalletState) -> list[GrantLot]:
        """The wallet's open grants (remaining <> 0), loaded once per transaction under the wallet lock."""
        if wallet.lots is None:
            self.load_lots([wallet])
        assert wallet.lots is not None
        return wallet.lots

    def load_lots(self, wallets: list[WalletState]) -> None:
        """Load the open grants of several wallets in one query."""
        todo = {w.id: w for w in wallets if w.lots is None}
        if not todo:
            return
        loaded: dict[int, list[GrantLot]] = {wallet_id: [] for wallet_id in todo}
        rows = self.session.execute(_LOTS_OF_WALLETS, {"ids": list(todo)}).all()
        for r in rows:
            loaded[r.wallet_id].append(grant_rows.lot_from_row(r))
        for wallet_id, wallet in todo.items():
            wallet.lots = loaded[wallet_id]

    def grant_lots(self, grant_ids: list[int]) -> dict[int, GrantLot]:
        """Lots by id, including exhausted ones (a hold release returns credits to a grant at zero).
        Their wallets must be locked already."""
        self.load_lots(list(self.wallets.values()))
        known = {lot.id: lot for w in self.wallets.values() for lot in w.lots or [] if lot.id is not None}
        missing = [g for g in set(grant_ids) if g not in known]
        if missing:
            wallets_by_id = {w.id: w for w in self.wallets.values()}
            for lot in grant_rows.lots_by_id(self.session, missing):
                assert lot.id is not None  # read from its row
                self.lots(wallets_by_id[lot.wallet_id]).append(lot)
                known[lot.id] = lot
        return {g: known[g] for g in grant_ids}

    def spendable(self, wallet: WalletState) -> int:
        return sum(lot.remaining_mc for lot in in_spending_order(self.lots(wallet), self.now))

    # -- drafting ------------------------------------------------------------------------------------
    def entry(
        self,
        kind: str,
        idempotency_key: str,
        fp: str,
        *,
        external_ref: str | None = None,
        metadata: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> EntryDraft:
        draft = EntryDraft(kind, idempotency_key, fp, occurred_at or self.now, external_ref, metadata or {})
        self.entries.append(draft)
        return draft

    def post(self, entry: EntryDraft, account_id: int, amount_mc: int, lot: GrantLot | None = None) -> None:
        if amount_mc == 0:
            return
        entry.postings.append((account_id, lot, amount_mc))
        self.deltas[account_id] += amount_mc

    def post_to_wallet(self, entry: EntryDraft, wallet: WalletState, lot: GrantLot, amount_mc: int) -> None:
        """A posting on the available account, always through a grant so the grant stays its sub-ledger."""
        if amount_mc == 0:
            return
        lot.remaining_mc += amount_mc
        lot.dirty = True
        wallet.touched = True
        self._last_entry_for_wallet[wallet.id] = entry
        self.post(entry, wallet.available_account_id, amount_mc, lot)

    def draw(self, entry: EntryDraft, wallet: WalletState, amount_mc: int) -> tuple[list[tuple[GrantLot, int]], int]:
        """Take up to ``amount_mc`` from spendable grants in spending order; returns draws and shortfall."""
        draws, shortfall = plan_draws(self.lots(wallet), amount_mc, self.now)
        for lot, take in draws:
            self.post_to_wallet(entry, wallet, lot, -take)
        return draws, shortfall

    def take_from(self, entry: EntryDraft, wallet: WalletState, lot: GrantLot, amount_mc: int) -> int:
        """Take up to ``amount_mc`` from one grant, if it is spendable; returns what was taken."""
        if not lot.spendable_at(self.now):
            return 0
        take = min(lot.remaining_mc, amount_mc)
        self.post_to_wallet(entry, wallet, lot, -take)
        return take

    def run_into_debt(self, entry: EntryDraft, wallet: WalletState, amount_mc: int) -> None:
        """Post an unpaid amount against the wallet's debt grant (negative remaining; the wallet is flagged)."""
        if amount_mc == 0:
            return
        self.lots(wallet)
        debt = wallet.debt_lot()
        if debt is None:
            # A wallet has one debt grant for life; once paid off (remaining 0) it is not among the open lots.
            settled = grant_rows.debt_grant_id(self.session, wallet.id)
            debt = self.grant_lots([settled])[settled] if settled else self.new_grant(entry, wallet, "debt", 0, None)
        self.post_to_wallet(entry, wallet, debt, -amount_mc)

    def new_grant(
        self,
        entry: EntryDraft,
        wallet: WalletState,
        source: str,
        amount_mc: int,
        expires_at: datetime | None,
        *,
        priority: int | None = None,
        external_ref: str | None = None,
    ) -> GrantLot:
        """A new lot in the wallet, funded by a posting of ``amount_mc`` (the caller posts the other side)."""
        lot = GrantLot(
            wallet_id=wallet.id,
            source=source,
            remaining_mc=0,
            expires_at=expires_at,
            priority=PRIORITY_BY_SOURCE[source] if priority is None else priority,
            amount_mc=amount_mc,
            external_ref=external_ref,
            entry_key=entry.idempotency_key,
        )
        self.lots(wallet).append(lot)
        self.new_lots.append(lot)
        self.post_to_wallet(entry, wallet, lot, amount_mc)
        return lot

    def credit_lot(
        self,
        entry: EntryDraft,
        wallet: WalletState,
        source: str,
        amount_mc: int,
        expires_at: datetime | None,
        *,
        priority: int,
    ) -> GrantLot:
        """Credit an open lot of the same source, expiry and priority if the wallet has one, else a new grant.
        For credits with no purchase of their own (transfers in): merging keeps a busy wallet at a handful
        of lots instead of one per transfer, which every later draw would have to load and sort."""
        for lot in self.lots(wallet):
            if (lot.source, lot.expires_at, lot.priority) == (source, expires_at, priority) and lot.remaining_mc > 0:
                lot.amount_mc += amount_mc
                self.post_to_wallet(entry, wallet, lot, amount_mc)
                return lot
        return self.new_grant(entry, wallet, source, amount_mc, expires_at, priority=priority)

    def return_to_grant(self, entry: EntryDraft, wallet: WalletState, lot: GrantLot, amount_mc: int) -> None:
        """Credits coming back from a hold go to the grant they came from; if it has expired meanwhile, they
        expire now instead of reviving a dead grant (so each grant expires exactly once)."""
        if lot.expired_at(self.now):
            self.post(entry, self.system_account("expiry"), amount_mc)
        else:
            self.post_to_wallet(entry, wallet, lot, amount_mc)

    def _settle_debts(self) -> None:
        # Credits arriving in a wallet that owes pay the debt first, in spending order, inside the entry that
        # brought them: a flagged wallet is cleared by the same transaction that funds it.
        for wallet in self.wallets.values():
            if not wallet.touched or wallet.lots is None:
                continue
            debt = wallet.debt_lot()
            if debt is None or debt.remaining_mc == 0:
                continue
            entry = self._last_entry_for_wallet[wallet.id]
            draws, _ = plan_draws(wallet.lots, -debt.remaining_mc, self.now)
            for lot, take in draws:
                self.post_to_wallet(entry, wallet, lot, -take)
                self.post_to_wallet(entry, wallet, debt, take)

    def open_hold(self, entry: EntryDraft, hold_id: str, wallet_id: int, amount_mc: int, expires_at: datetime) -> None:
        """A pending hold placed by ``entry``: its row is written with the entry."""
        self.holds.append(HoldChange(hold_id, entry, "pending", wallet_id, amount_mc, expires_at))

    def close_hold(self, entry: EntryDraft, hold_id: str, status: str, captured_mc: int | None) -> None:
        """Settle a pending hold by ``entry`` (captured, released, expired); a hold closed meanwhile stays as is."""
        self.holds.append(HoldChange(hold_id, entry, status, captured_mc=captured_mc))

    # -- writing -------------------------------------------------------------------------------------
    def _bulk(self, sql: LiteralString, params: dict[str, Any]) -> list[Any]:
        return bulk_execute(self.session, sql, params)

    def flush(self) -> None:
        """Write everything drafted, in the module's lock order. Raises ``ConcurrentDuplicate`` when another
        transaction committed one of our idempotency keys since we looked (the caller retries)."""
        if not self.entries:
            return
        self._settle_debts()
        ordered = sorted(self.entries, key=lambda e: e.idempotency_key)
        entry_params = {
            "kinds": [e.kind for e in ordered],
            "keys": [e.idempotency_key for e in ordered],
            "fps": [e.fingerprint for e in ordered],
            "refs": [e.external_ref for e in ordered],
            # orjson: several times the standard library's speed on the hot path (key order is jsonb's own)
            "metas": [orjson.dumps(e.metadata, default=str, option=NON_STR_KEYS).decode() for e in ordered],
            "occs": [e.occurred_at for e in ordered],
        }
        if self.new_lots:
            self._flush_in_steps(ordered, entry_params)
            self._write_system_balances(self._system_deltas())
        else:
            system = self._system_deltas()
            # One hot system row (a capture's usage revenue) can go in the same statement: it is the only row
            # outside this transaction's wallets, so no lock order can cross it. Several keep their id order.
            together = system if len(system) == 1 else {}
            self._flush_at_once(ordered, entry_params, together)
            self._write_system_balances({a: d for a, d in system.items() if a not in together})
        self._write_flags()
        self._watch_balances()
        self.balances_after = {}
        self.entries = []
        self.new_lots = []
        self.holds = []
        self.deltas = defaultdict(int)

    def _set_entry_ids(self, ordered: list[EntryDraft], rows: list[Any]) -> None:
        ids: dict[str, int] = {row[0]: row[1] for row in rows if row[0] is not None}
        # The flush's one statement also answers the balances it moved (key NULL): (account id, balance after).
        self.balances_after.update((row[1], row[2]) for row in rows if row[0] is None)
        if len(ids) != len(ordered):
            raise ConcurrentDuplicate(next(e.idempotency_key for e in ordered if e.idempotency_key not in ids))
        for e in self.entries:
            e.id = ids[e.idempotency_key]

    def _dirty_lots(self) -> list[GrantLot]:
        return [lot for w in self.wallets.values() for lot in (w.lots or []) if lot.dirty and lot.id is not None]

    def _customer_deltas(self) -> dict[int, int]:
        system_ids = set(system_account_ids(self.session).values())
        return {a: d for a, d in self.deltas.items() if d and a not in system_ids}

    def _system_deltas(self) -> dict[int, int]:
        system_ids = set(system_account_ids(self.session).values())
        return {a: d for a, d in sorted(self.deltas.items()) if d and a in system_ids}

    def _flush_at_once(self, ordered: list[EntryDraft], entry_params: dict[str, Any], system: dict[int, int]) -> None:
        """No new grant to insert (every debit, hold, capture and release): entries, postings, grant changes and
        the customers' balances in one statement, one round trip where they were four. A posting names its
        entry by idempotency key; a key another transaction took leaves its entry (and postings) out, which
        ``_set_entry_ids`` turns into ``ConcurrentDuplicate``: the caller rolls back and retries."""
        postings = [
            (e.idempotency_key, line, acc, lot.id if lot else None, amt)
            for e in self.entries
            for line, (acc, lot, amt) in enumerate(e.postings, 1)
        ]
        dirty = self._dirty_lots()
        customer = self._customer_deltas()
        keys, lines, account_ids, grant_ids, amounts = (
            (list(c) for c in zip(*postings, strict=True)) if postings else ([], [], [], [], [])
        )
        balance_ids = [*customer, *system]
        hold_params = self._hold_params()
        rows = self._bulk(
            _FLUSH_AT_ONCE[_keyed(dirty, balance_ids, hold_params["hci"])],
            {
                **entry_params,
                "pk": keys,
                "pn": lines,
                "pa": account_ids,
                "pg": grant_ids,
                "pm": amounts,
                "gi": [lot.id for lot in dirty],
                "gr": [lot.remaining_mc for lot in dirty],
                "ga": [lot.amount_mc for lot in dirty],
                "bi": balance_ids,
                "bd": list(customer.values()) + list(system.values()),
                **self._watch_params(balance_ids),
                **hold_params,
            },
        )
        self._set_entry_ids(ordered, rows)
        for lot in dirty:
            lot.dirty = False

    def _hold_params(self) -> dict[str, Any]:
        opened = [h for h in self.holds if h.status == "pending"]
        closed = [h for h in self.holds if h.status != "pending"]
        return {
            "hoi": [h.hold_id for h in opened],
            "hok": [h.entry.idempotency_key for h in opened],
            "how": [h.wallet_id for h in opened],
            "hoa": [h.amount_mc for h in opened],
            "hox": [h.expires_at for h in opened],
            "hci": [h.hold_id for h in closed],
            "hck": [h.entry.idempotency_key for h in closed],
            "hcs": [h.status for h in closed],
            "hcc": [h.captured_mc for h in closed],
            "now": self.now,
        }

    def _flush_in_steps(self, ordered: list[EntryDraft], entry_params: dict[str, Any]) -> None:
        """New grants: their ids come back from their insert, and postings may name them."""
        self._set_entry_ids(ordered, self._bulk(_INSERT_ENTRIES, entry_params))
        ids = {e.idempotency_key: e.id for e in self.entries}
        lots = self.new_lots
        new_ids = self._bulk(
            """
            INSERT INTO grants (wallet_id, source, amount_mc, remaining_mc, expires_at, priority,
                                entry_id, external_ref)
            SELECT w, src, amt, rem, exp, pri, ent, ref
            FROM unnest(CAST(%(w)b AS bigint[]), CAST(%(src)b AS text[]), CAST(%(amt)b AS bigint[]),
                        CAST(%(rem)b AS bigint[]), CAST(%(exp)b AS timestamptz[]), CAST(%(pri)b AS smallint[]),
                        CAST(%(ent)b AS bigint[]), CAST(%(ref)b AS text[]))
                 WITH ORDINALITY AS t(w, src, amt, rem, exp, pri, ent, ref, n)
            ORDER BY n
            RETURNING id
            """,
            {
                "w": [lot.wallet_id for lot in lots],
                "src": [lot.source for lot in lots],
                "amt": [lot.amount_mc for lot in lots],
                "rem": [lot.remaining_mc for lot in lots],
                "exp": [lot.expires_at for lot in lots],
                "pri": [lot.priority for lot in lots],
                "ent": [ids[lot.entry_key] for lot in lots],  # type: ignore[index]
                "ref": [lot.external_ref for lot in lots],
            },
        )
        # INSERT ... SELECT ... ORDER BY returns rows in insertion order, which is the ORDER BY's.
        for lot, (new_id,) in zip(lots, new_ids, strict=True):
            lot.id = new_id
            lot.dirty = False

        dirty = self._dirty_lots()
        if dirty:
            self._bulk(
                _UPDATE_GRANTS[_keyed(dirty)],
                {
                    "ids": [lot.id for lot in dirty],
                    "rems": [lot.remaining_mc for lot in dirty],
                    "amts": [lot.amount_mc for lot in dirty],
                },
            )
            for lot in dirty:
                lot.dirty = False

        postings = [
            (e.id, line, acc, lot.id if lot else None, amt)
            for e in self.entries
            for line, (acc, lot, amt) in enumerate(e.postings, 1)
        ]
        if postings:
            entry_ids, lines, account_ids, grant_ids, amounts = (list(col) for col in zip(*postings, strict=True))
            self._bulk(
                "INSERT INTO postings (entry_id, line, account_id, grant_id, amount_mc) "
                "SELECT * FROM unnest(CAST(%(e)b AS bigint[]), CAST(%(n)b AS smallint[]), CAST(%(a)b AS bigint[]), "
                "CAST(%(g)b AS bigint[]), CAST(%(m)b AS bigint[]))",
                {"e": entry_ids, "n": lines, "a": account_ids, "g": grant_ids, "m": amounts},
            )
        customer = self._customer_deltas()
        if customer:
            rows = self._bulk(
                _ADD_TO_BALANCES[_keyed(customer)],
                {"bi": list(customer), "bd": list(customer.values()), **self._watch_params(list(customer))},
            )
            self.balances_after.update((account_id, balance) for account_id, balance in rows)
        if self.holds:
            hold_params = self._hold_params()
            self._bulk(_WRITE_HOLDS[_keyed(hold_params["hci"])], hold_params)

    def _write_flags(self) -> None:
        for wallet in self.wallets.values():
            if not wallet.touched or wallet.lots is None:
                continue
            debt = wallet.debt_lot()
            owes = debt is not None and debt.remaining_mc < 0
            if owes and wallet.negative_since is None:
                wallet.negative_since = self.now
            elif not owes and wallet.negative_since is not None:
                wallet.negative_since = None
            else:
                continue
            wallet_rows.set_negative_since(self.session, wallet.id, wallet.negative_since)

    def _watch_params(self, account_ids: list[int]) -> dict[str, list[Any]]:
        """Each balance's low-balance threshold and flag, for ``_MAY_CROSS``: those of the wallet whose
        available account it is, NULL for any other account (held, system)."""
        watched = {w.available_account_id: w for w in self.wallets.values()}
        thresholds: list[int | None] = []
        flags: list[bool] = []
        for account_id in account_ids:
            wallet = watched.get(account_id)
            if wallet is None:
                thresholds.append(None)
                flags.append(False)
            else:
                threshold = wallet.low_balance_threshold_mc
                thresholds.append(low_balance.DEFAULT_THRESHOLD_MC if threshold is None else threshold)
                flags.append(wallet.low_notified)
        return {"bt": thresholds, "bn": flags}

    def _watch_balances(self) -> None:
        """Low-balance and depleted notices of the wallets whose available balance this flush moved, from the
        balance its UPDATE returned (before = after - delta): nothing more is read, and nothing is written unless
        one crossed (``notify.low_balance``)."""
        if not self.balances_after:  # nothing near a threshold or zero: the common case, nothing to do
            return
        moves = []
        for wallet in self.wallets.values():
            delta = self.deltas.get(wallet.available_account_id, 0)
            after = self.balances_after.get(wallet.available_account_id)
            if not delta or after is None:
                continue
            moves.append(
                low_balance.BalanceMove(
                    wallet.id,
                    wallet.account,
                    after - delta,
                    after,
                    wallet.low_balance_threshold_mc,
                    wallet.low_notified,
                )
            )
        if moves:
            for wallet_id, notified in low_balance.watch(self.session, moves, self.now).items():
                next(w for w in self.wallets.values() if w.id == wallet_id).low_notified = notified

    def _write_system_balances(self, deltas: dict[int, int]) -> None:
        # One statement per system account, ascending id: a multi-row UPDATE locks rows in plan order,
        # which two transactions could take in opposite orders.
        for account_id in sorted(deltas):
            self.session.execute(
                text("UPDATE ledger_accounts SET balance_mc = balance_mc + :d WHERE id = :id"),
                {"d": deltas[account_id], "id": account_id},
            )
