"""What every model of the price file shares: unknown keys are refused (a typo must not silently drop a price),
keys starting with ``_`` are comments and ignored, and the parsed spec is frozen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def drop_comments(data: Any) -> Any:
    """A mapping without its ``_comment``-style keys; anything else as it is."""
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if not (isinstance(key, str) and key.startswith("_"))}
    return data


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _comments(cls, data: Any) -> Any:
        return drop_comments(data)
