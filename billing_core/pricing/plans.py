"""Plans and token limits as the catalog declares them (the limits work fills in the rest).

A plan names its token limits: hourly and daily rate limits and a monthly quota; ``None`` is unlimited.
"""

from __future__ import annotations

from pydantic import Field

from billing_core.pricing.file_spec import FileSpec
from billing_core.types import DisplayName

DEFAULT_HOURLY_TOKENS = 500_000
DEFAULT_DAILY_TOKENS = 2_000_000


class PlanSpec(FileSpec):
    name: DisplayName
    hourly_tokens: int | None = Field(DEFAULT_HOURLY_TOKENS, ge=0)
    daily_tokens: int | None = Field(DEFAULT_DAILY_TOKENS, ge=0)
    monthly_tokens: int | None = Field(None, ge=0)
    upgrade_url: str | None = None


# The token limits a plan sets and an account may override, in the order hour, day, month.
LIMIT_FIELDS = ("hourly_tokens", "daily_tokens", "monthly_tokens")
# Above any real count, below JSON's and bigint's limits.
MAX_LIMIT_TOKENS = 10**15


class LimitOverrides(FileSpec):
    """Per-account overrides of the plan's limits: a field given overrides (``null`` = unlimited), a field
    left out keeps the plan's."""

    hourly_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)
    daily_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)
    monthly_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)

    def given(self) -> dict[str, int | None]:
        """The fields the client sent, as stored in ``wallets.limit_overrides``."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS if name in self.model_fields_set}
