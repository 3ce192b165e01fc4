"""Reconciliation against Stripe: runs, checkpoints and discrepancies.

Revision ID: 0011_reconciliation
Revises: 0010_notifications
Create Date: 2026-12-07
"""

from collections.abc import Sequence

revision: str = "0011_reconciliation"
down_revision: str | None = "0010_notifications"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
