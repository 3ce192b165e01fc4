"""The one function that turns usage items into millicredits: estimates, holds, captures and usage reports
are all priced here, so for the same items (and version, and mode) an estimate is what gets charged.

Money is exact: each item is priced in ``Decimal`` with enough precision that nothing is ever rounded along
the way, then rounded once, half-up to 1 mc, by ``units.round_mc``; the quote's total is the sum of the
rounded lines. Token lines do the same sum in integers over the rates' common denominator (``token_mc``, held
equal to the ``Decimal`` reference by a property test): the usage intake prices ten thousand items a second.

Token semantics: ``input_tokens`` are the uncached input tokens and ``cached_input_tokens`` are billed in
addition to them, at the model's cached price (the input price when the model has none). A model of the
``token_bundle`` scheme, and a ``tokens`` item, cost ``tokens / tokens_per_credit`` credits, whatever the kind.

Key mode: ``system`` (the default) means the tokens went through our provider keys and are charged; ``own``
means the customer's own provider key paid for them, so token lines cost nothing and only base fees (fees,
tiers, agents) are charged; a tier that requires system credits refuses ``own`` (``KeyModeNotAllowed``).

Every line says how it was priced: ``prices``, what the catalog said (the scheme and unit prices in credits
per 1M tokens, or the unit price of a fee, agent or tier), shared or built small because this is on the usage
intake's hot path; and ``breakdown``, built on demand, which adds what was used (provider, model, tokens by
kind, or code and quantity). With the quote's ``version`` and ``mode`` that is what a ledger entry records
(``Quote.as_metadata``), so any charge can be explained and re-priced on paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

from billing_core.errors import InvalidAmount, InvalidCommand, KeyModeNotAllowed
from billing_core.pricing.catalog import TOKEN_BUNDLE, PriceTable, Tier, plain
from billing_core.pricing.items import (
    AgentItem,
    CreditsItem,
    FeeItem,
    Item,
    LlmTokensItem,
    TierItem,
    TokensItem,
    as_items,
)
from billing_core.units import MAX_CREDITS, MAX_MC, MC_PER_CREDIT, format_credits, round_mc

_TOKENS_PER_PRICE = 1_000_000
# Wide enough that every product and sum below is exact: tokens < 10^10, prices < 10^19 digits with the
# decimals, three terms. Rounding happens only in ``round_mc``.
_EXACT = Context(prec=80, traps=[InvalidOperation])
SYSTEM: Final = "system"
OWN: Final = "own"
KEY_MODES = (SYSTEM, OWN)


@dataclass(frozen=True, slots=True)
class QuoteLine:
    """One priced item: ``index`` is its position in the request, ``amount_mc`` its price rounded once,
    ``prices`` the catalog's prices that priced it (JSON-ready strings and integers), ``item`` the item."""

    index: int
    type: str
    description: str
    amount_mc: int
    prices: Mapping[str, Any] = field(default_factory=dict)
    item: Item | None = field(default=None, compare=False, repr=False)

    @property
    def breakdown(self) -> dict[str, Any]:
        """What was used (provider, model, tokens by kind; or code, tier and quantity) and the prices."""
        used = {}
        if self.item is not None and not isinstance(self.item, CreditsItem):
            used = self.item.model_dump(exclude={"type"}, exclude_none=True)
        return {**used, **self.prices}


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of a list of items: ``total_mc`` is exactly the sum of the lines' ``amount_mc``; ``version``
    is the catalog version that priced it, ``mode`` the key mode."""

    total_mc: int
    lines: tuple[QuoteLine, ...]
    version: str | None = None
    mode: str = SYSTEM

    def breakdown(self) -> list[dict[str, Any]]:
        """The lines as JSON: ``{index, type, credits, ...what was used, ...prices}``."""
        return [
            {"index": line.index, "type": line.type, "credits": format_credits(line.amount_mc), **line.breakdown}
            for line in self.lines
        ]

    def as_metadata(self, *, with_usage: bool = True) -> dict[str, Any]:
        """What a ledger entry records of its price: ``price_version``, ``mode`` and the ``breakdown``.

        ``with_usage=False`` leaves out of each line what its item says (provider, model, tokens, code,
        quantity): for an entry that records its ``items`` beside it (a usage report), where ``breakdown[i]``
        prices ``items[i]``; half the bytes, on the path that writes ten thousand entries a second."""
        if with_usage:
            return {"price_version": self.version, "mode": self.mode, "breakdown": self.breakdown()}
        lines = [{"credits": format_credits(line.amount_mc), **line.prices} for line in self.lines]
        return {"price_version": self.version, "mode": self.mode, "breakdown": lines}


def price_items(table: PriceTable, items: Sequence[Item] | object, *, mode: str = SYSTEM) -> Quote:
    """Price usage items against ``table`` in key ``mode`` (``system`` or ``own``): validated ``Item`` models,
    or plain data validated here first.

    Raises ``InvalidCommand``/``InvalidAmount`` for a malformed item (``field`` such as ``items[2].model``),
    ``UnknownModel`` (with ``known_models``) or ``UnknownPriceCode`` for what the table does not price,
    ``KeyModeNotAllowed`` for a tier that requires system credits in ``own`` mode, and ``InvalidAmount`` for a
    line or a total above ``MAX_MC``.
    """
    if mode not in KEY_MODES:
        raise InvalidCommand(f"mode must be one of {', '.join(KEY_MODES)}, got {mode!r}", field="mode")
    lines: list[QuoteLine] = []
    total = 0
    charge_tokens = mode == SYSTEM
    for index, item in enumerate(as_items(items)):
        line = _price_one(table, index, item, charge_tokens)
        lines.append(line)
        total += line.amount_mc
    if total > MAX_MC:
        raise InvalidAmount(
            f"total exceeds {MAX_CREDITS} credits", field="items", value=format_credits(total), limit=MAX_CREDITS
        )
    return Quote(total_mc=total, lines=tuple(lines), version=table.version, mode=mode)


_NOT_CHARGED = " (own provider key: not charged)"


def _price_one(table: PriceTable, index: int, item: Item, charge_tokens: bool) -> QuoteLine:
    base = f"items[{index}]"
    prices: Mapping[str, Any]
    if isinstance(item, LlmTokensItem):
        price = table.model_price(item.provider, item.model, field_prefix=base)
        prices = price.breakdown  # built once per model by the table (an alias's says which model priced it)
        if not charge_tokens:
            amount = 0
        elif price.scheme == TOKEN_BUNDLE:
            tokens = item.input_tokens + item.output_tokens + item.cached_input_tokens
            amount = _bundle_mc(tokens, table.tokens_per_credit)
        else:
            cached_rate = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
            amount = token_mc(
                (item.input_tokens, item.output_tokens, item.cached_input_tokens),
                (price.input_per_1m, price.output_per_1m, cached_rate),
            )
        description = f"{item.provider}/{item.model}: {item.input_tokens} input + {item.output_tokens} output tokens"
        if item.cached_input_tokens:
            description += f" + {item.cached_input_tokens} cached input tokens"
        if not charge_tokens:
            description += _NOT_CHARGED
    elif isinstance(item, TokensItem):
        tpc = table.tokens_per_credit
        amount = _bundle_mc(item.tokens, tpc) if charge_tokens else 0
        prices = table.bundle_prices
        description = f"{item.tokens} tokens at {tpc} tokens per credit" + ("" if charge_tokens else _NOT_CHARGED)
    elif isinstance(item, TierItem):
        tier = table.tier(item.tier, field=f"{base}.tier")
        _system_credits_only(tier, charge_tokens, f"{base}.tier")
        amount = _units_mc(tier.fee, item.quantity)
        prices = tier.prices
        description = f"{tier.name} base fee" + (
            f": {item.quantity} x {tier.unit}" if item.quantity != 1 else f" per {tier.unit}"
        )
    elif isinstance(item, FeeItem):
        unit = table.fee(item.code, field=f"{base}.code")
        fee_tier = table.fee_tier(item.code)
        if fee_tier is not None:  # a tier's fee by its code: the tier's key-mode rule holds as for a tier item
            _system_credits_only(fee_tier, charge_tokens, f"{base}.code")
        amount = _units_mc(unit, item.quantity)
        prices = {"unit_credits": plain(unit)}
        description = f"fee {item.code}" + (f" x {item.quantity}" if item.quantity != 1 else "")
    elif isinstance(item, AgentItem):
        agent = table.agent_spec(item.code, field=f"{base}.code")
        amount = _units_mc(agent.credits, item.quantity)
        prices = agent.prices
        description = f"agent {item.code}" + (f" x {item.quantity}" if item.quantity != 1 else "")
    else:
        amount, description, prices = item.credits, "credits", _NO_PRICES
    if amount > MAX_MC:
        raise InvalidAmount(f"{base} costs more than {MAX_CREDITS} credits", field=base, limit=MAX_CREDITS)
    return QuoteLine(index, item.type, description, amount, prices, item)


_NO_PRICES: Mapping[str, Any] = MappingProxyType({})


def _system_credits_only(tier: Tier, charge_tokens: bool, field: str) -> None:
    if tier.requires_system_credits and not charge_tokens:
        raise KeyModeNotAllowed(
            f"{tier.name} requires system credits: work done with your own provider key (mode 'own') is "
            "not allowed on it",
            field=field,
            tier=tier.code,
            mode=OWN,
        )


def token_mc(tokens: tuple[int, int, int], rates: tuple[Decimal, Decimal, Decimal]) -> int:
    """Millicredits of (input, output, cached input) tokens at rates in credits per 1M tokens, rounded once,
    half-up: what ``round_mc`` makes of the exact ``Decimal`` sum (``decimal_token_mc``), in integers. A usage
    report prices an item this way on the intake's hot path; the ``Decimal`` form cost ~3 us an item."""
    numerators, denominator = _integer_rates(rates)
    scaled = sum(t * n for t, n in zip(tokens, numerators, strict=True)) * MC_PER_CREDIT
    if scaled < 0:  # never with validated items and prices (both >= 0); the reference handles it anyway
        return decimal_token_mc(tokens, rates)
    whole = _TOKENS_PER_PRICE * denominator
    return (2 * scaled + whole) // (2 * whole)  # half-up: floor(x + 1/2) for x >= 0


