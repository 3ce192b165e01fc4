"""Token limits and plan quotas: account plan and overrides, durable usage records (placeholder).

Revision ID: 0006_limits
Revises: 0005_catalog_sync_and_config
Create Date: 2026-12-02
"""

from collections.abc import Sequence

revision: str = "0006_limits"
down_revision: str | None = "0005_catalog_sync_and_config"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
