"""The notifications outbox: one row per message and channel, with its dedupe key.

Revision ID: 0010_notifications
Revises: 0009_auto_recharge
Create Date: 2026-12-07
"""

from collections.abc import Sequence

revision: str = "0010_notifications"
down_revision: str | None = "0009_auto_recharge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
