"""API keys: created by an operator, shown once, stored as a sha256, checked on every request.

A key is ``bk_`` plus 43 URL-safe characters (256 random bits). With that much entropy a slow password hash
buys nothing, and a lookup by hash must cost microseconds on every request: its statements are built once, on
the table, and run with bound parameters, as in ``ledger/wallet_rows`` (whose docstring has the measurements).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import ApiKey
from billing_core.errors import InvalidCommand

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

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


_TABLE: Table = ApiKey.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
keys = _TABLE.c
_VIEW = select(keys.id, keys.name, keys.prefix, keys.scopes, keys.created_at, keys.revoked_at)
_FIND = _VIEW.where(keys.key_hash == bindparam("h"), keys.revoked_at.is_(None))
_FIND_BY_ID = _VIEW.where(keys.id == bindparam("k"), keys.revoked_at.is_(None))
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


def _view(row: Row[tuple[int, str, str, list[str], datetime, datetime | None]]) -> ApiKeyView:
    key_id, name, prefix, scopes, created_at, revoked_at = row
    return ApiKeyView(key_id, name, prefix, frozenset(scopes), created_at, revoked_at)


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
    checked = parse_scopes(scopes)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_factory() as session, session.begin():
        key_id, created_at = session.execute(
            _CREATE, {"n": name, "p": key[:12], "h": hash_key(key), "s": checked}
        ).one()
    return ApiKeyView(key_id, name, key[:12], frozenset(checked), created_at), key


def find_api_key(session: Session, key: str) -> ApiKeyView | None:
    """The live key with this plaintext, or None (unknown or revoked look the same to a caller)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    row = session.execute(_FIND, {"h": hash_key(key)}).first()
    return None if row is None else _view(row)


def live_api_key(session: Session, key_id: int) -> ApiKeyView | None:
    """The key with this id unless it was revoked: what a console session, which keeps only the id, checks on
    every request (so revoking the key ends its sessions)."""
    if not 0 < key_id < 2**63:
        return None
    row = session.execute(_FIND_BY_ID, {"k": key_id}).first()
    return None if row is None else _view(row)


def list_api_keys(session_factory: sessionmaker[Session]) -> list[ApiKeyView]:
    with session_factory() as session:
        return [_view(row) for row in session.execute(_LIST)]


def revoke_api_key(session_factory: sessionmaker[Session], key_id: int) -> bool:
    with session_factory() as session, session.begin():
        done = session.execute(_REVOKE, {"k": key_id}).first()
    return done is not None
