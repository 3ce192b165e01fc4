"""API keys as the admin API manages them: create, revoke, rotate, each audited in its own transaction.

The audit rows record a key's id, name, prefix, scopes and dates, never the key or its hash.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from billing_core.accounts.api_keys import ApiKeyView, KeyChange, Rotation, issue_api_key, revoke, rotate
from billing_core.admin.audit import record_audit
from billing_core.clock import utcnow

CREATE_ACTION, REVOKE_ACTION, ROTATE_ACTION = "api_key.create", "api_key.revoke", "api_key.rotate"


def create_key(
    session_factory: sessionmaker[Session], *, name: str, scopes: list[str], actor: str, now: datetime | None = None
) -> tuple[ApiKeyView, str]:
    """A new key (the plaintext is in the answer only); ``InvalidCommand`` for a bad name or scope."""
    with session_factory() as session, session.begin():
        view, plaintext = issue_api_key(session, name, scopes)
        record_audit(
            session,
            actor=actor,
            action=CREATE_ACTION,
            target=f"api_key:{view.id}",
            before=None,
            after=view.as_state(),
            now=now,
        )
    return view, plaintext


def revoke_key(
    session_factory: sessionmaker[Session], key_id: int, *, actor: str, now: datetime | None = None
) -> KeyChange:
    """Revoke now; ``UnknownApiKey``, ``ApiKeyNotLive`` (already revoked or expired)."""
    now = now or utcnow()
    with session_factory() as session, session.begin():
        change = revoke(session, key_id, now)
        record_audit(
            session,
            actor=actor,
            action=REVOKE_ACTION,
            target=f"api_key:{key_id}",
            before=change.before.as_state(),
            after=change.after.as_state(),
            now=now,
        )
    return change


def rotate_key(
    session_factory: sessionmaker[Session],
    key_id: int,
    overlap_seconds: int,
    *,
    actor: str,
    now: datetime | None = None,
) -> Rotation:
    """A new key with the same name and scopes; the old one works ``overlap_seconds`` more."""
    now = now or utcnow()
    with session_factory() as session, session.begin():
        rotation = rotate(session, key_id, overlap_seconds, now)
        record_audit(
            session,
            actor=actor,
            action=ROTATE_ACTION,
            target=f"api_key:{key_id}",
            before=rotation.old.before.as_state(),
            after={**rotation.old.after.as_state(), "replaced_by": rotation.new.as_state()},
            now=now,
            note=f"overlap {overlap_seconds}s",
        )
    return rotation
