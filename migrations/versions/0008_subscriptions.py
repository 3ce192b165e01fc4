"""Subscriptions, invoices and plan allowances.

Revision ID: 0008_subscriptions
Revises: 0007_disputes_and_refunds
Create Date: 2026-12-07
"""

from collections.abc import Sequence

revision: str = "0008_subscriptions"
down_revision: str | None = "0007_disputes_and_refunds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
