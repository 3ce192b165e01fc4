"""Pricing: a validated price table, and the one function that turns usage items into millicredits.

The table is plain JSON (``price_table.json`` next to this module by default, or the file named by
``BILLING_PRICING_FILE``)::

    {
      "llm_tokens": {"<provider>": {"<model>": {"input_per_1m": "2500", "output_per_1m": "10000",
                                                "cached_input_per_1m": "1250"},
                                    "<alias>": {"alias_of": "<model>"}}},
      "fees":     {"<code>": "<credits>"},
      "agents":   {"<code>": "<credits>"},
      "packages": [{"id": "starter", "name": "Starter", "credits": "10000", "unit_amount": 1000, "currency": "usd"}]
    }

Prices are decimal strings of credits (integers and ``Decimal`` are accepted too, floats never), non-negative,
with at most 6 decimals. Keys starting with ``_`` are comments and ignored; any other unknown key is refused,
so a typo cannot silently drop a price.

Money is exact: each item is priced in ``Decimal`` with enough precision that nothing is ever rounded along
the way, then rounded once, half-up to 1 mc, by ``units.round_mc``; the quote's total is the sum of the
rounded lines.

Token semantics: ``input_tokens`` are the uncached input tokens and ``cached_input_tokens`` are billed in
addition to them, at the model's cached price (the input price when the model has none).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from billing_core.errors import InvalidAmount, InvalidCommand, UnknownModel, UnknownPackage, UnknownPriceCode
from billing_core.units import MAX_CREDITS, MAX_MC, MC_PER_CREDIT, format_credits, parse_credits, round_mc

PRICING_FILE_ENV = "BILLING_PRICING_FILE"
DEFAULT_TABLE_RESOURCE = "price_table.json"

MAX_TOKENS = 10**9
MAX_QUANTITY = 10**6
MAX_ITEMS = 1000
MAX_PRICE_DECIMALS = 6
MAX_TABLE_BYTES = 16 * 1024 * 1024
MAX_UNIT_AMOUNT = 99_999_999  # Stripe's ceiling for a Checkout amount in minor units
_TOKENS_PER_PRICE = 1_000_000

# Wide enough that every product and sum below is exact: tokens < 10^10, prices < 10^19 digits with the
# decimals, three terms. Rounding happens only in ``round_mc``.
_EXACT = Context(prec=80, traps=[InvalidOperation])

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+\-]{0,127}")
_PACKAGE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
_CURRENCY_RE = re.compile(r"[a-z]{3}")

_TOP_KEYS = frozenset({"version", "llm_tokens", "fees", "agents", "packages"})
_MODEL_KEYS = frozenset({"input_per_1m", "output_per_1m", "cached_input_per_1m"})
_PACKAGE_KEYS = frozenset({"id", "name", "credits", "unit_amount", "currency"})

_ITEM_KEYS: dict[str, frozenset[str]] = {
    "llm_tokens": frozenset({"type", "provider", "model", "input_tokens", "output_tokens", "cached_input_tokens"}),
    "fee": frozenset({"type", "code", "quantity"}),
    "agent": frozenset({"type", "code", "quantity"}),
    "credits": frozenset({"type", "credits"}),
}
ITEM_TYPES: tuple[str, ...] = tuple(_ITEM_KEYS)


# --------------------------------------------------------------------------------------------------- table


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Credits per 1,000,000 tokens; ``cached_input_per_1m`` is None when the model has no cached price."""

    input_per_1m: Decimal
    output_per_1m: Decimal
    cached_input_per_1m: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Package:
    """A credit package sold through Stripe Checkout: ``unit_amount`` minor units of ``currency``."""

    id: str
    name: str
    credits_mc: int
    unit_amount: int
    currency: str

    def as_dict(self) -> dict[str, Any]:
        """The public shape of ``GET /v1/packages``: credits as a credit string."""
        return {
            "id": self.id,
            "name": self.name,
            "credits": format_credits(self.credits_mc),
            "unit_amount": self.unit_amount,
            "currency": self.currency,
        }


