"""Plans and token limits as the catalog declares them (the limits work fills in the rest).

A plan names its token limits: hourly and daily rate limits and a monthly quota; ``None`` is unlimited.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from billing_core.types import DisplayName

DEFAULT_HOURLY_TOKENS = 500_000
DEFAULT_DAILY_TOKENS = 2_000_000


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _comments(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
        return data


class PlanSpec(_Spec):
    name: DisplayName
    hourly_tokens: int | None = Field(DEFAULT_HOURLY_TOKENS, ge=0)
    daily_tokens: int | None = Field(DEFAULT_DAILY_TOKENS, ge=0)
    monthly_tokens: int | None = Field(None, ge=0)
    upgrade_url: str | None = None


# The token limits a plan sets and an account may override, in the order hour, day, month.
LIMIT_FIELDS = ("hourly_tokens", "daily_tokens", "monthly_tokens")
# Above any real count, below JSON's and bigint's limits.
MAX_LIMIT_TOKENS = 10**15


class LimitOverrides(_Spec):
    """Per-account overrides of the plan's limits: a field given overrides (``null`` = unlimited), a field
    left out keeps the plan's."""

    hourly_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)
    daily_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)
    monthly_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT_TOKENS)

    def given(self) -> dict[str, int | None]:
        """The fields the client sent, as stored in ``wallets.limit_overrides``."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS if name in self.model_fields_set}