def decimal_token_mc(tokens: tuple[int, int, int], rates: tuple[Decimal, Decimal, Decimal]) -> int:
    """The reference ``token_mc`` is checked against: the exact ``Decimal`` sum, rounded by ``round_mc``."""
    with localcontext(_EXACT):
        credits = sum((t * r for t, r in zip(tokens, rates, strict=True)), Decimal(0)) / _TOKENS_PER_PRICE
        return round_mc(credits * MC_PER_CREDIT)


@lru_cache(maxsize=4096)
def _integer_rates(rates: tuple[Decimal, Decimal, Decimal]) -> tuple[tuple[int, ...], int]:
    """The rates over one common denominator (each ``Decimal`` is an exact fraction): (numerators, denominator).
    A catalog has a few hundred distinct rates; each is worked out once."""
    ratios = [rate.as_integer_ratio() for rate in rates]
    denominator = math.lcm(*(d for _, d in ratios))
    return tuple(n * (denominator // d) for n, d in ratios), denominator


def _bundle_mc(tokens: int, tokens_per_credit: int) -> int:
    with localcontext(_EXACT):
        return round_mc(Decimal(tokens) * MC_PER_CREDIT / tokens_per_credit)


def _units_mc(unit: Decimal, quantity: int) -> int:
    with localcontext(_EXACT):
        return round_mc(unit * quantity * MC_PER_CREDIT)