class PriceTable:
    """An immutable, validated price table. Build it from a dict (``PriceTable(data)``), a file
    (``PriceTable.from_file``) or take the packaged default (``PriceTable.default()``).

    A malformed table raises ``ValueError`` whose message starts with the path of the bad value
    (``llm_tokens.openai.gpt-4o.input_per_1m: ...``, ``packages[1].currency: ...``).
    """

    __slots__ = ("_agents", "_fees", "_models", "_packages", "_packages_by_id", "_version")

    _models: Mapping[str, Mapping[str, ModelPrice]]
    _fees: Mapping[str, Decimal]
    _agents: Mapping[str, Decimal]
    _packages: tuple[Package, ...]
    _packages_by_id: Mapping[str, Package]
    _version: int | None

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"<table>: must be a JSON object, not {type(data).__name__}")
        _check_keys(data, _TOP_KEYS, "", required=_TOP_KEYS - {"version"})
        version = data.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ValueError("version: must be an integer")
        packages = _parse_packages(data["packages"])
        values = {
            "_version": version,
            "_models": _parse_models(data["llm_tokens"]),
            "_fees": _parse_codes(data["fees"], "fees"),
            "_agents": _parse_codes(data["agents"], "agents"),
            "_packages": packages,
            "_packages_by_id": MappingProxyType({p.id: p for p in packages}),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PriceTable is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PriceTable is immutable")

    def __repr__(self) -> str:
        models = sum(len(m) for m in self._models.values())
        return (
            f"PriceTable(version={self._version}, providers={len(self._models)}, models={models}, "
            f"fees={len(self._fees)}, agents={len(self._agents)}, packages={len(self._packages)})"
        )

    # construction ------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        """Same as ``PriceTable(data)``."""
        return cls(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        """Load and validate a JSON price table. Every failure (unreadable file, bad JSON, bad value) is a
        ``ValueError`` naming the file and, for a bad value, its path inside the table."""
        name = os.fspath(path)
        try:
            with open(name, "rb") as fh:
                raw = fh.read(MAX_TABLE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"price table {name}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_TABLE_BYTES:
            raise ValueError(f"price table {name}: larger than {MAX_TABLE_BYTES} bytes")
        return cls._from_json(raw, name)

    @classmethod
    def default(cls) -> PriceTable:
        """The table shipped with the package (``billing_core/pricing/price_table.json``), loaded once."""
        return _default_table()

    @classmethod
    def _from_json(cls, raw: bytes | str, name: str) -> PriceTable:
        try:
            data = json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant, object_pairs_hook=_no_dupes)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"price table {name}: not valid JSON: {exc}") from None
        try:
            return cls(data)
        except ValueError as exc:
            raise ValueError(f"price table {name}: {exc}") from None

    # lookups -----------------------------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        return self._version

    @property
    def providers(self) -> list[str]:
        return sorted(self._models)

    def models(self, provider: str) -> list[str]:
        """Model names (aliases included) priced for ``provider``; empty for an unknown provider."""
        return sorted(self._models.get(provider, {}))

    @property
    def fee_codes(self) -> list[str]:
        return sorted(self._fees)

    @property
    def agent_codes(self) -> list[str]:
        return sorted(self._agents)

    @property
    def packages(self) -> list[Package]:
        """Packages in table order (a fresh list; the packages themselves are frozen)."""
        return list(self._packages)

    def package(self, package_id: str, *, field: str = "package") -> Package:
        """The package with this id, or ``UnknownPackage``."""
        found = self._packages_by_id.get(package_id) if isinstance(package_id, str) else None
        if found is None:
            raise UnknownPackage(f"unknown package {package_id!r}", package=_safe(package_id), field=field)
        return found

    def model_price(self, provider: str, model: str, *, field_prefix: str = "") -> ModelPrice:
        """Token prices of ``provider``/``model`` (aliases resolved), or ``UnknownModel`` whose ``field`` is
        ``<field_prefix>.provider`` or ``<field_prefix>.model``, whichever is unknown."""
        prefix = f"{field_prefix}." if field_prefix else ""
        models = self._models.get(provider) if isinstance(provider, str) else None
        if models is None:
            raise UnknownModel(
                f"unknown provider {provider!r}",
                provider=_safe(provider),
                model=_safe(model),
                field=f"{prefix}provider",
            )
        price = models.get(model) if isinstance(model, str) else None
        if price is None:
            raise UnknownModel(
                f"unknown model {model!r} for provider {provider!r}",
                provider=provider,
                model=_safe(model),
                field=f"{prefix}model",
            )
        return price

    def fee(self, code: str, *, field: str = "code") -> Decimal:
        """Credits of one fee, or ``UnknownPriceCode``."""
        return self._code(self._fees, "fee", code, field)

    def agent(self, code: str, *, field: str = "code") -> Decimal:
        """Credits of one agent run, or ``UnknownPriceCode``."""
        return self._code(self._agents, "agent", code, field)

    @staticmethod
    def _code(table: Mapping[str, Decimal], kind: str, code: str, field: str) -> Decimal:
        price = table.get(code) if isinstance(code, str) else None
        if price is None:
            raise UnknownPriceCode(f"unknown {kind} code {code!r}", kind=kind, code=_safe(code), field=field)
        return price


@lru_cache(maxsize=1)
def _default_table() -> PriceTable:
    resource = resources.files("billing_core.pricing").joinpath(DEFAULT_TABLE_RESOURCE)
    return PriceTable._from_json(resource.read_bytes(), f"billing_core/pricing/{DEFAULT_TABLE_RESOURCE}")


def load_price_table(path: str | None) -> PriceTable:
    """The table to price with: the file at ``path`` or, when ``path`` is None or empty, the packaged default.
    Meant for ``load_price_table(os.environ.get("BILLING_PRICING_FILE"))``."""
    if path is None or not str(path).strip():
        return PriceTable.default()
    return PriceTable.from_file(path)


# ------------------------------------------------------------------------------------- table validation


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a price table may hold")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(obj: Mapping[str, Any], allowed: frozenset[str], path: str, *, required: frozenset[str]) -> None:
    for key in obj:
        if not isinstance(key, str):
            raise ValueError(f"{path or '<table>'}: keys must be strings, got {key!r}")
        if key not in allowed and not key.startswith("_"):
            raise ValueError(f"{_join(path, key)}: unknown key (expected one of {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in obj:
            raise ValueError(f"{_join(path, key)}: required")


def _check_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{path}: names are 1-128 letters, digits or _.:@/+- starting with a letter or digit")
    return value


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: must be an object, not {type(value).__name__}")
    return value


def parse_price(value: object, path: str) -> Decimal:
    """A table price: a decimal string (or int/Decimal) of credits, non-negative, finite, at most 6 decimals,
    at most ``MAX_CREDITS``. Raises ``ValueError`` naming ``path``."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{path}: must be a decimal string of credits, not {type(value).__name__}")
    if isinstance(value, str):
        if not value.strip() or len(value) > 40:
            raise ValueError(f"{path}: empty or overlong price {value[:50]!r}")
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{path}: not a decimal number: {value[:50]!r}") from None
    else:
        number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"{path}: must be finite, got {value!r}")
    if number < 0:
        raise ValueError(f"{path}: must not be negative, got {value!r}")
    if number > MAX_CREDITS:
        raise ValueError(f"{path}: exceeds {MAX_CREDITS} credits")
    with localcontext(_EXACT):
        scaled = number.scaleb(MAX_PRICE_DECIMALS)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{path}: at most {MAX_PRICE_DECIMALS} decimals, got {value!r}")
    return number.copy_abs()  # non-negative already; this only drops a negative zero's sign


def _parse_models(value: object) -> Mapping[str, Mapping[str, ModelPrice]]:
    providers = _mapping(value, "llm_tokens")
    out: dict[str, Mapping[str, ModelPrice]] = {}
    for provider, raw_models in providers.items():
        if isinstance(provider, str) and provider.startswith("_"):
            continue
        ppath = f"llm_tokens.{provider}"
        _check_name(provider, ppath)
        models = _mapping(raw_models, ppath)
        priced: dict[str, ModelPrice] = {}
        aliases: dict[str, tuple[str, str]] = {}
        for model, raw in models.items():
            if isinstance(model, str) and model.startswith("_"):
                continue
            mpath = f"{ppath}.{model}"
            _check_name(model, mpath)
            entry = _mapping(raw, mpath)
            if "alias_of" in entry:
                _check_keys(entry, frozenset({"alias_of"}), mpath, required=frozenset())
                aliases[model] = (entry["alias_of"], f"{mpath}.alias_of")
                continue
            _check_keys(entry, _MODEL_KEYS, mpath, required=frozenset({"input_per_1m", "output_per_1m"}))
            cached = entry.get("cached_input_per_1m")
            priced[model] = ModelPrice(
                input_per_1m=parse_price(entry["input_per_1m"], f"{mpath}.input_per_1m"),
                output_per_1m=parse_price(entry["output_per_1m"], f"{mpath}.output_per_1m"),
                cached_input_per_1m=None if cached is None else parse_price(cached, f"{mpath}.cached_input_per_1m"),
            )
        for alias, (target, apath) in aliases.items():
            if not isinstance(target, str) or target not in priced:
                raise ValueError(f"{apath}: must name a priced (non-alias) model of {provider!r}, got {target!r}")
            priced[alias] = priced[target]
        out[provider] = MappingProxyType(priced)
    return MappingProxyType(out)


def _parse_codes(value: object, section: str) -> Mapping[str, Decimal]:
    codes = _mapping(value, section)
    out: dict[str, Decimal] = {}
    for code, price in codes.items():
        if isinstance(code, str) and code.startswith("_"):
            continue
        path = f"{section}.{code}"
        _check_name(code, path)
        out[code] = parse_price(price, path)
    return MappingProxyType(out)


def _parse_packages(value: object) -> tuple[Package, ...]:
    if not isinstance(value, list):
        raise ValueError(f"packages: must be a list, not {type(value).__name__}")
    out: list[Package] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        path = f"packages[{i}]"
        entry = _mapping(raw, path)
        _check_keys(entry, _PACKAGE_KEYS, path, required=_PACKAGE_KEYS)
        pid = entry["id"]
        if not isinstance(pid, str) or not _PACKAGE_ID_RE.fullmatch(pid):
            raise ValueError(f"{path}.id: 1-64 lowercase letters, digits, _ or - starting with a letter or digit")
        if pid in seen:
            raise ValueError(f"{path}.id: duplicate package id {pid!r}")
        seen.add(pid)
        name = entry["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValueError(f"{path}.name: must be a non-empty string of at most 200 characters")
        try:
            credits_mc = parse_credits(entry["credits"])
        except InvalidAmount as exc:
            raise ValueError(f"{path}.credits: {exc.message}") from None
        if credits_mc <= 0:
            raise ValueError(f"{path}.credits: must be positive")
        unit_amount = entry["unit_amount"]
        if isinstance(unit_amount, bool) or not isinstance(unit_amount, int) or not 0 < unit_amount <= MAX_UNIT_AMOUNT:
            raise ValueError(f"{path}.unit_amount: must be an integer of minor units from 1 to {MAX_UNIT_AMOUNT}")
        currency = entry["currency"]
        if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
            raise ValueError(f"{path}.currency: must be a lowercase ISO 4217 code such as 'usd'")
        out.append(Package(id=pid, name=name, credits_mc=credits_mc, unit_amount=unit_amount, currency=currency))
    return tuple(out)


# ----------------------------------------------------------------------------------------------- quotes


@dataclass(frozen=True, slots=True)
class QuoteLine:
    """One priced item: ``index`` is its position in the request, ``amount_mc`` its price rounded once."""

    index: int
    type: str
    description: str
    amount_mc: int

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "description": self.description, "credits": format_credits(self.amount_mc)}


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of a list of items: ``total_mc`` is exactly the sum of the lines' ``amount_mc``."""

    total_mc: int
    lines: tuple[QuoteLine, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"credits": format_credits(self.total_mc), "lines": [line.as_dict() for line in self.lines]}


def price_items(table: PriceTable, items: Sequence[Mapping[str, Any]]) -> Quote:
    """Price usage items against ``table``.

    Items are plain dicts: ``{"type": "llm_tokens", "provider", "model", "input_tokens", "output_tokens",
    "cached_input_tokens"?}``, ``{"type": "fee" | "agent", "code", "quantity"?}`` or ``{"type": "credits",
    "credits": "<credit string>"}``. Optional fields may be absent or None. Token counts are ints from 0 to
    10^9, quantities ints from 1 to 10^6 (booleans and floats refused).

    Raises ``InvalidCommand`` (malformed item, count or quantity; empty or overlong list), ``InvalidAmount``
    (bad raw credits, a line or total above ``MAX_MC``), ``UnknownModel`` or ``UnknownPriceCode``; each
    carries ``field`` such as ``items[2].model``.
    """
    if not isinstance(table, PriceTable):
        raise TypeError("price_items needs a PriceTable")
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InvalidCommand("items must be a list", field="items")
    if not items:
        raise InvalidCommand("items must not be empty", field="items")
    if len(items) > MAX_ITEMS:
        raise InvalidCommand(f"at most {MAX_ITEMS} items", field="items")
    lines: list[QuoteLine] = []
    total = 0
    for index, item in enumerate(items):
        line = _price_one(table, index, item)
        lines.append(line)
        total += line.amount_mc
    if total > MAX_MC:
        raise InvalidAmount(
            f"total exceeds {MAX_CREDITS} credits", field="items", value=format_credits(total), limit=MAX_CREDITS
        )
    return Quote(total_mc=total, lines=tuple(lines))


def _price_one(table: PriceTable, index: int, item: object) -> QuoteLine:
    base = f"items[{index}]"
    if not isinstance(item, Mapping):
        raise InvalidCommand(f"{base} must be an object", field=base)
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in _ITEM_KEYS:
        raise InvalidCommand(f"{base}.type must be one of {', '.join(ITEM_TYPES)}", field=f"{base}.type")
    allowed = _ITEM_KEYS[kind]
    for key, value in item.items():
        if key not in allowed and value is not None:
            raise InvalidCommand(f"{base}.{key} is not a field of a {kind} item", field=f"{base}.{key}")

    if kind == "llm_tokens":
        provider = _required_name(item, "provider", base)
        model = _required_name(item, "model", base)
        input_tokens = _count(item, "input_tokens", base, required=True)
        output_tokens = _count(item, "output_tokens", base, required=True)
        cached_tokens = _count(item, "cached_input_tokens", base, required=False)
        price = table.model_price(provider, model, field_prefix=base)
        cached_rate = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
        with localcontext(_EXACT):
            credits = (
                input_tokens * price.input_per_1m + output_tokens * price.output_per_1m + cached_tokens * cached_rate
            ) / _TOKENS_PER_PRICE
            amount = round_mc(credits * MC_PER_CREDIT)
        description = f"{provider}/{model}: {input_tokens} input + {output_tokens} output tokens"
        if cached_tokens:
            description += f" + {cached_tokens} cached input tokens"
    elif kind in ("fee", "agent"):
        code = _required_name(item, "code", base)
        quantity = _quantity(item, base)
        unit = table.fee(code, field=f"{base}.code") if kind == "fee" else table.agent(code, field=f"{base}.code")
        with localcontext(_EXACT):
            amount = round_mc(unit * quantity * MC_PER_CREDIT)
        description = f"{kind} {code}" + (f" x {quantity}" if quantity != 1 else "")
    else:
        raw = item.get("credits")
        field = f"{base}.credits"
        if raw is None:
            raise InvalidCommand(f"{field} is required", field=field)
        try:
            amount = parse_credits(raw)
        except InvalidAmount as exc:
            raise InvalidAmount(f"{field}: {exc.message}", **{**exc.details, "field": field}) from None
        if amount <= 0:
            raise InvalidAmount(f"{field} must be positive", field=field, value=format_credits(amount))
        description = "credits"

    if amount > MAX_MC:
        raise InvalidAmount(f"{base} costs more than {MAX_CREDITS} credits", field=base, limit=MAX_CREDITS)
    return QuoteLine(index=index, type=kind, description=description, amount_mc=amount)


def _required_name(item: Mapping[str, Any], key: str, base: str) -> str:
    value = item.get(key)
    field = f"{base}.{key}"
    if value is None:
        raise InvalidCommand(f"{field} is required", field=field)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise InvalidCommand(f"{field} must be a string of 1-128 characters", field=field)
    return value


def _count(item: Mapping[str, Any], key: str, base: str, *, required: bool) -> int:
    value = item.get(key)
    field = f"{base}.{key}"
    if value is None:
        if required:
            raise InvalidCommand(f"{field} is required", field=field)
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise InvalidCommand(
            f"{field} must be an integer from 0 to {MAX_TOKENS}", field=field, value=_safe(value, limit=40)
        )
    return value


def _quantity(item: Mapping[str, Any], base: str) -> int:
    value = item.get("quantity")
    field = f"{base}.quantity"
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUANTITY:
        raise InvalidCommand(
            f"{field} must be an integer from 1 to {MAX_QUANTITY}", field=field, value=_safe(value, limit=40)
        )
    return value


def _safe(value: object, *, limit: int = 128) -> str | int | None:
    """A value fit for error details (JSON, bounded): strings and ints as they are, anything else as repr."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        return value[:limit]
    return repr(value)[:limit]
