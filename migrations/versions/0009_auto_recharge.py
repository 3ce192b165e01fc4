"""Auto-recharge settings and attempts.

Revision ID: 0009_auto_recharge
Revises: 0008_subscriptions
Create Date: 2026-12-07
"""

from collections.abc import Sequence

revision: str = "0009_auto_recharge"
down_revision: str | None = "0008_subscriptions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
