"""The usage items a report, an estimate, a hold or a capture is priced from: one model per item type.

Defined once: the usage intake, the HTTP bodies, the pricing function and ``/openapi.json`` all use these.
An optional field sent as null means the same as leaving it out (clients serialise absent fields as null).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from billing_core.errors import from_validation_error
from billing_core.types import MAX_ITEMS, CreditsPositive, Name, Quantity, Tokens


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            return {key: value for key, value in data.items() if value is not None}
        return data


class LlmTokensItem(_Item):
    """Tokens of one model call; ``cached_input_tokens`` are billed in addition to ``input_tokens``."""

    type: Literal["llm_tokens"]
    provider: Name
    model: Name
    input_tokens: Tokens
    output_tokens: Tokens
    cached_input_tokens: Tokens = 0


class FeeItem(_Item):
    type: Literal["fee"]
    code: Name
    quantity: Quantity = 1


class AgentItem(_Item):
    type: Literal["agent"]
    code: Name
    quantity: Quantity = 1


class TokensItem(_Item):
    """Tokens priced by the token-bundle scheme (``token_bundle.tokens_per_credit`` per credit), whatever the
    model; ``provider`` and ``model`` are recorded with the charge, not priced."""

    type: Literal["tokens"]
    tokens: Tokens
    provider: Name | None = None
    model: Name | None = None


class TierItem(_Item):
    """A tier's base fee, ``quantity`` times (per scenario, per experiment...: the tier's ``unit``)."""

    type: Literal["tier"]
    tier: Name
    quantity: Quantity = 1


class CreditsItem(_Item):
    """A raw amount of credits, priced as it is."""

    type: Literal["credits"]
    credits: CreditsPositive


Item = Annotated[LlmTokensItem | FeeItem | AgentItem | CreditsItem | TokensItem | TierItem, Field(discriminator="type")]
# Who paid the model provider: ``system`` (our key: tokens are charged) or ``own`` (the customer's own provider
# key: only base fees, tiers and agents are charged).
KeyMode = Literal["system", "own"]
Items = Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS)]


class _ItemsField(BaseModel):
    items: Items


def parse_items(raw: object) -> list[Item]:
    """Validate raw items (``items`` of a request); ``InvalidCommand``/``InvalidAmount`` naming ``items[i]...``."""
    try:
        return _ItemsField.model_validate({"items": raw}).items
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def as_items(raw: Sequence[Item] | object) -> Sequence[Item]:
    """Items as given when they are validated models already, else validated from plain data."""
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(item, _Item) for item in raw):
        return raw
    return parse_items(raw)
