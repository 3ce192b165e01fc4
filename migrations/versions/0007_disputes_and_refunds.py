"""Disputes hold credits back until they close; admin refunds.

Revision ID: 0007_disputes_and_refunds
Revises: 0006_limits
Create Date: 2026-12-07
"""

from collections.abc import Sequence

revision: str = "0007_disputes_and_refunds"
down_revision: str | None = "0006_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
