"""The one function that turns usage items into millicredits.

Money is exact: each item is priced in ``Decimal`` with enough precision that nothing is ever rounded along
the way, then rounded once, half-up to 1 mc, by ``units.round_mc``; the quote's total is the sum of the
rounded lines.

Token semantics: ``input_tokens`` are the uncached input tokens and ``cached_input_tokens`` are billed in
addition to them, at the model's cached price (the input price when the model has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Context, InvalidOperation, localcontext

from billing_core.errors import InvalidAmount
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.items import AgentItem, FeeItem, Item, LlmTokensItem, as_items
from billing_core.units import MAX_CREDITS, MAX_MC, MC_PER_CREDIT, format_credits, round_mc

_TOKENS_PER_PRICE = 1_000_000
# Wide enough that every product and sum below is exact: tokens < 10^10, prices < 10^19 digits with the
# decimals, three terms. Rounding happens only in ``round_mc``.
_EXACT = Context(prec=80, traps=[InvalidOperation])


@dataclass(frozen=True, slots=True)
class QuoteLine:
    """One priced item: ``index`` is its position in the request, ``amount_mc`` its price rounded once."""

    index: int
    type: str
    description: str
    amount_mc: int


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of a list of items: ``total_mc`` is exactly the sum of the lines' ``amount_mc``."""

    total_mc: int
    lines: tuple[QuoteLine, ...]


def price_items(table: PriceTable, items: Sequence[Item] | object) -> Quote:
    """Price usage items against ``table``: validated ``Item`` models, or plain data validated here first.

    Raises ``InvalidCommand``/``InvalidAmount`` for a malformed item (``field`` such as ``items[2].model``),
    ``UnknownModel`` or ``UnknownPriceCode`` for what the table does not price, and ``InvalidAmount`` for a
    line or a total above ``MAX_MC``.
    """
    lines: list[QuoteLine] = []
    total = 0
    for index, item in enumerate(as_items(items)):
        line = _price_one(table, index, item)
        lines.append(line)
        total += line.amount_mc
    if total > MAX_MC:
        raise InvalidAmount(
            f"total exceeds {MAX_CREDITS} credits", field="items", value=format_credits(total), limit=MAX_CREDITS
        )
    return Quote(total_mc=total, lines=tuple(lines))


def _price_one(table: PriceTable, index: int, item: Item) -> QuoteLine:
    base = f"items[{index}]"
    if isinstance(item, LlmTokensItem):
        price = table.model_price(item.provider, item.model, field_prefix=base)
        cached_rate = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
        with localcontext(_EXACT):
            credits = (
                item.input_tokens * price.input_per_1m
                + item.output_tokens * price.output_per_1m
                + item.cached_input_tokens * cached_rate
            ) / _TOKENS_PER_PRICE
            amount = round_mc(credits * MC_PER_CREDIT)
        description = f"{item.provider}/{item.model}: {item.input_tokens} input + {item.output_tokens} output tokens"
        if item.cached_input_tokens:
            description += f" + {item.cached_input_tokens} cached input tokens"
    elif isinstance(item, (FeeItem, AgentItem)):
        field = f"{base}.code"
        unit = table.fee(item.code, field=field) if isinstance(item, FeeItem) else table.agent(item.code, field=field)
        with localcontext(_EXACT):
            amount = round_mc(unit * item.quantity * MC_PER_CREDIT)
        description = f"{item.type} {item.code}" + (f" x {item.quantity}" if item.quantity != 1 else "")
    else:
        amount, description = item.credits, "credits"
    if amount > MAX_MC:
        raise InvalidAmount(f"{base} costs more than {MAX_CREDITS} credits", field=base, limit=MAX_CREDITS)
    return QuoteLine(index=index, type=item.type, description=description, amount_mc=amount)
