"""API keys: created by an operator, shown once, stored as a sha256, checked on every request.

A key is ``bk_`` plus 43 URL-safe characters (256 random bits). With that much entropy a slow password hash
buys nothing, and a lookup by hash must cost microseconds on every request: its statements are built once, on
the table, and run with bound parameters, as in ``ledger/wallet_rows`` (whose docstring has the measurements).

Rotation (``rotate``) issues a new key with the same name and scopes and gives the old one an ``expires_at``:
clients swap keys within the overlap window, and neither key is ever refused while both are meant to work.
Expiry is checked in Python against the view (``ApiKeyView.live_at``) as well as in the lookup, so a view the
receiver cached before the rotation stops working at the expiry too.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Row, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from billing_core.clock import utcnow
from billing_core.db.tables import ApiKey
from billing_core.errors import BillingError, InvalidCommand

# ``admin`` implies every other scope.
SCOPES = (
    "usage:write",
    "usage:read",
    "accounts:read",
    "accounts:write",
    "holds:write",
    "checkout:write",
    "admin",
)
KEY_PREFIX = "bk_"


@dataclass(frozen=True)
class ApiKeyView:
    id: int
    name: str
    prefix: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def live_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def as_state(self) -> dict[str, object]:
        """The key as an audit row records it (never its hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": sorted(self.scopes),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


class UnknownApiKey(BillingError):
    code = "unknown_api_key"


class ApiKeyNotLive(BillingError):
    """Revoking or rotating a key that is already revoked or expired."""

    code = "api_key_not_live"


MAX_OVERLAP_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class KeyChange:
    """A key before and after a revocation or rotation; ``key_hash`` lets the receiver drop its cached view."""

    before: ApiKeyView
    after: ApiKeyView
    key_hash: str


@dataclass(frozen=True)
class Rotation:
    new: ApiKeyView
    plaintext: str  # the new key, shown once
    old: KeyChange


_TABLE: Table = ApiKey.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
keys = _TABLE.c
_VIEW = select(keys.id, keys.name, keys.prefix, keys.scopes, keys.created_at, keys.revoked_at, keys.expires_at)
_FIND = _VIEW.where(
    keys.key_hash == bindparam("h"),
    keys.revoked_at.is_(None),
    (keys.expires_at.is_(None)) | (keys.expires_at > bindparam("now")),
)
_FIND_BY_ID = _VIEW.where(
    keys.id == bindparam("k"),
    keys.revoked_at.is_(None),
    (keys.expires_at.is_(None)) | (keys.expires_at > bindparam("now")),
)
_BY_ID_FOR_UPDATE = _VIEW.add_columns(keys.key_hash).where(keys.id == bindparam("k")).with_for_update()
_LIST = _VIEW.order_by(keys.id)
_CREATE = (
    insert(_TABLE)
    .values(name=bindparam("n"), prefix=bindparam("p"), key_hash=bindparam("h"), scopes=bindparam("s"))
    .returning(keys.id, keys.created_at)
)
_REVOKE = (
    update(_TABLE)
    .where(keys.id == bindparam("k"), keys.revoked_at.is_(None))
    .values(revoked_at=func.now())
    .returning(keys.id)
)


def _view(row: Row[tuple[int, str, str, list[str], datetime, datetime | None, datetime | None]]) -> ApiKeyView:
    key_id, name, prefix, scopes, created_at, revoked_at, expires_at = row[:7]
    return ApiKeyView(key_id, name, prefix, frozenset(scopes), created_at, revoked_at, expires_at)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(value: str | list[str]) -> list[str]:
    scopes = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    scopes = sorted({s for s in scopes if s})
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise InvalidCommand(
            f"scopes must be a comma-separated list of {', '.join(SCOPES)}", field="scopes", unknown=unknown
        )
    return scopes


def create_api_key(
    session_factory: sessionmaker[Session], name: str, scopes: str | list[str]
) -> tuple[ApiKeyView, str]:
    """Create a key; the plaintext is returned here and nowhere else."""
    if not name.strip() or len(name) > 200:
        raise InvalidCommand("name must be 1-200 characters", field="name")
    with session_factory() as session, session.begin():
        return issue_api_key(session, name, scopes)


def issue_api_key(session: Session, name: str, scopes: str | list[str]) -> tuple[ApiKeyView, str]:
    """``create_api_key`` in the caller's transaction (the admin API audits it in the same one)."""
    if not name.strip() or len(name) > 200:
        raise InvalidCommand("name must be 1-200 characters", field="name")
    checked = parse_scopes(scopes)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id, created_at = session.execute(_CREATE, {"n": name, "p": key[:12], "h": hash_key(key), "s": checked}).one()
    return ApiKeyView(key_id, name, key[:12], frozenset(checked), created_at), key


def find_api_key(session: Session, key: str, now: datetime | None = None) -> ApiKeyView | None:
    """The live key with this plaintext, or None (unknown, revoked or expired look the same to a caller)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    row = session.execute(_FIND, {"h": hash_key(key), "now": now or utcnow()}).first()
    return None if row is None else _view(row)


def live_api_key(session: Session, key_id: int, now: datetime | None = None) -> ApiKeyView | None:
    """The key with this id unless it was revoked or has expired: what a console session, which keeps only the
    id, checks on every request (so revoking the key ends its sessions)."""
    if not 0 < key_id < 2**63:
        return None
    row = session.execute(_FIND_BY_ID, {"k": key_id, "now": now or utcnow()}).first()
    return None if row is None else _view(row)


def _lock_live(session: Session, key_id: int, now: datetime) -> tuple[ApiKeyView, str]:
    row = session.execute(_BY_ID_FOR_UPDATE, {"k": key_id}).first() if 0 < key_id < 2**63 else None
    if row is None:
        raise UnknownApiKey(f"no API key {key_id}", id=key_id)
    view = _view(row)
    if not view.live_at(now):
        raise ApiKeyNotLive(
            f"API key {key_id} is already revoked or expired",
            id=key_id,
            revoked_at=view.revoked_at.isoformat() if view.revoked_at else None,
            expires_at=view.expires_at.isoformat() if view.expires_at else None,
        )
    return view, str(row.key_hash)


def revoke(session: Session, key_id: int, now: datetime | None = None) -> KeyChange:
    """Revoke a live key now, in the caller's transaction. ``UnknownApiKey``, ``ApiKeyNotLive``."""
    now = now or utcnow()
    before, key_hash = _lock_live(session, key_id, now)
    session.execute(update(_TABLE).where(keys.id == key_id).values(revoked_at=now))
    after = ApiKeyView(before.id, before.name, before.prefix, before.scopes, before.created_at, now, before.expires_at)
    return KeyChange(before, after, key_hash)


def rotate(session: Session, key_id: int, overlap_seconds: int, now: datetime | None = None) -> Rotation:
    """A new key with the old one's name and scopes; the old one keeps working until ``now + overlap_seconds``
    (0: it stops now; an earlier expiry it already had is kept). In the caller's transaction, the old key's
    row locked so two rotations of one key cannot both succeed. ``UnknownApiKey``, ``ApiKeyNotLive``,
    ``InvalidCommand`` (an overlap out of range)."""
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise InvalidCommand(f"overlap_seconds must be from 0 to {MAX_OVERLAP_SECONDS}", field="overlap_seconds")
    now = now or utcnow()
    before, key_hash = _lock_live(session, key_id, now)
    until = now + timedelta(seconds=overlap_seconds)
    if before.expires_at is not None and before.expires_at < until:
        until = before.expires_at
    session.execute(update(_TABLE).where(keys.id == key_id).values(expires_at=until))
    after = ApiKeyView(before.id, before.name, before.prefix, before.scopes, before.created_at, None, until)
    new, plaintext = issue_api_key(session, before.name, sorted(before.scopes))
    return Rotation(new, plaintext, KeyChange(before, after, key_hash))


def list_api_keys(session_factory: sessionmaker[Session]) -> list[ApiKeyView]:
    with session_factory() as session:
        return list_keys(session)


def list_keys(session: Session) -> list[ApiKeyView]:
    return [_view(row) for row in session.execute(_LIST)]


def revoke_api_key(session_factory: sessionmaker[Session], key_id: int) -> bool:
    with session_factory() as session, session.begin():
        done = session.execute(_REVOKE, {"k": key_id}).first()
    return done is not None
