"""API keys: created by an operator, shown once, stored as a sha256, checked on every request.

A key is ``bk_`` plus 43 URL-safe characters (256 random bits). With that much entropy a slow password hash
buys nothing, and a lookup by hash must cost microseconds on every request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

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
        row = session.execute(
            text(
                "INSERT INTO api_keys (name, prefix, key_hash, scopes) VALUES (:n, :p, :h, :s) RETURNING id, created_at"
            ),
            {"n": name, "p": key[:12], "h": hash_key(key), "s": checked},
        ).one()
    return ApiKeyView(row.id, name, key[:12], frozenset(checked), row.created_at), key


def find_api_key(session: Session, key: str) -> ApiKeyView | None:
    """The live key with this plaintext, or None (unknown or revoked look the same to a caller)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    row = session.execute(
        text(
            "SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys "
            "WHERE key_hash = :h AND revoked_at IS NULL"
        ),
        {"h": hash_key(key)},
    ).first()
    if row is None:
        return None
    return ApiKeyView(row.id, row.name, row.prefix, frozenset(row.scopes), row.created_at, row.revoked_at)


def list_api_keys(session_factory: sessionmaker[Session]) -> list[ApiKeyView]:
    with session_factory() as session:
        rows = session.execute(
            text("SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys ORDER BY id")
        ).all()
    return [ApiKeyView(r.id, r.name, r.prefix, frozenset(r.scopes), r.created_at, r.revoked_at) for r in rows]


def revoke_api_key(session_factory: sessionmaker[Session], key_id: int) -> bool:
    with session_factory() as session, session.begin():
        done = session.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE id = :i AND revoked_at IS NULL RETURNING id"),
            {"i": key_id},
        ).first()
    return done is not None
