"""Price catalog versions (placeholder: filled in by the pricing catalog work).

Revision ID: 0004_price_versions
Revises: 0003_event_payload_json
Create Date: 2026-12-02
"""

from collections.abc import Sequence

revision: str = "0004_price_versions"
down_revision: str | None = "0003_event_payload_json"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
