"""Stripe product/price ids of the catalog, database settings, admin alerts (placeholder).

Revision ID: 0005_catalog_sync_and_config
Revises: 0004_price_versions
Create Date: 2026-12-02
"""

from collections.abc import Sequence

revision: str = "0005_catalog_sync_and_config"
down_revision: str | None = "0004_price_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
